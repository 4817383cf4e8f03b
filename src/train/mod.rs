//! Episodic training with Adam, step-wise learning-rate halving, validation, early
//! stopping, and checkpoints that resume exactly.
//!
//! A [`Trainer`] takes one episode at a time ([`Trainer::step`]) and validates on fixed
//! episodes ([`Trainer::validate`]); [`Trainer::run`] loops them with
//! [`EarlyStopping`], keeps the best model in an output directory and writes the
//! resumable run state ([`state`]) from which a run continues exactly. Progress goes to an
//! [`Observer`]; [`train`] is the whole run, silent.
//!
//! An output directory holds the best model so far (`config.json`, `model.safetensors`,
//! see [`crate::Model`]) and `checkpoint.safetensors`, the full state of the run (weights,
//! optimiser moments, episode, sampler state, history).

pub mod state;

use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::data::ImageSet;
use crate::episode::{Episode, EpisodeSampler, EpisodeSpec};
use crate::eval::{evaluate, EvalConfig};
use crate::model::{Model, WEIGHTS_FILE};
use crate::observer::{Observer, Silent};
use crate::optim::Adam;
use crate::output::OutputMode;
use crate::{Error, Result};

pub use state::{RunState, CHECKPOINT_FILE};

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
    /// What to do when the output directory already holds a model, classifier or run:
    /// refuse ([`OutputMode::New`], the default), continue the run
    /// ([`OutputMode::Resume`]) or replace it ([`OutputMode::Overwrite`]).
    pub mode: OutputMode,
    /// Stop (as if interrupted) once this many episodes are done, after checkpointing.
    pub stop_after: Option<usize>,
}

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

impl HistoryPoint {
    /// One line for a log: episode, training loss and accuracy, validation accuracy.
    pub fn summary(&self, best: bool) -> String {
        format!(
            "episode {:>6}: train loss {:.4} acc {:.2}%{}",
            self.episode,
            self.train_loss,
            100.0 * self.train_accuracy,
            self.val_accuracy
                .map(|v| format!(" | val {:.2}% ± {:.2}{}", 100.0 * v, 100.0 * self.val_ci95.unwrap_or(0.0), if best { " (best, saved)" } else { "" }))
                .unwrap_or_default()
        )
    }
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

/// What one training episode gave.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepOutcome {
    /// The episode's loss.
    pub loss: f32,
    /// The episode's query accuracy, a fraction.
    pub accuracy: f32,
    /// The learning rate used.
    pub learning_rate: f64,
}

/// Early stopping on validation accuracy: the best value so far, its episode, and how
/// many validations in a row did not beat it.
///
/// ```
/// use protonet::train::EarlyStopping;
/// let mut stop = EarlyStopping::default();
/// assert!(stop.update(100, Some(0.5)));   // first: best
/// assert!(!stop.update(200, Some(0.4)));  // worse
/// assert!(stop.update(300, Some(0.6)));   // better
/// assert_eq!((stop.best_episode, stop.stale_validations), (300, 0));
/// assert!(!stop.update(400, Some(0.6)));  // equal is not better
/// assert!(stop.should_stop(Some(1)) && !stop.should_stop(Some(2)) && !stop.should_stop(None));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EarlyStopping {
    /// Best validation accuracy so far (`None`: not validated, or no validation set).
    pub best_val: Option<f64>,
    /// Episode of the best validation (of the saved model).
    pub best_episode: usize,
    /// Validations since the best one.
    pub stale_validations: usize,
}

impl EarlyStopping {
    /// Records a validation at `episode` (`None` without a validation set: every
    /// validation counts as the best). Returns whether it is the best so far.
    pub fn update(&mut self, episode: usize, val_accuracy: Option<f64>) -> bool {
        let improved = match (val_accuracy, self.best_val) {
            (Some(v), Some(b)) => v > b,
            _ => true,
        };
        if improved {
            self.best_val = val_accuracy;
            self.best_episode = episode;
            self.stale_validations = 0;
        } else {
            self.stale_validations += 1;
        }
        improved
    }

    /// Whether `patience` validations in a row passed without improvement.
    pub fn should_stop(&self, patience: Option<usize>) -> bool {
        patience.is_some_and(|p| self.stale_validations >= p)
    }
}

/// How a model was trained: stored in its `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingRecord {
    /// The training settings.
    pub config: TrainConfig,
    /// Episodes done when this model was saved.
    pub episode: usize,
    /// Its validation accuracy, if validated.
    pub val_accuracy: Option<f64>,
    /// Seconds of training up to it.
    pub seconds: f64,
    /// The validation history up to it.
    #[serde(default)]
    pub history: Vec<HistoryPoint>,
    /// For fine-tuned pretrained networks: what was trained, on what.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fine_tuned: Option<FineTuneRecord>,
}

