//! `protonet fine-tune`.

use std::path::PathBuf;

use crate::support::progress::{Bars, CURVES_FILE};
use clap::Args;
use protonet::adapt::SupportAdaptation;
use protonet::backbone::{HeadConfig, LiteVariant};
use protonet::data::{CoinCrop, ImageConfig, ImageSet};
use protonet::finetune::trunk::{train_trunk, TrunkConfig};
use protonet::finetune::{fine_tune_efficientnet, FineTuneConfig, HEAD_TRAINING_DIR};
use protonet::pretrained::PretrainedWeights;
use protonet::train::supervised::SupervisedConfig;
use protonet::{Error, Result, TrainConfig, TrainOptions};

use crate::common::output_mode;

/// Arguments of `protonet fine-tune`.
#[derive(Args, Debug)]
pub struct FineTuneArgs {
    /// Folder of base classes (one sub-folder each); repeat to merge several folders.
    #[arg(long, required = true)]
    data: Vec<PathBuf>,
    /// Add this many rendered denominations of made-up currencies (20 images each) to the base classes.
    #[arg(long, default_value_t = 0)]
    rendered: usize,
    /// Folder of validation classes (the best head by validation is kept).
    #[arg(long)]
    val_data: Option<PathBuf>,
    /// Model directory to write.
    #[arg(long)]
    out: PathBuf,
    /// Images are resized to this many pixels square (32 to 448; default: the network's own,
    /// 224, or 260 for --lite2).
    #[arg(long)]
    image_size: Option<usize>,
    /// Cache each training image at this many quarter turns (1 to 4).
    #[arg(long, default_value_t = 4)]
    rotations: usize,
    /// Classes per training episode (default: all base classes, at most 20).
    #[arg(long)]
    way: Option<usize>,
    /// Support images per class.
    #[arg(long, default_value_t = 4)]
    shot: usize,
    /// Query images per class.
    #[arg(long, default_value_t = 4)]
    query: usize,
    /// Training episodes.
    #[arg(long, default_value_t = 300)]
    episodes: usize,
    /// Adam learning rate.
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// Halve the learning rate every this many episodes (0: never).
    #[arg(long, default_value_t = 0)]
    lr_halve_every: usize,
    /// Classes per validation episode (default: all validation classes, at most 20).
    #[arg(long)]
    val_way: Option<usize>,
    /// Validate (or, without --val-data, save) every this many episodes.
    #[arg(long, default_value_t = 50)]
    val_every: usize,
    /// Episodes per validation.
    #[arg(long, default_value_t = 100)]
    val_episodes: usize,
    /// Stop after this many validations without improvement (0: never).
    #[arg(long, default_value_t = 0)]
    patience: usize,
    /// Plain squared Euclidean distances instead of L2-normalized embeddings (cosine).
    #[arg(long)]
    no_normalize: bool,
    /// Free text for config.json.
    #[arg(long, default_value = "")]
    description: String,
    /// Seed for sampling.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Skip unusable image files with a warning instead of stopping.
    #[arg(long)]
    skip_bad_images: bool,
    /// Continue the run saved in OUT/head-training. Without --resume or --overwrite, an OUT
    /// that holds a model or run is refused.
    #[arg(long, conflicts_with = "overwrite")]
    resume: bool,
    /// Replace the model and run that OUT holds.
    #[arg(long)]
    overwrite: bool,
    /// No progress bars.
    #[arg(long)]
    quiet: bool,
    /// Train the last MBConv blocks and the head by cross-entropy over all base classes
    /// (cosine classifier, coin augmentation, AdamW, cosine schedule) instead of the head
    /// alone episodically; the model then classifies with support centring + L2, 4
    /// rotations and the support adaptation.
    #[arg(long)]
    trunk: bool,
    /// With --trunk: the first trained MBConv block (of 16, or 21 for --lite2; 0 trains the
    /// stem and every block). Default: the last 8 blocks (8, or 13 for --lite2).
    #[arg(long)]
    first_block: Option<usize>,
    /// With --trunk: EfficientNet-Lite2 (ImageNet weights from `fetch-weights --lite2`, 260
    /// px, 224 px training crops; about 1.8x Lite0's compute) instead of Lite0.
    #[arg(long, requires = "trunk")]
    lite2: bool,
    /// With --trunk: drop-connect (stochastic depth) rate of the trained blocks, as
    /// EfficientNet trains (block i of 16 drops its residual branch with rate * i / 16;
    /// EfficientNet-Lite0's own is 0.2); 0: none.
    #[arg(long, default_value_t = 0.0)]
    drop_connect: f32,
    /// Trunk training: crops of any aspect ratio from 3/4 to 4/3 resized square (as
    /// torchvision's RandomResizedCrop), instead of square crops only.
    #[arg(long)]
    aspect_jitter: bool,
    /// With --trunk: passes over the base classes.
    #[arg(long, default_value_t = 8)]
    epochs: usize,
    /// With --trunk: Adam steps of the model's support adaptation (0: plain prototypes).
    #[arg(long, default_value_t = 50)]
    adapt_steps: usize,
    /// The model crops each photo to its coin (Hough circles) before embedding it; with
    /// --trunk the training photos are cropped too (as `scripts/coins-loco.sh` measures it).
    #[arg(long)]
    crop: bool,
}

