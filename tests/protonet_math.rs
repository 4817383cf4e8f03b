//! Prototypes, distances, loss and gradients against plain references.

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use protonet::backbone::{Backbone, Conv4, Conv4Config};
use protonet::{accuracy, episode_loss, prototypes, squared_distances, EpisodeSpec, FewShotNet};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn random_matrix(rng: &mut ChaCha8Rng, rows: usize, cols: usize) -> Vec<Vec<f32>> {
    (0..rows).map(|_| (0..cols).map(|_| rng.random_range(-2.0..2.0f32)).collect()).collect()
}

fn tensor(m: &[Vec<f32>]) -> Tensor {
    Tensor::new(m.to_vec(), &Device::Cpu).unwrap()
}

#[test]
fn prototypes_and_distances_match_plain_loops() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    for &(way, shot, query, d) in &[(2, 1, 1, 3), (5, 1, 15, 64), (3, 4, 1, 7), (20, 5, 2, 16), (7, 3, 5, 1)] {
        let support = random_matrix(&mut rng, way * shot, d);
        let queries = random_matrix(&mut rng, way * query, d);
        let protos = prototypes(&tensor(&support), way, shot).unwrap();
        assert_eq!(protos.dims(), &[way, d]);
        let protos_v = protos.to_vec2::<f32>().unwrap();
        for c in 0..way {
            for j in 0..d {
                let mean = (0..shot).map(|s| support[c * shot + s][j]).sum::<f32>() / shot as f32;
                assert!((protos_v[c][j] - mean).abs() < 1e-5, "prototype {c},{j}");
            }
        }
        let dist = squared_distances(&tensor(&queries), &protos).unwrap();
        assert_eq!(dist.dims(), &[way * query, way], "no squeezing at Q={query}, K={shot}");
        let dist_v = dist.to_vec2::<f32>().unwrap();
        for (qi, q) in queries.iter().enumerate() {
            for c in 0..way {
                let want: f32 = (0..d).map(|j| (q[j] - protos_v[c][j]).powi(2)).sum();
                assert!((dist_v[qi][c] - want).abs() <= 1e-4 * want.max(1.0), "distance {qi},{c}");
            }
        }
    }
}

#[test]
fn loss_and_accuracy_match_plain_log_softmax() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let (q, n) = (9, 4);
    let logits = random_matrix(&mut rng, q, n);
    let labels: Vec<u32> = (0..q as u32).map(|i| i % n as u32).collect();
    let loss = episode_loss(&tensor(&logits), &Tensor::new(labels.clone(), &Device::Cpu).unwrap()).unwrap();
    let mut want = 0.0f64;
    let mut correct = 0;
    for (row, &y) in logits.iter().zip(&labels) {
        let max = row.iter().cloned().fold(f32::MIN, f32::max) as f64;
        let lse = max + row.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln();
        want += lse - row[y as usize] as f64;
        let arg = (0..n).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap();
        correct += (arg == y as usize) as usize;
    }
    want /= q as f64;
    assert!((loss.to_scalar::<f32>().unwrap() as f64 - want).abs() < 1e-5);
    let acc = accuracy(&tensor(&logits), &Tensor::new(labels, &Device::Cpu).unwrap()).unwrap();
    assert!((acc - correct as f32 / q as f32).abs() < 1e-6);
}

#[test]
fn forward_episode_handles_single_shot_and_single_query() {
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    let net = FewShotNet::new(Box::new(Conv4::new(&Conv4Config::default(), vb).unwrap()));
    for (way, shot, query) in [(2, 1, 1), (5, 1, 1), (3, 2, 1), (2, 1, 3)] {
        let spec = EpisodeSpec::new(way, shot, query).unwrap();
        let n = spec.num_support() + spec.num_query();
        let images = Tensor::randn(0f32, 1.0, (n, 1, 28, 28), &Device::Cpu).unwrap();
        let labels: Vec<u32> = (0..way as u32).flat_map(|c| std::iter::repeat_n(c, query)).collect();
        let labels = Tensor::new(labels, &Device::Cpu).unwrap();
        for train in [true, false] {
            let out = net.forward_episode(&images, spec, &labels, train).unwrap();
            assert_eq!(out.logits.dims(), &[way * query, way]);
            assert!(out.loss_value.is_finite());
            assert!((0.0..=1.0).contains(&out.accuracy));
        }
    }
}

