//! Supervised training of a backbone over all base classes: a classifier of every class
//! of the training set (linear, or cosine with a fixed or learned scale) on top of the
//! embeddings, cross-entropy (with label smoothing), dropout on the embeddings, Adam
//! (with decoupled weight decay; the classifier may have its own learning rate) on a
//! constant or warm-up-then-cosine schedule, over shuffled mini-batches, each image
//! optionally augmented afresh at every epoch ([`TrainingAugment`]). The stage 1 of
//! Baseline and Baseline++ (Chen et al. 2019) and of Meta-Baseline (Chen et al. 2021), and
//! the coin trunk's training ([`crate::finetune::trunk`]); the classifier is thrown away
//! after training.
//!
//! A checkpoint after every epoch (`checkpoint.safetensors`: the model's and the
//! classifier's weights, Adam's moments, and in its metadata the settings and the epoch)
//! lets a run resume bit for bit ([`OutputMode::Resume`]); a resume with other settings, or
//! of a model of another backbone, image setting or method, is refused, and a loss that
//! is not finite stops the run with an error naming the epoch and step.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var, D};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::TrainOptions;
use crate::data::{ImageConfig, ImageSet};
use crate::error::{Error, Result};
use crate::io::{read_safetensors, write_safetensors};
use crate::model::{Model, ModelConfig};
use crate::observer::Observer;
use crate::optim::Adam;
use crate::output::{prepare, OutputMode, CHECKPOINT_FILE};
use crate::protonet::{cosine_similarities, l2_rows};
pub use crate::record::{BaseClassifier, SupervisedConfig, SupervisedRecord, TrainingAugment, BASELINE_PP_SCALE};

const STATE_KEY: &str = "protonet.supervised_state";
const MODEL_KEY: &str = "protonet.model_config";

/// The state of a supervised run besides its tensors, in the checkpoint's metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct SupervisedState {
    config: SupervisedConfig,
    epoch: usize,
    adam_steps: usize,
    losses: Vec<f64>,
    seconds: f64,
}

/// What [`train_supervised`] returns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SupervisedReport {
    /// Epochs done (across resumes).
    pub epochs: usize,
    /// The mean training loss of every epoch done (across resumes).
    pub losses: Vec<f64>,
    /// Seconds of training (across resumes).
    pub seconds: f64,
    /// False when the run stopped before its last epoch (`stop_after`).
    pub finished: bool,
}

/// The classifier's parameters (`classifier.*`), trained with the backbone and dropped.
struct Classifier {
    kind: BaseClassifier,
    vars: Vec<(String, Var)>,
}

impl Classifier {
    fn new(kind: BaseClassifier, classes: usize, dim: usize, rng: &mut ChaCha8Rng, device: &Device) -> Result<Self> {
        let bound = 1.0 / (dim as f32).sqrt();
        let mut draw = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-bound..bound)).collect() };
        let weight = Tensor::from_vec(draw(classes * dim), (classes, dim), device)?;
        let mut vars = vec![("classifier.weight".to_string(), Var::from_tensor(&weight)?)];
        match kind {
            BaseClassifier::Linear => vars.push(("classifier.bias".into(), Var::from_tensor(&Tensor::from_vec(draw(classes), classes, device)?)?)),
            BaseClassifier::Cosine { scale, learn_scale, class_gains } => {
                if class_gains {
                    vars.push(("classifier.gain".into(), Var::from_tensor(&weight.sqr()?.sum(1)?.sqrt()?)?));
                }
                if learn_scale {
                    vars.push(("classifier.log_scale".into(), Var::from_tensor(&Tensor::new(scale.ln(), device)?)?));
                }
            }
        }
        Ok(Self { kind, vars })
    }

    fn var(&self, name: &str) -> Option<&Tensor> {
        self.vars.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_tensor())
    }

    fn logits(&self, x: &Tensor) -> Result<Tensor> {
        let w = self.var("classifier.weight").expect("always present");
        match self.kind {
            BaseClassifier::Linear => Ok(x.matmul(&w.t()?)?.broadcast_add(self.var("classifier.bias").expect("linear has a bias"))?),
            BaseClassifier::Cosine { scale, .. } => {
                let mut logits = match self.var("classifier.gain") {
                    Some(g) => l2_rows(x)?.matmul(&l2_rows(w)?.broadcast_mul(&g.unsqueeze(1)?)?.t()?)?,
                    None => cosine_similarities(x, w)?,
                };
                logits = match self.var("classifier.log_scale") {
                    Some(s) => logits.broadcast_mul(&s.exp()?)?,
                    None => (logits * scale as f64)?,
                };
                Ok(logits)
            }
        }
    }
}

