//! Episodic training with Adam, step-wise learning-rate halving, validation, early
//! stopping, and checkpoints that resume exactly.
//!
//! An output directory holds the best model so far (`config.json`, `model.safetensors`,
//! see [`crate::Model`]) and `checkpoint.safetensors`, the full state of the run (weights,
//! optimiser moments, episode, sampler state, history) from which [`train`] resumes.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::checkpoint::{read_safetensors, write_safetensors, Model};
use crate::data::ImageSet;
use crate::episode::{EpisodeSampler, EpisodeSpec};
use crate::eval::evaluate;
use crate::optim::Adam;
use crate::{Error, Result};

/// File name of the resumable training state inside an output directory.
pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";

/// Training settings. The defaults are the paper's Omniglot protocol: 60-way 5-shot
/// 5-query episodes, Adam at 1e-3 halved every 2000 episodes, 5-way validation.
///
/// ```
/// let cfg = protonet::TrainConfig::default();
/// assert_eq!((cfg.way, cfg.shot, cfg.query), (60, 5, 5));
/// assert_eq!(cfg.learning_rate_at(0), 1e-3);
/// assert_eq!(cfg.learning_rate_at(2000), 5e-4);
/// cfg.validate().unwrap();
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainConfig {
    /// Classes per training episode.
    pub way: usize,
    /// Support images per class in training episodes.
    pub shot: usize,
    /// Query images per class in training episodes.
    pub query: usize,
    /// Training episodes in total.
    pub episodes: usize,
    /// Adam's initial learning rate.
    pub learning_rate: f64,
    /// The learning rate is halved every this many episodes (0: never).
    pub lr_halve_every: usize,
    /// Classes per validation episode.
    pub val_way: usize,
    /// Support images per class in validation episodes (`None`: same as `shot`).
    pub val_shot: Option<usize>,
    /// Query images per class in validation episodes.
    pub val_query: usize,
    /// Validate every this many episodes (and at the end).
    pub val_every: usize,
    /// Validation episodes per validation (the same episodes every time).
    pub val_episodes: usize,
    /// Stop after this many validations without improvement (`None`: never).
    pub patience: Option<usize>,
    /// Write the resumable checkpoint every this many episodes (and at the end).
    pub checkpoint_every: usize,
    /// Seed of the episode sampler (weights are initialised from the model's own seed).
    pub seed: u64,
    /// Rotate every training image by a random multiple of 90 degrees (for subjects
    /// whose class does not depend on their angle, such as coins). Square images only.
    pub rotation_augment: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            way: 60,
            shot: 5,
            query: 5,
            episodes: 20_000,
            learning_rate: 1e-3,
            lr_halve_every: 2000,
            val_way: 5,
            val_shot: None,
            val_query: 15,
            val_every: 500,
            val_episodes: 200,
            patience: Some(10),
            checkpoint_every: 100,
            seed: 1,
            rotation_augment: false,
        }
    }
}

impl TrainConfig {
    /// The training episode shape.
    pub fn train_spec(&self) -> Result<EpisodeSpec> {
        EpisodeSpec::new(self.way, self.shot, self.query)
    }

    /// The validation episode shape.
    pub fn val_spec(&self) -> Result<EpisodeSpec> {
        let spec = EpisodeSpec { way: self.val_way, shot: self.val_shot.unwrap_or(self.shot), query: self.val_query };
        spec.validate().map_err(|e| Error::param("val", e.to_string()))?;
        Ok(spec)
    }

    /// Checks every setting.
    pub fn validate(&self) -> Result<()> {
        self.train_spec()?;
        self.val_spec()?;
        if self.episodes == 0 {
            return Err(Error::param("episodes", "must be at least 1"));
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return Err(Error::param("lr", format!("must be positive, got {}", self.learning_rate)));
        }
        for (name, v) in [("val-every", self.val_every), ("val-episodes", self.val_episodes), ("checkpoint-every", self.checkpoint_every)] {
            if v == 0 {
                return Err(Error::param(name, "must be at least 1"));
            }
        }
        if self.patience == Some(0) {
            return Err(Error::param("patience", "must be at least 1"));
        }
        Ok(())
    }

    /// The learning rate used for the episode after `episodes_done` episodes.
    pub fn learning_rate_at(&self, episodes_done: usize) -> f64 {
        if self.lr_halve_every == 0 {
            return self.learning_rate;
        }
        self.learning_rate * 0.5f64.powi((episodes_done / self.lr_halve_every) as i32)
    }
}

/// Options that do not change the result of training.
#[derive(Debug, Clone, Default)]
pub struct TrainOptions {
    /// Show a progress bar and validation lines on stderr.
    pub progress: bool,
    /// Resume from `checkpoint.safetensors` in the output directory if it exists.
    pub resume: bool,
    /// Stop (as if interrupted) once this many episodes are done, after checkpointing.
    pub stop_after: Option<usize>,
}

