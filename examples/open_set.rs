//! Open-set rejection on Omniglot: how often a calibrated threshold accepts images of the
//! classes a classifier knows, and rejects images of classes it was never shown.
//!
//! ```text
//! cargo run --release --example open_set -- [MODEL_DIR] [TRIALS]
//! ```
//! Defaults: the shipped `data/omniglot-conv4`, 200 trials of 20 known characters
//! (5 support images each; the other 15 are queries) and 20 unknown characters (all 20
//! images are queries), drawn from the Omniglot test split (`$PROTONET_DATA/omniglot`,
//! else `../shared/data/omniglot`), at calibration quantiles 0.90, 0.95 and 0.99.

use std::path::PathBuf;

use candle_core::Device;
use protonet::data::{load_omniglot, OmniglotSplit};
use protonet::embed::Embedder;
use protonet::openset::evaluate_open_set;
use protonet::Model;
use support::default_data_root;
use support::progress::Bars;

#[path = "support/mod.rs"]
mod support;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let model_dir = PathBuf::from(args.next().unwrap_or_else(|| "data/omniglot-conv4".into()));
    let trials: usize = args.next().map(|t| t.parse()).transpose()?.unwrap_or(200);
    let model = Model::load(&model_dir, &Device::Cpu)?;
    let root = default_data_root().join("omniglot");
    let set = load_omniglot(&root, OmniglotSplit::Test)?;
    eprintln!("embedding the {} test images of {} with {}", set.num_images(), root.display(), model_dir.display());
    let embedded = Embedder { batch: 256, rotations: 1 }.embed_set(model.net(), &set, &Device::Cpu, &Bars::new(true))?;
    for quantile in [0.90, 0.95, 0.99] {
        println!("{}", evaluate_open_set(&embedded, 20, 5, 20, trials, quantile, 0)?);
    }
    Ok(())
}
