//! The fine-tunable EfficientNet-Lite0 head (1x1 convolution, BatchNorm in training mode,
//! ReLU6, pooling, L2 normalization with its clamp, learnable temperature): the gradient of
//! the prototypical loss through it, in f64, against central finite differences.

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use protonet::backbone::{HeadConfig, TunedHead};
use protonet::{EpisodeSpec, FewShotNet};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[test]
fn tuned_head_gradients_match_finite_differences() {
    let dev = Device::Cpu;
    for normalize in [true, false] {
        let vm = VarMap::new();
        let head = TunedHead::new(&HeadConfig { normalize }, VarBuilder::from_varmap(&vm, DType::F64, &dev)).unwrap();
        let net = FewShotNet::new(Box::new(head));
        let spec = EpisodeSpec::new(3, 2, 1).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(if normalize { 1 } else { 2 });
        let n = spec.num_support() + spec.num_query();
        let features: Vec<f64> = (0..n * 320 * 2 * 2).map(|_| rng.random_range(0.0..2.0)).collect();
        let x = Tensor::from_vec(features, (n, 320, 2, 2), &dev).unwrap();
        let labels = Tensor::new(&[0u32, 1, 2], &dev).unwrap();
        let mut vars: Vec<(String, Var)> = vm.data().lock().unwrap().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        // Every parameter from the seeded generator (candle's initialisation is unseeded, and
        // an unlucky draw can put a ReLU6 kink within the finite difference's step): the
        // convolution as PyTorch initialises it, non-trivial BatchNorm affine parameters and
        // temperature.
        for (name, var) in &vars {
            let range = match name.as_str() {
                "bn.weight" | "bn.bias" | "log_temperature" => 0.2..1.2,
                "conv.weight" => -1.0 / (320f64).sqrt()..1.0 / (320f64).sqrt(),
                _ => continue,
            };
            let v: Vec<f64> = (0..var.elem_count()).map(|_| rng.random_range(range.clone())).collect();
            var.set(&Tensor::from_vec(v, var.dims(), &dev).unwrap()).unwrap();
        }
        let loss = || net.forward_episode(&x, spec, &labels, true).unwrap().loss.to_scalar::<f64>().unwrap();
        let grads = net.forward_episode(&x, spec, &labels, true).unwrap().loss.backward().unwrap();
        let mut checked = 0;
        for (name, var) in vars.iter().filter(|(n, _)| !n.contains("running")) {
            let g = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("no gradient for {name}")).flatten_all().unwrap().to_vec1::<f64>().unwrap();
            let base = var.as_tensor().flatten_all().unwrap().to_vec1::<f64>().unwrap();
            for _ in 0..4 {
                let i = rng.random_range(0..base.len());
                let h = 1e-6;
                let at = |delta: f64| {
                    let mut v = base.clone();
                    v[i] += delta;
                    var.set(&Tensor::from_vec(v, var.dims(), &dev).unwrap()).unwrap();
                    loss()
                };
                let fd = (at(h) - at(-h)) / (2.0 * h);
                var.set(&Tensor::from_vec(base.clone(), var.dims(), &dev).unwrap()).unwrap();
                // Relative error, with a floor of 1e-6 on the scale: below it the central
                // difference (h = 1e-6, f64) is rounding noise.
                let err = (fd - g[i]).abs() / (fd.abs() + g[i].abs()).max(1e-6);
                assert!(err < 1e-4, "normalize={normalize} {name}[{i}]: analytic {} vs finite difference {fd}", g[i]);
                checked += 1;
            }
        }
        assert_eq!(checked, 4 * 4, "conv.weight, bn.weight, bn.bias and log_temperature each checked");
    }
}
