//! Fitting the store to its own support set by leave-one-out: the confidence scale
//! (`beta`) and the rejection threshold.

use candle_core::{DType, Tensor};

use super::PrototypeStore;
use crate::error::{Error, Result};

impl PrototypeStore {
    /// Leave-one-out distances of the support set, in the method's own distances (the
    /// ones [`PrototypeStore::predict`] answers with and rejects by): for every support
    /// image of a class with at least 2 images, class by class, its distance to its class
    /// when the method is fitted without it ([`PrototypeStore::leave_one_out_answers`]),
    /// scaled by `(n+1)(n-1)/n²` so that it estimates the distance of a new image of the
    /// class to the full `n`-image class (for prototypes and independent spread around
    /// the class mean, the expected squared distance to a mean of `m` images is
    /// proportional to `1 + 1/m`). Embeddings are normalized first (see
    /// [`PrototypeStore::set_normalization`]). Empty for a method without distances.
    pub fn leave_one_out_distances(&self) -> Result<Vec<f32>> {
        let mut by_class = vec![Vec::new(); self.class_counts().len()];
        for (k, d) in self.leave_one_out_answers()? {
            by_class[k].push(d[k] as f32);
        }
        Ok(by_class.concat())
    }

    /// The inverse temperature `beta` of the confidences (fitted once after each change of
    /// the support set, the normalization or the method, then kept):
    /// [`PrototypeStore::predict`]'s probabilities are the softmax of `-beta * distance`.
    /// It is fitted on the support set by leave-one-out through the method itself
    /// ([`PrototypeStore::leave_one_out_answers`]): at `beta` the mean confidence of the
    /// left-out images' answers equals the share of them answered right (smoothed as
    /// `(right + 1) / (n + 2)`). 1 (the paper's softmax) when no class has 2 images or
    /// there is only one class.
    ///
    /// ```
    /// use protonet::classifier::PrototypeStore;
    /// let mut store = PrototypeStore::new(1);
    /// store.add("a", vec![vec![0.0], vec![1.0], vec![2.0]])?;
    /// store.add("b", vec![vec![3.0], vec![4.0], vec![5.0]])?;
    /// let beta = store.confidence_scale()?;
    /// assert!(beta > 0.0 && beta.is_finite());
    /// # Ok::<(), protonet::Error>(())
    /// ```
    pub fn confidence_scale(&self) -> Result<f32> {
        Ok(self.confidence_fit()?.beta)
    }

    /// How sure an answer of "unknown" is, for a query whose nearest class is at
    /// `distance`: the share of the support set's left-out images that were nearer their
    /// own class than that ([`PrototypeStore::leave_one_out_answers`]), so 0.97 reads
    /// "farther than 97% of your own photos were from their class". Without left-out
    /// images (no class of 2), `1 - threshold / distance` (0 at the threshold).
    pub fn unknown_confidence(&self, distance: f32) -> Result<f32> {
        let own = &self.confidence_fit()?.own_distances;
        if own.is_empty() {
            let t = self.threshold.unwrap_or(distance);
            return Ok((1.0 - t / distance).clamp(0.0, 1.0));
        }
        Ok(own.partition_point(|&d| d < distance) as f32 / own.len() as f32)
    }

    /// The leave-one-out fit behind the confidences, made once per support set.
    fn confidence_fit(&self) -> Result<&ConfidenceFit> {
        if let Some(fit) = self.confidence.get() {
            return Ok(fit);
        }
        let items = self.leave_one_out_answers()?;
        let mut own_distances: Vec<f32> = items.iter().map(|(k, d)| d[*k] as f32).collect();
        own_distances.sort_by(f32::total_cmp);
        let beta = if self.classes.len() < 2 { 1.0 } else { fit_beta(&items) };
        // A concurrent caller may have set the same value first.
        let _ = self.confidence.set(ConfidenceFit { beta, own_distances });
        Ok(self.confidence.get().expect("set above"))
    }

