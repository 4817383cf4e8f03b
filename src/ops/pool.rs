//! CPU operations with their own backward pass, as candle custom ops.
//!
//! [`max_pool2x2`] replaces candle's `max_pool2d(2)` on the CPU. candle 0.11's max-pool
//! backward scales the gradient by 1/4 (it multiplies by the fraction of maxima in a
//! window instead of dividing by their count) and, when a side is odd, upsamples the
//! gradient onto misaligned windows, so every layer below a 7x7 -> 3x3 pool (as in the
//! 28x28 Conv-4) gets a wrong gradient. This op stores nothing extra: the backward pass
//! recomputes each window's first maximum (PyTorch's tie rule) and routes the gradient
//! there. On other devices candle's own op is used.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor, WithDType};
use rayon::prelude::*;

use crate::error::Result;

/// 2x2 max-pooling with stride 2 over `(N, C, H, W)`; odd trailing rows and columns are
/// dropped (floor), as in candle and PyTorch.
///
/// ```
/// use candle_core::{Device, Tensor};
/// let x = Tensor::arange(0f32, 16., &Device::Cpu)?.reshape((1, 1, 4, 4))?;
/// let y = protonet::ops::max_pool2x2(&x)?;
/// assert_eq!(y.flatten_all()?.to_vec1::<f32>()?, vec![5., 7., 13., 15.]);
/// # Ok::<(), protonet::Error>(())
/// ```
pub fn max_pool2x2(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() {
        Ok(x.contiguous()?.apply_op1(MaxPool2x2)?)
    } else {
        max_pool2x2_portable(x)
    }
}

/// [`max_pool2x2`] from candle operations that exist on every device (CUDA, Metal, CPU),
/// with the same values and the same gradient: each 2x2 window is put on its own axis,
/// the index of its first maximum is found (`argmax`) and that element is gathered, so
/// the backward pass (a scatter) routes the gradient to the first maximum only. This is
/// the max-pool off the CPU; on the CPU it is the reference the tests hold the GPU path to.
///
/// ```
/// use candle_core::{Device, Tensor};
/// let x = Tensor::arange(0f32, 20., &Device::Cpu)?.reshape((1, 1, 4, 5))?;
/// let fast = protonet::ops::max_pool2x2(&x)?;
/// let portable = protonet::ops::max_pool2x2_portable(&x)?;
/// assert_eq!(portable.flatten_all()?.to_vec1::<f32>()?, fast.flatten_all()?.to_vec1::<f32>()?);
/// assert_eq!(portable.flatten_all()?.to_vec1::<f32>()?, vec![6., 8., 16., 18.]);
/// # Ok::<(), protonet::Error>(())
/// ```
pub fn max_pool2x2_portable(x: &Tensor) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let (oh, ow) = (h / 2, w / 2);
    let x = x.narrow(2, 0, 2 * oh)?.narrow(3, 0, 2 * ow)?;
    // (n, c, oh, 2, ow, 2) -> (n, c, oh, ow, 2, 2) -> (n, c, oh, ow, 4): one window per row.
    let windows = x.reshape((n, c, oh, 2, ow, 2))?.permute((0, 1, 2, 4, 3, 5))?.reshape((n, c, oh, ow, 4))?;
    let first_max = windows.detach().argmax_keepdim(candle_core::D::Minus1)?;
    Ok(windows.gather(&first_max, candle_core::D::Minus1)?.squeeze(candle_core::D::Minus1)?)
}

fn dims4(layout: &Layout) -> candle_core::Result<(usize, usize, usize, usize)> {
    layout.shape().dims4()
}

fn contiguous<'a, T>(data: &'a [T], layout: &Layout, op: &str) -> candle_core::Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("{op}: input must be contiguous"),
    }
}

/// Index (within the plane) of the first maximum of the window at output `(oy, ox)`.
#[inline]
fn window_argmax<T: WithDType>(plane: &[T], w: usize, oy: usize, ox: usize) -> usize {
    let i0 = 2 * oy * w + 2 * ox;
    let mut best = i0;
    for i in [i0 + 1, i0 + w, i0 + w + 1] {
        // Strictly greater: the first maximum in row-major order wins; NaN propagates.
        if plane[i] > plane[best] || (plane[i].to_f64().is_nan() && !plane[best].to_f64().is_nan()) {
            best = i;
        }
    }
    best
}

fn pool_fwd<T: WithDType + Send + Sync>(x: &[T], (n, c, h, w): (usize, usize, usize, usize)) -> Vec<T> {
    let (oh, ow) = (h / 2, w / 2);
    let mut out = vec![T::zero(); n * c * oh * ow];
    if oh == 0 || ow == 0 {
        return out;
    }
    out.par_chunks_mut(oh * ow).zip(x.par_chunks(h * w)).for_each(|(o, plane)| {
        for oy in 0..oh {
            for ox in 0..ow {
                o[oy * ow + ox] = plane[window_argmax(plane, w, oy, ox)];
            }
        }
    });
    out
}

