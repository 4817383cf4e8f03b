//! Training the last MBConv blocks and the head of EfficientNet-Lite0 on base classes by
//! cross-entropy: a use of the supervised trainer ([`train_supervised`]) with the coin
//! recipe ([`SupervisedConfig::coin_trunk`]: a cosine classifier with a learnable scale
//! over all base classes on the pooled 1280-d features, dropout before it, label
//! smoothing, AdamW with one learning rate for the trunk and a larger one for the
//! classifier, a cosine schedule after a linear warm-up, and coin augmentation of every
//! image at every epoch), starting from the ImageNet weights. BatchNorm keeps its ImageNet
//! running statistics (folded into the convolutions), so small batches do not disturb it;
//! its scale and shift are trained.
//!
//! The earlier blocks stay the constant ImageNet tensors: the model directory holds only
//! what was trained (`trunk.*`, about 11 MB for the last 8 blocks) and the reference to
//! the ImageNet weights. The classifier is thrown away: the model classifies new classes
//! by prototypes (with the settings of [`TrunkConfig`]). A checkpoint after every epoch
//! lets a run resume ([`crate::OutputMode::Resume`]), bit for bit, with the same settings only.

use std::collections::HashMap;
use std::path::Path;

use candle_core::Device;

use crate::adapt::SupportAdaptation;
use crate::backbone::{BackboneConfig, LiteVariant};
use crate::data::{ImageConfig, ImageSet};
use crate::error::{Error, Result};
use crate::model::{Model, ModelConfig};
use crate::observer::Observer;
use crate::pretrained::{var_builder, PretrainedWeights};
use crate::protonet::FeatureNorm;
use crate::train::supervised::{train_supervised, SupervisedConfig, SupervisedReport};

/// Settings of a trunk-training run, and of how the trained model classifies.
///
/// ```
/// let c = protonet::finetune::trunk::TrunkConfig::default();
/// c.validate().unwrap();
/// assert_eq!((c.first_block, c.training.epochs, c.training.batch), (8, 8, 64));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct TrunkConfig {
    /// The ImageNet weights the training starts from.
    pub weights: PretrainedWeights,
    /// How the model prepares images when it classifies (stored in its `config.json`);
    /// the training images are loaded at this size too.
    pub image: ImageConfig,
    /// The first trained MBConv block (of 16); the head is trained too.
    pub first_block: usize,
    /// The training: epochs, batch, learning rates, schedule, label smoothing, dropout,
    /// augmentation and seed ([`SupervisedConfig::coin_trunk`] by default).
    pub training: SupervisedConfig,
    /// Rotations the model averages embeddings over when it classifies.
    pub rotations: usize,
    /// The model's normalization when it classifies.
    pub normalization: FeatureNorm,
    /// The model's support adaptation when it classifies.
    pub adaptation: Option<SupportAdaptation>,
    /// Free text stored in the model's `config.json`.
    pub description: String,
}

impl Default for TrunkConfig {
    fn default() -> Self {
        Self {
            weights: PretrainedWeights::efficientnet_lite0(),
            image: ImageConfig::rgb(224),
            first_block: LiteVariant::Lite0.num_blocks() - DEFAULT_TRAINED_BLOCKS,
            training: SupervisedConfig::coin_trunk(),
            rotations: 4,
            normalization: FeatureNorm::CenterSupportL2,
            adaptation: Some(SupportAdaptation::default()),
            description: String::new(),
        }
    }
}

/// The last this many MBConv blocks are trained by default, whatever the variant.
pub const DEFAULT_TRAINED_BLOCKS: usize = 8;