/// File name of the training curves (loss and accuracy against episodes) in the output
/// directory, redrawn at every validation.
pub const CURVES_FILE: &str = "curves.png";

/// One row of the training history, written at every validation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryPoint {
    /// Episodes done.
    pub episode: usize,
    /// Mean training loss since the previous row.
    pub train_loss: f64,
    /// Mean training accuracy since the previous row.
    pub train_accuracy: f64,
    /// Validation accuracy (when there is a validation set).
    pub val_accuracy: Option<f64>,
    /// Its 95% confidence half-width.
    pub val_ci95: Option<f64>,
    /// Learning rate in use.
    pub learning_rate: f64,
    /// Seconds of training so far (across resumes).
    pub seconds: f64,
}

/// The state of a run, saved in the checkpoint's metadata.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RunState {
    config: TrainConfig,
    episode: usize,
    adam_steps: usize,
    sampler: EpisodeSampler,
    best_val: Option<f64>,
    best_episode: usize,
    stale_validations: usize,
    history: Vec<HistoryPoint>,
    seconds: f64,
    loss_sum: f64,
    acc_sum: f64,
    since_last: usize,
}

/// What [`train`] returns.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainReport {
    /// Episodes done in total (across resumes).
    pub episodes: usize,
    /// Best validation accuracy, if validated.
    pub best_val_accuracy: Option<f64>,
    /// Episode of the best validation (the saved model's).
    pub best_episode: usize,
    /// True when early stopping ended the run.
    pub stopped_early: bool,
    /// Seconds of training (across resumes).
    pub seconds: f64,
    /// Validation history.
    pub history: Vec<HistoryPoint>,
}

