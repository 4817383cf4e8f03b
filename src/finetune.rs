//! Episodic fine-tuning of a pretrained EfficientNet-Lite0 on base classes.
//!
//! The ImageNet trunk (stem and MBConv blocks) stays frozen, so its feature maps are
//! computed once per image (and per rotation, the augmentation) and cached; the head (1x1
//! convolution to 1280 channels, BatchNorm, pooling, L2 normalisation and a learnable
//! temperature: [`TunedHead`](crate::backbone::TunedHead)) is then trained on the cached
//! maps by the same episodic trainer as Conv-4 ([`crate::train`]), with its checkpoints,
//! validation and early stopping. The model written at the end works on images: its
//! directory holds the trained head (about 1.6 MB) and a reference (name and SHA-256) to
//! the ImageNet weights, never the weights themselves.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};

use crate::backbone::{trunk_side, BackboneConfig, EfficientNetLite0, HeadConfig, PretrainedWeights, EFFICIENTNET_LITE0_TRUNK_CHANNELS};
use crate::checkpoint::WEIGHTS_FILE;
use crate::data::{ImageConfig, ImageSet};
use crate::{Error, Model, ModelConfig, Result, TrainConfig, TrainOptions, TrainReport};

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
        if self.train.rotation_augment {
            return Err(Error::param("rotation_augment", "rotate the images before caching (rotations) instead: feature maps cannot be rotated"));
        }
        if !(1..=4).contains(&self.rotations) {
            return Err(Error::param("rotations", format!("must be 1 to 4, got {}", self.rotations)));
        }
        if self.batch == 0 {
            return Err(Error::param("batch", "must be at least 1"));
        }
        Ok(())
    }
}

/// The frozen trunk's feature maps of every image of `set`, each at `rotations` quarter
/// turns: a set with the same classes, where image `i` of a class becomes samples
/// `i * rotations .. (i + 1) * rotations`, each `320 x s x s` (`s = size / 32` rounded up).
pub fn trunk_features(net: &EfficientNetLite0, set: &ImageSet, rotations: usize, batch: usize, device: &Device, progress: bool) -> Result<ImageSet> {
    if !(1..=4).contains(&rotations) {
        return Err(Error::param("rotations", format!("must be 1 to 4, got {rotations}")));
    }
    let (c, h, w) = set.image_dims();
    if c != 3 {
        return Err(Error::param("channels", format!("EfficientNet-Lite0 takes RGB images, these have {c} channels")));
    }
    let rotated: Vec<ImageSet> = (0..rotations).map(|r| set.rotated(r)).collect::<Result<_>>()?;
    let (sh, sw) = (h.div_ceil(32), w.div_ceil(32));
    let len = EFFICIENTNET_LITE0_TRUNK_CHANNELS * sh * sw;
    let items: Vec<(usize, usize)> = (0..set.num_classes()).flat_map(|k| (0..set.class_len(k)).map(move |i| (k, i))).collect();
    let bar = crate::progress::bar((items.len() * rotations) as u64, progress, "features");
    let mut per_rotation: Vec<Vec<f32>> = Vec::with_capacity(rotations);
    for r in &rotated {
        let mut values = Vec::with_capacity(items.len() * len);
        for chunk in items.chunks(batch.max(1)) {
            let x = Tensor::from_vec(r.gather(chunk), (chunk.len(), c, h, w), device)?;
            values.extend(net.trunk(&x)?.flatten_all()?.to_vec1::<f32>()?);
            bar.inc(chunk.len() as u64);
        }
        per_rotation.push(values);
    }
    bar.finish_and_clear();
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
    let image = ImageConfig { size: side, channels: EFFICIENTNET_LITE0_TRUNK_CHANNELS, mean: vec![0.0; EFFICIENTNET_LITE0_TRUNK_CHANNELS], std: vec![1.0; EFFICIENTNET_LITE0_TRUNK_CHANNELS], invert: false };
    let mut config = ModelConfig::new(BackboneConfig::EfficientNetLite0Head { head: head.clone() }, image);
    config.description = "EfficientNet-Lite0 head being fine-tuned on cached trunk features (not usable on images; see the parent folder)".into();
    let model = Model::new(config, 0, device)?;
    let mut tensors: HashMap<String, Tensor> = net.head_tensors().into_iter().map(|(n, t)| (format!("head.{n}"), t)).collect();
    tensors.insert("head.log_temperature".into(), Tensor::new(head.initial_log_temperature() as f32, device)?);
    model.set_tensors(&tensors, Path::new("(the ImageNet head)"))?;
    Ok(model)
}

