//! The records a model directory's `config.json` keeps of how it was trained: the
//! settings ([`TrainConfig`]), the validation history ([`HistoryPoint`]) and, for
//! fine-tuned pretrained networks, what was fine-tuned ([`FineTuneRecord`]). Plain data,
//! written by the trainer and read by the model, the observer and the plots.

use serde::{Deserialize, Serialize};

use crate::episode::EpisodeSpec;
use crate::error::{Error, Result};

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
