//! BatchNorm followed by ReLU, fused, for the CPU: one custom op for the training-mode
//! forward pass (batch statistics) and one pass for its backward, instead of candle's
//! chain of a dozen element-wise ops with transposed copies.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor, WithDType};
use rayon::prelude::*;

/// Batch mean and (biased) variance per channel, left by the forward pass for the
/// running-statistics update and the backward pass.
pub(crate) type SharedStats = Arc<Mutex<Option<(Vec<f64>, Vec<f64>)>>>;

/// BatchNorm's epsilon (PyTorch's default).
pub(crate) const EPS: f64 = 1e-5;

/// Training-mode forward: `(x, gamma, beta) -> relu(gamma * xhat + beta)`. Leaves the
/// batch mean and (biased) variance in `stats` for the running-statistics update and for
/// the backward pass.
pub(crate) struct BnReluTrain {
    pub(crate) stats: SharedStats,
}

fn dims(l: &Layout) -> candle_core::Result<(usize, usize, usize)> {
    let d = l.dims();
    if d.len() < 2 {
        candle_core::bail!("batch-norm: input needs at least 2 dimensions, got {:?}", d);
    }
    Ok((d[0], d[1], d[2..].iter().product()))
}

fn contiguous<'a, T>(s: &'a [T], l: &Layout) -> candle_core::Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&s[a..b]),
        None => candle_core::bail!("batch-norm: inputs must be contiguous"),
    }
}

/// Mean and biased variance of channel `ch`, reading the input once: each plane's mean
/// and sum of squared deviations ([`plane_moments`], the plane still in cache for the
/// second sum), merged across planes in f64 (Chan et al.'s pairwise update), which keeps
/// the variance accurate however large the mean.
pub(crate) fn channel_stats<T: WithDType>(x: &[T], (n, c, hw): (usize, usize, usize), ch: usize) -> (f64, f64) {
    let (mut count, mut mean, mut m2) = (0.0, 0.0, 0.0);
    for i in 0..n {
        let (pm, pm2) = plane_moments(&x[(i * c + ch) * hw..][..hw]);
        let k = hw as f64;
        let total = count + k;
        let delta = pm - mean;
        mean += delta * k / total;
        m2 += pm2 + delta * delta * count * k / total;
        count = total;
    }
    (mean, m2 / count.max(1.0))
}

vectorized! {
/// The mean of `s` and the sum of squared deviations from it, summed in 8 lanes of `T`
/// (a plane is short: hundreds of values).
fn plane_moments<T: WithDType>(s: &[T]) -> (f64, f64) {
    let k = s.len().max(1) as f64;
    let (chunks, rest) = (s.chunks_exact(8), s.chunks_exact(8).remainder());
    let mut acc = [T::zero(); 8];
    for c in chunks.clone() {
        for j in 0..8 {
            acc[j] += c[j];
        }
    }
    let mean = (acc.iter().chain(rest).fold(0.0, |a, v| a + v.to_f64())) / k;
    // Deviations from the mean rounded to `T`, corrected for that rounding at the end.
    let m = T::from_f64(mean);
    let mut acc = [T::zero(); 8];
    for c in chunks {
        for j in 0..8 {
            let d = c[j] - m;
            acc[j] += d * d;
        }
    }
    let tail = rest.iter().fold(0.0, |a, &v| {
        let d = (v - m).to_f64();
        a + d * d
    });
    let shift = mean - m.to_f64();
    (mean, acc.iter().fold(tail, |a, v| a + v.to_f64()) - k * shift * shift)
}
}

/// Writes `f(channel, plane)` into every `(n, channel)` plane of `out`, channels in parallel.
pub(crate) fn per_channel_planes<T: WithDType + Send + Sync>(out: &mut [T], (n, c, hw): (usize, usize, usize), f: impl Fn(usize, usize, &mut [T]) + Sync) {
    // Planes of one channel are strided by C*HW; hand each thread whole channels through
    // raw parts of disjoint planes.
    let ptr = SendPtr(out.as_mut_ptr());
    (0..c).into_par_iter().for_each(|ch| {
        let ptr = &ptr;
        for i in 0..n {
            // SAFETY: plane (i, ch) is touched by this channel's task only.
            let plane = unsafe { std::slice::from_raw_parts_mut(ptr.0.add((i * c + ch) * hw), hw) };
            f(ch, i, plane);
        }
    });
}

struct SendPtr<T>(*mut T);
unsafe impl<T> Sync for SendPtr<T> {}
unsafe impl<T> Send for SendPtr<T> {}

fn fwd<T: WithDType + Send + Sync>(x: &[T], gamma: &[T], beta: &[T], d: (usize, usize, usize)) -> (Vec<T>, Vec<f64>, Vec<f64>) {
    let (_, c, hw) = d;
    let stats: Vec<(f64, f64)> = (0..c).into_par_iter().map(|ch| channel_stats(x, d, ch)).collect();
    let mut y = vec![T::zero(); x.len()];
    per_channel_planes(&mut y, d, |ch, i, plane| {
        let (mean, var) = stats[ch];
        let inv = 1.0 / (var + EPS).sqrt();
        let scale = gamma[ch].to_f64() * inv;
        let shift = beta[ch].to_f64() - mean * scale;
        let (s, b) = (T::from_f64(scale), T::from_f64(shift));
        let src = &x[(i * c + ch) * hw..][..hw];
        for (o, &v) in plane.iter_mut().zip(src) {
            let z = v * s + b;
            // NaN passes through (as in PyTorch), so a blown-up network shows in the loss.
            // `z != z` is true for NaN only: NaN passes, as in PyTorch.
            #[allow(clippy::eq_op)]
            let keep = z > T::zero() || z != z;
            *o = if keep { z } else { T::zero() };
        }
    });
    let mean = stats.iter().map(|s| s.0).collect();
    let var = stats.iter().map(|s| s.1).collect();
    (y, mean, var)
}