/// The loss gradient of a small Conv-4 (BatchNorm in training mode) against central
/// finite differences, in f64. This also guards candle's conv, BatchNorm and max-pool
/// backward kernels.
#[test]
fn loss_gradient_matches_finite_differences() {
    let dev = Device::Cpu;
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F64, &dev);
    let cfg = Conv4Config { in_channels: 2, hidden: 3, depth: 2, ..Default::default() };
    let net = FewShotNet::new(Box::new(Conv4::new(&cfg, vb).unwrap()));
    let spec = EpisodeSpec::new(3, 2, 2).unwrap();
    let n = spec.num_support() + spec.num_query();
    // Every value from a seeded generator, so that the check is the same on every run
    // (candle's own random tensors are not seeded).
    let mut init = ChaCha8Rng::seed_from_u64(5);
    let mut normal = |shape: &[usize], mean: f64, std: f64| {
        let len: usize = shape.iter().product();
        let v: Vec<f64> = (0..len).map(|_| mean + std * (init.random::<f64>() + init.random::<f64>() + init.random::<f64>() - 1.5) * 2.0).collect();
        Tensor::from_vec(v, shape, &dev).unwrap()
    };
    let images = normal(&[n, 2, 9, 9], 0.0, 1.0);
    let labels = Tensor::new(&[0u32, 0, 1, 1, 2, 2], &dev).unwrap();
    let mut names: Vec<(String, Var)> = vm.data().lock().unwrap().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    names.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, var) in &names {
        if name.ends_with("conv.weight") {
            var.set(&normal(var.dims(), 0.0, 0.3)).unwrap();
        } else if name.ends_with("bn.weight") || name.ends_with("bn.bias") {
            // Non-trivial BatchNorm affine parameters.
            var.set(&normal(var.dims(), 1.0, 0.5)).unwrap();
        }
    }
    let loss_of = || -> f64 {
        let out = net.forward_episode(&images, spec, &labels, true).unwrap();
        out.loss.to_scalar::<f64>().unwrap()
    };
    let out = net.forward_episode(&images, spec, &labels, true).unwrap();
    let grads = out.loss.backward().unwrap();
    let vars: Vec<(String, Var)> = {
        let data = vm.data().lock().unwrap();
        let mut v: Vec<_> = data.iter().filter(|(k, _)| !k.contains("running")).map(|(k, v)| (k.clone(), v.clone())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    };
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let mut checked = 0;
    for (name, var) in &vars {
        let g = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("no gradient for {name}"));
        let g = g.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let base = var.as_tensor().flatten_all().unwrap().to_vec1::<f64>().unwrap();
        for _ in 0..4 {
            let i = rng.random_range(0..base.len());
            let h = 1e-5;
            let mut plus = base.clone();
            plus[i] += h;
            var.set(&Tensor::from_vec(plus, var.dims(), &dev).unwrap()).unwrap();
            let lp = loss_of();
            let mut minus = base.clone();
            minus[i] -= h;
            var.set(&Tensor::from_vec(minus, var.dims(), &dev).unwrap()).unwrap();
            let lm = loss_of();
            var.set(&Tensor::from_vec(base.clone(), var.dims(), &dev).unwrap()).unwrap();
            let fd = (lp - lm) / (2.0 * h);
            let err = (fd - g[i]).abs() / (fd.abs() + g[i].abs()).max(1e-6);
            assert!(err < 1e-4, "{name}[{i}]: analytic {} vs finite difference {fd} (rel err {err})", g[i]);
            checked += 1;
        }
    }
    assert!(checked >= 16, "checked {checked} coordinates");
}

#[test]
fn embedding_dimensions_follow_the_paper() {
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    let rgb = Conv4::new(&Conv4Config { in_channels: 3, ..Default::default() }, vb).unwrap();
    let x = Tensor::zeros((2, 3, 84, 84), DType::F32, &Device::Cpu).unwrap();
    assert_eq!(rgb.embed(&x, false).unwrap().dims(), &[2, 1600]);
    assert_eq!(Conv4Config { in_channels: 3, ..Default::default() }.embedding_dim(84), 1600);
    // 113k parameters for the 28x28 grey Conv-4 (no conv bias, BatchNorm affine).
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    let _ = Conv4::new(&Conv4Config::default(), vb).unwrap();
    let trainable: usize = vm.data().lock().unwrap().iter().filter(|(k, _)| !k.contains("running")).map(|(_, v)| v.elem_count()).sum();
    assert_eq!(trainable, 9 * 64 + 3 * 9 * 64 * 64 + 4 * 2 * 64);
}