/// Fine-tunes the head of the EfficientNet-Lite0 referenced by `weights` episodically on
/// `train_set` (images prepared as `image`, RGB), validating on `val_set` if given, and
/// writes the image model to `out_dir` (see the module documentation). Returns it with
/// the training report. Resumable through `options.resume` like [`crate::train`].
///
/// ```no_run
/// use protonet::backbone::PretrainedWeights;
/// use protonet::data::{load_image_folder, FolderOptions, ImageConfig};
/// use protonet::finetune::{fine_tune_efficientnet, FineTuneConfig};
/// let image = ImageConfig::rgb(224);
/// let base = load_image_folder("my-base-classes".as_ref(), &image, &FolderOptions::default())?;
/// let (model, report) = fine_tune_efficientnet(&PretrainedWeights::efficientnet_lite0(), &image, &base, None,
///     &FineTuneConfig::default(), "coin-model".as_ref(), &Default::default())?;
/// println!("{} episodes, temperature in config.json", report.episodes);
/// # Ok::<(), protonet::Error>(())
/// ```
pub fn fine_tune_efficientnet(
    weights: &PretrainedWeights,
    image: &ImageConfig,
    train_set: &ImageSet,
    val_set: Option<&ImageSet>,
    config: &FineTuneConfig,
    out_dir: &Path,
    options: &TrainOptions,
) -> Result<(Model, TrainReport)> {
    config.validate()?;
    image.validate()?;
    if image.channels != 3 {
        return Err(Error::param("channels", "EfficientNet-Lite0 takes RGB images"));
    }
    let device = Device::Cpu;
    // The image model's configuration: checked (and the weights located) before any work.
    let mut full_config = ModelConfig::new(BackboneConfig::EfficientNetLite0 { weights: weights.clone(), head: Some(config.head.clone()) }, image.clone());
    full_config.description = config.description.clone();
    let mut full = Model::new(full_config, config.train.seed, &device)?;
    let net = EfficientNetLite0::from_reference(weights, &device)?;

    if options.progress {
        eprintln!("caching trunk features: {} training images x {} rotations", train_set.num_images(), config.rotations);
    }
    let train_features = trunk_features(&net, train_set, config.rotations, config.batch, &device, options.progress)?;
    let val_features = match val_set {
        Some(v) => Some(trunk_features(&net, v, 1, config.batch, &device, options.progress)?),
        None => None,
    };
    let mut head = head_model(&net, &config.head, trunk_side(image.size), &device)?;
    let head_dir = out_dir.join(HEAD_TRAINING_DIR);
    let report = crate::train(&mut head, &train_features, val_features.as_ref(), &config.train, &head_dir, options)?;

    full.set_tensors(&head.tensors().into_iter().collect(), &head_dir.join(WEIGHTS_FILE))?;
    let mut record = head.config().training.clone().unwrap_or(serde_json::Value::Null);
    if let serde_json::Value::Object(m) = &mut record {
        m.insert("fine_tuned".into(), serde_json::json!({
            "what": "EfficientNet-Lite0 head (1x1 conv to 1280, BatchNorm, temperature) on the frozen ImageNet trunk",
            "rotations_cached": config.rotations,
            "training_classes": train_set.class_names(),
            "training_images": train_set.num_images(),
        }));
    }
    full.set_training_record(record);
    full.save(out_dir)?;
    Ok((full, report))
}