/// Trains `model` episodically on `train_set`, validating on `val_set` (if any), and
/// writes the best model and the resumable checkpoint into `out_dir`.
///
/// With a validation set, the model saved in `out_dir` is the one with the best
/// validation accuracy, and `model` itself ends as the best one too; without, it is the
/// last. Every episode's loss is checked: a NaN or infinite loss stops training with
/// [`Error::NonFiniteLoss`] before any update or write.
///
/// ```
/// use candle_core::Device;
/// use protonet::{backbone::{BackboneConfig, Conv4Config}, data::{ImageConfig, ImageSet}, Model, ModelConfig, TrainConfig, TrainOptions};
/// let cfg = ModelConfig::new(BackboneConfig::Conv4(Conv4Config { hidden: 8, depth: 2, ..Default::default() }), ImageConfig::grey(8));
/// let mut model = Model::new(cfg, 1, &Device::Cpu)?;
/// let mut set = ImageSet::new(1, 8, 8);
/// for c in 0..4 {
///     set.push_class(format!("{c}"), (0..4).map(|i| vec![(c * 4 + i) as f32 / 16.0; 64]).collect())?;
/// }
/// let tc = TrainConfig { way: 3, shot: 1, query: 1, episodes: 4, val_way: 3, val_query: 2, val_every: 2, val_episodes: 2, ..Default::default() };
/// let dir = std::env::temp_dir().join(format!("protonet-train-doc-{}", std::process::id()));
/// let report = protonet::train(&mut model, &set, Some(&set), &tc, &dir, &TrainOptions::default())?;
/// assert_eq!(report.episodes, 4);
/// # std::fs::remove_dir_all(&dir).ok();
/// # Ok::<(), protonet::Error>(())
/// ```
pub fn train(model: &mut Model, train_set: &ImageSet, val_set: Option<&ImageSet>, config: &TrainConfig, out_dir: &Path, options: &TrainOptions) -> Result<TrainReport> {
    config.validate()?;
    let spec = config.train_spec()?;
    spec.check_dataset(train_set).map_err(|e| Error::param("training set", e.to_string()))?;
    let val_spec = config.val_spec()?;
    if let Some(v) = val_set {
        val_spec.check_dataset(v).map_err(|e| Error::param("validation set", e.to_string()))?;
    }
    std::fs::create_dir_all(out_dir).map_err(|e| Error::io(out_dir, e))?;
    // Left by a run killed while writing; the files they were to replace are intact.
    crate::checkpoint::remove_stale_temporaries(out_dir);
    let device = model.device().clone();
    let mut adam = Adam::new(model.trainable_vars(), config.learning_rate);
    let ckpt_path = out_dir.join(CHECKPOINT_FILE);

    let mut state = if options.resume && ckpt_path.exists() {
        let state = resume_state(model, &mut adam, &ckpt_path, config)?;
        state.sampler.check_compatible(train_set, spec).map_err(|e| Error::Checkpoint {
            path: ckpt_path.clone(),
            reason: format!("cannot resume on this training set: {e}"),
        })?;
        state
    } else {
        RunState {
            config: config.clone(),
            episode: 0,
            adam_steps: 0,
            sampler: EpisodeSampler::new(train_set, spec, config.seed)?,
            best_val: None,
            best_episode: 0,
            stale_validations: 0,
            history: Vec::new(),
            seconds: 0.0,
            loss_sum: 0.0,
            acc_sum: 0.0,
            since_last: 0,
        }
    };
    state.config = config.clone();

    let bar = crate::progress::bar(config.episodes as u64, options.progress, "train");
    bar.set_position(state.episode as u64);
    let started = Instant::now();
    let seconds_before = state.seconds;
    let mut stopped_early = false;
    let mut recent: Vec<(f32, f32)> = Vec::new();

    while state.episode < config.episodes {
        let lr = config.learning_rate_at(state.episode);
        adam.lr = lr;
        let ep = state.sampler.sample();
        let (images, labels) = if config.rotation_augment {
            rotated_episode(&ep, train_set, config.seed, state.episode, &device)?
        } else {
            ep.tensors(train_set, &device)?
        };
        let out = model.net().forward_episode(&images, spec, &labels, true)?;
        if !out.loss_value.is_finite() {
            bar.abandon();
            return Err(Error::NonFiniteLoss { episode: state.episode + 1, value: out.loss_value });
        }
        let grads = out.loss.backward()?;
        // A finite loss can still have non-finite gradients; never let them into the weights.
        for (name, var) in model.trainable_vars() {
            if let Some(g) = grads.get(var.as_tensor()) {
                if !g.sum_all()?.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?.is_finite() {
                    bar.abandon();
                    return Err(Error::NonFiniteGradient { episode: state.episode + 1, parameter: name });
                }
            }
        }
        adam.step(&grads)?;
        state.episode += 1;
        state.adam_steps = adam.steps();
        state.loss_sum += out.loss_value as f64;
        state.acc_sum += out.accuracy as f64;
        state.since_last += 1;
        state.seconds = seconds_before + started.elapsed().as_secs_f64();

        recent.push((out.loss_value, out.accuracy));
        if recent.len() > 50 {
            recent.remove(0);
        }
        let n = recent.len() as f32;
        bar.set_position(state.episode as u64);
        bar.set_message(format!(
            "loss {:.3} acc {:.1}% lr {:.1e}{}",
            recent.iter().map(|r| r.0).sum::<f32>() / n,
            100.0 * recent.iter().map(|r| r.1).sum::<f32>() / n,
            lr,
            state.best_val.map(|b| format!(" best val {:.2}%", 100.0 * b)).unwrap_or_default()
        ));

        let last = state.episode == config.episodes;
        if state.episode % config.val_every == 0 || last {
            let (val_accuracy, val_ci95) = match val_set {
                Some(v) => {
                    // The same validation episodes every time, so comparisons are fair.
                    let r = evaluate(model.net(), v, val_spec, config.val_episodes, config.seed ^ 0x5eed, &device, false)?;
                    (Some(r.accuracy), Some(r.ci95))
                }
                None => (None, None),
            };
            let k = state.since_last.max(1) as f64;
            state.history.push(HistoryPoint {
                episode: state.episode,
                train_loss: state.loss_sum / k,
                train_accuracy: state.acc_sum / k,
                val_accuracy,
                val_ci95,
                learning_rate: lr,
                seconds: state.seconds,
            });
            state.loss_sum = 0.0;
            state.acc_sum = 0.0;
            state.since_last = 0;
            // The curves are a convenience: a failure to draw them does not stop training.
            if let Err(e) = crate::plot::training_curves(&state.history, &out_dir.join(CURVES_FILE)) {
                eprintln!("warning: {e}");
            }
            let improved = match (val_accuracy, state.best_val) {
                (Some(v), Some(b)) => v > b,
                _ => true,
            };
            if improved {
                state.best_val = val_accuracy;
                state.best_episode = state.episode;
                state.stale_validations = 0;
                model.set_training_record(training_record(&state));
                model.save(out_dir)?;
            } else {
                state.stale_validations += 1;
            }
            if options.progress {
                let line = format!(
                    "episode {:>6}: train loss {:.4} acc {:.2}%{}",
                    state.episode,
                    state.history.last().map(|h| h.train_loss).unwrap_or(0.0),
                    100.0 * state.history.last().map(|h| h.train_accuracy).unwrap_or(0.0),
                    val_accuracy
                        .map(|v| format!(" | val {:.2}% ± {:.2}{}", 100.0 * v, 100.0 * val_ci95.unwrap_or(0.0), if improved { " (best, saved)" } else { "" }))
                        .unwrap_or_default()
                );
                // Without a terminal the bar is hidden; keep the validation lines in the log.
                if bar.is_hidden() { eprintln!("{line}") } else { bar.println(line) }
            }
            if config.patience.is_some_and(|p| state.stale_validations >= p) {
                stopped_early = true;
            }
        }
        let stop_now = options.stop_after.is_some_and(|s| state.episode >= s);
        if state.episode % config.checkpoint_every == 0 || last || stopped_early || stop_now {
            save_checkpoint(model, &adam, &state, &ckpt_path)?;
        }
        if stopped_early || stop_now {
            break;
        }
    }
    bar.finish_and_clear();
    if val_set.is_some() && state.best_episode != state.episode {
        // Leave the caller with the best model, as saved.
        let best = Model::load(out_dir, &device)?;
        model.set_tensors(&best.tensors().into_iter().collect(), &out_dir.join(crate::checkpoint::WEIGHTS_FILE))?;
    }
    Ok(TrainReport {
        episodes: state.episode,
        best_val_accuracy: state.best_val,
        best_episode: state.best_episode,
        stopped_early,
        seconds: state.seconds,
        history: state.history,
    })
}