/// Cross-entropy of `logits` `(B, C)` against `labels` with label smoothing `eps`.
pub fn smoothed_cross_entropy(logits: &Tensor, labels: &Tensor, eps: f64) -> Result<Tensor> {
    let log_p = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let nll = log_p.gather(&labels.unsqueeze(1)?, 1)?.neg()?.mean_all()?;
    if eps == 0.0 {
        return Ok(nll);
    }
    let uniform = log_p.mean(D::Minus1)?.neg()?.mean_all()?;
    Ok(((nll * (1.0 - eps))? + (uniform * eps)?)?)
}

/// Trains `model`'s backbone as a classifier of every class of `train_set` (see the module
/// documentation) and writes the model to `out_dir` at the end; `options.mode` as for
/// [`crate::train()`], `options.stop_after` counts epochs. Progress goes to `observer`.
///
/// ```
/// use protonet::{backbone::{BackboneConfig, Conv4Config}, data::{ImageConfig, ImageSet}, Model, ModelConfig};
/// use protonet::train::supervised::{train_supervised, SupervisedConfig};
/// let cfg = ModelConfig::new(BackboneConfig::Conv4(Conv4Config { hidden: 8, depth: 2, ..Default::default() }), ImageConfig::grey(8));
/// let mut model = Model::new(cfg, 1, &protonet::Device::Cpu)?;
/// let mut set = ImageSet::new(1, 8, 8);
/// for c in 0..3 {
///     set.push_class(format!("{c}"), (0..4).map(|i| vec![(c * 4 + i) as f32 / 12.0; 64]).collect())?;
/// }
/// let dir = tempfile::tempdir().unwrap();
/// let config = SupervisedConfig { epochs: 2, batch: 4, ..Default::default() };
/// let report = train_supervised(&mut model, &set, &config, dir.path(), &Default::default(), &protonet::Silent)?;
/// assert_eq!((report.epochs, report.losses.len()), (2, 2));
/// # Ok::<(), protonet::Error>(())
/// ```
pub fn train_supervised(
    model: &mut Model,
    train_set: &ImageSet,
    config: &SupervisedConfig,
    out_dir: &Path,
    options: &TrainOptions,
    observer: &dyn Observer,
) -> Result<SupervisedReport> {
    config.validate()?;
    if train_set.num_classes() < 2 {
        return Err(Error::param("training set", format!("supervised training needs 2 or more classes, got {}", train_set.num_classes())));
    }
    let image = &model.config().image;
    if train_set.image_dims() != (image.channels, image.size, image.size) {
        return Err(Error::param(
            "training set",
            format!("images are {:?}, the model takes {:?}", train_set.image_dims(), (image.channels, image.size, image.size)),
        ));
    }
    prepare(out_dir, options.mode)?;
    std::fs::create_dir_all(out_dir).map_err(|e| Error::io(out_dir, e))?;
    let device = model.device().clone();
    let classifier =
        Classifier::new(config.classifier, train_set.num_classes(), model.config().embedding_dim(), &mut ChaCha8Rng::seed_from_u64(config.seed), &device)?;
    let classifier_lr = config.classifier_learning_rate.unwrap_or(config.learning_rate);
    let mut adam = Adam::new(model.trainable_vars(), config.learning_rate);
    let mut head = Adam::new(classifier.vars.clone(), classifier_lr);
    adam.weight_decay = config.weight_decay;
    head.weight_decay = config.weight_decay;
    let checkpoint = out_dir.join(CHECKPOINT_FILE);
    let mut state = SupervisedState { config: *config, epoch: 0, adam_steps: 0, losses: Vec::new(), seconds: 0.0 };
    if options.mode == OutputMode::Resume && checkpoint.is_file() {
        state = load_checkpoint(&checkpoint, model, &classifier, [&mut adam, &mut head], config)?;
        observer.note(&format!("resuming after epoch {} of {}", state.epoch, config.epochs));
    }
    let items: Vec<(usize, usize)> = (0..train_set.num_classes()).flat_map(|k| (0..train_set.class_len(k)).map(move |i| (k, i))).collect();
    let steps_per_epoch = items.len().div_ceil(config.batch);
    let last = options.stop_after.map_or(config.epochs, |s| s.clamp(state.epoch, config.epochs));
    observer.start("train", ((last - state.epoch) * steps_per_epoch) as u64);
    let first = state.epoch;
    while state.epoch < last {
        let started = Instant::now();
        let mut order = items.clone();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(config.seed ^ (0x9e37_79b9 * (state.epoch as u64 + 1))));
        let mut sum = 0.0;
        for (b, chunk) in order.chunks(config.batch).enumerate() {
            let step = state.epoch * steps_per_epoch + b;
            let x = batch(train_set, chunk, config, image, step, &device)?;
            let labels = Tensor::new(chunk.iter().map(|&(k, _)| k as u32).collect::<Vec<_>>(), &device)?;
            let features = dropout(&embed_for_training(model, &x, config, step)?, config.dropout, config.seed.wrapping_mul(1_000_003) ^ step as u64)?;
            let loss = smoothed_cross_entropy(&classifier.logits(&features)?, &labels, config.label_smoothing)?;
            let l = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            if !l.is_finite() {
                return Err(Error::param("lr", format!("the loss became {l} at epoch {} step {b}: lower the learning rate", state.epoch + 1)));
            }
            let factor = config.schedule(step, steps_per_epoch * config.epochs);
            (adam.lr, head.lr) = (config.learning_rate * factor, classifier_lr * factor);
            let grads = loss.backward()?;
            adam.step(&grads)?;
            head.step(&grads)?;
            sum += l;
            observer.progress(((state.epoch - first) * steps_per_epoch + b + 1) as u64, &format!("epoch {} loss {l:.3}", state.epoch + 1));
        }
        state.losses.push(sum / steps_per_epoch as f64);
        state.epoch += 1;
        state.adam_steps = adam.steps();
        state.seconds += started.elapsed().as_secs_f64();
        save_checkpoint(&checkpoint, model, &classifier, [&adam, &head], &state)?;
    }
    observer.finish();
    let finished = state.epoch == config.epochs;
    if finished {
        save_model(model, &state, train_set, out_dir)?;
    }
    Ok(SupervisedReport { epochs: state.epoch, losses: state.losses, seconds: state.seconds, finished })
}