impl TrunkConfig {
    /// The default run on `variant`: its ImageNet weights, its own image size (224 or 260
    /// pixels), its last [`DEFAULT_TRAINED_BLOCKS`] blocks trained, and training crops in the
    /// same proportion to the image (Lite0's 192 of 224; 224 of Lite2's 260).
    ///
    /// ```
    /// use protonet::backbone::LiteVariant;
    /// use protonet::finetune::trunk::TrunkConfig;
    /// assert_eq!(TrunkConfig::for_variant(LiteVariant::Lite0), TrunkConfig::default());
    /// let c = TrunkConfig::for_variant(LiteVariant::Lite2);
    /// assert_eq!((c.image.size, c.first_block, c.training.augment.unwrap().size), (260, 13, 224));
    /// c.validate().unwrap();
    /// ```
    pub fn for_variant(variant: LiteVariant) -> Self {
        let lite0 = Self::default();
        let mut training = lite0.training;
        if let Some(augment) = training.augment.as_mut() {
            // Rounded to a multiple of 32, as the network's strides like it.
            augment.size = (augment.size * variant.image_size() / lite0.image.size).div_ceil(32) * 32;
        }
        Self {
            weights: variant.weights(),
            image: ImageConfig::rgb(variant.image_size()),
            first_block: variant.num_blocks() - DEFAULT_TRAINED_BLOCKS,
            training,
            ..lite0
        }
    }

    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        self.weights.validate()?;
        self.image.validate()?;
        if self.image.channels != 3 {
            return Err(Error::param("channels", "EfficientNet-Lite takes RGB images"));
        }
        let blocks = LiteVariant::of(&self.weights).num_blocks();
        if self.first_block >= blocks {
            return Err(Error::param("first-block", format!("must be below {blocks}, got {}", self.first_block)));
        }
        if self.training.augment.is_none() {
            return Err(Error::param("augment", "the trunk trains on augmented crops; set `training.augment`"));
        }
        self.training.validate()?;
        Ok(())
    }

    /// The configuration of the model this run writes.
    pub fn model_config(&self) -> ModelConfig {
        let backbone = BackboneConfig::EfficientNetLite0 { weights: self.weights.clone(), head: None, trained_from_block: Some(self.first_block) };
        let mut c = ModelConfig::new(backbone, self.image.clone());
        c.rotations = self.rotations;
        c.normalization = self.normalization.clone();
        c.method = crate::method::MethodConfig::from_adaptation(self.adaptation);
        c.description = self.description.clone();
        c
    }
}

/// The trained tensors of `model` (`trunk.<name>`) set to the ImageNet weights' `<name>`.
fn start_from_imagenet(model: &Model, weights: &PretrainedWeights) -> Result<()> {
    let vb = var_builder(&weights.loadable(&weights.converted_name())?, model.device())?;
    let mut tensors = HashMap::new();
    for (name, var) in model.named_vars() {
        let reference = name.strip_prefix("trunk.").ok_or_else(|| Error::param("weights", format!("unexpected parameter `{name}`")))?;
        tensors.insert(name.clone(), vb.get(var.dims(), reference)?);
    }
    model.set_tensors(&tensors, Path::new("(the ImageNet weights)"))
}

/// Trains the last blocks and the head of the EfficientNet-Lite0 that `config.weights`
/// references on every class of `train_set` (RGB, square, loaded as `config.image` says)
/// and writes the model to `out_dir` (see the module documentation). `options.mode` as
/// for [`crate::train()`]; `options.stop_after` counts epochs; the report counts every
/// epoch done, across resumes. Progress goes to `observer`.
///
/// ```no_run
/// use protonet::data::{load_image_folder, FolderOptions};
/// use protonet::finetune::trunk::{train_trunk, TrunkConfig};
/// let config = TrunkConfig::default();
/// let base = load_image_folder("base-coins".as_ref(), &config.image, &FolderOptions::default())?;
/// let (model, report) = train_trunk(&config, &base, "coin-model".as_ref(), &Default::default(), &protonet::Device::Cpu, &protonet::Silent)?;
/// println!("{} epochs, last loss {:?}", report.epochs, report.losses.last());
/// # Ok::<(), protonet::Error>(())
/// ```
pub fn train_trunk(
    config: &TrunkConfig,
    train_set: &ImageSet,
    out_dir: &Path,
    options: &crate::train::TrainOptions,
    device: &Device,
    observer: &dyn Observer,
) -> Result<(Model, SupervisedReport)> {
    config.validate()?;
    let (c, h, w) = train_set.image_dims();
    if c != 3 || h != w || train_set.num_classes() < 2 {
        return Err(Error::param("data", format!("needs square RGB images of 2 or more classes, got {c}x{h}x{w}, {} classes", train_set.num_classes())));
    }
    let mut model = Model::new(config.model_config(), config.training.seed, device)?;
    start_from_imagenet(&model, &config.weights)?;
    let report = train_supervised(&mut model, train_set, &config.training, out_dir, options, observer)?;
    Ok((model, report))
}
