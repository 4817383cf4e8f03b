//! What a convolution applies to its output in the same pass, while the values are still
//! in cache: a per-output-channel bias, then an optional clamp (ReLU6 is the clamp to
//! `[0, 6]`). BatchNorm on its running statistics becomes this bias once its scale is
//! folded into the convolution's kernel. The backward pass needs the clamp's mask, taken
//! from the output (`lo < y < hi` passes the gradient), and the bias gradient, the
//! per-channel sum of the masked gradient: two small ops here.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor, WithDType};
use rayon::prelude::*;

use crate::error::Result;

/// The clamp's bounds in the storage type.
#[inline(always)]
pub(crate) fn bounds<T: WithDType>(clamp: Option<(f32, f32)>) -> Option<(T, T)> {
    clamp.map(|(lo, hi)| (T::from_f64(lo as f64), T::from_f64(hi as f64)))
}

vectorized! {
/// `v = clamp(v + bias)` over one run of a channel's values, as its own kernel.
pub(crate) fn apply_run<T: WithDType>(values: &mut [T], bias: T, clamp: Option<(T, T)>) {
    apply(values, bias, clamp)
}
}

/// `v = clamp(v + bias)` over one run of a channel's values.
#[inline(always)]
pub(crate) fn apply<T: WithDType>(values: &mut [T], bias: T, clamp: Option<(T, T)>) {
    match clamp {
        Some((lo, hi)) => {
            for v in values {
                let y = *v + bias;
                *v = if y < lo {
                    lo
                } else if y > hi {
                    hi
                } else {
                    y
                };
            }
        }
        None => {
            for v in values {
                *v += bias;
            }
        }
    }
}

/// The epilogue from candle's operations (what runs off the CPU): `clamp(y + bias[c])`
/// over channel `c` (dimension 1) of `y`.
pub(crate) fn portable(y: &Tensor, bias: &Tensor, clamp: Option<(f32, f32)>) -> Result<Tensor> {
    let mut shape = vec![1usize; y.rank()];
    shape[1] = y.dim(1)?;
    let y = y.broadcast_add(&bias.reshape(shape.as_slice())?)?;
    Ok(match clamp {
        Some((lo, hi)) => y.clamp(lo, hi)?,
        None => y,
    })
}

/// The gradient that reaches the convolution, and the bias gradient, from the gradient of
/// the epilogue's output `grad` and that output `y`.
pub(crate) fn backward(grad: &Tensor, y: &Tensor, clamp: Option<(f32, f32)>) -> candle_core::Result<(Tensor, Tensor)> {
    let grad = grad.contiguous()?;
    let masked = match clamp {
        Some(c) => grad.apply_op2_no_bwd(y, &ClampMask { clamp: c })?,
        None => grad,
    };
    let bias = masked.apply_op1_no_bwd(&ChannelSums)?;
    Ok((masked, bias))
}

fn contiguous<'a, T>(s: &'a [T], l: &Layout, what: &str) -> candle_core::Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&s[a..b]),
        None => candle_core::bail!("{what}: inputs must be contiguous"),
    }
}

/// `grad` where `lo < y < hi`, else 0.
struct ClampMask {
    clamp: (f32, f32),
}

fn mask<T: WithDType + Send + Sync>(g: &[T], y: &[T], (lo, hi): (f32, f32)) -> Vec<T> {
    let (lo, hi) = (T::from_f64(lo as f64), T::from_f64(hi as f64));
    let mut out: Vec<T> = Vec::with_capacity(g.len());
    out.spare_capacity_mut().par_chunks_mut(1 << 14).zip(g.par_chunks(1 << 14).zip(y.par_chunks(1 << 14))).for_each(|(o, (g, y))| mask_run(o, g, y, lo, hi));
    // SAFETY: every element was written above (the chunks cover the whole length).
    unsafe { out.set_len(g.len()) };
    out
}

vectorized! {
fn mask_run<T: WithDType>(out: &mut [std::mem::MaybeUninit<T>], g: &[T], y: &[T], lo: T, hi: T) {
    for ((o, &g), &y) in out.iter_mut().zip(g).zip(y) {
        o.write(if y > lo && y < hi { g } else { T::zero() });
    }
}
}

impl CustomOp2 for ClampMask {
    fn name(&self) -> &'static str {
        "protonet-clamp-mask"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        if l1.dims() != l2.dims() {
            candle_core::bail!("clamp mask: gradient {:?} and output {:?} differ in shape", l1.dims(), l2.dims());
        }
        let what = "clamp mask";
        let out = match (s1, s2) {
            (CpuStorage::F32(g), CpuStorage::F32(y)) => CpuStorage::F32(mask(contiguous(g, l1, what)?, contiguous(y, l2, what)?, self.clamp)),
            (CpuStorage::F64(g), CpuStorage::F64(y)) => CpuStorage::F64(mask(contiguous(g, l1, what)?, contiguous(y, l2, what)?, self.clamp)),
            _ => candle_core::bail!("clamp mask: only f32 and f64 of one dtype"),
        };
        Ok((out, l1.shape().clone()))
    }
}

/// Sums over every dimension but the second: `(N, C, ...) -> (C)`.
struct ChannelSums;

fn channel_sums<T: WithDType + Send + Sync>(g: &[T], (n, c, rest): (usize, usize, usize)) -> Vec<T> {
    (0..c)
        .into_par_iter()
        .map(|ch| {
            let mut total = 0f64;
            for i in 0..n {
                let plane = &g[(i * c + ch) * rest..][..rest];
                total += sum(plane).to_f64();
            }
            T::from_f64(total)
        })
        .collect()
}

vectorized! {
/// The sum of `values`, in sixteen running sums.
fn sum<T: WithDType>(values: &[T]) -> T {
    let mut lanes = [T::zero(); 16];
    let mut chunks = values.chunks_exact(16);
    for chunk in &mut chunks {
        for (l, &v) in lanes.iter_mut().zip(chunk) {
            *l += v;
        }
    }
    let tail = chunks.remainder().iter().fold(T::zero(), |a, &v| a + v);
    lanes.iter().fold(tail, |a, &v| a + v)
}
}

impl CustomOp1 for ChannelSums {
    fn name(&self) -> &'static str {
        "protonet-channel-sums"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let d = l.dims();
        if d.len() < 2 {
            candle_core::bail!("channel sums: need at least 2 dimensions, got {d:?}");
        }
        let dims = (d[0], d[1], d[2..].iter().product());
        let out = match s {
            CpuStorage::F32(g) => CpuStorage::F32(channel_sums(contiguous(g, l, "channel sums")?, dims)),
            CpuStorage::F64(g) => CpuStorage::F64(channel_sums(contiguous(g, l, "channel sums")?, dims)),
            _ => candle_core::bail!("channel sums: only f32 and f64"),
        };
        Ok((out, Shape::from(d[1])))
    }
}