/// The episode's tensors with every image rotated by a random multiple of 90 degrees,
/// drawn from a generator seeded by (seed, episode) so that resumed runs match.
fn rotated_episode(ep: &crate::Episode, set: &ImageSet, seed: u64, episode: usize, device: &candle_core::Device) -> Result<(candle_core::Tensor, candle_core::Tensor)> {
    use rand::{Rng, SeedableRng};
    let (c, h, w) = set.image_dims();
    if h != w {
        return Err(Error::param("rotation_augment", format!("images are {h}x{w}, not square")));
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0x0005_07a7_e000u64 ^ (episode as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let items: Vec<(usize, usize)> = ep.support.iter().chain(&ep.query).copied().collect();
    let mut data = Vec::with_capacity(items.len() * c * h * w);
    for &(k, i) in &items {
        data.extend(crate::data::rotate_square_ccw(set.image(k, i), c, w, rng.random_range(0..4)));
    }
    let images = candle_core::Tensor::from_vec(data, (items.len(), c, h, w), device)?;
    let labels = candle_core::Tensor::new(ep.query_labels(), device)?;
    Ok((images, labels))
}

fn training_record(state: &RunState) -> serde_json::Value {
    serde_json::json!({
        "config": state.config,
        "episode": state.episode,
        "val_accuracy": state.best_val,
        "seconds": state.seconds,
        "history": state.history,
    })
}

fn save_checkpoint(model: &Model, adam: &Adam, state: &RunState, path: &Path) -> Result<()> {
    let mut tensors: BTreeMap<String, candle_core::Tensor> = model.tensors().into_iter().map(|(k, v)| (format!("model.{k}"), v)).collect();
    tensors.extend(adam.state_tensors());
    let mut meta = HashMap::new();
    meta.insert("protonet.run_state".to_string(), serde_json::to_string(state).expect("state serialises"));
    meta.insert("protonet.model_config".to_string(), serde_json::to_string(model.config()).expect("config serialises"));
    write_safetensors(path, &tensors, Some(meta))
}

fn resume_state(model: &Model, adam: &mut Adam, path: &PathBuf, config: &TrainConfig) -> Result<RunState> {
    let bad = |reason: String| Error::Checkpoint { path: path.clone(), reason };
    let (tensors, meta) = read_safetensors(path, model.device())?;
    let state: RunState = meta
        .get("protonet.run_state")
        .ok_or_else(|| bad("no training state in its metadata (not a protonet training checkpoint)".into()))
        .and_then(|s| serde_json::from_str(s).map_err(|e| bad(format!("training state: {e}"))))?;
    let saved_model: crate::ModelConfig = meta
        .get("protonet.model_config")
        .ok_or_else(|| bad("no model configuration in its metadata".into()))
        .and_then(|s| serde_json::from_str(s).map_err(|e| bad(format!("model configuration: {e}"))))?;
    if saved_model.backbone != model.config().backbone || saved_model.image != model.config().image {
        return Err(bad("it was made with another backbone or image setting than this run".into()));
    }
    let mut comparable = state.config.clone();
    comparable.episodes = config.episodes;
    comparable.patience = config.patience;
    if &comparable != config {
        return Err(bad(format!(
            "it was made with other training settings; resume with the same settings (only --episodes and --patience may change). Saved: {}",
            serde_json::to_string(&state.config).unwrap_or_default()
        )));
    }
    let weights: HashMap<String, candle_core::Tensor> =
        tensors.iter().filter_map(|(k, v)| k.strip_prefix("model.").map(|n| (n.to_string(), v.clone()))).collect();
    model.set_tensors(&weights, path)?;
    adam.load_state(&tensors, state.adam_steps).map_err(|e| bad(e.to_string()))?;
    Ok(state)
}
