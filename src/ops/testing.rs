//! Comparisons shared by the kernels' tests.

use candle_core::{DType, Tensor};

/// The largest absolute difference between `a` and `b` (f64 tensors).
pub(crate) fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap()
}

/// The largest absolute difference between `a` and `b`, relative to the largest value of
/// `b`, computed in f64 whatever their dtype.
pub(crate) fn relative_diff(a: &Tensor, b: &Tensor) -> f64 {
    let (a, b) = (a.to_dtype(DType::F64).unwrap(), b.to_dtype(DType::F64).unwrap());
    max_diff(&a, &b) / b.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap().max(1e-30)
}

/// A tensor of `shape` with standard normal f32 values drawn from a generator seeded by
/// `seed` (Box-Muller): inputs that are the same on every run, where candle's `randn`
/// draws from an unseeded generator.
pub(crate) fn seeded_randn(shape: &[usize], seed: u64) -> Tensor {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|_| {
            let (u1, u2): (f64, f64) = (rng.random_range(f64::EPSILON..1.0), rng.random());
            ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
        })
        .collect();
    Tensor::from_vec(v, shape, &candle_core::Device::Cpu).unwrap()
}