/// What fine-tuning trained, on what (part of a [`TrainingRecord`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FineTuneRecord {
    /// The trained part, in words.
    pub what: String,
    /// Rotations of each training image whose features were cached.
    pub rotations_cached: usize,
    /// The training classes.
    pub training_classes: Vec<String>,
    /// The number of training images.
    pub training_images: usize,
}

/// Episodic training of a model: one [`Trainer::step`] per episode, [`Trainer::validate`]
/// on fixed episodes, [`Trainer::run`] for the whole run with its output directory.
///
/// ```
/// use candle_core::Device;
/// use protonet::{backbone::{BackboneConfig, Conv4Config}, data::{ImageConfig, ImageSet}, Model, ModelConfig, TrainConfig};
/// use protonet::train::Trainer;
/// let cfg = ModelConfig::new(BackboneConfig::Conv4(Conv4Config { hidden: 8, depth: 2, ..Default::default() }), ImageConfig::grey(8));
/// let mut model = Model::new(cfg, 1, &Device::Cpu)?;
/// let mut set = ImageSet::new(1, 8, 8);
/// for c in 0..4 {
///     set.push_class(format!("{c}"), (0..4).map(|i| vec![(c * 4 + i) as f32 / 16.0; 64]).collect())?;
/// }
/// let tc = TrainConfig { way: 3, shot: 1, query: 1, val_way: 3, val_query: 2, val_episodes: 2, ..Default::default() };
/// let mut trainer = Trainer::new(&mut model, &set, Some(&set), &tc)?;
/// let step = trainer.step()?;
/// assert!(step.loss.is_finite() && trainer.episode() == 1);
/// let point = trainer.validate()?;
/// assert!(point.val_accuracy.is_some());
/// # Ok::<(), protonet::Error>(())
/// ```
pub struct Trainer<'a> {
    model: &'a mut Model,
    train_set: &'a ImageSet,
    val_set: Option<&'a ImageSet>,
    config: TrainConfig,
    spec: EpisodeSpec,
    val_spec: EpisodeSpec,
    adam: Adam,
    state: RunState,
    device: Device,
}

impl<'a> Trainer<'a> {
    /// A trainer at episode 0, after checking the settings against the data sets.
    pub fn new(model: &'a mut Model, train_set: &'a ImageSet, val_set: Option<&'a ImageSet>, config: &TrainConfig) -> Result<Self> {
        config.validate()?;
        let spec = config.train_spec()?;
        spec.check_dataset(train_set).map_err(|e| Error::param("training set", e.to_string()))?;
        let val_spec = config.val_spec()?;
        if let Some(v) = val_set {
            val_spec.check_dataset(v).map_err(|e| Error::param("validation set", e.to_string()))?;
        }
        let device = model.device().clone();
        let adam = Adam::new(model.trainable_vars(), config.learning_rate);
        let state = RunState::new(config.clone(), EpisodeSampler::new(train_set, spec, config.seed)?);
        Ok(Self { model, train_set, val_set, config: config.clone(), spec, val_spec, adam, state, device })
    }

    /// Episodes done.
    pub fn episode(&self) -> usize {
        self.state.episode
    }

    /// The state of the run (what a checkpoint stores besides the tensors).
    pub fn state(&self) -> &RunState {
        &self.state
    }

    /// The model being trained.
    pub fn model(&self) -> &Model {
        self.model
    }

    /// Continues the run saved in the checkpoint at `path` (weights, optimiser moments,
    /// sampler, history); errors if it was made with other settings or another data set.
    pub fn resume_from(&mut self, path: &Path) -> Result<()> {
        let state = state::load(self.model, &mut self.adam, path, &self.config)?;
        state
            .sampler
            .check_compatible(self.train_set, self.spec)
            .map_err(|e| Error::Checkpoint { path: path.to_path_buf(), reason: format!("cannot resume on this training set: {e}") })?;
        self.state = state;
        self.state.config = self.config.clone();
        Ok(())
    }

    /// Writes the resumable state of the run to `path`, atomically.
    pub fn save_checkpoint(&self, path: &Path) -> Result<()> {
        state::save(self.model, &self.adam, &self.state, path)
    }