/// Saves the trained model to `out_dir` with the record of its run in `config.json`.
fn save_model(model: &mut Model, state: &SupervisedState, train_set: &ImageSet, out_dir: &Path) -> Result<()> {
    model.set_supervised_record(SupervisedRecord {
        config: state.config,
        epochs: state.epoch,
        losses: state.losses.clone(),
        seconds: state.seconds,
        classes: train_set.num_classes(),
        images: train_set.num_images(),
    });
    model.save_with(out_dir, OutputMode::Overwrite)
}

/// The images of `items` as a batch, augmented when `config` says so (each image drawn
/// from a seed of the run's seed and the step).
fn batch(set: &ImageSet, items: &[(usize, usize)], config: &SupervisedConfig, image: &ImageConfig, step: usize, device: &Device) -> Result<Tensor> {
    match &config.augment {
        None => Ok(Tensor::from_vec(set.gather(items), (items.len(), image.channels, image.size, image.size), device)?),
        Some(a) => augmented_batch(set, items, a, image, config.seed.wrapping_mul(1_000_003).wrapping_add((step * config.batch) as u64), device),
    }
}

/// One augmented batch `(B, C, s, s)` of the items `(class, index)` of `set` (loaded as
/// `image` says), each image drawn from its own seed `seed + k` (so a resumed run draws the same).
fn augmented_batch(set: &ImageSet, items: &[(usize, usize)], augment: &TrainingAugment, image: &ImageConfig, seed: u64, device: &Device) -> Result<Tensor> {
    let (c, size, _) = set.image_dims();
    let s = augment.size;
    let images: Vec<Vec<f32>> = items
        .par_iter()
        .enumerate()
        .map(|(k, &(class, index))| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed.wrapping_add(k as u64));
            augment.coin.apply(set.image(class, index), size, s, &image.mean, &image.std, &mut rng)
        })
        .collect();
    Ok(Tensor::from_vec(images.concat(), (items.len(), c, s, s), device)?)
}

