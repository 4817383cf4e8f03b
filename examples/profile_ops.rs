//! Times EfficientNet-Lite0's operations one by one at the network's own shapes (a batch of
//! 224x224 images, forward pass, BatchNorm folded as the network runs it): the stem, each
//! 1x1 expansion and projection, each depthwise convolution, the residual adds and the
//! head, each with its BatchNorm and ReLU6 in the same pass. Prints milliseconds per
//! operation kind and GFLOP/s, to see where the embedding's time goes.
//!
//!     cargo run --release -p protonet-cli --example profile_ops -- [batch, default 32]
use std::collections::BTreeMap;
use std::time::Instant;

use candle_core::{Device, Tensor};
use protonet::backbone::{same_padding, EFFICIENTNET_LITE0_BLOCKS};
use protonet::ops::{conv2d_bias, depthwise_conv2d_bias};

#[path = "support/mod.rs"]
mod support;

const RELU6: Option<(f32, f32)> = Some((0.0, 6.0));

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Milliseconds and multiply-adds per operation kind.
#[derive(Default)]
struct Profile {
    rows: BTreeMap<String, (f64, f64)>,
}

impl Profile {
    /// Runs `f` once to warm up, then `reps` times, and books the mean time under `kind`.
    fn time(&mut self, kind: &str, macs: f64, reps: usize, mut f: impl FnMut() -> protonet::Result<Tensor>) -> protonet::Result<Tensor> {
        let mut out = f()?;
        let t = Instant::now();
        for _ in 0..reps {
            out = f()?;
        }
        let row = self.rows.entry(kind.to_string()).or_default();
        row.0 += t.elapsed().as_secs_f64() * 1e3 / reps as f64;
        row.1 += macs;
        Ok(out)
    }
}

fn main() -> protonet::Result<()> {
    support::alloc::keep_freed_memory();
    let n: usize = match std::env::args().nth(1) {
        Some(s) => s.parse().map_err(|_| protonet::Error::param("batch", format!("not a number: {s}")))?,
        None => 32,
    };
    let dev = Device::Cpu;
    let mut prof = Profile::default();
    let reps = 3;
    // The stem's input, padded "same" for stride 2 as the network pads it.
    let img = Tensor::randn(0f32, 1., (n, 3, 225, 225), &dev)?;
    let (stem, b) = (Tensor::randn(0f32, 0.1, (32, 3, 3, 3), &dev)?, Tensor::randn(0f32, 1., 32, &dev)?);
    let mut x = prof.time("stem 3x3/2", (n * 112 * 112 * 32 * 27) as f64, reps, || conv2d_bias(&img, &stem, &b, 2, 0, RELU6))?;
    for (repeats, k, stride, e, cin0, cout) in EFFICIENTNET_LITE0_BLOCKS {
        for r in 0..repeats {
            let (cin, s) = if r == 0 { (cin0, stride) } else { (cout, 1) };
            let (mid, side) = (cin * e, x.dim(2)?);
            let shift = Tensor::randn(0f32, 1., mid, &dev)?;
            let h = if e != 1 {
                let w = Tensor::randn(0f32, 0.1, (mid, cin, 1, 1), &dev)?;
                prof.time("1x1 expand", (n * side * side * cin * mid) as f64, reps, || conv2d_bias(&x, &w, &shift, 1, 0, RELU6))?
            } else {
                x.clone()
            };
            let wd = Tensor::randn(0f32, 0.1, (mid, 1, k, k), &dev)?;
            let (before, after) = same_padding(side, k, s);
            let p = (before, after, before, after);
            let out_side = side.div_ceil(s);
            let h = prof.time(&format!("depthwise {k}x{k}/{s}"), (n * out_side * out_side * mid * k * k) as f64, reps, || {
                depthwise_conv2d_bias(&h, &wd, &shift, s, p, RELU6)
            })?;
            let (wp, sc) = (Tensor::randn(0f32, 0.1, (cout, mid, 1, 1), &dev)?, Tensor::randn(0f32, 1., cout, &dev)?);
            let y = prof.time("1x1 project", (n * out_side * out_side * mid * cout) as f64, reps, || conv2d_bias(&h, &wp, &sc, 1, 0, None))?;
            x = if s == 1 && cin == cout { prof.time("residual add", 0.0, reps, || Ok((&y + &x)?))? } else { y };
        }
    }
    let side = x.dim(2)?;
    let (w, b) = (Tensor::randn(0f32, 0.1, (1280, 320, 1, 1), &dev)?, Tensor::randn(0f32, 1., 1280, &dev)?);
    prof.time("1x1 head", (n * side * side * 320 * 1280) as f64, reps, || conv2d_bias(&x, &w, &b, 1, 0, RELU6))?;
    println!("EfficientNet-Lite0 forward, batch {n} at 224x224, {} CPUs", std::thread::available_parallelism().map_or(1, |n| n.get()));
    println!("{:>18} {:>9} {:>9}", "operation", "ms", "GFLOP/s");
    let (mut ms, mut macs) = (0.0, 0.0);
    for (kind, (t, m)) in &prof.rows {
        println!("{kind:>18} {t:9.1} {:9.1}", 2.0 * m / t / 1e6);
        ms += t;
        macs += m;
    }
    println!("{:>18} {ms:9.1} {:9.1}", "total", 2.0 * macs / ms / 1e6);
    Ok(())
}
