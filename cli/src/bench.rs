//! `protonet bench`.

use clap::Args;
use protonet::backbone::Conv4Config;
use protonet::bench::{time_workload, Workload, WorkloadKind};
use protonet::method::MatchingConfig;
use protonet::{EpisodeSpec, Result};

use crate::common::{device, MethodName};

/// Arguments of `protonet bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Classes per episode.
    #[arg(long, default_value_t = 5)]
    way: usize,
    /// Support images per class.
    #[arg(long, default_value_t = 5)]
    shot: usize,
    /// Query images per class.
    #[arg(long, default_value_t = 15)]
    query: usize,
    /// Image side in pixels.
    #[arg(long, default_value_t = 28)]
    image_size: usize,
    /// Image channels.
    #[arg(long, default_value_t = 1)]
    channels: usize,
    /// Time a full training step (forward, loss, backward, Adam) instead of inference.
    #[arg(long, conflicts_with = "embed_batch")]
    train: bool,
    /// Time the embedding of a batch of this many images instead of an episode.
    #[arg(long)]
    embed_batch: Option<usize>,
    /// Timed iterations.
    #[arg(long, default_value_t = 10)]
    iters: usize,
    /// Untimed warm-up iterations.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Print one JSON object (median_ms, min_ms, max_ms, per_second, images_per_second, iters, workload).
    #[arg(long)]
    json: bool,
    /// Time the pretrained backbone instead of a Conv-4 (RGB): frozen for inference and
    /// --embed-batch; with --train, trained end to end (BatchNorm on its running statistics).
    #[arg(long, value_enum)]
    backbone: Option<crate::common::PretrainedBackbone>,
    /// Weights file of the pretrained backbone (default: the published weights, found as `eval` finds them).
    #[arg(long)]
    weights: Option<std::path::PathBuf>,
    /// The few-shot method of the Conv-4 timed (its default settings).
    #[arg(long, value_enum, default_value_t = MethodName::Protonet, conflicts_with = "backbone")]
    method: MethodName,
    /// cpu, cuda or metal.
    #[arg(long, default_value = "cpu")]
    device: String,
}

pub fn run(a: BenchArgs) -> Result<()> {
    let dev = device(&a.device)?;
    let kind = match a.embed_batch {
        Some(b) => WorkloadKind::Embed(b),
        None => {
            let spec = EpisodeSpec::new(a.way, a.shot, a.query)?;
            if a.train {
                WorkloadKind::TrainStep(spec)
            } else {
                WorkloadKind::Inference(spec)
            }
        }
    };
    let (mut w, channels, backbone) = match a.backbone {
        Some(crate::common::PretrainedBackbone::EfficientnetLite0) => {
            let net = crate::common::efficientnet_lite0(a.weights.as_deref(), &dev)?;
            let name = format!(", EfficientNet-{:?}", net.variant());
            match kind {
                WorkloadKind::TrainStep(spec) => {
                    let weights = crate::common::efficientnet_lite0_weights(a.weights.as_deref())?;
                    (Workload::efficientnet_training(&weights, spec, a.image_size, &dev)?, 3, name)
                }
                _ => (Workload::frozen(protonet::FewShotNet::new(Box::new(net)), kind, a.image_size, &dev)?, 3, name),
            }
        }
        None => (
            Workload::with_method(kind, a.channels, a.image_size, a.method.config(MatchingConfig::default().scale, Conv4Config::default().hidden), &dev)?,
            a.channels,
            String::new(),
        ),
    };
    let r = time_workload(&mut w, a.warmup, a.iters)?;
    let what = match kind {
        WorkloadKind::TrainStep(s) => format!("train step {s}"),
        WorkloadKind::Inference(s) => format!("inference {s}"),
        WorkloadKind::Embed(b) => format!("embed batch {b}"),
    };
    let what = format!("{what}, {channels}x{}x{}{backbone}", a.image_size, a.image_size);
    if a.json {
        let mut v = serde_json::to_value(&r).expect("serialises");
        v["workload"] = serde_json::Value::String(what);
        outln!("{v}");
    } else {
        outln!(
            "{what}: median {:.1} ms (min {:.1}, max {:.1}) over {} iters; {:.2} per second, {:.0} images/s",
            r.median_ms,
            r.min_ms,
            r.max_ms,
            r.iters,
            r.per_second,
            r.images_per_second
        );
    }
    Ok(())
}
