//! Baseline and Baseline++ at test time (Chen et al. 2019, "A Closer Look at Few-shot
//! Classification"; `set_forward_adaptation` in their code): a new classifier trained on
//! the frozen support embeddings alone, by SGD with momentum, dampening and weight decay
//! over shuffled mini-batches, then scoring the queries. Baseline's classifier is linear
//! (weights and bias, PyTorch's default initialisation); Baseline++'s is their
//! `distLinear`: the L2-normalized embedding against weight-normalized class weights
//! (`g_k v_k / |v_k|`, the gain `g_k` learned, starting at `|v_k|`), times a fixed scale.
//!
//! The classifier is tiny (way x D), so its steps are written out here in plain `f32`
//! with their gradients by hand (checked against finite differences in the tests): a
//! 20-way 5-shot fit is 2500 steps, which candle's per-operation cost would make the
//! whole evaluation's bottleneck.

use candle_core::{Device, Tensor};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::{check_counts, support_labels, Fitted, Method, MethodConfig};
use crate::error::{Error, Result};

/// The classifier Baseline (linear) or Baseline++ (cosine) trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClassifierKind {
    /// `W x + b` (Baseline).
    Linear,
    /// `scale * g_k cos(x, v_k)`: CloserLook's `distLinear` (Baseline++).
    Cosine,
}

/// Settings of the support-set fit of Baseline and Baseline++ (the paper's by default);
/// stored in a model's `config.json`.
///
/// ```
/// use protonet::method::{BaselineConfig, ClassifierKind};
/// let c = BaselineConfig::new(ClassifierKind::Cosine);
/// c.validate()?;
/// assert_eq!((c.epochs, c.batch, c.scale), (100, 4, 2.0));
/// # Ok::<(), protonet::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BaselineConfig {
    /// Linear (Baseline) or cosine (Baseline++).
    pub classifier: ClassifierKind,
    /// Passes over the support set.
    pub epochs: usize,
    /// Support embeddings per SGD step.
    pub batch: usize,
    /// SGD's learning rate.
    pub learning_rate: f32,
    /// SGD's momentum.
    pub momentum: f32,
    /// SGD's dampening (of the gradient added to the momentum buffer).
    pub dampening: f32,
    /// L2 weight decay (added to the gradient, as PyTorch's SGD does).
    pub weight_decay: f32,
    /// The cosine classifier's scale: CloserLook's `distLinear` uses 2 for at most 200
    /// classes (a test-time support set) and 10 above.
    pub scale: f32,
    /// Seed of the initialisation and of the order of the support embeddings.
    pub seed: u64,
}

impl BaselineConfig {
    /// The paper's settings for `classifier`: SGD lr 0.01, momentum 0.9, dampening 0.9,
    /// weight decay 1e-3, batches of 4, 100 epochs, cosine scale 2.
    pub fn new(classifier: ClassifierKind) -> Self {
        Self { classifier, epochs: 100, batch: 4, learning_rate: 0.01, momentum: 0.9, dampening: 0.9, weight_decay: 1e-3, scale: 2.0, seed: 0 }
    }

    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        if self.epochs == 0 || self.epochs > 10_000 {
            return Err(Error::param("support-epochs", format!("must be in 1..=10000, got {}", self.epochs)));
        }
        if self.batch == 0 {
            return Err(Error::param("support-batch", "must be at least 1"));
        }
        let ok = |v: f32, lo: f32, hi: f32| v.is_finite() && v >= lo && v <= hi;
        if !ok(self.learning_rate, 1e-9, 10.0) || !ok(self.momentum, 0.0, 0.999) || !ok(self.dampening, 0.0, 1.0) || !ok(self.weight_decay, 0.0, 1.0) {
            return Err(Error::param(
                "support-sgd",
                format!("lr in (0, 10], momentum in [0, 1), dampening and weight decay in [0, 1] are needed, got {self:?}"),
            ));
        }
        if !ok(self.scale, 1e-3, 1000.0) {
            return Err(Error::param("scale", format!("must be in (0, 1000], got {}", self.scale)));
        }
        Ok(())
    }
}

/// Baseline / Baseline++'s scoring ([`MethodConfig::Baseline`]): fitted at test time,
/// never trained on episodes; no distances.
#[derive(Debug, Clone, Copy)]
pub struct Baseline {
    config: BaselineConfig,
}

impl Baseline {
    /// The method with `config`.
    pub fn new(config: BaselineConfig) -> Self {
        Self { config }
    }
}

/// The classifier's parameters, flat: `w` (way x D) and `b` (way; the bias of the linear
/// classifier, the gain `g` of the cosine one).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SupportClassifier {
    pub(crate) kind: ClassifierKind,
    pub(crate) scale: f32,
    pub(crate) way: usize,
    pub(crate) dim: usize,
    pub(crate) w: Vec<f32>,
    pub(crate) b: Vec<f32>,
}

