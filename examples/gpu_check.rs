//! Compares training on another device (CUDA, Metal) with the CPU, and prints a verdict.
//!
//! ```text
//! cargo run --release --features cuda --example gpu_check -- --device cuda
//! ```
//!
//! 1. One episode's gradients from the same weights and images (Omniglot, 60-way 5-shot
//!    5-query, Conv-4): per parameter, the cosine between the CPU and device gradients and
//!    the ratio of their norms. Pass: every cosine >= 0.9999 and every ratio within 0.1%.
//! 0. The depthwise convolution's device path (values, input and kernel gradients) against
//!    the CPU op on random inputs; with `--weights`, EfficientNet-Lite0 embeddings of the
//!    same images on both devices.
//! 2. 50 training episodes on each device from the same initial weights and episodes, then
//!    20-way 1-shot accuracy on the Omniglot test split (200 episodes). Pass: the two
//!    accuracies within the sum of their 95% confidence intervals.
//!
//! With `--device cpu` it runs the comparison against the CPU itself (a smoke test of the
//! script). Omniglot is read from `--data`, else `$PROTONET_DATA/omniglot`, else
//! `../shared/data/omniglot`.

use std::path::PathBuf;

use candle_core::{DType, Device, ModuleT, Tensor, Var};
use clap::Parser;
use protonet::backbone::{BackboneConfig, Conv4Config, EfficientNetLite0};
use protonet::data::{load_omniglot, ImageConfig, OmniglotSplit};
use protonet::ops::depthwise_conv2d;
use protonet::{evaluate, EpisodeSampler, EpisodeSpec, EvalConfig, Model, ModelConfig, Result, Silent, TrainConfig, TrainOptions, Trainer};

#[path = "support/mod.rs"]
mod support;

/// Compare training on a GPU with the CPU.
#[derive(Parser, Debug)]
struct Args {
    /// The device to compare with the CPU: cuda, metal or cpu.
    #[arg(long, default_value = "cuda")]
    device: String,
    /// Omniglot root (default: $PROTONET_DATA/omniglot, else ../shared/data/omniglot).
    #[arg(long)]
    data: Option<PathBuf>,
    /// EfficientNet-Lite0 weights (.safetensors): also compare its embeddings.
    #[arg(long)]
    weights: Option<PathBuf>,
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

/// Largest absolute difference of two tensors on any devices, relative to the largest
/// absolute value of the first.
fn relative_difference(a: &Tensor, b: &Tensor) -> Result<f64> {
    let (a, b) = (a.to_device(&Device::Cpu)?.to_dtype(DType::F64)?, b.to_device(&Device::Cpu)?.to_dtype(DType::F64)?);
    let scale = a.abs()?.max_all()?.to_scalar::<f64>()?.max(1e-30);
    Ok((a - b)?.abs()?.max_all()?.to_scalar::<f64>()? / scale)
}

/// Step 0: the depthwise convolution and (with weights) EfficientNet-Lite0 on `other`.
fn check_depthwise_and_efficientnet(other: &Device, weights: Option<&std::path::Path>) -> Result<bool> {
    let mut pass = true;
    for &(n, c, h, k, s, pad) in &[(2, 8, 15, 3, 1, (1, 1, 1, 1)), (3, 5, 17, 5, 2, (1, 2, 1, 2)), (2, 4, 12, 3, 2, (0, 1, 0, 1))] {
        let x = Tensor::randn(0f32, 1.0, (n, c, h, h), &Device::Cpu)?;
        let w = Tensor::randn(0f32, 1.0, (c, 1, k, k), &Device::Cpu)?;
        let r = Tensor::randn(0f32, 1.0, (n, c, (h + pad.0 + pad.1 - k) / s + 1, (h + pad.2 + pad.3 - k) / s + 1), &Device::Cpu)?;
        let mut results = Vec::new();
        for dev in [&Device::Cpu, other] {
            let (xv, wv) = (Var::from_tensor(&x.to_device(dev)?)?, Var::from_tensor(&w.to_device(dev)?)?);
            let y = depthwise_conv2d(xv.as_tensor(), wv.as_tensor(), s, pad)?;
            let g = (&y * r.to_device(dev)?)?.sum_all()?.backward()?;
            let gx = g.get(xv.as_tensor()).cloned().ok_or_else(|| candle_core::Error::Msg("no input gradient".into()))?;
            let gw = g.get(wv.as_tensor()).cloned().ok_or_else(|| candle_core::Error::Msg("no kernel gradient".into()))?;
            results.push([y, gx, gw]);
        }
        let d: Vec<f64> = (0..3).map(|i| relative_difference(&results[0][i], &results[1][i])).collect::<Result<_>>()?;
        let ok = d.iter().all(|v| *v < 1e-5);
        pass &= ok;
        println!(
            "depthwise {k}x{k} stride {s} on {n}x{c}x{h}x{h}: relative difference value {:.1e}, input gradient {:.1e}, kernel gradient {:.1e}{}",
            d[0],
            d[1],
            d[2],
            if ok { "" } else { "  <- differs" }
        );
    }
    if let Some(path) = weights {
        let x = Tensor::randn(0f32, 1.0, (4, 3, 224, 224), &Device::Cpu)?;
        let cpu = EfficientNetLite0::load(path, &Device::Cpu)?.forward_t(&x, false)?;
        let dev = EfficientNetLite0::load(path, other)?.forward_t(&x.to_device(other)?, false)?;
        let d = relative_difference(&cpu, &dev)?;
        pass &= d < 1e-4;
        println!("EfficientNet-Lite0 embeddings of 4 random 224x224 images: relative difference {d:.1e}{}", if d < 1e-4 { "" } else { "  <- differs" });
    }
    Ok(pass)
}

fn run(a: Args) -> Result<()> {
    let other = device(&a.device)?;
    let ops_pass = check_depthwise_and_efficientnet(&other, a.weights.as_deref())?;
    let root = a.data.unwrap_or_else(|| support::default_data_root().join("omniglot"));
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
        reports.push(evaluate(&model, &test_set, &eval, &Silent)?);
    }
    let (cpu, dev) = (&reports[0], &reports[1]);
    let training_pass = (cpu.accuracy - dev.accuracy).abs() <= cpu.ci95 + dev.ci95;
    println!("{} training episodes, then 20-way 1-shot: cpu {cpu}; {} {dev}", a.episodes, a.device);
    println!(
        "verdict: ops {}, gradients {}, training {}",
        if ops_pass { "PASS" } else { "FAIL" },
        if gradients_pass { "PASS" } else { "FAIL" },
        if training_pass { "PASS (within the confidence intervals)" } else { "FAIL" }
    );
    if !(ops_pass && gradients_pass && training_pass) {
        std::process::exit(2);
    }
    Ok(())
}
