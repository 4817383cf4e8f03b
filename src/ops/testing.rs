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
