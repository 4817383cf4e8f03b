//! Episodic fine-tuning of a pretrained EfficientNet-Lite0 on base classes.
//!
//! The ImageNet trunk (stem and MBConv blocks) stays frozen, so its feature maps are
//! computed once per image (and per rotation, the augmentation) and cached; the head (1x1
//! convolution to 1280 channels, BatchNorm, pooling, L2 normalization and a learnable
//! temperature: [`TunedHead`](crate::backbone::TunedHead)) is then trained on the cached
//! maps by the same episodic trainer as Conv-4 ([`crate::train()`]), with its checkpoints,
//! validation and early stopping. The model written at the end works on images: its
//! directory holds the trained head (about 1.6 MB) and a reference (name and SHA-256) to
//! the ImageNet weights, never the weights themselves.

pub mod trunk;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};

use crate::backbone::{trunk_side, BackboneConfig, EfficientNetLite0, HeadConfig, EFFICIENTNET_LITE0_TRUNK_CHANNELS};
use crate::data::{validate_rotations, ImageConfig, ImageSet};
use crate::error::{Error, Result};
use crate::model::{Model, ModelConfig};
use crate::observer::Observer;
use crate::output::{prepare, OutputMode, WEIGHTS_FILE};
use crate::pretrained::PretrainedWeights;
use crate::record::{FineTuneRecord, TrainConfig};
use crate::train::{TrainOptions, TrainReport, Trainer};

/// Sub-folder of the output directory where the head is trained (its checkpoint, best
/// head-only model and curves); the image model is written to the output directory itself.
pub const HEAD_TRAINING_DIR: &str = "head-training";

/// Settings of a fine-tuning run.
///
/// ```
/// let c = protonet::finetune::FineTuneConfig::default();
/// c.validate().unwrap();
/// assert_eq!(c.rotations, 4);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct FineTuneConfig {
    /// The pretrained weights whose head is fine-tuned.
    pub weights: PretrainedWeights,
    /// How images are prepared (RGB; 224 pixels by default).
    pub image: ImageConfig,
    /// The episodic schedule (way, shot, query, episodes, learning rate, validation, seed).
    /// `rotation_augment` must be off: rotations are applied to the images before caching.
    pub train: TrainConfig,
    /// Each training image is cached at this many quarter turns (1 to 4), each its own
    /// sample of the class (coins and other angle-free subjects).
    pub rotations: usize,
    /// The head's settings.
    pub head: HeadConfig,
    /// Images per batch when computing the trunk's features.
    pub batch: usize,
    /// Free text stored in the model's `config.json` (what it is for, how it was trained).
    pub description: String,
}

impl Default for FineTuneConfig {
    fn default() -> Self {
        Self {
            weights: PretrainedWeights::efficientnet_lite0(),
            image: ImageConfig::rgb(224),
            train: TrainConfig {
                way: 8,
                shot: 4,
                query: 4,
                episodes: 300,
                learning_rate: 1e-3,
                lr_halve_every: 0,
                val_every: 50,
                val_episodes: 100,
                patience: None,
                rotation_augment: false,
                ..TrainConfig::default()
            },
            rotations: 4,
            head: HeadConfig::default(),
            batch: 32,
            description: String::new(),
        }
    }
}

impl FineTuneConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        self.train.validate()?;
        self.weights.validate()?;
        self.image.validate()?;
        if self.image.channels != 3 {
            return Err(Error::param("channels", "EfficientNet-Lite0 takes RGB images"));
        }
        if self.train.rotation_augment {
            return Err(Error::param("rotate", "rotate the images before caching (rotations) instead: feature maps cannot be rotated"));
        }
        validate_rotations(self.rotations)?;
        if self.batch == 0 {
            return Err(Error::param("batch", "must be at least 1"));
        }
        Ok(())
    }
}

/// The frozen trunk's feature maps of every image of `set`, each at `rotations` quarter
/// turns: a set with the same classes, where image `i` of a class becomes samples
/// `i * rotations .. (i + 1) * rotations`, each `320 x s x s` (`s = size / 32` rounded up).
pub fn trunk_features(net: &EfficientNetLite0, set: &ImageSet, rotations: usize, batch: usize, device: &Device, observer: &dyn Observer) -> Result<ImageSet> {
    validate_rotations(rotations)?;
    let (c, h, w) = set.image_dims();
    if c != 3 {
        return Err(Error::param("channels", format!("EfficientNet-Lite0 takes RGB images, these have {c} channels")));
    }
    let rotated: Vec<ImageSet> = (0..rotations).map(|r| set.rotated(r)).collect::<Result<_>>()?;
    let (sh, sw) = (h.div_ceil(32), w.div_ceil(32));
    let len = EFFICIENTNET_LITE0_TRUNK_CHANNELS * sh * sw;
    let items: Vec<(usize, usize)> = (0..set.num_classes()).flat_map(|k| (0..set.class_len(k)).map(move |i| (k, i))).collect();
    observer.start("features", (items.len() * rotations) as u64);
    let mut done = 0;
    let mut per_rotation: Vec<Vec<f32>> = Vec::with_capacity(rotations);
    for r in &rotated {
        let mut values = Vec::with_capacity(items.len() * len);
        for chunk in items.chunks(batch.max(1)) {
            let x = Tensor::from_vec(r.gather(chunk), (chunk.len(), c, h, w), device)?;
            values.extend(net.trunk(&x)?.flatten_all()?.to_vec1::<f32>()?);
            done += chunk.len();
            observer.progress(done as u64, "");
        }
        per_rotation.push(values);
    }
    observer.finish();
    let mut out = ImageSet::new(EFFICIENTNET_LITE0_TRUNK_CHANNELS, sh, sw);
    let mut n = 0;
    for k in 0..set.num_classes() {
        let mut samples = Vec::with_capacity(set.class_len(k) * rotations);
        for _ in 0..set.class_len(k) {
            for values in &per_rotation {
                samples.push(values[n * len..(n + 1) * len].to_vec());
            }
            n += 1;
        }
        out.push_class(set.class_name(k), samples)?;
    }
    Ok(out)
}

