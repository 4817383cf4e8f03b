//! `protonet eval`.

use std::path::PathBuf;

use clap::Args;
use protonet::{EpisodeSpec, Model, Result};

use crate::common::{device, DataArgs};

/// Arguments of `protonet eval`.
#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Model directory (config.json + model.safetensors), as written by `protonet train`.
    #[arg(long)]
    model: PathBuf,
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
    let model = Model::load(&a.model, &dev)?;
    let quiet = a.quiet || a.json;
    let set = a.data.load(&a.split, &model.config().image, quiet)?;
    let report = protonet::evaluate(model.net(), &set, spec, a.episodes, a.seed, &dev, !quiet)?;
    if a.json {
        println!("{}", serde_json::to_string(&report).expect("report serialises"));
    } else {
        println!("{report}");
    }
    Ok(())
}