/// The training embeddings of `x` at `step`: through drop-connect when the recipe has it.
fn embed_for_training(model: &Model, x: &Tensor, config: &SupervisedConfig, step: usize) -> Result<Tensor> {
    if config.drop_connect == 0.0 {
        return model.net().embed(x, true);
    }
    if model.net().method().scores_maps() {
        return Err(Error::param("drop-connect", "not for a method that scores feature maps"));
    }
    let seed = config.seed.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ step as u64;
    model.net().backbone().embed_drop_connect(x, crate::backbone::DropConnect { rate: config.drop_connect, seed })
}

/// Inverted dropout of `x` with probability `p`, the mask drawn from `seed`.
fn dropout(x: &Tensor, p: f32, seed: u64) -> Result<Tensor> {
    if p == 0.0 {
        return Ok(x.clone());
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let keep = 1.0 / (1.0 - p);
    let mask: Vec<f32> = (0..x.elem_count()).map(|_| if rng.random::<f32>() < p { 0.0 } else { keep }).collect();
    Ok((x * Tensor::from_vec(mask, x.dims(), x.device())?)?)
}

fn save_checkpoint(path: &Path, model: &Model, classifier: &Classifier, optimisers: [&Adam; 2], state: &SupervisedState) -> Result<()> {
    let mut tensors: BTreeMap<String, Tensor> = model.tensors().into_iter().map(|(k, v)| (format!("model.{k}"), v)).collect();
    for (name, var) in &classifier.vars {
        tensors.insert(name.clone(), var.as_tensor().copy()?);
    }
    for adam in optimisers {
        tensors.extend(adam.state_tensors());
    }
    let meta = HashMap::from([
        (STATE_KEY.to_string(), serde_json::to_string(state).expect("state serialises")),
        (MODEL_KEY.to_string(), serde_json::to_string(model.config()).expect("config serialises")),
    ]);
    write_safetensors(path, &tensors, Some(meta))
}

/// Restores a checkpoint written by a run with the same settings and model.
fn load_checkpoint(path: &Path, model: &Model, classifier: &Classifier, optimisers: [&mut Adam; 2], config: &SupervisedConfig) -> Result<SupervisedState> {
    let (tensors, meta) = read_safetensors(path, model.device())?;
    let state: SupervisedState = meta
        .get(STATE_KEY)
        .ok_or_else(|| Error::checkpoint(path, "not a supervised run's checkpoint (no supervised state in its metadata)"))
        .and_then(|s| serde_json::from_str(s).map_err(|e| Error::checkpoint(path, format!("supervised state: {e}"))))?;
    if state.config != *config {
        return Err(Error::checkpoint(
            path,
            format!("it was made with other settings ({:?}) than this run ({config:?}); resume with the same settings or start over", state.config),
        ));
    }
    let saved: ModelConfig = meta
        .get(MODEL_KEY)
        .ok_or_else(|| Error::checkpoint(path, "no model configuration in its metadata"))
        .and_then(|s| serde_json::from_str(s).map_err(|e| Error::checkpoint(path, format!("model configuration: {e}"))))?;
    let mine = model.config();
    if saved.backbone != mine.backbone || saved.image != mine.image || saved.method != mine.method {
        return Err(Error::checkpoint(path, "it was made with another backbone, image setting or method than this run"));
    }
    let model_tensors: HashMap<String, Tensor> = tensors.iter().filter_map(|(k, v)| k.strip_prefix("model.").map(|n| (n.to_string(), v.clone()))).collect();
    model.set_tensors(&model_tensors, path)?;
    for (name, var) in &classifier.vars {
        let t = tensors.get(name).ok_or_else(|| Error::checkpoint(path, format!("tensor `{name}` is missing")))?;
        if t.dims() != var.dims() {
            return Err(Error::checkpoint(path, format!("tensor `{name}` has shape {:?}, expected {:?} (another set of classes?)", t.dims(), var.dims())));
        }
        var.set(t)?;
    }
    for adam in optimisers {
        adam.load_state(&tensors, state.adam_steps).map_err(|e| Error::checkpoint(path, e.to_string()))?;
    }
    Ok(state)
}
