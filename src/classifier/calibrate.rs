//! Fitting the store to its own support set by leave-one-out: the confidence scale
//! (`beta`) and the rejection threshold.

use candle_core::DType;

use super::PrototypeStore;
use crate::error::{Error, Result};
use crate::protonet::{class_means, squared_distances};

impl PrototypeStore {
    /// Leave-one-out distances of the support set: for every support image of a class
    /// with at least 2 images, the squared distance from its embedding to the mean of
    /// the class's other `n - 1` embeddings, scaled by `(n+1)(n-1)/n²` so that it
    /// estimates the distance of a new image of the class to the full `n`-image
    /// prototype (for independent spread around the class mean, the expected squared
    /// distance to a mean of `m` images is proportional to `1 + 1/m`).
    /// Embeddings are normalized first (see [`PrototypeStore::set_normalization`]).
    pub fn leave_one_out_distances(&self) -> Result<Vec<f32>> {
        let (support, _, counts) = self.normalized(&[])?;
        let mut out = Vec::new();
        let mut start = 0;
        for n in counts {
            let e = support.narrow(0, start, n)?;
            start += n;
            if n < 2 {
                continue;
            }
            let nf = n as f64;
            // The mean of the other n - 1 embeddings, for each embedding.
            let others = ((e.sum_keepdim(0)?.broadcast_sub(&e)?) / (nf - 1.0))?;
            let d = (e - others)?.sqr()?.sum(1)?;
            let scale = (nf + 1.0) * (nf - 1.0) / (nf * nf);
            out.extend((d * scale)?.to_vec1::<f32>()?);
        }
        Ok(out)
    }

    /// The inverse temperature `beta` of the confidences (fitted once after each change of
    /// the support set or the normalization, then kept): [`PrototypeStore::predict`]'s
    /// probabilities are the softmax of `-beta * distance`. It is fitted on the support
    /// set by leave-one-out: each support image of a class with at least 2 images is
    /// classified against its class's other images (distance scaled as in
    /// [`PrototypeStore::leave_one_out_distances`]) and the other classes' prototypes, and
    /// `beta` minimises the negative log-likelihood of the right classes (a convex
    /// function of `beta`, searched up to `50 / median distance`). 1 (the paper's softmax)
    /// when no class has 2 images or there is only one class.
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
        if let Some(&beta) = self.beta.get() {
            return Ok(beta);
        }
        let beta = self.fit_confidence_scale()?;
        // A concurrent caller may have set the same value first.
        let _ = self.beta.set(beta);
        Ok(beta)
    }

    /// The fit behind [`PrototypeStore::confidence_scale`].
    fn fit_confidence_scale(&self) -> Result<f32> {
        let items = self.leave_one_out_scores()?;
        if items.is_empty() {
            return Ok(1.0);
        }
        let mut all: Vec<f64> = items.iter().flat_map(|(_, d)| d.iter().copied()).filter(|d| d.is_finite()).collect();
        all.sort_by(f64::total_cmp);
        let median = all.get(all.len() / 2).copied().unwrap_or(1.0).max(1e-12);
        let nll = |beta: f64| -> f64 {
            items
                .iter()
                .map(|(right, d)| {
                    let min = d.iter().copied().fold(f64::INFINITY, f64::min);
                    let lse = d.iter().map(|x| (-beta * (x - min)).exp()).sum::<f64>().ln() - beta * min;
                    beta * d[*right] + lse
                })
                .sum()
        };
        // Golden-section search of the convex NLL on [0, 50 / median].
        let (mut lo, mut hi) = (0.0f64, 50.0 / median);
        let g = (5f64.sqrt() - 1.0) / 2.0;
        for _ in 0..100 {
            let (a, b) = (hi - g * (hi - lo), lo + g * (hi - lo));
            if nll(a) <= nll(b) {
                hi = b;
            } else {
                lo = a;
            }
        }
        Ok((0.5 * (lo + hi)).max(1e-12) as f32)
    }

    /// Leave-one-out items for [`PrototypeStore::confidence_scale`]: for each support
    /// image of a class with at least 2 images, its class index and its squared distances
    /// to every class (its own class: the scaled distance to the mean of the others).
    fn leave_one_out_scores(&self) -> Result<Vec<(usize, Vec<f64>)>> {
        if self.classes.len() < 2 {
            return Ok(Vec::new());
        }
        let (support, _, counts) = self.normalized(&[])?;
        let full = squared_distances(&support, &class_means(&support, &counts)?)?.to_dtype(DType::F64)?.to_vec2::<f64>()?;
        let own = self.leave_one_out_distances()?;
        let mut out = Vec::new();
        let (mut start, mut k) = (0, 0);
        for (class, &n) in counts.iter().enumerate() {
            if n >= 2 {
                for row in &full[start..start + n] {
                    let mut d = row.clone();
                    d[class] = own[k] as f64;
                    k += 1;
                    out.push((class, d));
                }
            }
            start += n;
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