fn pool_bwd<T: WithDType + Send + Sync>(x: &[T], g: &[T], (n, c, h, w): (usize, usize, usize, usize)) -> Vec<T> {
    let (oh, ow) = (h / 2, w / 2);
    let mut out = vec![T::zero(); n * c * h * w];
    if oh == 0 || ow == 0 {
        return out;
    }
    out.par_chunks_mut(h * w).zip(x.par_chunks(h * w)).zip(g.par_chunks(oh * ow)).for_each(|((o, plane), gp)| {
        for oy in 0..oh {
            for ox in 0..ow {
                o[window_argmax(plane, w, oy, ox)] = gp[oy * ow + ox];
            }
        }
    });
    out
}

struct MaxPool2x2;

impl CustomOp1 for MaxPool2x2 {
    fn name(&self) -> &'static str {
        "max-pool-2x2"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let d = dims4(l)?;
        let shape = Shape::from((d.0, d.1, d.2 / 2, d.3 / 2));
        let out = match s {
            CpuStorage::F32(v) => CpuStorage::F32(pool_fwd(contiguous(v, l, self.name())?, d)),
            CpuStorage::F64(v) => CpuStorage::F64(pool_fwd(contiguous(v, l, self.name())?, d)),
            _ => candle_core::bail!("{}: only f32 and f64 are supported", self.name()),
        };
        Ok((out, shape))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(arg.contiguous()?.apply_op2_no_bwd(&grad_res.contiguous()?, &MaxPool2x2Backward)?))
    }
}

/// Gradient of [`MaxPool2x2`]: `(input, grad of output) -> grad of input`.
struct MaxPool2x2Backward;

impl CustomOp2 for MaxPool2x2Backward {
    fn name(&self) -> &'static str {
        "max-pool-2x2-backward"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let d = dims4(l1)?;
        let (gn, gc, gh, gw) = dims4(l2)?;
        if (gn, gc, gh, gw) != (d.0, d.1, d.2 / 2, d.3 / 2) {
            candle_core::bail!("{}: gradient shape {:?} does not match input {:?}", self.name(), l2.shape(), l1.shape());
        }
        let out = match (s1, s2) {
            (CpuStorage::F32(x), CpuStorage::F32(g)) => CpuStorage::F32(pool_bwd(contiguous(x, l1, self.name())?, contiguous(g, l2, self.name())?, d)),
            (CpuStorage::F64(x), CpuStorage::F64(g)) => CpuStorage::F64(pool_bwd(contiguous(x, l1, self.name())?, contiguous(g, l2, self.name())?, d)),
            _ => candle_core::bail!("{}: unsupported or mismatched dtypes", self.name()),
        };
        Ok((out, l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::max_pool2x2;
    use candle_core::{DType, Device, Tensor, Var};

    /// Plain reference: forward by loops, gradient routed to the first maximum.
    fn reference(x: &[f32], (n, c, h, w): (usize, usize, usize, usize), g: &[f32]) -> (Vec<f32>, Vec<f32>) {
        let (oh, ow) = (h / 2, w / 2);
        let mut out = Vec::new();
        let mut grad = vec![0f32; x.len()];
        for p in 0..n * c {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut best = (f32::NEG_INFINITY, 0);
                    for dy in 0..2 {
                        for dx in 0..2 {
                            let i = p * h * w + (2 * oy + dy) * w + 2 * ox + dx;
                            if x[i] > best.0 {
                                best = (x[i], i);
                            }
                        }
                    }
                    grad[best.1] += g[out.len()];
                    out.push(best.0);
                }
            }
        }
        (out, grad)
    }

