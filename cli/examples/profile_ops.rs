//! Times EfficientNet-Lite0's operations one by one at its real shapes (batch 32, 224x224),
//! forward only: 1x1 convolutions, depthwise convolutions, BatchNorm+ReLU6, residual adds.
//!
//!     cargo run --release -p protonet-cli --example profile_ops
use std::collections::BTreeMap;
use std::time::Instant;

use candle_core::{Device, Tensor};
use protonet::ops::{conv2d_bias, depthwise_conv2d_bias};

const RELU6: Option<(f32, f32)> = Some((0.0, 6.0));

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn time<F: FnMut() -> Tensor>(totals: &mut BTreeMap<String, f64>, key: &str, reps: usize, mut f: F) -> Tensor {
    let mut out = f();
    let t = Instant::now();
    for _ in 0..reps {
        out = f();
    }
    *totals.entry(key.to_string()).or_default() += t.elapsed().as_secs_f64() * 1e3 / reps as f64;
    out
}

fn main() -> protonet::Result<()> {
    protonet_cli::alloc::keep_freed_memory();
    let n: usize = std::env::args().nth(1).map(|s| s.parse().unwrap()).unwrap_or(32);
    let dev = Device::Cpu;
    let blocks: [(usize, usize, usize, usize, usize, usize); 7] =
        [(1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80), (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320)];
    let mut totals = BTreeMap::new();
    let mut side = 112usize;
    let reps = 3;
    for &(repeats, k, stride, e, cin0, cout) in &blocks {
        for r in 0..repeats {
            let (cin, s) = if r == 0 { (cin0, stride) } else { (cout, 1) };
            let mid = cin * e;
            let x = Tensor::randn(0f32, 1., (n, cin, side, side), &dev)?;
            let shift = Tensor::randn(0f32, 1., mid, &dev)?;
            let h = if e != 1 {
                let w = Tensor::randn(0f32, 0.1, (mid, cin, 1, 1), &dev)?;
                time(&mut totals, &format!("expand {cin}->{mid} @{side}"), reps, || conv2d_bias(&x, &w, &shift, 1, 0, RELU6).unwrap())
            } else {
                x.clone()
            };
            let wd = Tensor::randn(0f32, 0.1, (mid, 1, k, k), &dev)?;
            let p = if s == 1 { (k / 2, k / 2, k / 2, k / 2) } else { (k / 2 - 1, k / 2, k / 2 - 1, k / 2) };
            let h = time(&mut totals, &format!("depthwise k{k} s{s} + bn + relu6"), reps, || depthwise_conv2d_bias(&h, &wd, &shift, s, p, RELU6).unwrap());
            let wp = Tensor::randn(0f32, 0.1, (cout, mid, 1, 1), &dev)?;
            let sc = Tensor::randn(0f32, 1., cout, &dev)?;
            let y = time(&mut totals, &format!("project {mid}->{cout} @{}", h.dim(2).unwrap()), reps, || conv2d_bias(&h, &wp, &sc, 1, 0, None).unwrap());
            if s == 1 && cin == cout {
                time(&mut totals, "residual add", reps, || (&y + &x).unwrap());
            }
            side = y.dim(2)?;
        }
    }
    let x = Tensor::randn(0f32, 1., (n, 320, side, side), &dev)?;
    let w = Tensor::randn(0f32, 0.1, (1280, 320, 1, 1), &dev)?;
    let b = Tensor::randn(0f32, 1., 1280, &dev)?;
    time(&mut totals, "head 1x1 + bn + relu6", reps, || conv2d_bias(&x, &w, &b, 1, 0, RELU6).unwrap());
    let img = Tensor::randn(0f32, 1., (n, 3, 225, 225), &dev)?;
    let stem = Tensor::randn(0f32, 0.1, (32, 3, 3, 3), &dev)?;
    let b = Tensor::randn(0f32, 1., 32, &dev)?;
    time(&mut totals, "stem 3x3 s2 + bn + relu6", reps, || conv2d_bias(&img, &stem, &b, 2, 0, RELU6).unwrap());
    let sum: f64 = totals.values().sum();
    for (k, v) in &totals {
        println!("{k:>20} {v:8.1} ms");
    }
    println!("{:>20} {sum:8.1} ms", "total");
    Ok(())
}
