//! A per-channel affine map with an optional clamp, `y = clamp(x * scale[c] + shift[c])`:
//! BatchNorm on its running statistics folded into one pass, followed by ReLU6 (the
//! clamp to `[0, 6]`) or nothing. candle builds the same from four broadcast operations
//! and two for the clamp, each a full pass that autograd keeps for the backward pass; this
//! op makes one pass and keeps only its input. The backward pass is two more CPU kernels
//! (the input's gradient, and the scales' and shifts' as per-channel sums), checked against
//! finite differences and against the plain ops.

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor, WithDType};
use rayon::prelude::*;

use crate::error::Result;

/// `clamp(x * scale[c] + shift[c], lo, hi)` over channel `c` of `x` `(N, C, ...)`, with
/// `scale` and `shift` of `C` values; no clamp with `clamp = None`. On the CPU a custom op
/// with its own backward pass (gradients for `x`, `scale` and `shift`); elsewhere candle's
/// operations.
///
/// ```
/// use candle_core::{Device, Tensor};
/// let x = Tensor::randn(0f32, 3., (2, 3, 4, 4), &Device::Cpu)?;
/// let (s, b) = (Tensor::new(&[1f32, 2., 0.5], &Device::Cpu)?, Tensor::new(&[0f32, 1., -1.], &Device::Cpu)?);
/// let fast = protonet::ops::channel_affine(&x, &s, &b, Some((0.0, 6.0)))?;
/// let plain = x.broadcast_mul(&s.reshape((1, 3, 1, 1))?)?.broadcast_add(&b.reshape((1, 3, 1, 1))?)?.clamp(0f32, 6f32)?;
/// assert!((fast - plain)?.abs()?.max_all()?.to_scalar::<f32>()? < 1e-6);
/// # Ok::<(), protonet::Error>(())
/// ```
pub fn channel_affine(x: &Tensor, scale: &Tensor, shift: &Tensor, clamp: Option<(f32, f32)>) -> Result<Tensor> {
    if x.device().is_cpu() {
        Ok(x.contiguous()?.apply_op3(&scale.contiguous()?, &shift.contiguous()?, ChannelAffine { clamp })?)
    } else {
        channel_affine_portable(x, scale, shift, clamp)
    }
}

/// [`channel_affine`] from candle's operations (what runs off the CPU).
pub fn channel_affine_portable(x: &Tensor, scale: &Tensor, shift: &Tensor, clamp: Option<(f32, f32)>) -> Result<Tensor> {
    let mut shape = vec![1usize; x.rank()];
    shape[1] = x.dim(1)?;
    let y = x.broadcast_mul(&scale.reshape(shape.as_slice())?)?.broadcast_add(&shift.reshape(shape.as_slice())?)?;
    Ok(match clamp {
        Some((lo, hi)) => y.clamp(lo, hi)?,
        None => y,
    })
}

struct ChannelAffine {
    clamp: Option<(f32, f32)>,
}

/// `(N, C, rest)` of a layout of at least 2 dimensions.
fn dims(l: &Layout) -> candle_core::Result<(usize, usize, usize)> {
    let d = l.dims();
    if d.len() < 2 {
        candle_core::bail!("channel affine: input needs at least 2 dimensions, got {d:?}");
    }
    Ok((d[0], d[1], d[2..].iter().product()))
}

fn slice<'a, T>(s: &'a [T], l: &Layout) -> candle_core::Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&s[a..b]),
        None => candle_core::bail!("channel affine: inputs must be contiguous"),
    }
}

/// Whether the clamp passes the gradient at pre-clamp value `v` (strictly inside).
#[inline]
fn passes(v: f64, clamp: Option<(f32, f32)>) -> bool {
    clamp.is_none_or(|(lo, hi)| v > lo as f64 && v < hi as f64)
}

fn forward<T: WithDType + Send + Sync>(x: &[T], s: &[T], b: &[T], (n, c, hw): (usize, usize, usize), clamp: Option<(f32, f32)>) -> Vec<T> {
    let mut out = vec![T::zero(); n * c * hw];
    let (lo, hi) = clamp.map_or((T::zero(), T::zero()), |(lo, hi)| (T::from_f64(lo as f64), T::from_f64(hi as f64)));
    out.par_chunks_mut(hw.max(1)).zip(x.par_chunks(hw.max(1))).enumerate().for_each(|(plane, (o, xp))| {
        let ch = plane % c;
        let (sc, sh) = (s[ch], b[ch]);
        if clamp.is_some() {
            for (o, &v) in o.iter_mut().zip(xp) {
                let y = v * sc + sh;
                *o = if y < lo {
                    lo
                } else if y > hi {
                    hi
                } else {
                    y
                };
            }
        } else {
            for (o, &v) in o.iter_mut().zip(xp) {
                *o = v * sc + sh;
            }
        }
    });
    out
}