fn unit(x: &[f32]) -> Vec<f32> {
    let n = x.iter().map(|v| v * v).sum::<f32>().sqrt() + 1e-5;
    x.iter().map(|v| v / n).collect()
}

impl SupportClassifier {
    /// PyTorch's `nn.Linear` initialisation (U(-1/sqrt(D), 1/sqrt(D)) for weights and
    /// bias); for the cosine classifier the gains start at each row's norm (weight norm).
    pub(crate) fn init(kind: ClassifierKind, scale: f32, way: usize, dim: usize, rng: &mut ChaCha8Rng) -> Self {
        let bound = 1.0 / (dim as f32).sqrt();
        let w: Vec<f32> = (0..way * dim).map(|_| rng.random_range(-bound..bound)).collect();
        let b = match kind {
            ClassifierKind::Linear => (0..way).map(|_| rng.random_range(-bound..bound)).collect(),
            ClassifierKind::Cosine => w.chunks(dim).map(|r| r.iter().map(|v| v * v).sum::<f32>().sqrt()).collect(),
        };
        Self { kind, scale, way, dim, w, b }
    }

    /// The logits of one embedding `x`.
    pub(crate) fn logits(&self, x: &[f32]) -> Vec<f32> {
        match self.kind {
            ClassifierKind::Linear => self.w.chunks(self.dim).zip(&self.b).map(|(r, b)| dot(r, x) + b).collect(),
            ClassifierKind::Cosine => {
                let xh = unit(x);
                self.w.chunks(self.dim).zip(&self.b).map(|(r, g)| self.scale * g * dot(r, &xh) / norm(r)).collect()
            }
        }
    }

