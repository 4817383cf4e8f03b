//! Training the last MBConv blocks and the head of EfficientNet-Lite0 on base classes by
//! cross-entropy: a cosine classifier with a learnable scale over all base classes on the
//! pooled 1280-d features (dropout before it), label smoothing, AdamW with one learning
//! rate for the trunk and a larger one for the classifier, a cosine schedule after a
//! linear warm-up, and coin augmentation ([`CoinAugment`]) of every image at every epoch.
//! BatchNorm keeps its ImageNet running statistics (folded into the convolutions), so
//! small batches do not disturb it; its scale and shift are trained.
//!
//! The earlier blocks stay the constant ImageNet tensors: the model directory holds only
//! what was trained (`trunk.*`, about 11 MB for the last 8 blocks) and the reference to
//! the ImageNet weights. The classifier is thrown away: the model classifies new classes
//! by prototypes (with the settings of [`TrunkConfig`]). A checkpoint after every epoch
//! lets a run resume ([`OutputMode::Resume`]).

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::adapt::SupportAdaptation;
use crate::backbone::{BackboneConfig, EFFICIENTNET_LITE0_DIM, EFFICIENTNET_LITE0_NUM_BLOCKS};
use crate::data::{CoinAugment, ImageConfig, ImageSet};
use crate::error::{Error, Result};
use crate::io::{read_safetensors, write_safetensors};
use crate::model::{Model, ModelConfig};
use crate::observer::Observer;
use crate::optim::Adam;
use crate::output::{prepare, OutputMode, CHECKPOINT_FILE};
use crate::pretrained::{var_builder, PretrainedWeights, CONVERTED_WEIGHTS};
use crate::protonet::{cosine_similarities, FeatureNorm};
use std::path::Path;

/// Settings of a trunk-training run, and of how the trained model classifies.
///
/// ```
/// let c = protonet::finetune::trunk::TrunkConfig::default();
/// c.validate().unwrap();
/// assert_eq!((c.first_block, c.epochs, c.batch), (8, 8, 64));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct TrunkConfig {
    /// The ImageNet weights the training starts from.
    pub weights: PretrainedWeights,
    /// How the model prepares images when it classifies (stored in its `config.json`);
    /// the training images are loaded at this size too.
    pub image: ImageConfig,
    /// The side of the augmented training crops, in pixels.
    pub train_size: usize,
    /// The first trained MBConv block (of 16); the head is trained too.
    pub first_block: usize,
    /// Passes over the training images.
    pub epochs: usize,
    /// Images per step.
    pub batch: usize,
    /// AdamW learning rate of the trunk.
    pub trunk_lr: f64,
    /// AdamW learning rate of the cosine classifier.
    pub head_lr: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
    /// The share of the steps spent warming the learning rates up linearly.
    pub warmup: f64,
    /// Label smoothing of the cross-entropy.
    pub label_smoothing: f64,
    /// Dropout on the pooled features, before the classifier.
    pub dropout: f32,
    /// The classifier's starting cosine scale (learnt).
    pub initial_scale: f32,
    /// The augmentation.
    pub augment: CoinAugment,
    /// Seed of the classifier's initialisation, the order, the augmentation and dropout.
    pub seed: u64,
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
            train_size: 192,
            first_block: 8,
            epochs: 8,
            batch: 64,
            trunk_lr: 2e-4,
            head_lr: 2e-3,
            weight_decay: 1e-4,
            warmup: 0.05,
            label_smoothing: 0.1,
            dropout: 0.2,
            initial_scale: 10.0,
            augment: CoinAugment::default(),
            seed: 7,
            rotations: 4,
            normalization: FeatureNorm::CenterSupportL2,
            adaptation: Some(SupportAdaptation::default()),
            description: String::new(),
        }
    }
}

