//! `protonet train`.

use std::path::{Path, PathBuf};

use crate::support::progress::{Bars, CURVES_FILE};
use clap::Args;
use protonet::backbone::{BackboneConfig, Conv4Config};
use protonet::data::ImageConfig;
use protonet::eval::{evaluate, EvalConfig};
use protonet::method::MatchingConfig;
use protonet::train::supervised::{train_supervised, BaseClassifier, SupervisedConfig};
use protonet::{EpisodeSpec, Error, Model, ModelConfig, Result, Silent, TrainConfig, TrainOptions, Trainer};

use crate::common::{device, output_mode, DataArgs, DatasetKind, MethodName};

/// Arguments of `protonet train`. Defaults are the paper's Omniglot protocol.
#[derive(Args, Debug)]
pub struct TrainArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Omniglot split to train on (train or trainval).
    #[arg(long, default_value = "train")]
    train_split: String,
    /// Omniglot split to validate on, or `none`.
    #[arg(long, default_value = "val")]
    val_split: String,
    /// For --dataset folder: a folder of validation classes (none by default).
    #[arg(long)]
    val_data: Option<PathBuf>,
    /// Model directory to write (best model, config.json, checkpoint.safetensors).
    #[arg(long)]
    out: PathBuf,
    /// Classes per training episode.
    #[arg(long, default_value_t = TrainConfig::default().way)]
    way: usize,
    /// Support images per class.
    #[arg(long, default_value_t = TrainConfig::default().shot)]
    shot: usize,
    /// Query images per class.
    #[arg(long, default_value_t = TrainConfig::default().query)]
    query: usize,
    /// Training episodes in total.
    #[arg(long, default_value_t = TrainConfig::default().episodes)]
    episodes: usize,
    /// Adam learning rate.
    #[arg(long, default_value_t = TrainConfig::default().learning_rate)]
    lr: f64,
    /// Halve the learning rate every this many episodes (0: never).
    #[arg(long, default_value_t = TrainConfig::default().lr_halve_every)]
    lr_halve_every: usize,
    /// Classes per validation episode.
    #[arg(long, default_value_t = TrainConfig::default().val_way)]
    val_way: usize,
    /// Support images per class in validation (default: --shot).
    #[arg(long)]
    val_shot: Option<usize>,
    /// Query images per class in validation.
    #[arg(long, default_value_t = TrainConfig::default().val_query)]
    val_query: usize,
    /// Validate every this many episodes.
    #[arg(long, default_value_t = TrainConfig::default().val_every)]
    val_every: usize,
    /// Episodes per validation.
    #[arg(long, default_value_t = TrainConfig::default().val_episodes)]
    val_episodes: usize,
    /// Stop after this many validations without improvement (0: never stop early).
    #[arg(long, default_value_t = TrainConfig::default().patience.unwrap_or(0))]
    patience: usize,
    /// Write the resumable checkpoint every this many episodes.
    #[arg(long, default_value_t = TrainConfig::default().checkpoint_every)]
    checkpoint_every: usize,
    /// Seed for weight initialisation and episode sampling.
    #[arg(long, default_value_t = TrainConfig::default().seed)]
    seed: u64,
    /// Rotate training images by random multiples of 90 degrees (for angle-free subjects such as coins).
    #[arg(long)]
    rotate: bool,
    /// Clip the gradients' global L2 norm to this before each step of episodic training
    /// (the Relation Network's reference code clips at 0.5); none by default.
    #[arg(long)]
    grad_clip: Option<f64>,
    /// Continue the run saved in OUT (OUT/checkpoint.safetensors), or start one if OUT holds
    /// none. Without --resume or --overwrite, an OUT that holds a model, classifier or run is refused.
    #[arg(long, conflicts_with = "overwrite")]
    resume: bool,
    /// Replace the model, classifier or run that OUT holds.
    #[arg(long)]
    overwrite: bool,
    /// For --dataset folder: images are resized to this many pixels square.
    #[arg(long, default_value_t = 84)]
    image_size: usize,
    /// For --dataset folder: 3 (RGB) or 1 (grey).
    #[arg(long, default_value_t = 3)]
    channels: usize,
    /// Filters per Conv-4 block.
    #[arg(long, default_value_t = Conv4Config::default().hidden)]
    hidden: usize,
    /// Conv-4 blocks.
    #[arg(long, default_value_t = Conv4Config::default().depth)]
    depth: usize,
    /// The few-shot method trained: protonet (nearest class mean, squared Euclidean
    /// distance), matching (Matching Networks: softmax attention over the support images
    /// by cosine similarity, without full-context embeddings), baseline / baseline-pp
    /// (supervised over all base classes, then a classifier fitted on each support set),
    /// or meta-baseline (supervised with --epochs/--batch in OUT/classifier-stage, then
    /// episodic with --episodes; the better stage on validation is kept). Recorded in the
    /// model's config.json, so eval, predict and bench need no flag.
    #[arg(long, value_enum, default_value_t = MethodName::Protonet)]
    method: MethodName,
    /// --method baseline/baseline-pp: passes over the training images (supervised, over
    /// all base classes; --episodes and the validation flags are for the episodic methods).
    #[arg(long, default_value_t = SupervisedConfig::default().epochs)]
    epochs: usize,
    /// --method baseline/baseline-pp: images per step.
    #[arg(long, default_value_t = SupervisedConfig::default().batch)]
    batch: usize,
    /// --method matching: the cosine similarities are multiplied by this before the softmax.
    #[arg(long, default_value_t = MatchingConfig::default().scale)]
    matching_scale: f32,
    /// --method baseline-pp: the base classifier's scale on the cosines (CloserLook's 10
    /// for more than 200 classes).
    #[arg(long, default_value_t = protonet::train::supervised::BASELINE_PP_SCALE)]
    base_scale: f32,
    /// --method baseline-pp: learn the base classifier's scale (from --base-scale) instead
    /// of keeping it fixed.
    #[arg(long)]
    learn_base_scale: bool,
    /// cpu, cuda or metal (the latter two need the crate's `cuda`/`metal` features).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Free text stored in the model's config.json (what it is for, how it was trained).
    #[arg(long, default_value = "")]
    description: String,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

