//! Embedding networks: the [`Backbone`] trait and its implementations.
//!
//! A backbone maps a batch of images `(N, C, H, W)` to embeddings `(N, D)`. It knows
//! nothing of episodes, files or training loops.

mod batchnorm;
mod conv;
mod conv4;
mod depthwise;
mod efficientnet;
mod fused;
mod ops;

pub use conv4::{Conv4, Conv4Config};
pub use depthwise::depthwise_conv2d;
pub use efficientnet::{EfficientNetLite0, EFFICIENTNET_LITE0_DIM};
pub use batchnorm::BatchNormRelu;
pub use conv::conv2d;
pub use ops::max_pool2x2;

use candle_core::Tensor;
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use crate::Result;

/// Which implementation of the hot operations a backbone uses.
///
/// `Fast` (the default) uses this crate's CPU custom ops ([`conv2d`], [`max_pool2x2`]),
/// which also fix candle 0.11's wrong max-pool gradient; on other devices it falls back
/// to candle's ops. `Plain` uses candle's ops everywhere, for comparison: note that its
/// max-pool gradient is wrong (see [`max_pool2x2`]), so do not train with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Ops {
    /// This crate's custom ops on the CPU.
    #[default]
    Fast,
    /// candle's own ops.
    Plain,
}

/// An embedding network.
///
/// `train` selects training behaviour (BatchNorm with batch statistics, updating its
/// running statistics) or evaluation behaviour (running statistics).
pub trait Backbone: Send + Sync {
    /// Embeds `(N, C, H, W)` images into `(N, D)`.
    fn embed(&self, images: &Tensor, train: bool) -> Result<Tensor>;
    /// The embedding size `D` for square inputs of `image_size` pixels.
    fn embedding_dim(&self, image_size: usize) -> usize;
}

/// Which backbone a model uses, with its hyper-parameters; stored in `config.json`.
///
/// ```
/// use protonet::backbone::{BackboneConfig, Conv4Config};
/// let cfg = BackboneConfig::Conv4(Conv4Config::default());
/// let json = serde_json::to_string(&cfg).unwrap();
/// assert!(json.contains("conv4"));
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BackboneConfig {
    /// The Conv-4 of Snell et al.
    Conv4(Conv4Config),
}

impl BackboneConfig {
    /// Builds the backbone, creating or loading its parameters through `vb`.
    pub fn build(&self, vb: VarBuilder) -> Result<Box<dyn Backbone>> {
        match self {
            BackboneConfig::Conv4(c) => Ok(Box::new(Conv4::new(c, vb)?)),
        }
    }

    /// Checks the hyper-parameters.
    pub fn validate(&self) -> Result<()> {
        match self {
            BackboneConfig::Conv4(c) => c.validate(),
        }
    }

    /// Input channels the backbone expects.
    pub fn in_channels(&self) -> usize {
        match self {
            BackboneConfig::Conv4(c) => c.in_channels,
        }
    }
}