    /// One training episode: sample, forward, loss, backward, Adam step. A NaN or infinite
    /// loss or gradient stops with an error before the weights change.
    pub fn step(&mut self) -> Result<StepOutcome> {
        let episode = self.state.episode;
        let lr = self.config.learning_rate_at(episode);
        self.adam.lr = lr;
        let ep = self.state.sampler.sample();
        let (images, labels) = if self.config.rotation_augment {
            rotated_episode(&ep, self.train_set, self.config.seed, episode, &self.device)?
        } else {
            ep.tensors(self.train_set, &self.device)?
        };
        let out = self.model.net().forward_episode(&images, self.spec, &labels, true)?;
        if !out.loss_value.is_finite() {
            return Err(Error::NonFiniteLoss { episode: episode + 1, value: out.loss_value });
        }
        let grads = out.loss.backward()?;
        // A finite loss can still have non-finite gradients; never let them into the weights.
        check_finite_gradients(&grads, &self.model.trainable_vars(), episode + 1)?;
        self.adam.step(&grads)?;
        let s = &mut self.state;
        s.episode += 1;
        s.adam_steps = self.adam.steps();
        s.loss_sum += out.loss_value as f64;
        s.acc_sum += out.accuracy as f64;
        s.since_last += 1;
        Ok(StepOutcome { loss: out.loss_value, accuracy: out.accuracy, learning_rate: lr })
    }

    /// Validates on the validation set (the same episodes every time, so comparisons are
    /// fair) and appends a point to the history, with the training loss and accuracy
    /// averaged since the previous point.
    pub fn validate(&mut self) -> Result<HistoryPoint> {
        let (val_accuracy, val_ci95) = match self.val_set {
            Some(v) => {
                let eval = EvalConfig { spec: self.val_spec, episodes: self.config.val_episodes, seed: self.config.seed ^ 0x5eed };
                let r = evaluate(self.model.net(), v, &eval, &self.device, &Silent)?;
                (Some(r.accuracy), Some(r.ci95))
            }
            None => (None, None),
        };
        let s = &mut self.state;
        let k = s.since_last.max(1) as f64;
        let point = HistoryPoint {
            episode: s.episode,
            train_loss: s.loss_sum / k,
            train_accuracy: s.acc_sum / k,
            val_accuracy,
            val_ci95,
            learning_rate: self.config.learning_rate_at(s.episode.saturating_sub(1)),
            seconds: s.seconds,
        };
        s.history.push(point.clone());
        s.loss_sum = 0.0;
        s.acc_sum = 0.0;
        s.since_last = 0;
        Ok(point)
    }

    /// The record of the run so far, as stored in the model's `config.json`.
    pub fn record(&self) -> TrainingRecord {
        let s = &self.state;
        TrainingRecord {
            config: s.config.clone(),
            episode: s.episode,
            val_accuracy: s.stopping.best_val,
            seconds: s.seconds,
            history: s.history.clone(),
            fine_tuned: None,
        }
    }