/// Checks the shapes of `(x, scale, shift)` and returns `(N, C, rest)`.
fn check(l1: &Layout, l2: &Layout, l3: &Layout) -> candle_core::Result<(usize, usize, usize)> {
    let d = dims(l1)?;
    if l2.dims() != [d.1] || l3.dims() != [d.1] {
        candle_core::bail!("channel affine: scale {:?} and shift {:?} must have {} values (the channels of {:?})", l2.dims(), l3.dims(), d.1, l1.dims());
    }
    Ok(d)
}

impl CustomOp3 for ChannelAffine {
    fn name(&self) -> &'static str {
        "protonet-channel-affine"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let d = check(l1, l2, l3)?;
        let out = match (s1, s2, s3) {
            (CpuStorage::F32(x), CpuStorage::F32(s), CpuStorage::F32(b)) => {
                CpuStorage::F32(forward(slice(x, l1)?, slice(s, l2)?, slice(b, l3)?, d, self.clamp))
            }
            (CpuStorage::F64(x), CpuStorage::F64(s), CpuStorage::F64(b)) => {
                CpuStorage::F64(forward(slice(x, l1)?, slice(s, l2)?, slice(b, l3)?, d, self.clamp))
            }
            _ => candle_core::bail!("channel affine: only f32 and f64 of one dtype"),
        };
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        scale: &Tensor,
        shift: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let params = Tensor::stack(&[scale, shift], 0)?;
        let gx = grad.apply_op3_no_bwd(x, &params, &AffineGrad { clamp: self.clamp, wrt_input: true })?;
        let gp = grad.apply_op3_no_bwd(x, &params, &AffineGrad { clamp: self.clamp, wrt_input: false })?;
        Ok((Some(gx), Some(gp.get(0)?), Some(gp.get(1)?)))
    }
}

/// The backward pass from `(dL/dy, x, [scale; shift])`: `dL/dx` (`wrt_input`), else the
/// per-channel sums `[dL/dscale; dL/dshift]` `(2, C)`.
struct AffineGrad {
    clamp: Option<(f32, f32)>,
    wrt_input: bool,
}

fn grad_input<T: WithDType + Send + Sync>(g: &[T], x: &[T], p: &[T], (n, c, hw): (usize, usize, usize), clamp: Option<(f32, f32)>) -> Vec<T> {
    let mut out = vec![T::zero(); n * c * hw];
    out.par_chunks_mut(hw.max(1)).zip(g.par_chunks(hw.max(1)).zip(x.par_chunks(hw.max(1)))).enumerate().for_each(|(plane, (o, (gp, xp)))| {
        let ch = plane % c;
        let (sc, sh) = (p[ch], p[c + ch]);
        for ((o, &gv), &xv) in o.iter_mut().zip(gp).zip(xp) {
            *o = if passes((xv * sc + sh).to_f64(), clamp) { gv * sc } else { T::zero() };
        }
    });
    out
}

fn grad_params<T: WithDType + Send + Sync>(g: &[T], x: &[T], p: &[T], (n, c, hw): (usize, usize, usize), clamp: Option<(f32, f32)>) -> Vec<T> {
    let sums: Vec<(f64, f64)> = (0..c)
        .into_par_iter()
        .map(|ch| {
            let (sc, sh) = (p[ch], p[c + ch]);
            let (mut gs, mut gb) = (0f64, 0f64);
            for i in 0..n {
                let at = (i * c + ch) * hw;
                for (&gv, &xv) in g[at..at + hw].iter().zip(&x[at..at + hw]) {
                    if passes((xv * sc + sh).to_f64(), clamp) {
                        gs += (gv * xv).to_f64();
                        gb += gv.to_f64();
                    }
                }
            }
            (gs, gb)
        })
        .collect();
    sums.iter().map(|s| T::from_f64(s.0)).chain(sums.iter().map(|s| T::from_f64(s.1))).collect()
}

