//! Embedding networks: the [`Backbone`] trait and its implementations.
//!
//! A backbone maps a batch of images `(N, C, H, W)` to embeddings `(N, D)`. It knows
//! nothing of episodes, files or training loops.

mod batchnorm;
mod conv4;
mod efficientnet;

pub use batchnorm::BatchNormRelu;
pub use conv4::{Conv4, Conv4Config, Conv4Layout};
pub use efficientnet::{
    drop_connect, same_padding, trunk_side, EfficientNetLite, EfficientNetLite0, FineTunedEfficientNet, HeadConfig, LiteVariant, TunedHead,
    EFFICIENTNET_LITE0_BLOCKS, EFFICIENTNET_LITE0_DIM, EFFICIENTNET_LITE0_DROP_CONNECT, EFFICIENTNET_LITE0_NUM_BLOCKS, EFFICIENTNET_LITE0_TRUNK_CHANNELS,
    EFFICIENTNET_LITE2_BLOCKS,
};

use candle_core::Tensor;
use candle_nn::{ModuleT, VarBuilder};
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::pretrained::PretrainedWeights;

/// An embedding network: a candle [`ModuleT`] from `(N, C, H, W)` images to `(N, D)`
/// embeddings.
///
/// `train` selects training behaviour (BatchNorm with batch statistics, updating its
/// running statistics) or evaluation behaviour (running statistics).
pub trait Backbone: ModuleT + Send + Sync {
    /// Embeds `(N, C, H, W)` images into `(N, D)`: [`ModuleT::forward_t`] with this
    /// crate's error type.
    fn embed(&self, images: &Tensor, train: bool) -> Result<Tensor> {
        Ok(self.forward_t(images, train)?)
    }

    /// The feature maps `(N, C, h, w)` before the last pooling, for methods that score
    /// maps rather than vectors ([`crate::method::Method::scores_maps`]); an error for a
    /// backbone that gives none.
    fn feature_maps(&self, images: &Tensor, train: bool) -> Result<Tensor> {
        let _ = (images, train);
        Err(crate::error::Error::param("method", "this backbone gives no feature maps (a method that scores maps needs Conv-4 or EfficientNet-Lite0)"))
    }

    /// Embeds for training with drop-connect (stochastic depth: residual branches dropped
    /// per image, the kept ones scaled up) in the trained residual blocks. A backbone
    /// without residual blocks refuses a positive rate; a zero rate is
    /// [`Backbone::embed`] in training mode.
    fn embed_drop_connect(&self, images: &Tensor, drop: DropConnect) -> Result<Tensor> {
        drop.validate()?;
        if drop.rate > 0.0 {
            return Err(crate::error::Error::param("drop-connect", "this backbone has no residual blocks to drop (EfficientNet-Lite0 has)"));
        }
        self.embed(images, true)
    }
}

/// Drop-connect (stochastic depth) for one training step: the network's rate (block `i`
/// of `n` drops with `rate * i / n`, as EfficientNet does) and the seed of the draws.
///
/// ```
/// assert!(protonet::backbone::DropConnect { rate: 1.0, seed: 0 }.validate().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DropConnect {
    /// The rate of the last block; EfficientNet-Lite0 trains with
    /// [`EFFICIENTNET_LITE0_DROP_CONNECT`].
    pub rate: f32,
    /// The seed of this step's draws.
    pub seed: u64,
}

impl DropConnect {
    /// Checks the rate is in `[0, 1)`.
    pub fn validate(&self) -> Result<()> {
        if !(0.0..1.0).contains(&self.rate) {
            return Err(crate::error::Error::param("drop-connect", format!("must be in [0, 1), got {}", self.rate)));
        }
        Ok(())
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
    /// EfficientNet-Lite0 with ImageNet weights, 1280-d embeddings; EfficientNet-Lite2 when
    /// `weights` are Lite2's ([`LiteVariant::of`]). The model directory holds no weights of
    /// it, only the reference; with `head`, it holds the fine-tuned head ([`TunedHead`],
    /// parameters `head.*`, Lite0 only) that replaces the ImageNet one. Written as
    /// `"kind": "efficientnet_lite"` (the variant follows from `weights`); models saved
    /// before Lite2 say `"efficientnet_lite0"`, which still loads.
    ///
    /// ```
    /// use protonet::backbone::BackboneConfig;
    /// let old = r#"{"kind": "efficientnet_lite0", "weights": {"name": "w.pth", "sha256": "00"}}"#;
    /// let cfg: BackboneConfig = serde_json::from_str(old).unwrap();
    /// let json = serde_json::to_string(&cfg).unwrap();
    /// assert!(json.contains(r#""kind":"efficientnet_lite","#));
    /// assert_eq!(serde_json::from_str::<BackboneConfig>(&json).unwrap(), cfg);
    /// ```
    #[serde(rename = "efficientnet_lite", alias = "efficientnet_lite0")]
    EfficientNetLite0 {
        /// The ImageNet weights.
        weights: PretrainedWeights,
        /// A fine-tuned head, if any (absent: the frozen ImageNet network).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        head: Option<HeadConfig>,
        /// The MBConv blocks from this index on (of 16) and the ImageNet head were trained
        /// (by [`crate::finetune::trunk`]): the model directory holds them, as parameters
        /// `trunk.<the reference's names>`, in place of the ImageNet ones.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        trained_from_block: Option<usize>,
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
            BackboneConfig::EfficientNetLite0 { weights, head, trained_from_block } => {
                let mut net = EfficientNetLite0::from_reference(weights, vb.device())?;
                if let Some(first) = trained_from_block {
                    net.replace_tail(*first, vb.pp("trunk"))?;
                }
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
            BackboneConfig::EfficientNetLite0 { weights, head, trained_from_block } => {
                let variant = LiteVariant::of(weights);
                if head.is_some() && variant != LiteVariant::Lite0 {
                    return Err(crate::error::Error::param("head", "the fine-tuned head is EfficientNet-Lite0's"));
                }
                if let Some(first) = trained_from_block {
                    if *first >= variant.num_blocks() {
                        return Err(crate::error::Error::param("trained_from_block", format!("{variant:?} has {} blocks, got {first}", variant.num_blocks())));
                    }
                    if head.is_some() {
                        return Err(crate::error::Error::param("head", "a trained trunk carries its own head: no separate head"));
                    }
                }
                weights.validate()
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