    /// The whole run: episodes until `config.episodes` or early stopping, validating every
    /// `val_every` episodes (and at the end), saving the best model into `out_dir` and the
    /// run state every `checkpoint_every` episodes. With `options.resume`, continues the
    /// run saved in `out_dir`.
    ///
    /// With a validation set, the model saved in `out_dir` is the one with the best
    /// validation accuracy, and the model itself ends as the best one too; without, it is
    /// the last.
    pub fn run(mut self, out_dir: &Path, options: &TrainOptions, observer: &dyn Observer) -> Result<TrainReport> {
        let ckpt_path = out_dir.join(CHECKPOINT_FILE);
        crate::output::prepare(out_dir, options.mode)?;
        if options.mode == OutputMode::Resume && !ckpt_path.exists() {
            if let Some(holds) = crate::output::describe(out_dir) {
                return Err(Error::OutputExists { path: out_dir.to_path_buf(), holds: format!("{holds} but no training run to resume") });
            }
        }
        std::fs::create_dir_all(out_dir).map_err(|e| Error::io(out_dir, e))?;
        // Left by a run killed while writing; the files they were to replace are intact.
        crate::io::remove_stale_temporaries(out_dir);
        if options.mode == OutputMode::Resume && ckpt_path.exists() {
            self.resume_from(&ckpt_path)?;
        } else {
            // The run's state exists from its start: a run killed before its first
            // checkpoint resumes from episode 0 rather than finding a model without a run.
            self.save_checkpoint(&ckpt_path)?;
        }
        let episodes = self.config.episodes;
        observer.start("train", episodes as u64);
        observer.progress(self.state.episode as u64, "");
        let started = Instant::now();
        let seconds_before = self.state.seconds;
        let mut stopped_early = false;
        let mut recent: Vec<(f32, f32)> = Vec::new();
        let result = (|| -> Result<()> {
            while self.state.episode < episodes {
                let step = self.step()?;
                self.state.seconds = seconds_before + started.elapsed().as_secs_f64();
                recent.push((step.loss, step.accuracy));
                if recent.len() > 50 {
                    recent.remove(0);
                }
                let n = recent.len() as f32;
                observer.progress(
                    self.state.episode as u64,
                    &format!(
                        "loss {:.3} acc {:.1}% lr {:.1e}{}",
                        recent.iter().map(|r| r.0).sum::<f32>() / n,
                        100.0 * recent.iter().map(|r| r.1).sum::<f32>() / n,
                        step.learning_rate,
                        self.state.stopping.best_val.map(|b| format!(" best val {:.2}%", 100.0 * b)).unwrap_or_default()
                    ),
                );
                let last = self.state.episode == episodes;
                if self.state.episode.is_multiple_of(self.config.val_every) || last {
                    let point = self.validate()?;
                    let best = self.state.stopping.update(point.episode, point.val_accuracy);
                    if best {
                        self.model.set_training_record(self.record());
                        self.model.save_with(out_dir, OutputMode::Overwrite)?;
                    }
                    observer.note(&point.summary(best));
                    observer.validated(&self.state.history, best);
                    stopped_early = self.state.stopping.should_stop(self.config.patience);
                }
                let stop_now = options.stop_after.is_some_and(|s| self.state.episode >= s);
                if self.state.episode.is_multiple_of(self.config.checkpoint_every) || last || stopped_early || stop_now {
                    self.save_checkpoint(&ckpt_path)?;
                }
                if stopped_early || stop_now {
                    break;
                }
            }
            Ok(())
        })();
        observer.finish();
        result?;
        let stopping = self.state.stopping.clone();
        if self.val_set.is_some() && stopping.best_episode != self.state.episode {
            // Leave the caller with the best model, as saved.
            let best = Model::load(out_dir, &self.device)?;
            self.model.set_tensors(&best.tensors().into_iter().collect(), &out_dir.join(WEIGHTS_FILE))?;
        }
        Ok(TrainReport {
            episodes: self.state.episode,
            best_val_accuracy: stopping.best_val,
            best_episode: stopping.best_episode,
            stopped_early,
            seconds: self.state.seconds,
            history: self.state.history,
        })
    }
}

/// Errors with [`Error::NonFiniteGradient`] (naming the parameter and `episode`) when a
/// gradient in `grads` of one of `vars` holds a NaN or an infinity.
///
/// ```
/// use candle_core::{Device, Var};
/// // sqrt at 0: a finite value (0) with an infinite gradient.
/// let x = Var::new(&[0f32, 1.0], &Device::Cpu)?;
/// let grads = x.as_tensor().sqrt()?.sum_all()?.backward()?;
/// let err = protonet::train::check_finite_gradients(&grads, &[("x".into(), x)], 7).unwrap_err();
/// assert!(err.to_string().contains("`x`") && err.to_string().contains("episode 7"));
/// # Ok::<(), protonet::Error>(())
/// ```
pub fn check_finite_gradients(grads: &candle_core::backprop::GradStore, vars: &[(String, candle_core::Var)], episode: usize) -> Result<()> {
    for (name, var) in vars {
        if let Some(g) = grads.get(var.as_tensor()) {
            if !g.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?.is_finite() {
                return Err(Error::NonFiniteGradient { episode, parameter: name.clone() });
            }
        }
    }
    Ok(())
}

/// Trains `model` episodically on `train_set`, validating on `val_set` (if any), and
/// writes the best model and the resumable checkpoint into `out_dir`, showing nothing:
/// [`Trainer::run`] with a [`Silent`] observer.
///
/// Every episode's loss is checked: a NaN or infinite loss stops training with
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
pub fn train(
    model: &mut Model,
    train_set: &ImageSet,
    val_set: Option<&ImageSet>,
    config: &TrainConfig,
    out_dir: &Path,
    options: &TrainOptions,
) -> Result<TrainReport> {
    Trainer::new(model, train_set, val_set, config)?.run(out_dir, options, &Silent)
}

/// The episode's tensors with every image rotated by a random multiple of 90 degrees,
/// drawn from a generator seeded by (seed, episode) so that resumed runs match.
fn rotated_episode(ep: &Episode, set: &ImageSet, seed: u64, episode: usize, device: &Device) -> Result<(Tensor, Tensor)> {
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
    let images = Tensor::from_vec(data, (items.len(), c, h, w), device)?;
    let labels = Tensor::new(ep.query_labels(), device)?;
    Ok((images, labels))
}