impl CustomOp3 for AffineGrad {
    fn name(&self) -> &'static str {
        "protonet-channel-affine-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let d = dims(l1)?;
        if l2.dims() != l1.dims() || l3.dims() != [2, d.1] {
            candle_core::bail!("channel affine backward: shapes {:?}, {:?}, {:?} do not fit", l1.dims(), l2.dims(), l3.dims());
        }
        let (clamp, input) = (self.clamp, self.wrt_input);
        let out = match (s1, s2, s3) {
            (CpuStorage::F32(g), CpuStorage::F32(x), CpuStorage::F32(p)) => {
                let (g, x, p) = (slice(g, l1)?, slice(x, l2)?, slice(p, l3)?);
                CpuStorage::F32(if input { grad_input(g, x, p, d, clamp) } else { grad_params(g, x, p, d, clamp) })
            }
            (CpuStorage::F64(g), CpuStorage::F64(x), CpuStorage::F64(p)) => {
                let (g, x, p) = (slice(g, l1)?, slice(x, l2)?, slice(p, l3)?);
                CpuStorage::F64(if input { grad_input(g, x, p, d, clamp) } else { grad_params(g, x, p, d, clamp) })
            }
            _ => candle_core::bail!("channel affine backward: only f32 and f64 of one dtype"),
        };
        Ok((out, if input { l1.shape().clone() } else { Shape::from((2, d.1)) }))
    }
}

#[cfg(test)]
mod tests {
    use super::{channel_affine, channel_affine_portable};
    use candle_core::{DType, Device, Tensor, Var};

    /// Values and the gradients of `x`, `scale` and `shift` against the plain ops (f32 and
    /// f64, with and without the clamp, odd sizes, batch 1) and against central finite
    /// differences (f64).
    #[test]
    fn values_and_gradients_match_the_plain_ops_and_finite_differences() {
        let dev = Device::Cpu;
        for dtype in [DType::F64, DType::F32] {
            for &(dims, clamp) in &[((1usize, 3usize, 5usize, 7usize), Some((0f32, 6f32))), ((2, 4, 3, 3), None), ((3, 2, 1, 9), Some((-1.0, 1.5)))] {
                let x = Var::from_tensor(&(Tensor::randn(0f64, 3.0, dims, &dev).unwrap().to_dtype(dtype).unwrap())).unwrap();
                let s = Var::from_tensor(&Tensor::randn(0f64, 1.0, dims.1, &dev).unwrap().to_dtype(dtype).unwrap()).unwrap();
                let b = Var::from_tensor(&Tensor::randn(0f64, 1.0, dims.1, &dev).unwrap().to_dtype(dtype).unwrap()).unwrap();
                let r = Tensor::randn(0f64, 1.0, dims, &dev).unwrap().to_dtype(dtype).unwrap();
                let fast = channel_affine(x.as_tensor(), s.as_tensor(), b.as_tensor(), clamp).unwrap();
                let plain = channel_affine_portable(x.as_tensor(), s.as_tensor(), b.as_tensor(), clamp).unwrap();
                let diff = |a: &Tensor, b: &Tensor| {
                    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
                };
                let tol = if dtype == DType::F32 { 1e-5 } else { 1e-12 };
                assert!(diff(&fast, &plain) < tol, "values {dtype:?} {dims:?}");
                let gf = (&fast * &r).unwrap().sum_all().unwrap().backward().unwrap();
                let gp = (&plain * &r).unwrap().sum_all().unwrap().backward().unwrap();
                for (what, v) in [("x", &x), ("scale", &s), ("shift", &b)] {
                    let (a, p) = (gf.get(v.as_tensor()).unwrap(), gp.get(v.as_tensor()).unwrap());
                    let scale = p.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap().max(1.0);
                    assert!(diff(a, p) / scale < tol * 10.0, "{what} gradient {dtype:?} {dims:?}: {}", diff(a, p));
                }
                if dtype == DType::F64 {
                    // Finite differences on every scale and shift, and on some inputs.
                    let loss = |x: &Tensor, s: &Tensor, b: &Tensor| {
                        (channel_affine(x, s, b, clamp).unwrap() * &r).unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap()
                    };
                    for (k, v) in [&x, &s, &b].into_iter().enumerate() {
                        let g = gf.get(v.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
                        let base = v.as_tensor().flatten_all().unwrap().to_vec1::<f64>().unwrap();
                        for i in (0..base.len()).step_by(if k == 0 { 7 } else { 1 }) {
                            let at = |d: f64| {
                                let mut w = base.clone();
                                w[i] += d;
                                let t = Tensor::from_vec(w, v.dims(), &dev).unwrap();
                                match k {
                                    0 => loss(&t, s.as_tensor(), b.as_tensor()),
                                    1 => loss(x.as_tensor(), &t, b.as_tensor()),
                                    _ => loss(x.as_tensor(), s.as_tensor(), &t),
                                }
                            };
                            let fd = (at(1e-6) - at(-1e-6)) / 2e-6;
                            assert!((fd - g[i]).abs() < 1e-5 * (1.0 + fd.abs()), "argument {k} [{i}] {dims:?}: {} vs {fd}", g[i]);
                        }
                    }
                }
            }
        }
    }
}