pub fn run(a: TrainArgs) -> Result<()> {
    let dev = device(&a.device)?;
    let image = match a.data.dataset {
        DatasetKind::Omniglot => ImageConfig::omniglot(),
        DatasetKind::Folder if a.channels == 1 => ImageConfig::grey(a.image_size),
        DatasetKind::Folder => ImageConfig { channels: a.channels, ..ImageConfig::rgb(a.image_size) },
    };
    let method = a.method.config(a.matching_scale, a.hidden);
    let backbone = BackboneConfig::Conv4(Conv4Config { in_channels: image.channels, hidden: a.hidden, depth: a.depth, layout: method.conv4_layout() });
    let config = TrainConfig {
        way: a.way,
        shot: a.shot,
        query: a.query,
        episodes: a.episodes,
        learning_rate: a.lr,
        lr_halve_every: a.lr_halve_every,
        val_way: a.val_way,
        val_shot: a.val_shot,
        val_query: a.val_query,
        val_every: a.val_every,
        val_episodes: a.val_episodes,
        patience: (a.patience > 0).then_some(a.patience),
        checkpoint_every: a.checkpoint_every,
        seed: a.seed,
        rotation_augment: a.rotate,
        grad_clip: a.grad_clip,
        method_only: false,
    };
    config.validate()?;
    let mut model_config = ModelConfig::new(backbone, image.clone());
    model_config.description = a.description.clone();
    model_config.method = method;
    // Trained for angle-free subjects: classify with embeddings averaged over 4 quarter
    // turns (not for a method that scores maps, which rotations would mix).
    model_config.rotations = if a.rotate && !model_config.method.scores_maps() { 4 } else { 1 };
    let mut model = Model::new(model_config, a.seed, &dev)?;
    let train_set = a.data.load(&a.train_split, &image, a.quiet)?;
    if let Some(classifier) = base_classifier(&a) {
        return train_base_classes(&a, &mut model, &train_set, classifier, &a.out);
    }
    let val_set = match (a.data.dataset, &a.val_data) {
        (DatasetKind::Omniglot, _) if a.val_split == "none" => None,
        (DatasetKind::Omniglot, _) => Some(a.data.load(&a.val_split, &image, a.quiet)?),
        (DatasetKind::Folder, Some(dir)) => {
            let args = DataArgs { dataset: DatasetKind::Folder, data: Some(dir.clone()), skip_bad_images: a.data.skip_bad_images };
            Some(args.load("val", &image, a.quiet)?)
        }
        (DatasetKind::Folder, None) => None,
    };
    // Meta-Baseline: its first stage, a classifier of all base classes, in OUT/classifier-stage.
    let stage_one = if a.method == MethodName::MetaBaseline {
        let val = val_set
            .as_ref()
            .ok_or_else(|| Error::param("val-data", "--method meta-baseline chooses between its stages on validation: give a validation set"))?;
        let dir = a.out.join(CLASSIFIER_STAGE);
        train_base_classes(&a, &mut model, &train_set, BaseClassifier::Linear, &dir)?;
        let spec = EpisodeSpec { way: a.val_way, shot: a.val_shot.unwrap_or(a.shot), query: a.val_query };
        let report = evaluate(&model, val, &EvalConfig::new(spec, a.val_episodes, a.seed), &Silent)?;
        outln!("stage 1 (classifier of all base classes): validation {:.2}%", 100.0 * report.accuracy);
        Some((dir, report.accuracy))
    } else {
        None
    };
    let options = TrainOptions { mode: output_mode(a.resume, a.overwrite), stop_after: None };
    let bars = Bars::new(!a.quiet).with_curves(a.out.join(CURVES_FILE));
    let report = Trainer::new(&mut model, &train_set, val_set.as_ref(), &config)?.run(&a.out, &options, &bars)?;
    if let (Some((dir, first)), Some(second)) = (stage_one, report.best_val_accuracy) {
        keep_better_stage(&a.out, &dir, first, second)?;
    }
    outln!(
        "trained {} episodes in {:.0}s{}; model saved to {}{}",
        report.episodes,
        report.seconds,
        report.best_val_accuracy.map(|v| format!(", best validation {:.2}% at episode {}", 100.0 * v, report.best_episode)).unwrap_or_default(),
        a.out.display(),
        if report.stopped_early { " (stopped early)" } else { "" }
    );
    Ok(())
}

