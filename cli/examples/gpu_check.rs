//! Compares training on another device (CUDA, Metal) with the CPU, and prints a verdict.
//!
//! ```text
//! cargo run --release --features cuda --example gpu_check -- --device cuda
//! ```
//!
//! 1. One episode's gradients from the same weights and images (Omniglot, 60-way 5-shot
//!    5-query, Conv-4): per parameter, the cosine between the CPU and device gradients and
//!    the ratio of their norms. Pass: every cosine >= 0.9999 and every ratio within 0.1%.
//! 2. 50 training episodes on each device from the same initial weights and episodes, then
//!    20-way 1-shot accuracy on the Omniglot test split (200 episodes). Pass: the two
//!    accuracies within the sum of their 95% confidence intervals.
//!
//! With `--device cpu` it runs the comparison against the CPU itself (a smoke test of the
//! script). Omniglot is read from `--data`, else `$PROTONET_DATA/omniglot`, else
//! `../shared/data/omniglot`.

use std::path::PathBuf;

use candle_core::Device;
use clap::Parser;
use protonet::backbone::{BackboneConfig, Conv4Config};
use protonet::data::{load_omniglot, ImageConfig, OmniglotSplit};
use protonet::{evaluate, EpisodeSampler, EpisodeSpec, EvalConfig, Model, ModelConfig, Result, Silent, TrainConfig, TrainOptions, Trainer};

/// Compare training on a GPU with the CPU.
#[derive(Parser, Debug)]
struct Args {
    /// The device to compare with the CPU: cuda, metal or cpu.
    #[arg(long, default_value = "cuda")]
    device: String,
    /// Omniglot root (default: $PROTONET_DATA/omniglot, else ../shared/data/omniglot).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Training episodes on each device.
    #[arg(long, default_value_t = 50)]
    episodes: usize,
}

fn device(name: &str) -> Result<Device> {
    Ok(match name {
        "cuda" => Device::new_cuda(0)?,
        "metal" => Device::new_metal(0)?,
        _ => Device::Cpu,
    })
}

fn cosine_and_ratio(a: &[f32], b: &[f32]) -> (f64, f64) {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let norm = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    (dot / (norm(a) * norm(b)).max(1e-30), norm(b) / norm(a).max(1e-30))
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run(a: Args) -> Result<()> {
    let other = device(&a.device)?;
    let root = a.data.unwrap_or_else(|| protonet_cli::default_data_root().join("omniglot"));
    let train_set = load_omniglot(&root, OmniglotSplit::Train)?;
    let test_set = load_omniglot(&root, OmniglotSplit::Test)?;
    let config = ModelConfig::new(BackboneConfig::Conv4(Conv4Config::default()), ImageConfig::omniglot());

    // 1. One episode's gradients.
    let spec = EpisodeSpec::new(60, 5, 5)?;
    let episode = EpisodeSampler::new(&train_set, spec, 1)?.sample();
    let mut grads = Vec::new();
    for dev in [&Device::Cpu, &other] {
        let model = Model::new(config.clone(), 7, dev)?;
        let (images, labels) = episode.tensors(&train_set, dev)?;
        let out = model.net().forward_episode(&images, spec, &labels, true)?;
        let g = out.loss.backward()?;
        let mut per_param = Vec::new();
        for (name, var) in model.trainable_vars() {
            let v = g.get(var.as_tensor()).map(|t| t.flatten_all()?.to_device(&Device::Cpu)?.to_vec1::<f32>()).transpose()?.unwrap_or_default();
            per_param.push((name, v));
        }
        grads.push((out.loss_value, per_param));
    }
    println!("one episode: loss cpu {:.6}, {} {:.6}", grads[0].0, a.device, grads[1].0);
    println!("{:<28} {:>12} {:>12}", "parameter", "cosine", "norm ratio");
    let mut gradients_pass = true;
    for ((name, cpu), (_, dev)) in grads[0].1.iter().zip(&grads[1].1) {
        let (cos, ratio) = cosine_and_ratio(cpu, dev);
        let ok = cos >= 0.9999 && (ratio - 1.0).abs() < 1e-3;
        gradients_pass &= ok;
        println!("{name:<28} {cos:>12.6} {ratio:>12.6}{}", if ok { "" } else { "  <- differs" });
    }

    // 2. Training from the same initial weights and episodes, then accuracy.
    let tc = TrainConfig { episodes: a.episodes, val_every: a.episodes, patience: None, ..Default::default() };
    let eval = EvalConfig::new(EpisodeSpec::new(20, 1, 15)?, 200, 3);
    let mut reports = Vec::new();
    for dev in [&Device::Cpu, &other] {
        let out = std::env::temp_dir().join(format!("protonet-gpu-check-{}-{}", std::process::id(), reports.len()));
        let mut model = Model::new(config.clone(), 7, dev)?;
        Trainer::new(&mut model, &train_set, None, &tc)?.run(&out, &TrainOptions::default(), &Silent)?;
        std::fs::remove_dir_all(&out).ok();
        reports.push(evaluate(model.net(), &test_set, &eval, dev, &Silent)?);
    }
    let (cpu, dev) = (&reports[0], &reports[1]);
    let training_pass = (cpu.accuracy - dev.accuracy).abs() <= cpu.ci95 + dev.ci95;
    println!("{} training episodes, then 20-way 1-shot: cpu {cpu}; {} {dev}", a.episodes, a.device);
    println!(
        "verdict: gradients {}, training {}",
        if gradients_pass { "PASS" } else { "FAIL" },
        if training_pass { "PASS (within the confidence intervals)" } else { "FAIL" }
    );
    if !(gradients_pass && training_pass) {
        std::process::exit(2);
    }
    Ok(())
}