    #[test]
    fn forward_matches_candle_and_backward_matches_reference() {
        for dims in [(1, 1, 2, 2), (1, 3, 7, 7), (2, 4, 3, 3), (3, 2, 28, 28), (1, 1, 5, 8)] {
            let (n, c, h, w) = dims;
            let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (n, c, h, w), &Device::Cpu).unwrap()).unwrap();
            let y = max_pool2x2(x.as_tensor()).unwrap();
            let candle = x.as_tensor().max_pool2d(2).unwrap();
            assert_eq!(y.dims(), candle.dims(), "{dims:?}");
            let diff = (&y - &candle).unwrap().abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
            assert_eq!(diff, 0.0, "{dims:?}");
            let g = Tensor::randn(0f32, 1.0, y.dims(), &Device::Cpu).unwrap();
            let grads = (&y * &g).unwrap().sum_all().unwrap().backward().unwrap();
            let gx = grads.get(x.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let xv = x.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let (want_y, want_g) = reference(&xv, dims, &g.flatten_all().unwrap().to_vec1::<f32>().unwrap());
            assert_eq!(y.flatten_all().unwrap().to_vec1::<f32>().unwrap(), want_y, "{dims:?}");
            assert_eq!(gx, want_g, "{dims:?}");
        }
    }

    #[test]
    fn ties_go_to_the_first_maximum() {
        let x = Var::from_tensor(&Tensor::ones((1, 1, 2, 2), DType::F32, &Device::Cpu).unwrap()).unwrap();
        let y = max_pool2x2(x.as_tensor()).unwrap();
        let grads = y.sum_all().unwrap().backward().unwrap();
        let gx = grads.get(x.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(gx, vec![1.0, 0.0, 0.0, 0.0]);
    }
}

#[cfg(test)]
mod portable_tests {
    use super::{max_pool2x2, max_pool2x2_portable};
    use candle_core::{DType, Device, Tensor, Var};
    use rand::{Rng, SeedableRng};

    fn random(dims: (usize, usize, usize, usize), dtype: DType, seed: u64) -> Tensor {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let n = dims.0 * dims.1 * dims.2 * dims.3;
        let v: Vec<f64> = (0..n).map(|_| rng.random_range(-2.0..2.0)).collect();
        Tensor::from_vec(v, dims, &Device::Cpu).unwrap().to_dtype(dtype).unwrap()
    }

    /// Values and gradients of the portable pool (what runs on GPUs) equal the CPU op's,
    /// odd sizes and batch 1 included, in f32 and f64.
    #[test]
    fn portable_pool_matches_the_cpu_op_in_values_and_gradients() {
        for dtype in [DType::F32, DType::F64] {
            for (k, dims) in [(1, 1, 2, 2), (1, 3, 7, 7), (2, 4, 3, 3), (3, 2, 28, 28), (1, 1, 5, 8), (2, 5, 9, 4)].into_iter().enumerate() {
                let x = Var::from_tensor(&random(dims, dtype, k as u64)).unwrap();
                let g = random((dims.0, dims.1, dims.2 / 2, dims.3 / 2), dtype, 100 + k as u64);
                let run = |pool: fn(&Tensor) -> crate::Result<Tensor>| {
                    let y = pool(x.as_tensor()).unwrap();
                    let gx = (&y * &g).unwrap().sum_all().unwrap().backward().unwrap().get(x.as_tensor()).unwrap().clone();
                    (
                        y.flatten_all().unwrap().to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap(),
                        gx.flatten_all().unwrap().to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap(),
                    )
                };
                let (y_fast, g_fast) = run(max_pool2x2);
                let (y_port, g_port) = run(max_pool2x2_portable);
                assert_eq!(y_fast, y_port, "{dims:?} {dtype:?} values");
                assert_eq!(g_fast, g_port, "{dims:?} {dtype:?} gradients");
            }
        }
    }

    /// Ties go to the first maximum, as on the CPU; the gradient of a plain 2x2 window is
    /// the finite difference of the pooled sum.
    #[test]
    fn portable_pool_routes_ties_to_the_first_maximum_and_matches_finite_differences() {
        let x = Var::from_tensor(&Tensor::ones((1, 1, 2, 2), DType::F32, &Device::Cpu).unwrap()).unwrap();
        let y = max_pool2x2_portable(x.as_tensor()).unwrap();
        let gx = y.sum_all().unwrap().backward().unwrap().get(x.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(gx, vec![1.0, 0.0, 0.0, 0.0]);

        let dims = (2, 3, 5, 7);
        let base = random(dims, DType::F64, 7).flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let weights = random((2, 3, 2, 3), DType::F64, 8);
        let loss = |v: &[f64]| -> f64 {
            let t = Tensor::from_slice(v, dims, &Device::Cpu).unwrap();
            (max_pool2x2_portable(&t).unwrap() * &weights).unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap()
        };
        let x = Var::from_tensor(&Tensor::from_slice(&base, dims, &Device::Cpu).unwrap()).unwrap();
        let l = (max_pool2x2_portable(x.as_tensor()).unwrap() * &weights).unwrap().sum_all().unwrap();
        let g = l.backward().unwrap().get(x.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
        for i in 0..base.len() {
            let h = 1e-6;
            let (mut p, mut m) = (base.clone(), base.clone());
            p[i] += h;
            m[i] -= h;
            let fd = (loss(&p) - loss(&m)) / (2.0 * h);
            assert!((fd - g[i]).abs() < 1e-6, "element {i}: analytic {} vs finite difference {fd}", g[i]);
        }
    }
}