impl TrunkConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        self.weights.validate()?;
        self.image.validate()?;
        if self.image.channels != 3 {
            return Err(Error::param("channels", "EfficientNet-Lite0 takes RGB images"));
        }
        if self.first_block >= EFFICIENTNET_LITE0_NUM_BLOCKS {
            return Err(Error::param("first-block", format!("must be below {EFFICIENTNET_LITE0_NUM_BLOCKS}, got {}", self.first_block)));
        }
        if !(32..=1024).contains(&self.train_size) {
            return Err(Error::param("train-size", format!("must be in 32..=1024, got {}", self.train_size)));
        }
        if self.epochs == 0 || self.batch == 0 {
            return Err(Error::param("epochs/batch", "must be at least 1"));
        }
        for (name, v) in [("trunk-lr", self.trunk_lr), ("head-lr", self.head_lr)] {
            if !(v.is_finite() && v > 0.0) {
                return Err(Error::param(name, format!("must be a positive number, got {v}")));
            }
        }
        if !(0.0..1.0).contains(&self.warmup) || !(0.0..1.0).contains(&self.label_smoothing) || !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::param("warmup/label-smoothing/dropout", "must be in [0, 1)"));
        }
        if !(self.weight_decay >= 0.0 && self.initial_scale > 0.0) {
            return Err(Error::param("weight-decay/scale", "weight decay must be >= 0 and the scale > 0"));
        }
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

    /// The learning-rate factor at `step` of `total`: linear warm-up, then a half cosine to 0.
    pub fn schedule(&self, step: usize, total: usize) -> f64 {
        crate::train::supervised::warmup_cosine(self.warmup, step, total)
    }
}

/// What [`train_trunk`] returns.
#[derive(Debug, Clone, PartialEq)]
pub struct TrunkReport {
    /// Epochs done (across resumes).
    pub epochs: usize,
    /// The mean training loss of each epoch done in this call.
    pub losses: Vec<f64>,
    /// Seconds spent in this call.
    pub seconds: f64,
    /// False when the run stopped before its last epoch (`stop_after`).
    pub finished: bool,
}

/// The cosine classifier over the base classes, trained beside the trunk and then dropped.
struct CosineClassifier {
    weight: Var,
    log_scale: Var,
}

impl CosineClassifier {
    fn new(classes: usize, scale: f32, rng: &mut ChaCha8Rng, device: &Device) -> Result<Self> {
        let bound = 1.0 / (EFFICIENTNET_LITE0_DIM as f32).sqrt();
        let w: Vec<f32> = (0..classes * EFFICIENTNET_LITE0_DIM).map(|_| rng.random_range(-bound..bound)).collect();
        Ok(Self {
            weight: Var::from_tensor(&Tensor::from_vec(w, (classes, EFFICIENTNET_LITE0_DIM), device)?)?,
            log_scale: Var::from_tensor(&Tensor::new(scale.ln(), device)?)?,
        })
    }

    fn vars(&self) -> Vec<(String, Var)> {
        vec![("classifier.weight".into(), self.weight.clone()), ("classifier.log_scale".into(), self.log_scale.clone())]
    }

    fn logits(&self, features: &Tensor) -> Result<Tensor> {
        let cos = cosine_similarities(features, self.weight.as_tensor())?;
        Ok(cos.broadcast_mul(&self.log_scale.as_tensor().exp()?)?)
    }
}

use crate::train::supervised::smoothed_cross_entropy;

/// The trained tensors of `model` (`trunk.<name>`) set to the ImageNet weights' `<name>`.
fn start_from_imagenet(model: &Model, weights: &PretrainedWeights) -> Result<()> {
    let vb = var_builder(&weights.loadable(CONVERTED_WEIGHTS)?, model.device())?;
    let mut tensors = HashMap::new();
    for (name, var) in model.named_vars() {
        let reference = name.strip_prefix("trunk.").ok_or_else(|| Error::param("weights", format!("unexpected parameter `{name}`")))?;
        tensors.insert(name.clone(), vb.get(var.dims(), reference)?);
    }
    model.set_tensors(&tensors, Path::new("(the ImageNet weights)"))
}

