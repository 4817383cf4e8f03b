//! The records a model directory's `config.json` keeps of how it was trained: the
//! episodic settings ([`TrainConfig`]), the validation history ([`HistoryPoint`]), for
//! fine-tuned pretrained networks what was fine-tuned ([`FineTuneRecord`]), and the
//! settings and losses of a supervised run over all base classes ([`SupervisedConfig`],
//! [`SupervisedRecord`]). Plain data, written by the trainers and read by the model, the
//! observer and the plots.

use serde::{Deserialize, Serialize};

use crate::data::CoinAugment;
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
    /// Clip the gradients' global L2 norm to this before each step (the Relation
    /// Network's reference code clips at 0.5; `None`: no clipping).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grad_clip: Option<f64>,
    /// Train the method's own parameters only (a relation module, a temperature) on a
    /// backbone trained before, which stays as it is (embedding in evaluation mode, no
    /// gradient into it).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub method_only: bool,
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
            grad_clip: None,
            method_only: false,
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
        if let Some(c) = self.grad_clip.filter(|c| !(c.is_finite() && *c > 0.0)) {
            return Err(Error::param("grad-clip", format!("must be a positive number, got {c}")));
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

/// The classifier over the base classes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BaseClassifier {
    /// `W x + b` (Baseline, Classifier-Baseline).
    Linear,
    /// `scale * g_k cos(x, v_k)`.
    Cosine {
        /// The scale (CloserLook's `distLinear`: 10 for more than 200 classes).
        scale: f32,
        /// Learn the scale (as a log), starting at `scale`.
        learn_scale: bool,
        /// Per-class learned gains `g_k` (weight normalization, as `distLinear`); else 1.
        class_gains: bool,
    },
}

/// The scale of Baseline++'s base classifier: CloserLook's `distLinear` has 10 for more
/// than 200 classes (Omniglot's 4112), 2 for fewer.
pub const BASELINE_PP_SCALE: f32 = 10.0;

impl BaseClassifier {
    /// Baseline++'s base classifier, as CloserLook's code has it for Omniglot's 4112
    /// classes: weight-normalized cosine, fixed scale [`BASELINE_PP_SCALE`].
    pub fn baseline_pp() -> Self {
        BaseClassifier::Cosine { scale: BASELINE_PP_SCALE, learn_scale: false, class_gains: true }
    }
}

/// Augmentation of every training image, drawn afresh at every epoch.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TrainingAugment {
    /// The augmentation (rotation, crop, colour, blur; never a mirror).
    pub coin: CoinAugment,
    /// The side of the augmented training crops, in pixels.
    pub size: usize,
}

/// Settings of a supervised run; recorded in its checkpoint and compared on resume.
///
/// ```
/// let c = protonet::train::supervised::SupervisedConfig::default();
/// c.validate()?;
/// assert_eq!((c.epochs, c.batch, c.learning_rate), (5, 16, 1e-3));
/// # Ok::<(), protonet::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SupervisedConfig {
    /// The classifier over the base classes.
    pub classifier: BaseClassifier,
    /// Passes over the training images.
    pub epochs: usize,
    /// Images per step.
    pub batch: usize,
    /// Adam's learning rate (the backbone's, and the classifier's unless
    /// `classifier_learning_rate` is set).
    pub learning_rate: f64,
    /// Adam's learning rate of the classifier, when it differs from the backbone's.
    #[serde(default)]
    pub classifier_learning_rate: Option<f64>,
    /// Decoupled weight decay.
    pub weight_decay: f64,
    /// The share of the steps spent warming the learning rate up linearly, followed by a
    /// half cosine to 0; `None`: constant.
    pub warmup_cosine: Option<f64>,
    /// Label smoothing of the cross-entropy.
    pub label_smoothing: f64,
    /// Dropout on the embeddings, before the classifier.
    pub dropout: f32,
    /// Drop-connect (stochastic depth) in the backbone's trained residual blocks, as
    /// EfficientNet trains ([`crate::backbone::DropConnect`]; its
    /// [`crate::backbone::EFFICIENTNET_LITE0_DROP_CONNECT`] is 0.2); 0: none.
    #[serde(default)]
    pub drop_connect: f32,
    /// Augmentation of the training images (`None`: the images as loaded).
    #[serde(default)]
    pub augment: Option<TrainingAugment>,
    /// Seed of the classifier's initialisation, the order of the images, the augmentation
    /// and dropout.
    pub seed: u64,
}

impl Default for SupervisedConfig {
    /// CloserLook's Omniglot base training: linear classifier, 5 epochs, batches of 16,
    /// Adam 1e-3, nothing else.
    fn default() -> Self {
        Self {
            classifier: BaseClassifier::Linear,
            epochs: 5,
            batch: 16,
            learning_rate: 1e-3,
            classifier_learning_rate: None,
            weight_decay: 0.0,
            warmup_cosine: None,
            label_smoothing: 0.0,
            dropout: 0.0,
            drop_connect: 0.0,
            augment: None,
            seed: 1,
        }
    }
}

