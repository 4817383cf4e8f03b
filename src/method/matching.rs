//! Matching networks (Vinyals et al. 2016) without full-context embeddings: each query
//! attends over the support embeddings by softmax of their cosine similarities, and a
//! class's probability is the sum of the attention on its support images. The logits
//! are the logs of those probabilities, so that the default loss (cross-entropy through
//! log-softmax, which leaves log-probabilities unchanged) is the paper's negative
//! log-likelihood.

use candle_core::{DType, Tensor, D};
use serde::{Deserialize, Serialize};

use super::{check_counts, support_labels, Fitted, Method, MethodConfig};
use crate::error::{Error, Result};
use crate::protonet::{cosine_similarities, l2_rows};

/// Settings of [`Matching`]; stored in a model's `config.json`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MatchingConfig {
    /// The cosine similarities are multiplied by this before the softmax (its inverse
    /// temperature). The paper's attention is the softmax of the plain cosine (1), under
    /// which a 5-way 1-shot query can reach at most 0.65 probability; CloserLook's code
    /// uses 100 on the ReLU of the cosine.
    pub scale: f32,
}

impl Default for MatchingConfig {
    /// Scale 10.
    fn default() -> Self {
        Self { scale: 10.0 }
    }
}

impl MatchingConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        if !(self.scale.is_finite() && self.scale > 0.0 && self.scale <= 1000.0) {
            return Err(Error::param("matching-scale", format!("must be in (0, 1000], got {}", self.scale)));
        }
        Ok(())
    }
}

/// The matching network's scoring ([`MethodConfig::Matching`]).
///
/// ```
/// use candle_core::{Device, Tensor};
/// use protonet::method::{Matching, MatchingConfig, Method};
/// let m = Matching::new(MatchingConfig { scale: 1.0 });
/// let s = Tensor::new(&[[1f32, 0.], [0., 1.]], &Device::Cpu)?;
/// let fitted = m.fit(&s, &[1, 1])?;
/// // The query is class 0's support row: attention e^1 / (e^1 + e^0) on class 0.
/// let p = m.logits(&fitted, &Tensor::new(&[[2f32, 0.]], &Device::Cpu)?)?.exp()?.to_vec2::<f32>()?;
/// let e = std::f32::consts::E;
/// assert!((p[0][0] - e / (e + 1.0)).abs() < 1e-6);
/// # Ok::<(), protonet::Error>(())
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Matching {
    config: MatchingConfig,
}

impl Matching {
    /// The method with `config`.
    pub fn new(config: MatchingConfig) -> Self {
        Self { config }
    }
}

impl Method for Matching {
    fn config(&self) -> MethodConfig {
        MethodConfig::Matching(self.config)
    }

    /// The unit support rows, `"support"` `(S, D)`, and their one-hot labels, `"labels"`
    /// `(S, way)`.
    fn fit(&self, support: &Tensor, counts: &[usize]) -> Result<Fitted> {
        check_counts(support.dims2()?.0, counts)?;
        let labels = Tensor::new(support_labels(counts), support.device())?;
        let one_hot = candle_nn::encoding::one_hot(labels, counts.len(), 1f32, 0f32)?.to_dtype(support.dtype())?;
        Ok(Fitted::one("support", l2_rows(support)?).with("labels", one_hot))
    }

    /// `log(softmax(scale * cos(query, support)) . one_hot)`, computed as
    /// `log(exp(s - m) . one_hot) - log(sum exp(s - m))` with `m` each row's largest
    /// similarity.
    fn logits(&self, fitted: &Fitted, query: &Tensor) -> Result<Tensor> {
        let sim = (cosine_similarities(query, fitted.get("support")?)? * self.config.scale as f64)?;
        let shifted = sim.broadcast_sub(&sim.max_keepdim(D::Minus1)?.detach())?;
        let e = shifted.exp()?;
        let class_sums = e.matmul(fitted.get("labels")?)?;
        // A class whose similarities all underflow gets a very low, finite log-probability.
        let floor = if class_sums.dtype() == DType::F64 { 1e-300 } else { 1e-30 };
        Ok(class_sums.clamp(floor, f64::INFINITY)?.log()?.broadcast_sub(&e.sum_keepdim(D::Minus1)?.log()?)?)
    }
}