/// A head-only model ([`BackboneConfig::EfficientNetLite0Head`]) on trunk maps of side
/// `side`, starting from the ImageNet head of `net`.
pub fn head_model(net: &EfficientNetLite0, head: &HeadConfig, side: usize, device: &Device) -> Result<Model> {
    let image = ImageConfig {
        size: side,
        channels: EFFICIENTNET_LITE0_TRUNK_CHANNELS,
        mean: vec![0.0; EFFICIENTNET_LITE0_TRUNK_CHANNELS],
        std: vec![1.0; EFFICIENTNET_LITE0_TRUNK_CHANNELS],
        invert: false,
        crop: None,
    };
    let mut config = ModelConfig::new(BackboneConfig::EfficientNetLite0Head { head: head.clone() }, image);
    config.description = "EfficientNet-Lite0 head being fine-tuned on cached trunk features (not usable on images; see the parent folder)".into();
    let model = Model::new(config, 0, device)?;
    let mut tensors: HashMap<String, Tensor> = net.head_tensors().into_iter().map(|(n, t)| (format!("head.{n}"), t)).collect();
    tensors.insert("head.log_temperature".into(), Tensor::new(head.initial_log_temperature() as f32, device)?);
    model.set_tensors(&tensors, Path::new("(the ImageNet head)"))?;
    Ok(model)
}

/// Fine-tunes the head of the EfficientNet-Lite0 that `config.weights` references
/// episodically on `train_set` (images prepared as `config.image`), validating on
/// `val_set` if given, and writes the image model to `out_dir` (see the module
/// documentation). Returns it with the training report. Resumable through
/// `options.mode` like [`crate::train()`]; runs on `device`; progress goes to `observer`.
///
/// ```no_run
/// use protonet::data::{load_image_folder, FolderOptions};
/// use protonet::finetune::{fine_tune_efficientnet, FineTuneConfig};
/// use protonet::observer::Silent;
/// let config = FineTuneConfig::default();
/// let base = load_image_folder("my-base-classes".as_ref(), &config.image, &FolderOptions::default())?;
/// let (model, report) = fine_tune_efficientnet(&config, &base, None, "coin-model".as_ref(), &Default::default(), &protonet::Device::Cpu, &Silent)?;
/// println!("{} episodes, temperature in config.json", report.episodes);
/// # Ok::<(), protonet::Error>(())
/// ```
pub fn fine_tune_efficientnet(
    config: &FineTuneConfig,
    train_set: &ImageSet,
    val_set: Option<&ImageSet>,
    out_dir: &Path,
    options: &TrainOptions,
    device: &Device,
    observer: &dyn Observer,
) -> Result<(Model, TrainReport)> {
    config.validate()?;
    prepare(out_dir, options.mode)?;
    let (weights, image) = (&config.weights, &config.image);
    // The image model's configuration: checked (and the weights located) before any work.
    let mut full_config = ModelConfig::new(
        BackboneConfig::EfficientNetLite0 { weights: weights.clone(), head: Some(config.head.clone()), trained_from_block: None },
        image.clone(),
    );
    full_config.description = config.description.clone();
    let mut full = Model::new(full_config, config.train.seed, device)?;
    let net = EfficientNetLite0::from_reference(weights, device)?;

    observer.note(&format!("caching trunk features: {} training images x {} rotations", train_set.num_images(), config.rotations));
    let train_features = trunk_features(&net, train_set, config.rotations, config.batch, device, observer)?;
    let val_features = match val_set {
        Some(v) => Some(trunk_features(&net, v, 1, config.batch, device, observer)?),
        None => None,
    };
    let mut head = head_model(&net, &config.head, trunk_side(image.size), device)?;
    let head_dir = out_dir.join(HEAD_TRAINING_DIR);
    let report = Trainer::new(&mut head, &train_features, val_features.as_ref(), &config.train)?.run(&head_dir, options, observer)?;

    full.set_tensors(&head.tensors().into_iter().collect(), &head_dir.join(WEIGHTS_FILE))?;
    if let Some(mut record) = head.config().training.clone() {
        record.fine_tuned = Some(FineTuneRecord {
            what: "EfficientNet-Lite0 head (1x1 conv to 1280, BatchNorm, temperature) on the frozen ImageNet trunk".into(),
            rotations_cached: config.rotations,
            training_classes: train_set.class_names().to_vec(),
            training_images: train_set.num_images(),
        });
        full.set_training_record(record);
    }
    full.save_with(out_dir, OutputMode::Overwrite)?;
    Ok((full, report))
}