impl CustomOp3 for BnReluTrain {
    fn name(&self) -> &'static str {
        "protonet-batchnorm-relu"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let d = dims(l1)?;
        if l2.dims() != [d.1] || l3.dims() != [d.1] {
            candle_core::bail!("batch-norm: weight and bias need {} values", d.1);
        }
        let (out, mean, var) = match (s1, s2, s3) {
            (CpuStorage::F32(x), CpuStorage::F32(g), CpuStorage::F32(b)) => {
                let (y, m, v) = fwd(contiguous(x, l1)?, contiguous(g, l2)?, contiguous(b, l3)?, d);
                (CpuStorage::F32(y), m, v)
            }
            (CpuStorage::F64(x), CpuStorage::F64(g), CpuStorage::F64(b)) => {
                let (y, m, v) = fwd(contiguous(x, l1)?, contiguous(g, l2)?, contiguous(b, l3)?, d);
                (CpuStorage::F64(y), m, v)
            }
            _ => candle_core::bail!("batch-norm: only f32 and f64 of one dtype"),
        };
        *self.stats.lock().expect("stats lock") = Some((mean, var));
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _beta: &Tensor,
        y: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        // One op returns [dx | dgamma | dbeta] flattened; split it here.
        let stats = self.stats.lock().expect("stats lock").clone();
        let packed = x.apply_op3_no_bwd(&grad, &Tensor::cat(&[gamma.flatten_all()?, y.flatten_all()?], 0)?, &BnReluBackward { stats })?;
        let (len, c) = (x.elem_count(), gamma.elem_count());
        let dx = packed.narrow(0, 0, len)?.reshape(x.shape())?;
        let dgamma = packed.narrow(0, len, c)?;
        let dbeta = packed.narrow(0, len + c, c)?;
        Ok((x.track_op().then_some(dx), Some(dgamma), Some(dbeta)))
    }
}

/// Backward of [`BnReluTrain`]: `(x, dy, [gamma | y]) -> [dx | dgamma | dbeta]`, with
/// the forward pass's batch statistics when it has them (else recomputed from `x`).
struct BnReluBackward {
    stats: Option<(Vec<f64>, Vec<f64>)>,
}

#[allow(clippy::type_complexity)]
fn bwd<T: WithDType + Send + Sync>(x: &[T], dy: &[T], gamma: &[T], y: &[T], d: (usize, usize, usize), stats: &Option<(Vec<f64>, Vec<f64>)>) -> Vec<T> {
    let (n, c, hw) = d;
    let m = (n * hw) as f64;
    // Per channel: mean, inv_std, sum(dz), sum(dz * xhat), where dz = dy masked by ReLU.
    let per: Vec<(f64, f64, f64, f64)> = (0..c)
        .into_par_iter()
        .map(|ch| {
            let (mean, var) = match stats {
                Some((m, v)) if m.len() == c && v.len() == c => (m[ch], v[ch]),
                _ => channel_stats(x, d, ch),
            };
            let inv = 1.0 / (var + EPS).sqrt();
            let (mut sdz, mut sdzx) = (0.0, 0.0);
            for i in 0..n {
                let o = (i * c + ch) * hw;
                for j in o..o + hw {
                    if y[j] > T::zero() {
                        let dz = dy[j].to_f64();
                        sdz += dz;
                        sdzx += dz * (x[j].to_f64() - mean) * inv;
                    }
                }
            }
            (mean, inv, sdz, sdzx)
        })
        .collect();
    let mut out = vec![T::zero(); x.len() + 2 * c];
    let (dx, rest) = out.split_at_mut(x.len());
    per_channel_planes(dx, d, |ch, i, plane| {
        let (mean, inv, sdz, sdzx) = per[ch];
        let k = gamma[ch].to_f64() * inv;
        let o = (i * c + ch) * hw;
        for (j, p) in plane.iter_mut().enumerate() {
            let dz = if y[o + j] > T::zero() { dy[o + j].to_f64() } else { 0.0 };
            let xhat = (x[o + j].to_f64() - mean) * inv;
            *p = T::from_f64(k * (dz - sdz / m - xhat * sdzx / m));
        }
    });
    for ch in 0..c {
        rest[ch] = T::from_f64(per[ch].3);
        rest[c + ch] = T::from_f64(per[ch].2);
    }
    out
}

impl CustomOp3 for BnReluBackward {
    fn name(&self) -> &'static str {
        "protonet-batchnorm-relu-backward"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let d = dims(l1)?;
        let len = l1.shape().elem_count();
        if l2.shape().elem_count() != len || l3.shape().elem_count() != d.1 + len {
            candle_core::bail!("batch-norm backward: mismatched shapes");
        }
        let out = match (s1, s2, s3) {
            (CpuStorage::F32(x), CpuStorage::F32(dy), CpuStorage::F32(gy)) => {
                let gy = contiguous(gy, l3)?;
                CpuStorage::F32(bwd(contiguous(x, l1)?, contiguous(dy, l2)?, &gy[..d.1], &gy[d.1..], d, &self.stats))
            }
            (CpuStorage::F64(x), CpuStorage::F64(dy), CpuStorage::F64(gy)) => {
                let gy = contiguous(gy, l3)?;
                CpuStorage::F64(bwd(contiguous(x, l1)?, contiguous(dy, l2)?, &gy[..d.1], &gy[d.1..], d, &self.stats))
            }
            _ => candle_core::bail!("batch-norm backward: only f32 and f64 of one dtype"),
        };
        Ok((out, Shape::from(len + 2 * d.1)))
    }
}