/// One augmented batch `(B, 3, s, s)` of the items `(class, index)` of `set`, each drawn
/// with its own seed (so a resumed run draws the same).
fn augmented_batch(set: &ImageSet, items: &[(usize, usize)], config: &TrunkConfig, seed: u64, device: &Device) -> Result<Tensor> {
    let (c, size, _) = set.image_dims();
    let s = config.train_size;
    let (mean, std) = (&config.image.mean, &config.image.std);
    let images: Vec<Vec<f32>> = items
        .par_iter()
        .enumerate()
        .map(|(k, &(class, index))| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed.wrapping_add(k as u64));
            config.augment.apply(set.image(class, index), size, s, mean, std, &mut rng)
        })
        .collect();
    Ok(Tensor::from_vec(images.concat(), (items.len(), c, s, s), device)?)
}

/// Trains the last blocks and the head of the EfficientNet-Lite0 that `config.weights`
/// references on every class of `train_set` (RGB, square, loaded as `config.image` says)
/// and writes the model to `out_dir` (see the module documentation). `options.mode` as
/// for [`crate::train()`]; `options.stop_after` counts epochs. Progress goes to `observer`.
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
) -> Result<(Model, TrunkReport)> {
    config.validate()?;
    let (c, h, w) = train_set.image_dims();
    if c != 3 || h != w || train_set.num_classes() < 2 {
        return Err(Error::param("data", format!("needs square RGB images of 2 or more classes, got {c}x{h}x{w}, {} classes", train_set.num_classes())));
    }
    prepare(out_dir, options.mode)?;
    std::fs::create_dir_all(out_dir).map_err(|e| Error::io(out_dir, e))?;
    let model = Model::new(config.model_config(), config.seed, device)?;
    start_from_imagenet(&model, &config.weights)?;
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    let classifier = CosineClassifier::new(train_set.num_classes(), config.initial_scale, &mut rng, device)?;
    let mut trunk_opt = Adam::new(model.trainable_vars(), config.trunk_lr);
    let mut head_opt = Adam::new(classifier.vars(), config.head_lr);
    trunk_opt.weight_decay = config.weight_decay;
    head_opt.weight_decay = config.weight_decay;

    let items: Vec<(usize, usize)> = (0..train_set.num_classes()).flat_map(|k| (0..train_set.class_len(k)).map(move |i| (k, i))).collect();
    let steps_per_epoch = items.len().div_ceil(config.batch);
    let total = steps_per_epoch * config.epochs;
    let checkpoint = out_dir.join(CHECKPOINT_FILE);
    let mut first_epoch = 0;
    if options.mode == OutputMode::Resume && checkpoint.is_file() {
        first_epoch = load_checkpoint(&checkpoint, &model, &classifier, &mut trunk_opt, &mut head_opt)?;
        observer.note(&format!("resuming after epoch {first_epoch} of {}", config.epochs));
    }
    let started = Instant::now();
    let mut losses = Vec::new();
    let last = options.stop_after.map_or(config.epochs, |s| s.clamp(first_epoch, config.epochs));
    observer.start("train", ((last - first_epoch) * steps_per_epoch) as u64);
    for epoch in first_epoch..last {
        let mut order = items.clone();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(config.seed ^ (0x9e37_79b9 * (epoch as u64 + 1))));
        let mut sum = 0.0;
        for (b, chunk) in order.chunks(config.batch).enumerate() {
            let step = epoch * steps_per_epoch + b;
            let seed = config.seed.wrapping_mul(1_000_003).wrapping_add((step * config.batch) as u64);
            let x = augmented_batch(train_set, chunk, config, seed, device)?;
            let labels = Tensor::new(chunk.iter().map(|&(k, _)| k as u32).collect::<Vec<_>>(), device)?;
            let mut features = model.net().embed(&x, true)?;
            if config.dropout > 0.0 {
                let mut drop_rng = ChaCha8Rng::seed_from_u64(seed ^ 0xd0d0);
                let keep = 1.0 / (1.0 - config.dropout);
                let mask: Vec<f32> = (0..features.elem_count()).map(|_| if drop_rng.random::<f32>() < config.dropout { 0.0 } else { keep }).collect();
                features = (features * Tensor::from_vec(mask, (chunk.len(), EFFICIENTNET_LITE0_DIM), device)?)?;
            }
            let loss = smoothed_cross_entropy(&classifier.logits(&features)?, &labels, config.label_smoothing)?;
            let grads = loss.backward()?;
            let factor = config.schedule(step, total);
            trunk_opt.lr = config.trunk_lr * factor;
            head_opt.lr = config.head_lr * factor;
            trunk_opt.step(&grads)?;
            head_opt.step(&grads)?;
            let l = loss.to_scalar::<f32>()? as f64;
            sum += l;
            observer.progress(((epoch - first_epoch) * steps_per_epoch + b + 1) as u64, &format!("epoch {} loss {l:.3}", epoch + 1));
        }
        losses.push(sum / steps_per_epoch as f64);
        save_checkpoint(&checkpoint, &model, &classifier, &trunk_opt, &head_opt, epoch + 1)?;
    }
    observer.finish();
    let finished = last == config.epochs;
    if finished {
        model.save_with(out_dir, OutputMode::Overwrite)?;
    }
    Ok((model, TrunkReport { epochs: last, losses, seconds: started.elapsed().as_secs_f64(), finished }))
}

