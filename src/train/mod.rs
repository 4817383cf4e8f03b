//! Episodic training with Adam, step-wise learning-rate halving, validation, early
//! stopping, and checkpoints that resume exactly.
//!
//! A [`Trainer`] takes one episode at a time ([`Trainer::step`]) and validates on fixed
//! episodes ([`Trainer::validate`]); [`Trainer::run`] loops them with
//! [`EarlyStopping`], keeps the best model in an output directory and writes the
//! resumable run state ([`RunState`]) from which a run continues exactly. Progress goes to an
//! [`Observer`]; [`train`] is the whole run, silent. The settings and the records kept in
//! `config.json` are in [`crate::record`].
//!
//! An output directory holds the best model so far (`config.json`, `model.safetensors`,
//! see [`crate::Model`]) and `checkpoint.safetensors`, the full state of the run (weights,
//! optimiser moments, episode, sampler state, history).

mod state;
pub mod supervised;

use std::collections::VecDeque;
use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::data::{rotate_square_ccw, ImageSet};
use crate::episode::{Episode, EpisodeSampler, EpisodeSpec};
use crate::error::{Error, Result};
use crate::eval::{evaluate, EvalConfig};
use crate::model::Model;
use crate::observer::{Observer, Silent};
use crate::optim::Adam;
use crate::output::{prepare, OutputMode, CHECKPOINT_FILE, WEIGHTS_FILE};
use crate::record::{HistoryPoint, TrainConfig, TrainingRecord};

pub use state::{describe, RunState};

/// Options that do not change the result of training.
#[derive(Debug, Clone, Default)]
pub struct TrainOptions {
    /// What to do when the output directory already holds a model, classifier or run:
    /// refuse ([`OutputMode::New`], the default), continue the run
    /// ([`OutputMode::Resume`]) or replace it ([`OutputMode::Overwrite`]).
    pub mode: OutputMode,
    /// Stop (as if interrupted) once this many episodes are done, after checkpointing: a
    /// run in slices (for example one per session), each resumed with [`OutputMode::Resume`].
    pub stop_after: Option<usize>,
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

/// Whether the run state is written after `episode`: every `every` episodes, and whenever
/// the run ends (`last`) or pauses (`stopping`: early stopping or `stop_after`).
fn should_checkpoint(episode: usize, every: usize, last: bool, stopping: bool) -> bool {
    episode.is_multiple_of(every) || last || stopping
}

/// The mean loss and accuracy of the last few episodes, for the progress line.
#[derive(Debug, Default)]
struct RecentMean {
    window: VecDeque<(f32, f32)>,
}

impl RecentMean {
    /// Episodes in the window.
    const LEN: usize = 50;

    fn push(&mut self, loss: f32, accuracy: f32) {
        if self.window.len() == Self::LEN {
            self.window.pop_front();
        }
        self.window.push_back((loss, accuracy));
    }