impl SupervisedConfig {
    /// The coin trunk's recipe ([`crate::finetune::trunk`]): a cosine classifier with a
    /// scale learned from 10, 8 epochs of batch 64, AdamW 2e-4 for the backbone and 2e-3
    /// for the classifier, weight decay 1e-4, cosine schedule after a 5% warm-up, label
    /// smoothing 0.1, dropout 0.2, coin augmentation to 192 px crops, seed 7.
    pub fn coin_trunk() -> Self {
        Self {
            classifier: BaseClassifier::Cosine { scale: 10.0, learn_scale: true, class_gains: false },
            epochs: 8,
            batch: 64,
            learning_rate: 2e-4,
            classifier_learning_rate: Some(2e-3),
            weight_decay: 1e-4,
            warmup_cosine: Some(0.05),
            label_smoothing: 0.1,
            dropout: 0.2,
            drop_connect: 0.0,
            augment: Some(TrainingAugment { coin: CoinAugment::default(), size: 192 }),
            seed: 7,
        }
    }
}

impl SupervisedConfig {
    /// The same with crops of any aspect ratio from 3/4 to 4/3 in the augmentation
    /// ([`crate::data::RESIZED_CROP_ASPECT`]) when `on` and there is an augmentation.
    ///
    /// ```
    /// let c = protonet::train::supervised::SupervisedConfig::coin_trunk().with_aspect_jitter(true);
    /// assert_eq!(c.augment.unwrap().coin.aspect, protonet::data::RESIZED_CROP_ASPECT);
    /// ```
    pub fn with_aspect_jitter(mut self, on: bool) -> Self {
        if let Some(a) = self.augment.as_mut().filter(|_| on) {
            a.coin.aspect = crate::data::RESIZED_CROP_ASPECT;
        }
        self
    }

    /// Checks the settings; errors name the setting.
    pub fn validate(&self) -> Result<()> {
        if self.epochs == 0 {
            return Err(Error::param("epochs", "must be at least 1"));
        }
        if self.batch == 0 {
            return Err(Error::param("batch", "must be at least 1"));
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return Err(Error::param("lr", format!("must be a positive number, got {}", self.learning_rate)));
        }
        if let Some(lr) = self.classifier_learning_rate.filter(|lr| !(lr.is_finite() && *lr > 0.0)) {
            return Err(Error::param("classifier-lr", format!("must be a positive number, got {lr}")));
        }
        if let Some(a) = self.augment.filter(|a| !(32..=1024).contains(&a.size)) {
            return Err(Error::param("train-size", format!("must be in 32..=1024, got {}", a.size)));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(Error::param("weight-decay", format!("must be >= 0, got {}", self.weight_decay)));
        }
        if self.warmup_cosine.is_some_and(|w| !(0.0..1.0).contains(&w)) {
            return Err(Error::param("warmup", "must be in [0, 1)"));
        }
        if !(0.0..1.0).contains(&self.label_smoothing) {
            return Err(Error::param("label-smoothing", "must be in [0, 1)"));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::param("dropout", "must be in [0, 1)"));
        }
        if !(0.0..1.0).contains(&self.drop_connect) {
            return Err(Error::param("drop-connect", "must be in [0, 1)"));
        }
        if let BaseClassifier::Cosine { scale, .. } = self.classifier {
            if !(scale.is_finite() && scale > 0.0) {
                return Err(Error::param("scale", format!("must be a positive number, got {scale}")));
            }
        }
        Ok(())
    }

    /// The learning-rate factor at `step` of `total`.
    pub fn schedule(&self, step: usize, total: usize) -> f64 {
        self.warmup_cosine.map_or(1.0, |w| warmup_cosine(w, step, total))
    }
}

/// The learning-rate factor at `step` of `total`: a linear warm-up over the share
/// `warmup` of the steps, then a half cosine to 0.
fn warmup_cosine(warmup: f64, step: usize, total: usize) -> f64 {
    let warm = (warmup * total as f64).ceil().max(1.0);
    let s = step as f64 + 1.0;
    if s <= warm {
        return s / warm;
    }
    0.5 * (1.0 + (std::f64::consts::PI * (s - warm) / (total as f64 - warm).max(1.0)).cos())
}

/// How a supervised run over all base classes went ([`crate::train::supervised`]):
/// stored in the `config.json` of the model it wrote, beside the episodic
/// [`TrainingRecord`] (Meta-Baseline has both stages).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SupervisedRecord {
    /// The run's settings.
    pub config: SupervisedConfig,
    /// Epochs done.
    pub epochs: usize,
    /// The mean training loss of every epoch.
    pub losses: Vec<f64>,
    /// Seconds of training.
    pub seconds: f64,
    /// The number of base classes.
    pub classes: usize,
    /// The number of training images.
    pub images: usize,
}