    /// Leave-one-out answers of the support set through the method: in round `j`, the
    /// `j`-th image of every class that has more than one (and more than `j`) is left
    /// out, the method is fitted to the others, and each left-out image's distances to
    /// every class under that fit are kept with its class, the distance to its own class
    /// (fitted to `n - 1` of its `n` images) scaled by `(n+1)(n-1)/n²` to estimate that
    /// of a new image to the class fitted to all `n` (as for a mean of `m` images, whose
    /// expected squared distance to a new image grows as `1 + 1/m`). As many fits as the
    /// largest class has images (4 for 4-shot support sets), the same fit as
    /// [`PrototypeStore::predict`] uses, so the confidences are fitted on the distances
    /// they are computed from. Embeddings are normalized first. Empty for a method
    /// without distances.
    pub fn leave_one_out_answers(&self) -> Result<Vec<(usize, Vec<f64>)>> {
        if !self.method.has_distances() {
            return Ok(Vec::new());
        }
        let (support, _, counts) = self.normalized(&[])?;
        let starts: Vec<usize> = counts.iter().scan(0, |s, &n| Some(std::mem::replace(s, *s + n))).collect();
        let mut out = Vec::new();
        for j in 0..counts.iter().copied().max().unwrap_or(0) {
            let left: Vec<(usize, usize)> = (0..counts.len()).filter(|&k| counts[k] >= 2 && j < counts[k]).map(|k| (k, starts[k] + j)).collect();
            if left.is_empty() {
                continue;
            }
            let kept: Vec<u32> = (0..support.dim(0)?).filter(|i| !left.iter().any(|(_, r)| r == i)).map(|i| i as u32).collect();
            let kept_counts: Vec<usize> = counts.iter().enumerate().map(|(k, &n)| n - left.iter().filter(|(c, _)| *c == k).count()).collect();
            let dev = support.device();
            let fitted = self.method.fit(&support.index_select(&Tensor::new(kept, dev)?, 0)?, &kept_counts)?;
            let rows: Vec<u32> = left.iter().map(|(_, r)| *r as u32).collect();
            let query = support.index_select(&Tensor::new(rows, dev)?, 0)?;
            let d = self.method.distances(&fitted, &query)?.to_dtype(DType::F64)?.to_vec2::<f64>()?;
            for (&(k, _), mut d) in left.iter().zip(d) {
                let n = counts[k] as f64;
                d[k] *= (n + 1.0) * (n - 1.0) / (n * n);
                out.push((k, d));
            }
        }
        Ok(out)
    }

    /// Calibrates the rejection threshold from the support set and turns rejection on:
    /// the threshold is the `quantile` (for example 0.95) of the leave-one-out distances
    /// ([`PrototypeStore::leave_one_out_distances`]), meant to accept about that share of
    /// new images of known classes. Needs a class with at least 2 images.
    pub fn calibrate_threshold(&mut self, quantile: f32) -> Result<f32> {
        if !(quantile > 0.0 && quantile <= 1.0) {
            return Err(Error::param("quantile", format!("must be in (0, 1], got {quantile}")));
        }
        if !self.method.has_distances() {
            return Err(Error::param("reject", format!("the `{}` method gives no distances to reject by", self.method.config().name())));
        }
        let mut d = self.leave_one_out_distances()?;
        if d.is_empty() {
            return Err(Error::param("support", "calibrating a threshold needs a class with at least 2 images"));
        }
        d.sort_by(f32::total_cmp);
        let pos = quantile as f64 * (d.len() - 1) as f64;
        let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
        let t = (d[lo] + (d[hi] - d[lo]) * (pos - lo as f64) as f32).max(f32::MIN_POSITIVE);
        self.threshold = Some(t);
        Ok(t)
    }
}

/// What the confidences are fitted to, once per support set.
#[derive(Debug, Clone)]
pub(super) struct ConfidenceFit {
    /// The softmax's inverse temperature ([`PrototypeStore::confidence_scale`]).
    beta: f32,
    /// Each left-out support image's distance to its own class, ascending.
    own_distances: Vec<f32>,
}

/// The `beta` at which the mean confidence of the leave-one-out answers `items` (class,
/// distances) equals their share answered right, smoothed as `(right + 1) / (n + 2)`:
/// confidences that match accuracy on average ("calibration in the large"). Not the
/// maximum-likelihood `beta`, which a few left-out images (16 for 4-way 4-shot), often
/// all right, push far too high. Bisection on `[0, 50 / median distance]` (the mean
/// confidence grows with `beta`).
fn fit_beta(items: &[(usize, Vec<f64>)]) -> f32 {
    if items.is_empty() {
        return 1.0;
    }
    let mut all: Vec<f64> = items.iter().flat_map(|(_, d)| d.iter().copied()).filter(|d| d.is_finite()).collect();
    all.sort_by(f64::total_cmp);
    let median = all.get(all.len() / 2).copied().unwrap_or(1.0).max(1e-12);
    let nearest = |d: &[f64]| d.iter().copied().fold(f64::INFINITY, f64::min);
    let right = items.iter().filter(|(k, d)| d[*k] <= nearest(d)).count();
    let target = (right as f64 + 1.0) / (items.len() as f64 + 2.0);
    let mean_confidence = |beta: f64| -> f64 {
        let sum: f64 = items
            .iter()
            .map(|(_, d)| {
                let min = nearest(d);
                1.0 / d.iter().map(|x| (-beta * (x - min)).exp()).sum::<f64>()
            })
            .sum();
        sum / items.len() as f64
    };
    let (mut lo, mut hi) = (0.0f64, 50.0 / median);
    if mean_confidence(hi) <= target {
        return hi as f32;
    }
    for _ in 0..100 {
        let mid = 0.5 * (lo + hi);
        if mean_confidence(mid) < target {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    (0.5 * (lo + hi)).max(1e-12) as f32
}