    /// (mean loss, mean accuracy) over the window.
    fn mean(&self) -> (f32, f32) {
        let n = self.window.len().max(1) as f32;
        (self.window.iter().map(|r| r.0).sum::<f32>() / n, self.window.iter().map(|r| r.1).sum::<f32>() / n)
    }
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
        let method = model.net().method();
        if !method.trains_episodically() {
            return Err(Error::param(
                "method",
                format!("the `{}` method is fitted to each support set at test time and cannot train the backbone on episodes; train with another method and set it on the trained model", method.config().name()),
            ));
        }
        let device = model.device().clone();
        let vars = trained_vars(model, config.method_only)?;
        let mut adam = Adam::new(vars, config.learning_rate);
        adam.max_grad_norm = config.grad_clip;
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
        let out = self.model.net().forward_episode_with(&images, self.spec, &labels, true, self.config.method_only)?;
        if !out.loss_value.is_finite() {
            return Err(Error::NonFiniteLoss { episode: episode + 1, value: out.loss_value });
        }
        let grads = out.loss.backward()?;
        // A finite loss can still have non-finite gradients; never let them into the weights.
        check_finite_gradients(&grads, &trained_vars(self.model, self.config.method_only)?, episode + 1)?;
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
    /// fair; the model's own rotations and normalization, as it classifies) and appends a point to the history, with the training loss and accuracy
    /// averaged since the previous point.
    pub fn validate(&mut self) -> Result<HistoryPoint> {
        let (val_accuracy, val_ci95) = match self.val_set {
            Some(v) => {
                let eval = EvalConfig::new(self.val_spec, self.config.val_episodes, self.config.seed ^ 0x5eed);
                let r = evaluate(self.model, v, &eval, &Silent)?;
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
    /// run state every `checkpoint_every` episodes. With `options.mode` set to
    /// [`OutputMode::Resume`], continues the run saved in `out_dir`.
    ///
    /// With a validation set, the model saved in `out_dir` is the one with the best
    /// validation accuracy, and the model itself ends as the best one too; without, it is
    /// the last.
    pub fn run(mut self, out_dir: &Path, options: &TrainOptions, observer: &dyn Observer) -> Result<TrainReport> {
        let ckpt_path = self.open_run(out_dir, options.mode)?;
        observer.start("train", self.config.episodes as u64);
        observer.progress(self.state.episode as u64, "");
        let result = self.episodes(out_dir, &ckpt_path, options, observer);
        observer.finish();
        let stopped_early = result?;
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

    /// Prepares `out_dir` for the run as `mode` says and resumes the run saved there or
    /// writes the fresh run's first state. Returns the checkpoint's path. A refusal says
    /// what the directory holds ([`describe`]).
    fn open_run(&mut self, out_dir: &Path, mode: OutputMode) -> Result<std::path::PathBuf> {
        let ckpt_path = out_dir.join(CHECKPOINT_FILE);
        let described = |e: Error| match e {
            Error::OutputExists { path, holds } => Error::OutputExists { holds: describe(&path).unwrap_or(holds), path },
            other => other,
        };
        prepare(out_dir, mode).map_err(described)?;
        let resume = mode == OutputMode::Resume && ckpt_path.exists();
        if mode == OutputMode::Resume && !resume {
            if let Some(holds) = describe(out_dir) {
                return Err(Error::OutputExists { path: out_dir.to_path_buf(), holds: format!("{holds} but no training run to resume") });
            }
        }
        std::fs::create_dir_all(out_dir).map_err(|e| Error::io(out_dir, e))?;
        // Left by a run killed while writing; the files they were to replace are intact.
        crate::io::remove_stale_temporaries(out_dir);
        if resume {
            self.resume_from(&ckpt_path)?;
        } else {
            // The run's state exists from its start: a run killed before its first
            // checkpoint resumes from episode 0 rather than finding a model without a run.
            self.save_checkpoint(&ckpt_path)?;
        }
        Ok(ckpt_path)
    }

    /// The episode loop of [`Trainer::run`]; returns whether early stopping ended it.
    fn episodes(&mut self, out_dir: &Path, ckpt_path: &Path, options: &TrainOptions, observer: &dyn Observer) -> Result<bool> {
        let episodes = self.config.episodes;
        let started = Instant::now();
        let seconds_before = self.state.seconds;
        let mut recent = RecentMean::default();
        let mut stopped_early = false;
        while self.state.episode < episodes {
            let step = self.step()?;
            self.state.seconds = seconds_before + started.elapsed().as_secs_f64();
            recent.push(step.loss, step.accuracy);
            let (loss, acc) = recent.mean();
            let best = self.state.stopping.best_val.map(|b| format!(" best val {:.2}%", 100.0 * b)).unwrap_or_default();
            observer.progress(self.state.episode as u64, &format!("loss {loss:.3} acc {:.1}% lr {:.1e}{best}", 100.0 * acc, step.learning_rate));
            let last = self.state.episode == episodes;
            if self.state.episode.is_multiple_of(self.config.val_every) || last {
                stopped_early = self.after_validation(out_dir, observer)?;
            }
            let stop_now = options.stop_after.is_some_and(|s| self.state.episode >= s);
            if should_checkpoint(self.state.episode, self.config.checkpoint_every, last, stopped_early || stop_now) {
                self.save_checkpoint(ckpt_path)?;
            }
            if stopped_early || stop_now {
                break;
            }
        }
        Ok(stopped_early)
    }

    /// Validates, saves the model into `out_dir` when it is the best so far, reports to
    /// `observer`; returns whether early stopping says to stop.
    fn after_validation(&mut self, out_dir: &Path, observer: &dyn Observer) -> Result<bool> {
        let point = self.validate()?;
        let best = self.state.stopping.update(point.episode, point.val_accuracy);
        if best {
            self.model.set_training_record(self.record());
            self.model.save_with(out_dir, OutputMode::Overwrite)?;
        }
        observer.note(&point.summary(best));
        observer.validated(&self.state.history, best);
        Ok(self.state.stopping.should_stop(self.config.patience))
    }
}

/// The variables episodic training updates: all the trainable ones, or the method's own
/// (`method.*`) when `method_only`, which must then have some.
fn trained_vars(model: &Model, method_only: bool) -> Result<Vec<(String, candle_core::Var)>> {
    let vars = model.trainable_vars();
    if !method_only {
        return Ok(vars);
    }
    let own: Vec<_> = vars.into_iter().filter(|(n, _)| n.starts_with("method.")).collect();
    if own.is_empty() {
        return Err(Error::param("method-only", format!("the `{}` method has no parameters of its own to train", model.net().method().config().name())));
    }
    Ok(own)
}

/// Errors with [`Error::NonFiniteGradient`] (naming the parameter and `episode`) when a
/// gradient in `grads` of one of `vars` holds a NaN or an infinity.
fn check_finite_gradients(grads: &candle_core::backprop::GradStore, vars: &[(String, candle_core::Var)], episode: usize) -> Result<()> {
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
        return Err(Error::param("rotate", format!("images are {h}x{w}, not square")));
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0x0005_07a7_e000u64 ^ (episode as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let items: Vec<(usize, usize)> = ep.support.iter().chain(&ep.query).copied().collect();
    let mut data = Vec::with_capacity(items.len() * c * h * w);
    for &(k, i) in &items {
        data.extend(rotate_square_ccw(set.image(k, i), c, w, rng.random_range(0..4)));
    }
    let images = Tensor::from_vec(data, (items.len(), c, h, w), device)?;
    let labels = Tensor::new(ep.query_labels(), device)?;
    Ok((images, labels))
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::{check_finite_gradients, should_checkpoint, RecentMean};

    #[test]
    fn non_finite_gradients_are_named() -> crate::Result<()> {
        // sqrt at 0: a finite value (0) with an infinite gradient.
        let x = Var::new(&[0f32, 1.0], &Device::Cpu)?;
        let grads = x.as_tensor().sqrt()?.sum_all()?.backward()?;
        let err = check_finite_gradients(&grads, &[("x".into(), x.clone())], 7).unwrap_err().to_string();
        assert!(err.contains("`x`") && err.contains("episode 7"), "{err}");
        let grads = x.as_tensor().sqr()?.sum_all()?.backward()?;
        check_finite_gradients(&grads, &[("x".into(), x)], 8)
    }

    #[test]
    fn recent_mean_keeps_the_last_fifty() {
        let mut r = RecentMean::default();
        assert_eq!(r.mean(), (0.0, 0.0));
        for i in 0..60 {
            r.push(i as f32, 1.0);
        }
        // Episodes 10..60: mean 34.5.
        assert_eq!(r.mean(), (34.5, 1.0));
    }

    #[test]
    fn checkpoints_every_n_and_at_the_end() {
        assert!(should_checkpoint(200, 100, false, false));
        assert!(!should_checkpoint(150, 100, false, false));
        assert!(should_checkpoint(150, 100, true, false) && should_checkpoint(150, 100, false, true));
    }
}