/// The classifier of all base classes that `a.method` is trained with, if it is trained so.
fn base_classifier(a: &TrainArgs) -> Option<BaseClassifier> {
    match a.method {
        MethodName::Baseline => Some(BaseClassifier::Linear),
        MethodName::BaselinePp => Some(BaseClassifier::Cosine { scale: a.base_scale, learn_scale: a.learn_base_scale, class_gains: true }),
        MethodName::Protonet | MethodName::Matching | MethodName::MetaBaseline | MethodName::Relation => None,
    }
}

/// Where `train --method meta-baseline` trains its first stage, inside OUT.
const CLASSIFIER_STAGE: &str = "classifier-stage";

/// Meta-Baseline's model selection: the episodic stage's best model (in `out`) is kept
/// when its validation accuracy `second` is at least the first stage's `first`; else the
/// first stage's model (in `stage_one`) replaces it. `config.json` says which.
fn keep_better_stage(out: &Path, stage_one: &Path, first: f64, second: f64) -> Result<()> {
    let (kept, from) = if second >= first { ("stage 2 (episodic)", out) } else { ("stage 1 (classifier of all base classes)", stage_one) };
    let note = format!("model selection on validation: {kept} kept ({:.2}% after stage 1, {:.2}% after stage 2)", 100.0 * first, 100.0 * second);
    let mut config = ModelConfig::read(from)?;
    config.description = [config.description.as_str(), note.as_str()].iter().filter(|s| !s.is_empty()).copied().collect::<Vec<_>>().join("; ");
    if second < first {
        let model = Model::load(stage_one, &protonet::Device::Cpu)?;
        model.save_with(out, protonet::OutputMode::Overwrite)?;
    }
    protonet::io::write_atomic(&out.join("config.json"), &serde_json::to_vec_pretty(&config).expect("serialises"))?;
    outln!("{note}");
    Ok(())
}

/// Baseline and Baseline++ (and Meta-Baseline's first stage): the backbone trained as a
/// classifier of every training class, written to `out`.
fn train_base_classes(a: &TrainArgs, model: &mut Model, train_set: &protonet::data::ImageSet, classifier: BaseClassifier, out: &Path) -> Result<()> {
    let config = SupervisedConfig { classifier, epochs: a.epochs, batch: a.batch, learning_rate: a.lr, seed: a.seed, ..Default::default() };
    let options = TrainOptions { mode: output_mode(a.resume, a.overwrite), stop_after: None };
    let bars = Bars::new(!a.quiet);
    let report = train_supervised(model, train_set, &config, out, &options, &bars)?;
    outln!(
        "trained {} epochs over {} classes in {:.0}s (last epoch's loss {:.4}); model saved to {}",
        report.epochs,
        train_set.num_classes(),
        report.seconds,
        report.losses.last().copied().unwrap_or(f64::NAN),
        out.display()
    );
    Ok(())
}