fn save_checkpoint(path: &Path, model: &Model, classifier: &CosineClassifier, trunk: &Adam, head: &Adam, epochs: usize) -> Result<()> {
    let mut tensors: BTreeMap<String, Tensor> = model.tensors();
    for (name, var) in classifier.vars() {
        tensors.insert(name, var.as_tensor().copy()?);
    }
    tensors.extend(trunk.state_tensors());
    tensors.extend(head.state_tensors());
    let metadata = HashMap::from([("epochs".to_string(), epochs.to_string()), ("steps".to_string(), trunk.steps().to_string())]);
    write_safetensors(path, &tensors, Some(metadata))
}

/// Restores a checkpoint; returns the epochs it had done.
fn load_checkpoint(path: &Path, model: &Model, classifier: &CosineClassifier, trunk: &mut Adam, head: &mut Adam) -> Result<usize> {
    let (tensors, metadata) = read_safetensors(path, model.device())?;
    let number = |key: &str| -> Result<usize> {
        metadata.get(key).and_then(|v| v.parse().ok()).ok_or_else(|| Error::checkpoint(path, format!("`{key}` is missing from the metadata")))
    };
    let (epochs, steps) = (number("epochs")?, number("steps")?);
    let model_tensors: HashMap<String, Tensor> = tensors.iter().filter(|(k, _)| k.starts_with("trunk.")).map(|(k, v)| (k.clone(), v.clone())).collect();
    model.set_tensors(&model_tensors, path)?;
    for (name, var) in classifier.vars() {
        let t = tensors.get(&name).ok_or_else(|| Error::checkpoint(path, format!("tensor `{name}` is missing")))?;
        if t.dims() != var.dims() || t.dtype() != DType::F32 {
            return Err(Error::checkpoint(path, format!("tensor `{name}` has shape {:?}, expected {:?} (another set of classes?)", t.dims(), var.dims())));
        }
        var.set(t)?;
    }
    trunk.load_state(&tensors, steps).map_err(|e| Error::checkpoint(path, e.to_string()))?;
    head.load_state(&tensors, steps).map_err(|e| Error::checkpoint(path, e.to_string()))?;
    Ok(epochs)
}
