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
pub use efficientnet::{trunk_side, EfficientNetLite0, FineTunedEfficientNet, HeadConfig, TunedHead, EFFICIENTNET_LITE0_DIM, EFFICIENTNET_LITE0_TRUNK_CHANNELS};
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

/// A reference to third-party weights that a model uses but does not contain: the file
/// name and its SHA-256. The file is looked for in `$PROTONET_PRETRAINED` (a folder), else
/// in `data/pretrained/` of the working directory, else of this crate's source tree.
///
/// ```
/// let w = protonet::backbone::PretrainedWeights::efficientnet_lite0();
/// assert!(w.name.ends_with(".pth") && w.sha256.len() == 64);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PretrainedWeights {
    /// File name, for example `efficientnet-lite0-57934424.pth`.
    pub name: String,
    /// Lower-case hex SHA-256 of the file.
    pub sha256: String,
}

impl PretrainedWeights {
    /// The ImageNet EfficientNet-Lite0 state dict that `scripts/fetch-pretrained.sh` fetches.
    pub fn efficientnet_lite0() -> Self {
        Self { name: "efficientnet-lite0-57934424.pth".into(), sha256: "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db".into() }
    }

    /// Finds the file and checks its SHA-256; errors say where it looked and how to fetch it.
    pub fn locate(&self) -> Result<std::path::PathBuf> {
        use sha2::Digest;
        if self.name.contains('/') || self.name.contains('\\') || self.name.starts_with('.') {
            return Err(crate::Error::param("weights", format!("`{}` is not a plain file name", self.name)));
        }
        let mut dirs: Vec<std::path::PathBuf> = Vec::new();
        if let Some(d) = std::env::var_os("PROTONET_PRETRAINED") {
            dirs.push(d.into());
        }
        dirs.push("data/pretrained".into());
        dirs.push(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/pretrained"));
        let path = dirs.iter().map(|d| d.join(&self.name)).find(|p| p.is_file()).ok_or_else(|| crate::Error::Checkpoint {
            path: self.name.clone().into(),
            reason: format!(
                "pretrained weights not found in {}; run scripts/fetch-pretrained.sh or set PROTONET_PRETRAINED to their folder",
                dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ")
            ),
        })?;
        let bytes = std::fs::read(&path).map_err(|e| crate::Error::io(&path, e))?;
        let digest: String = sha2::Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
        if digest != self.sha256 {
            return Err(crate::Error::Checkpoint {
                path,
                reason: format!("sha256 is {digest}, but the model was made with {} (other weights under the same name)", self.sha256),
            });
        }
        Ok(path)
    }
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
    /// EfficientNet-Lite0 with ImageNet weights, 1280-d embeddings. The model directory
    /// holds no weights of it, only the reference; with `head`, it holds the fine-tuned
    /// head ([`TunedHead`], parameters `head.*`) that replaces the ImageNet one.
    #[serde(rename = "efficientnet_lite0")]
    EfficientNetLite0 {
        /// The ImageNet weights.
        weights: PretrainedWeights,
        /// A fine-tuned head, if any (absent: the frozen ImageNet network).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        head: Option<HeadConfig>,
    },
    /// The fine-tunable EfficientNet-Lite0 head alone ([`TunedHead`], parameters `head.*`),
    /// whose inputs are the frozen trunk's feature maps `(N, 320, h, w)` rather than
    /// images: what [`crate::finetune`] trains on cached features.
    #[serde(rename = "efficientnet_lite0_head")]
    EfficientNetLite0Head {
        /// The head's settings.
        head: HeadConfig,
    },
}

impl BackboneConfig {
    /// Builds the backbone, creating or loading its parameters through `vb`.
    pub fn build(&self, vb: VarBuilder) -> Result<Box<dyn Backbone>> {
        match self {
            BackboneConfig::Conv4(c) => Ok(Box::new(Conv4::new(c, vb)?)),
            BackboneConfig::EfficientNetLite0 { weights, head } => {
                let net = EfficientNetLite0::from_reference(weights, vb.device())?;
                match head {
                    None => Ok(Box::new(net)),
                    Some(h) => Ok(Box::new(FineTunedEfficientNet::new(net, TunedHead::new(h, vb.pp("head"))?))),
                }
            }
            BackboneConfig::EfficientNetLite0Head { head } => Ok(Box::new(TunedHead::new(head, vb.pp("head"))?)),
        }
    }

    /// Checks the hyper-parameters.
    pub fn validate(&self) -> Result<()> {
        match self {
            BackboneConfig::Conv4(c) => c.validate(),
            BackboneConfig::EfficientNetLite0Head { .. } => Ok(()),
            BackboneConfig::EfficientNetLite0 { weights, .. } => {
                if weights.sha256.len() != 64 || !weights.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(crate::Error::param("weights", format!("sha256 `{}` is not 64 hex digits", weights.sha256)));
                }
                Ok(())
            }
        }
    }

    /// Input channels the backbone expects.
    pub fn in_channels(&self) -> usize {
        match self {
            BackboneConfig::Conv4(c) => c.in_channels,
            BackboneConfig::EfficientNetLite0 { .. } => 3,
            BackboneConfig::EfficientNetLite0Head { .. } => EFFICIENTNET_LITE0_TRUNK_CHANNELS,
        }
    }
}