/// The fast CPU Conv-4 and the plain candle one compute the same embeddings from the
/// same weights, in training and in evaluation mode, on odd sizes and batch 1, with 8
/// filters (im2col) and 16 (Winograd from the second block on).
#[test]
fn fast_and_plain_conv4_agree() {
    use protonet::ops::Ops;
    for (n, c, size, hidden) in [(1, 1, 28, 8), (3, 3, 21, 8), (5, 1, 16, 8), (1, 1, 28, 16), (4, 3, 19, 16)] {
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        let cfg = Conv4Config { in_channels: c, hidden, depth: 4, ..Default::default() };
        let fast = Conv4::with_ops(&cfg, vb.clone(), Ops::Fast).unwrap();
        let plain = Conv4::with_ops(&cfg, vb, Ops::Plain).unwrap();
        let x = Tensor::randn(0f32, 1.0, (n, c, size, size), &Device::Cpu).unwrap();
        for train in [false, true] {
            let a = fast.embed(&x, train).unwrap();
            let b = plain.embed(&x, train).unwrap();
            let d = (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
            assert!(d < 1e-4, "{n}x{c}x{size} train={train}: {d}");
        }
    }
}

/// The path that runs on GPUs (`Ops::Portable`: candle's convolution and BatchNorm and the
/// portable max-pool), run on the CPU: one episode's loss and every parameter's gradient
/// match the CPU fast path (cosine >= 0.9999, norms within 0.1%), on odd sizes (28x28
/// pools 7 -> 3). candle's own max-pool (`Ops::Plain`) does not: its gradient is the bug
/// the GPU path had.
#[test]
fn the_gpu_path_gives_the_cpu_gradients() {
    use protonet::ops::Ops;
    let dev = Device::Cpu;
    let spec = EpisodeSpec::new(3, 2, 2).unwrap();
    let labels = Tensor::new(&[0u32, 0, 1, 1, 2, 2], &dev).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let v: Vec<f32> = (0..12 * 28 * 28).map(|_| rng.random_range(-1.0..1.0)).collect();
    let images = Tensor::from_vec(v, (12, 1, 28, 28), &dev).unwrap();
    let cfg = Conv4Config { in_channels: 1, hidden: 16, depth: 4, ..Default::default() };
    // Gradients by parameter name, from the same initial weights.
    let grads_with = |ops: Ops| -> (f32, Vec<(String, Vec<f32>)>) {
        let vm = VarMap::new();
        let net = FewShotNet::new(Box::new(Conv4::with_ops(&cfg, VarBuilder::from_varmap(&vm, DType::F32, &dev), ops).unwrap()));
        let mut init = ChaCha8Rng::seed_from_u64(1);
        let mut vars: Vec<(String, Var)> = vm.data().lock().unwrap().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, var) in &vars {
            if name.ends_with("conv.weight") {
                let w: Vec<f32> = (0..var.elem_count()).map(|_| init.random_range(-0.3..0.3)).collect();
                var.set(&Tensor::from_vec(w, var.dims(), &dev).unwrap()).unwrap();
            }
        }
        let out = net.forward_episode(&images, spec, &labels, true).unwrap();
        let grads = out.loss.backward().unwrap();
        let g = vars
            .iter()
            .filter(|(n, _)| !n.contains("running"))
            .map(|(n, v)| (n.clone(), grads.get(v.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()))
            .collect();
        (out.loss_value, g)
    };
    let compare = |a: &[f32], b: &[f32]| -> (f64, f64) {
        let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
        let (na, nb) = (a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt(), b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt());
        (dot / (na * nb).max(1e-30), nb / na.max(1e-30))
    };
    let (loss_fast, fast) = grads_with(Ops::Fast);
    let (loss_portable, portable) = grads_with(Ops::Portable);
    assert!((loss_fast - loss_portable).abs() < 1e-4 * loss_fast.abs(), "loss {loss_fast} vs {loss_portable}");
    for ((name, a), (_, b)) in fast.iter().zip(&portable) {
        let (cos, ratio) = compare(a, b);
        assert!(cos >= 0.9999 && (ratio - 1.0).abs() < 1e-3, "{name}: cosine {cos}, norm ratio {ratio}");
    }
    let (_, plain) = grads_with(Ops::Plain);
    let worst = fast.iter().zip(&plain).map(|((_, a), (_, b))| compare(a, b)).map(|(cos, ratio)| cos.min(1.0 / ratio.max(1.0 / ratio))).fold(1.0, f64::min);
    assert!(worst < 0.99, "candle's max-pool gradient was expected to differ (worst {worst})");
}
