//! Draws a reliability diagram from calibration files written by the coins example
//! (`--calibration-json`): one series per `LABEL=FILE[,FILE...]` argument, the files of
//! a series merged (for example every leave-one-currency-out fold).
//!
//! `cargo run --release --example reliability -- --out docs/reliability.png before=a.json,b.json after=c.json,d.json`

mod support;

use std::path::PathBuf;

use clap::Parser;
use protonet::calibration::Calibration;
use protonet::{Error, Result};

/// Draws a reliability diagram.
#[derive(Parser)]
struct Args {
    /// The PNG to write.
    #[arg(long)]
    out: PathBuf,
    /// Series as LABEL=FILE[,FILE...].
    #[arg(required = true)]
    series: Vec<String>,
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run(a: Args) -> Result<()> {
    let mut series = Vec::new();
    for arg in &a.series {
        let (label, files) = arg.split_once('=').ok_or_else(|| Error::param("series", format!("`{arg}` is not LABEL=FILE[,FILE...]")))?;
        let parts = files
            .split(',')
            .map(|f| {
                let text = std::fs::read_to_string(f).map_err(|e| Error::param("series", format!("{f}: {e}")))?;
                serde_json::from_str::<Calibration>(&text).map_err(|e| Error::param("series", format!("{f}: not a calibration file: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        let merged = Calibration::merge(&parts)?;
        println!(
            "{label}: {} answers, mean confidence {:.1}%, accuracy {:.1}%, ECE {:.1} points",
            merged.count,
            100.0 * merged.mean_confidence,
            100.0 * merged.accuracy,
            100.0 * merged.ece
        );
        series.push((label.to_string(), merged));
    }
    support::pictures::reliability_diagram(&series, &a.out)?;
    println!("Wrote {}", a.out.display());
    Ok(())
}
