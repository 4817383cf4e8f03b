//! `protonet eval`.

use std::path::PathBuf;

use clap::Args;
use protonet::data::CoinCrop;
use protonet::eval::{evaluate_net, EvalConfig};
use protonet::{EpisodeSpec, Error, FewShotNet, Model, ModelConfig, Result};

use crate::common::{device, ClassifyArgs, DataArgs, PretrainedBackbone};
use crate::support::progress::Bars;

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
    /// Image side for the pretrained backbone (RGB, ImageNet normalization).
    #[arg(long, default_value_t = 224)]
    image_size: usize,
    #[command(flatten)]
    classify: ClassifyArgs,
    /// Crop each photo to its coin (Hough circles) before embedding it. Default: the
    /// model's own setting.
    #[arg(long)]
    crop: bool,
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
    let quiet = a.quiet || a.json;
    let (net, mut config) = network(&a, &dev)?;
    // The model's own embedding settings, unless the flags say otherwise.
    a.classify.apply(&mut config);
    if a.crop {
        config.image.crop = Some(CoinCrop::default());
    }
    let set = a.data.load(&a.split, &config.image, quiet)?;
    let bars = Bars::new(!quiet);
    let eval = EvalConfig { method: a.classify.adapt_steps.map(|_| config.method), ..EvalConfig::new(spec, a.episodes, a.seed) };
    let report = evaluate_net(&net, &config.embedder(), &config.normalization, &set, &eval, &dev, &bars)?;
    if let Some(path) = &a.confusion_png {
        crate::support::pictures::confusion_matrix(&report.confusion, set.class_names(), path)?;
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

/// The network to evaluate and its configuration: the `--model` directory, or the
/// pretrained backbone with its defaults ([`ModelConfig::efficientnet_lite0`]).
fn network(a: &EvalArgs, dev: &protonet::Device) -> Result<(FewShotNet, ModelConfig)> {
    match (&a.model, a.backbone) {
        (Some(dir), _) => {
            let model = Model::load_for_images(dir, dev)?;
            let config = model.config().clone();
            Ok((model.into_net(), config))
        }
        (None, Some(PretrainedBackbone::EfficientnetLite0)) => {
            let net = FewShotNet::new(Box::new(crate::common::efficientnet_lite0(a.weights.as_deref(), dev)?));
            Ok((net, ModelConfig::efficientnet_lite0(a.image_size)))
        }
        (None, None) => Err(Error::param("model", "give --model DIR or --backbone")),
    }
}
