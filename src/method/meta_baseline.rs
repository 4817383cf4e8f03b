//! Meta-Baseline's scoring (Chen et al. 2021): a class is the mean of its support
//! embeddings (the centroid); a query's logits are its cosine similarities to the
//! centroids times a learned temperature (initialised at 10). Its training is two
//! stages: the backbone as a classifier of all base classes ([`crate::train::supervised`]),
//! then episodes through this scoring, which also learns the temperature.

use candle_core::Tensor;
use candle_nn::{Init, VarBuilder};
use serde::{Deserialize, Serialize};

use super::{check_counts, Fitted, Method, MethodConfig};
use crate::error::{Error, Result};
use crate::protonet::{class_means, cosine_similarities, l2_rows, squared_distances};

/// Settings of [`MetaBaseline`]; stored in a model's `config.json` (the learned
/// temperature is a weight of the model: `method.temperature`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MetaBaselineConfig {
    /// The temperature's starting value (the paper's 10).
    pub initial_temperature: f32,
}

impl Default for MetaBaselineConfig {
    /// Temperature 10, as the paper.
    fn default() -> Self {
        Self { initial_temperature: 10.0 }
    }
}

impl MetaBaselineConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        if !(self.initial_temperature.is_finite() && self.initial_temperature > 0.0) {
            return Err(Error::param("temperature", format!("must be a positive number, got {}", self.initial_temperature)));
        }
        Ok(())
    }
}

/// Meta-Baseline's scoring ([`MethodConfig::MetaBaseline`]).
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use protonet::method::{MetaBaseline, MetaBaselineConfig, Method};
/// let vars = candle_nn::VarMap::new();
/// let m = MetaBaseline::new(MetaBaselineConfig::default(), candle_nn::VarBuilder::from_varmap(&vars, DType::F32, &Device::Cpu))?;
/// assert_eq!(m.temperature()?, 10.0);
/// let s = Tensor::new(&[[1f32, 0.], [3., 0.], [0., 2.]], &Device::Cpu)?;
/// let fitted = m.fit(&s, &[2, 1])?; // centroids (2, 0) and (0, 2)
/// let logits = m.logits(&fitted, &Tensor::new(&[[1f32, 1.]], &Device::Cpu)?)?.to_vec2::<f32>()?;
/// let c = 10.0 * std::f32::consts::FRAC_1_SQRT_2; // 10 cos 45 degrees
/// assert!((logits[0][0] - c).abs() < 1e-5 && (logits[0][1] - c).abs() < 1e-5);
/// # Ok::<(), protonet::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct MetaBaseline {
    config: MetaBaselineConfig,
    temperature: Tensor,
}

impl MetaBaseline {
    /// The scoring with its temperature `temperature` from `vb` (a model's variables,
    /// where it is created at the initial value when missing).
    pub fn new(config: MetaBaselineConfig, vb: VarBuilder) -> Result<Self> {
        config.validate()?;
        let temperature = vb.get_with_hints((), "temperature", Init::Const(config.initial_temperature as f64))?;
        Ok(Self { config, temperature })
    }

    /// The temperature now (learned during episodic training).
    pub fn temperature(&self) -> Result<f32> {
        Ok(self.temperature.to_scalar::<f32>()?)
    }
}

impl Method for MetaBaseline {
    fn config(&self) -> MethodConfig {
        MethodConfig::MetaBaseline(self.config)
    }

    /// The unit centroids, `"centroids"` `(way, D)`.
    fn fit(&self, support: &Tensor, counts: &[usize]) -> Result<Fitted> {
        check_counts(support.dims2()?.0, counts)?;
        Ok(Fitted::one("centroids", l2_rows(&class_means(support, counts)?)?))
    }

    fn logits(&self, fitted: &Fitted, query: &Tensor) -> Result<Tensor> {
        Ok(cosine_similarities(query, fitted.get("centroids")?)?.broadcast_mul(&self.temperature)?)
    }

    fn has_distances(&self) -> bool {
        true
    }

    /// Squared distances between unit vectors, `2 - 2 cos`.
    fn distances(&self, fitted: &Fitted, query: &Tensor) -> Result<Tensor> {
        squared_distances(&l2_rows(query)?, fitted.get("centroids")?)
    }
}
