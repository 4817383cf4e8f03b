//! `protonet eval`.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use protonet::data::ImageConfig;
use protonet::eval::{evaluate_embedded, Embedder, EvalConfig};
use protonet::FeatureNorm;
use protonet::{EpisodeSpec, Error, Model, ProtoNet, Result};

use protonet_cli::progress::Bars;

use crate::common::{device, DataArgs};

/// A pretrained backbone used frozen, instead of a trained model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PretrainedBackbone {
    /// EfficientNet-Lite0 with ImageNet weights (scripts/fetch-pretrained.sh), 1280-d embeddings.
    EfficientnetLite0,
}

/// How embeddings are normalised before prototypes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Normalize {
    /// Raw embeddings, as in the paper.
    None,
    /// L2-normalised embeddings.
    L2,
    /// Centred on the episode's support mean, then L2-normalised (SimpleShot).
    CenterL2,
}

impl Normalize {
    /// The library's normalisation (centring on the support set's mean).
    pub fn feature_norm(self) -> FeatureNorm {
        match self {
            Normalize::None => FeatureNorm::None,
            Normalize::L2 => FeatureNorm::L2,
            Normalize::CenterL2 => FeatureNorm::CenterSupportL2,
        }
    }
}

/// Arguments of `protonet eval`.
#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Model directory (config.json + model.safetensors), as written by `protonet train`.
    #[arg(long, required_unless_present = "backbone", conflicts_with = "backbone")]
    model: Option<PathBuf>,
    /// Evaluate a frozen pretrained backbone instead of a trained model.
    #[arg(long, value_enum)]
    backbone: Option<PretrainedBackbone>,
    /// Weights file of the pretrained backbone (.safetensors or .pth); default: the
    /// published weights, looked for in $PROTONET_PRETRAINED, ./data/pretrained and ~/.cache/protonet.
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Image side for the pretrained backbone (RGB, ImageNet normalisation).
    #[arg(long, default_value_t = 224)]
    image_size: usize,
    /// Embedding normalisation before prototypes. Default: the model's own setting, else none.
    #[arg(long, value_enum)]
    normalize: Option<Normalize>,
    /// Average each image's embedding over this many rotations by 90 degrees (1 to 4).
    /// Default: the model's own setting (4 for models trained with --rotate), else 1.
    #[arg(long)]
    rotations: Option<usize>,
    #[command(flatten)]
    data: DataArgs,
    /// Omniglot split to evaluate on.
    #[arg(long, default_value = "test")]
    split: String,
    /// Classes per episode.
    #[arg(long, default_value_t = 5)]
    way: usize,
    /// Support images per class.
    #[arg(long, default_value_t = 1)]
    shot: usize,
    /// Query images per class.
    #[arg(long, default_value_t = 15)]
    query: usize,
    /// Episodes to average over.
    #[arg(long, default_value_t = 1000)]
    episodes: usize,
    /// Seed of the episode sampler.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print one JSON object (way, shot, query, episodes, accuracy as a fraction, ci95, std, seed).
    #[arg(long)]
    json: bool,
    /// Also draw the confusion matrix (true vs predicted class, over all episodes) as a PNG.
    #[arg(long)]
    confusion_png: Option<PathBuf>,
    /// cpu, cuda or metal.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

pub fn run(a: EvalArgs) -> Result<()> {
    let dev = device(&a.device)?;
    let spec = EpisodeSpec::new(a.way, a.shot, a.query)?;
    if a.episodes == 0 {
        return Err(Error::param("episodes", "must be at least 1"));
    }
    let quiet = a.quiet || a.json;
    let model;
    let pretrained;
    let (net, image, rotations, own_norm): (&ProtoNet, ImageConfig, usize, FeatureNorm) = match (&a.model, a.backbone) {
        (Some(dir), _) => {
            model = Model::load_for_images(dir, &dev)?;
            let c = model.config();
            (model.net(), c.image.clone(), c.rotations, c.normalization.clone())
        }
        (None, Some(PretrainedBackbone::EfficientnetLite0)) => {
            pretrained = ProtoNet::new(Box::new(crate::common::efficientnet_lite0(a.weights.as_deref(), &dev)?));
            (&pretrained, ImageConfig::rgb(a.image_size), 1, FeatureNorm::None)
        }
        (None, None) => return Err(Error::param("model", "give --model DIR or --backbone")),
    };
    let set = a.data.load(&a.split, &image, quiet)?;
    spec.check_dataset(&set)?;
    let bars = Bars::new(!quiet);
    let embedded = Embedder { rotations: a.rotations.unwrap_or(rotations), ..Default::default() }.embed_set(net, &set, &dev, &bars)?;
    let norm = a.normalize.map(|n| n.feature_norm()).unwrap_or(own_norm);
    let report = evaluate_embedded(&embedded, &EvalConfig::new(spec, a.episodes, a.seed), &norm, &dev, &bars)?;
    if let Some(path) = &a.confusion_png {
        protonet_cli::pictures::confusion_matrix(&report.confusion, set.class_names(), path)?;
        if !quiet {
            eprintln!("wrote {}", path.display());
        }
    }
    if a.json {
        outln!("{}", serde_json::to_string(&report).expect("report serialises"));
    } else {
        outln!("{report}");
    }
    Ok(())
}