    /// The mean cross-entropy of the rows `batch` of `x` (flat, D each) against `labels`,
    /// and its gradients with respect to `w` and `b`.
    pub(crate) fn loss_and_gradients(&self, x: &[f32], labels: &[u32], batch: &[usize]) -> (f32, Vec<f32>, Vec<f32>) {
        let (d, n) = (self.dim, batch.len() as f32);
        let (mut gw, mut gb) = (vec![0f32; self.w.len()], vec![0f32; self.b.len()]);
        let mut loss = 0.0;
        for &i in batch {
            let xi = &x[i * d..(i + 1) * d];
            let logits = self.logits(xi);
            let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let e: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
            let total: f32 = e.iter().sum();
            let y = labels[i] as usize;
            loss += total.ln() + max - logits[y];
            let xh = unit(xi);
            for k in 0..self.way {
                let delta = (e[k] / total - if k == y { 1.0 } else { 0.0 }) / n;
                let row = &self.w[k * d..(k + 1) * d];
                match self.kind {
                    ClassifierKind::Linear => {
                        gb[k] += delta;
                        gw[k * d..(k + 1) * d].iter_mut().zip(xi).for_each(|(g, v)| *g += delta * v);
                    }
                    ClassifierKind::Cosine => {
                        // logit = s g (v.x̂) / |v|.
                        let (r, vx) = (norm(row), dot(row, &xh));
                        gb[k] += delta * self.scale * vx / r;
                        let c = delta * self.scale * self.b[k];
                        gw[k * d..(k + 1) * d].iter_mut().zip(xh.iter().zip(row)).for_each(|(g, (xv, v))| *g += c * (xv / r - vx * v / (r * r * r)));
                    }
                }
            }
        }
        (loss / n, gw, gb)
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn norm(a: &[f32]) -> f32 {
    dot(a, a).sqrt().max(1e-12)
}

/// PyTorch's SGD update of `p` with its momentum buffer `buf` (`None` before the first
/// step): the gradient plus weight decay; the buffer `momentum * buf + (1 - dampening) *
/// grad`, the gradient itself at the first step; `p -= lr * buf`.
fn sgd(p: &mut [f32], grad: &[f32], buf: &mut Option<Vec<f32>>, c: &BaselineConfig) {
    let g: Vec<f32> = grad.iter().zip(p.iter()).map(|(g, p)| g + c.weight_decay * p).collect();
    let b = match buf.take() {
        None => g,
        Some(mut b) => {
            b.iter_mut().zip(&g).for_each(|(b, g)| *b = c.momentum * *b + (1.0 - c.dampening) * g);
            b
        }
    };
    p.iter_mut().zip(&b).for_each(|(p, b)| *p -= c.learning_rate * b);
    *buf = Some(b);
}

impl BaselineConfig {
    /// Trains the support classifier on `x` (flat rows of `dim`) with `labels`.
    pub(crate) fn train(&self, x: &[f32], labels: &[u32], way: usize, dim: usize) -> SupportClassifier {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        let mut clf = SupportClassifier::init(self.classifier, self.scale, way, dim, &mut rng);
        let (mut bw, mut bb) = (None, None);
        let mut order: Vec<usize> = (0..labels.len()).collect();
        for _ in 0..self.epochs {
            order.shuffle(&mut rng);
            for batch in order.chunks(self.batch) {
                let (_, gw, gb) = clf.loss_and_gradients(x, labels, batch);
                sgd(&mut clf.w, &gw, &mut bw, self);
                sgd(&mut clf.b, &gb, &mut bb, self);
            }
        }
        clf
    }
}

impl Method for Baseline {
    fn config(&self) -> MethodConfig {
        MethodConfig::Baseline(self.config)
    }

    /// The trained classifier: `"weights"` `(way, D)` and `"bias"` (linear) or `"gain"`
    /// (cosine) `(way,)`. The support embeddings are detached: the fit never trains the
    /// backbone.
    fn fit(&self, support: &Tensor, counts: &[usize]) -> Result<Fitted> {
        let (n, d) = support.dims2()?;
        check_counts(n, counts)?;
        let x = support.detach().to_dtype(candle_core::DType::F32)?.to_device(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?;
        let clf = self.config.train(&x, &support_labels(counts), counts.len(), d);
        let dev = support.device();
        let second = if self.config.classifier == ClassifierKind::Linear { "bias" } else { "gain" };
        Ok(Fitted::one("weights", Tensor::from_vec(clf.w, (counts.len(), d), dev)?).with(second, Tensor::from_vec(clf.b, counts.len(), dev)?))
    }

    fn logits(&self, fitted: &Fitted, query: &Tensor) -> Result<Tensor> {
        let w = fitted.get("weights")?;
        let (way, dim) = w.dims2()?;
        let second = if self.config.classifier == ClassifierKind::Linear { "bias" } else { "gain" };
        let clf = SupportClassifier {
            kind: self.config.classifier,
            scale: self.config.scale,
            way,
            dim,
            w: w.flatten_all()?.to_vec1::<f32>()?,
            b: fitted.get(second)?.to_vec1::<f32>()?,
        };
        let (q, qd) = query.dims2()?;
        if qd != dim {
            return Err(Error::param("embeddings", format!("queries have {qd} values, the fitted classifier {dim}")));
        }
        let x = query.to_dtype(candle_core::DType::F32)?.to_device(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?;
        let logits: Vec<f32> = x.chunks(dim).flat_map(|r| clf.logits(r)).collect();
        Ok(Tensor::from_vec(logits, (q, way), query.device())?)
    }

    fn trains_episodically(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..n).map(|_| rng.random_range(-1f32..1.0)).collect()
    }

    #[test]
    fn gradients_match_finite_differences() {
        let (way, dim) = (3, 5);
        let x = random(6 * dim, 1);
        let labels = [0u32, 1, 2, 2, 1, 0];
        let batch = [0usize, 2, 3, 5];
        for kind in [ClassifierKind::Linear, ClassifierKind::Cosine] {
            let clf = SupportClassifier::init(kind, 2.0, way, dim, &mut ChaCha8Rng::seed_from_u64(4));
            let (_, gw, gb) = clf.loss_and_gradients(&x, &labels, &batch);
            let eps = 1e-2f32;
            let loss = |c: &SupportClassifier| -> f64 { c.loss_and_gradients(&x, &labels, &batch).0 as f64 };
            for i in 0..clf.w.len() + clf.b.len() {
                let shifted = |delta: f32| {
                    let mut c = clf.clone();
                    if i < c.w.len() {
                        c.w[i] += delta;
                    } else {
                        c.b[i - c.w.len()] += delta;
                    }
                    loss(&c)
                };
                let fd = (shifted(eps) - shifted(-eps)) / (2.0 * eps as f64);
                let g = if i < gw.len() { gw[i] } else { gb[i - gw.len()] } as f64;
                assert!((fd - g).abs() < 2e-3 * (1.0 + fd.abs()), "{kind:?} parameter {i}: finite difference {fd}, gradient {g}");
            }
        }
    }

    #[test]
    fn sgd_follows_pytorch_with_momentum_dampening_and_weight_decay() {
        let c = BaselineConfig { learning_rate: 0.1, momentum: 0.9, dampening: 0.5, weight_decay: 0.01, ..BaselineConfig::new(ClassifierKind::Linear) };
        let mut p = vec![1.0f32];
        let mut buf = None;
        sgd(&mut p, &[2.0], &mut buf, &c);
        // First step: buf = g + wd p = 2.01; p = 1 - 0.1 * 2.01.
        assert!((p[0] - 0.799).abs() < 1e-6, "{}", p[0]);
        sgd(&mut p, &[2.0], &mut buf, &c);
        // buf = 0.9 * 2.01 + 0.5 * (2 + 0.01 * 0.799).
        let b = 0.9 * 2.01 + 0.5 * (2.0 + 0.01 * 0.799);
        assert!((p[0] - (0.799 - 0.1 * b)).abs() < 1e-6, "{}", p[0]);
    }
}