/// `fine-tune --trunk`: the last blocks (or all) and the head by cross-entropy.
fn run_trunk(a: &FineTuneArgs, train_set: &ImageSet, image: ImageConfig) -> Result<()> {
    let variant = if a.lite2 { LiteVariant::Lite2 } else { LiteVariant::Lite0 };
    let defaults = TrunkConfig::for_variant(variant);
    let config = TrunkConfig {
        image: ImageConfig { crop: a.crop.then(CoinCrop::default), ..image },
        first_block: a.first_block.unwrap_or(defaults.first_block),
        training: SupervisedConfig { epochs: a.epochs, seed: a.seed, drop_connect: a.drop_connect, ..defaults.training.with_aspect_jitter(a.aspect_jitter) },
        adaptation: Some(SupportAdaptation { steps: a.adapt_steps, ..Default::default() }).filter(SupportAdaptation::is_active),
        description: a.description.clone(),
        ..defaults
    };
    let options = TrainOptions { mode: output_mode(a.resume, a.overwrite), stop_after: None };
    let (_, report) = train_trunk(&config, train_set, &a.out, &options, &protonet::Device::Cpu, &Bars::new(!a.quiet))?;
    let losses: Vec<String> = report.losses.iter().map(|l| format!("{l:.3}")).collect();
    outln!(
        "trained EfficientNet-{variant:?}'s {}blocks {}-{} and the head for {} epochs in {:.0}s (loss by epoch {}); model saved to {}",
        if config.first_block == 0 { "stem, " } else { "" },
        config.first_block,
        variant.num_blocks() - 1,
        report.epochs,
        report.seconds,
        losses.join(" "),
        a.out.display()
    );
    Ok(())
}

fn load(dirs: &[PathBuf], image: &ImageConfig, skip: bool) -> Result<ImageSet> {
    let mut set = ImageSet::new(image.channels, image.size, image.size);
    for d in dirs {
        set.append_classes(&crate::common::load_folder(d, image, skip)?).map_err(|e| Error::Dataset { path: d.clone(), reason: e.to_string() })?;
    }
    Ok(set)
}

pub fn run(a: FineTuneArgs) -> Result<()> {
    let variant = if a.lite2 { LiteVariant::Lite2 } else { LiteVariant::Lite0 };
    let image_size = a.image_size.unwrap_or(variant.image_size());
    if !(32..=448).contains(&image_size) {
        return Err(Error::param(
            "image-size",
            format!("must be in 32..=448 (EfficientNet-{variant:?} was trained at {}), got {image_size}", variant.image_size()),
        ));
    }
    if !a.trunk && a.first_block.is_some() {
        return Err(Error::param("first-block", "trains blocks of the trunk: give --trunk with it"));
    }
    let image = ImageConfig::rgb(image_size);
    // The trunk trains on the photos as the model will see them: cropped to the coin with --crop.
    let loading = ImageConfig { crop: (a.trunk && a.crop).then(CoinCrop::default), ..image.clone() };
    let mut train_set = load(&a.data, &loading, a.skip_bad_images)?;
    if a.rendered > 0 {
        use rand::SeedableRng;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(a.seed ^ 0xc01);
        let mut designs = Vec::new();
        while designs.len() < a.rendered {
            designs.extend(protonet::data::rendered_coins::currency(6, &mut rng));
        }
        designs.truncate(a.rendered);
        train_set.append_classes(&protonet::data::rendered_coins::render_set(&designs, 20, &image, a.seed ^ 0xc01, "rendered-")?)?;
    }
    if a.trunk {
        return run_trunk(&a, &train_set, image);
    }
    let val_set = a.val_data.as_ref().map(|d| load(std::slice::from_ref(d), &image, a.skip_bad_images)).transpose()?;
    if !a.quiet {
        eprintln!(
            "base classes: {} ({} images){}",
            train_set.num_classes(),
            train_set.num_images(),
            val_set.as_ref().map(|v| format!("; validation classes: {}", v.num_classes())).unwrap_or_default()
        );
    }
    let config = FineTuneConfig {
        weights: PretrainedWeights::efficientnet_lite0(),
        image: ImageConfig { crop: a.crop.then(CoinCrop::default), ..image },
        train: TrainConfig {
            way: a.way.unwrap_or(train_set.num_classes().min(20)),
            shot: a.shot,
            query: a.query,
            episodes: a.episodes,
            learning_rate: a.lr,
            lr_halve_every: a.lr_halve_every,
            val_way: a.val_way.or(val_set.as_ref().map(|v| v.num_classes().min(20))).unwrap_or(5),
            val_shot: None,
            val_query: a.query,
            val_every: a.val_every,
            val_episodes: a.val_episodes,
            patience: (a.patience > 0).then_some(a.patience),
            checkpoint_every: a.val_every,
            seed: a.seed,
            rotation_augment: false,
            grad_clip: None,
            method_only: false,
        },
        rotations: a.rotations,
        head: HeadConfig { normalize: !a.no_normalize },
        batch: 32,
        description: a.description.clone(),
    };
    let options = TrainOptions { mode: output_mode(a.resume, a.overwrite), stop_after: None };
    let bars = Bars::new(!a.quiet).with_curves(a.out.join(HEAD_TRAINING_DIR).join(CURVES_FILE));
    let (_, report) = fine_tune_efficientnet(&config, &train_set, val_set.as_ref(), &a.out, &options, &protonet::Device::Cpu, &bars)?;
    outln!(
        "fine-tuned {} episodes in {:.0}s{}; model saved to {}",
        report.episodes,
        report.seconds,
        report.best_val_accuracy.map(|v| format!(", best validation {:.2}% at episode {}", 100.0 * v, report.best_episode)).unwrap_or_default(),
        a.out.display()
    );
    Ok(())
}
