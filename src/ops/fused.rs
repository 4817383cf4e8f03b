//! BatchNorm + ReLU + 2x2 max-pool in one pass for the CPU, the tail of every Conv-4
//! block. The unfused chain writes and reads the full-size activation several times
//! (BatchNorm output, pool input, pool gradient, BatchNorm gradient); here the forward
//! pass reads the convolution's output once and writes only the pooled map, and the
//! backward pass recomputes the normalised values and each window's maximum from the
//! input instead of storing them.
//!
//! Semantics are those of BatchNorm + ReLU (`crate::backbone::BatchNormRelu`) followed by [`super::max_pool2x2`]
//! (floor on odd sides, the first maximum of a window gets the gradient, NaN passes
//! through); the tests compare the two on random inputs, values and gradients.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Shape, Tensor, WithDType};
use rayon::prelude::*;

use super::batchnorm::{channel_stats, per_channel_planes, EPS};

fn dims4(l: &Layout) -> candle_core::Result<(usize, usize, usize, usize)> {
    let d = l.dims();
    if d.len() != 4 {
        candle_core::bail!("batch-norm-relu-pool: input must be (N, C, H, W), got {:?}", d);
    }
    if d[2] < 2 || d[3] < 2 {
        candle_core::bail!("batch-norm-relu-pool: a {}x{} map is too small for a 2x2 pool", d[2], d[3]);
    }
    Ok((d[0], d[1], d[2], d[3]))
}

fn contiguous<'a, T>(s: &'a [T], l: &Layout) -> candle_core::Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&s[a..b]),
        None => candle_core::bail!("batch-norm-relu-pool: inputs must be contiguous"),
    }
}

/// The window of output `(oy, ox)` of a plane `src` of width `w`, through `z = v*s + b`
/// and ReLU: the index in the plane of its first maximum, the z there, and the pooled
/// value. Written without branches on the data (selects, not jumps), since whether a
/// value passes the ReLU is a coin flip the branch predictor cannot learn. As
/// `max_pool2x2(relu(z))` gives it: `relu(max(z))`, the gradient to the first maximum;
/// a NaN anywhere in the window gives NaN and no gradient.
#[inline(always)]
fn window<T: WithDType>(src: &[T], w: usize, oy: usize, ox: usize, s: T, b: T) -> (usize, T, T) {
    let i0 = 2 * oy * w + 2 * ox;
    let z = [src[i0] * s + b, src[i0 + 1] * s + b, src[i0 + w] * s + b, src[i0 + w + 1] * s + b];
    let (mut k, mut bz) = (0usize, z[0]);
    for (j, &zj) in z.iter().enumerate().skip(1) {
        let better = zj > bz;
        k = if better { j } else { k };
        bz = if better { zj } else { bz };
    }
    #[allow(clippy::eq_op)]
    let nan = (z[0] != z[0]) | (z[1] != z[1]) | (z[2] != z[2]) | (z[3] != z[3]);
    let y = if bz > T::zero() { bz } else { T::zero() };
    let (bz, y) = if nan { (z[0] + z[1] + z[2] + z[3], z[0] + z[1] + z[2] + z[3]) } else { (bz, y) };
    (i0 + (k >> 1) * w + (k & 1), bz, y)
}

/// Pooled `relu(x * scale + shift)` per channel.
fn pool_affine_relu<T: WithDType + Send + Sync>(x: &[T], scale: &[T], shift: &[T], (n, c, h, w): (usize, usize, usize, usize)) -> Vec<T> {
    let (oh, ow) = (h / 2, w / 2);
    let mut out = vec![T::zero(); n * c * oh * ow];
    per_channel_planes(&mut out, (n, c, oh * ow), |ch, i, plane| {
        let src = &x[(i * c + ch) * h * w..][..h * w];
        for oy in 0..oh {
            for ox in 0..ow {
                plane[oy * ow + ox] = window(src, w, oy, ox, scale[ch], shift[ch]).2;
            }
        }
    });
    out
}

/// Code of a window whose maximum has `z <= 0`: no gradient passes.
const MASKED: u8 = u8::MAX;

/// Like [`pool_affine_relu`], also returning per window the position of its maximum
/// (0..4, row-major) or [`MASKED`], for the backward pass.
fn pool_affine_relu_codes<T: WithDType + Send + Sync>(x: &[T], scale: &[T], shift: &[T], (n, c, h, w): (usize, usize, usize, usize)) -> (Vec<T>, Vec<u8>) {
    let (oh, ow) = (h / 2, w / 2);
    let mut out = vec![T::zero(); n * c * oh * ow];
    let mut codes = vec![0u8; n * c * oh * ow];
    let codes_ptr = CodesPtr(codes.as_mut_ptr());
    per_channel_planes(&mut out, (n, c, oh * ow), |ch, i, plane| {
        let src = &x[(i * c + ch) * h * w..][..h * w];
        // SAFETY: plane (i, ch) of the codes is written by this task only, like `plane`.
        let code = unsafe { std::slice::from_raw_parts_mut(codes_ptr.get().add((i * c + ch) * oh * ow), oh * ow) };
        for oy in 0..oh {
            for ox in 0..ow {
                let (j, z, y) = window(src, w, oy, ox, scale[ch], shift[ch]);
                plane[oy * ow + ox] = y;
                let (r, col) = (j / w - 2 * oy, j % w - 2 * ox);
                code[oy * ow + ox] = if z > T::zero() { (2 * r + col) as u8 } else { MASKED };
            }
        }
    });
    (out, codes)
}

struct CodesPtr(*mut u8);
unsafe impl Sync for CodesPtr {}
unsafe impl Send for CodesPtr {}
impl CodesPtr {
    fn get(&self) -> *mut u8 {
        self.0
    }
}

/// Per-channel scale and shift (`gamma / sqrt(var + eps)`, `beta - mean * scale`), as `T`.
fn affine<T: WithDType>(gamma: &[T], beta: &[T], mean: &[f64], var: &[f64]) -> (Vec<T>, Vec<T>) {
    let mut scale = Vec::with_capacity(gamma.len());
    let mut shift = Vec::with_capacity(gamma.len());
    for ch in 0..gamma.len() {
        let s = gamma[ch].to_f64() / (var[ch] + EPS).sqrt();
        scale.push(T::from_f64(s));
        shift.push(T::from_f64(beta[ch].to_f64() - mean[ch] * s));
    }
    (scale, shift)
}

/// Training-mode forward: `(x, gamma, beta) -> maxpool(relu(batchnorm(x)))`, leaving the
/// batch mean and biased variance in `stats`.
pub(crate) struct BnReluPoolTrain {
    pub(crate) stats: Arc<Mutex<Option<Saved>>>,
}

/// What the forward pass keeps for the backward pass: batch mean, biased variance, and
/// each window's code (see [`pool_affine_relu_codes`]).
pub(crate) type Saved = (Vec<f64>, Vec<f64>, Vec<u8>);

fn train_fwd<T: WithDType + Send + Sync>(x: &[T], gamma: &[T], beta: &[T], d: (usize, usize, usize, usize)) -> (Vec<T>, Saved) {
    let (n, c, h, w) = d;
    let stats: Vec<(f64, f64)> = (0..c).into_par_iter().map(|ch| channel_stats(x, (n, c, h * w), ch)).collect();
    let mean: Vec<f64> = stats.iter().map(|s| s.0).collect();
    let var: Vec<f64> = stats.iter().map(|s| s.1).collect();
    let (scale, shift) = affine(gamma, beta, &mean, &var);
    let (y, codes) = pool_affine_relu_codes(x, &scale, &shift, d);
    (y, (mean, var, codes))
}

impl CustomOp3 for BnReluPoolTrain {
    fn name(&self) -> &'static str {
        "protonet-batchnorm-relu-pool"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let d = dims4(l1)?;
        if l2.dims() != [d.1] || l3.dims() != [d.1] {
            candle_core::bail!("batch-norm-relu-pool: weight and bias need {} values", d.1);
        }
        let (out, saved) = match (s1, s2, s3) {
            (CpuStorage::F32(x), CpuStorage::F32(g), CpuStorage::F32(b)) => {
                let (y, saved) = train_fwd(contiguous(x, l1)?, contiguous(g, l2)?, contiguous(b, l3)?, d);
                (CpuStorage::F32(y), saved)
            }
            (CpuStorage::F64(x), CpuStorage::F64(g), CpuStorage::F64(b)) => {
                let (y, saved) = train_fwd(contiguous(x, l1)?, contiguous(g, l2)?, contiguous(b, l3)?, d);
                (CpuStorage::F64(y), saved)
            }
            _ => candle_core::bail!("batch-norm-relu-pool: only f32 and f64 of one dtype"),
        };
        *self.stats.lock().expect("stats lock") = Some(saved);
        Ok((out, Shape::from((d.0, d.1, d.2 / 2, d.3 / 2))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let gb = Tensor::cat(&[gamma.flatten_all()?, beta.flatten_all()?], 0)?;
        // Shares the forward pass's saved state (the window codes are a quarter of the
        // input's size) instead of copying it.
        let packed = x.apply_op3_no_bwd(&grad, &gb, &BnReluPoolBackward { stats: self.stats.clone() })?;
        let (len, c) = (x.elem_count(), gamma.elem_count());
        let dx = packed.narrow(0, 0, len)?.reshape(x.shape())?;
        let dgamma = packed.narrow(0, len, c)?;
        let dbeta = packed.narrow(0, len + c, c)?;
        Ok((x.track_op().then_some(dx), Some(dgamma), Some(dbeta)))
    }
}

/// Backward of [`BnReluPoolTrain`]: `(x, d pooled, [gamma | beta]) -> [dx | dgamma | dbeta]`.
struct BnReluPoolBackward {
    stats: Arc<Mutex<Option<Saved>>>,
}

fn train_bwd<T: WithDType + Send + Sync>(x: &[T], gp: &[T], gamma: &[T], beta: &[T], d: (usize, usize, usize, usize), saved: &Option<Saved>) -> Vec<T> {
    let (n, c, h, w) = d;
    let (hw, oh, ow) = (h * w, h / 2, w / 2);
    let m = (n * hw) as f64;
    let recomputed;
    let (mean, var, codes) = match saved {
        Some((mu, v, codes)) if mu.len() == c && v.len() == c && codes.len() == gp.len() => (mu, v, codes),
        _ => {
            let (mu, v): (Vec<f64>, Vec<f64>) = (0..c).into_par_iter().map(|ch| channel_stats(x, (n, c, hw), ch)).unzip();
            let (scale, shift) = affine(gamma, beta, &mu, &v);
            recomputed = (pool_affine_relu_codes(x, &scale, &shift, d).1, mu, v);
            (&recomputed.1, &recomputed.2, &recomputed.0)
        }
    };
    // Position in the plane of the maximum of window `o` (its code is not MASKED).
    let at = |o: usize, code: u8| (2 * (o / ow) + (code as usize >> 1)) * w + 2 * (o % ow) + (code as usize & 1);
    // Per channel: sum(dz) and sum(dz * xhat) over the window maxima where z > 0 (the only
    // places with a gradient: dz = d pooled there).
    let sums: Vec<(f64, f64)> = (0..c)
        .into_par_iter()
        .map(|ch| {
            let inv = 1.0 / (var[ch] + EPS).sqrt();
            let (mut sdz, mut sdzx) = (0.0, 0.0);
            for i in 0..n {
                let src = &x[(i * c + ch) * hw..][..hw];
                let base = (i * c + ch) * oh * ow;
                for (o, (&code, g)) in codes[base..base + oh * ow].iter().zip(&gp[base..base + oh * ow]).enumerate() {
                    if code != MASKED {
                        let dz = g.to_f64();
                        sdz += dz;
                        sdzx += dz * (src[at(o, code)].to_f64() - mean[ch]) * inv;
                    }
                }
            }
            (sdz, sdzx)
        })
        .collect();
    let mut out = vec![T::zero(); x.len() + 2 * c];
    let (dx, rest) = out.split_at_mut(x.len());
    per_channel_planes(dx, (n, c, hw), |ch, i, plane| {
        let inv = 1.0 / (var[ch] + EPS).sqrt();
        let (sdz, sdzx) = sums[ch];
        let k = gamma[ch].to_f64() * inv;
        let src = &x[(i * c + ch) * hw..][..hw];
        // dx = k * (dz - sum(dz)/m - xhat * sum(dz xhat)/m), dz = 0 off the maxima.
        let a = T::from_f64(-k * sdzx / m * inv);
        let b = T::from_f64(-k * sdz / m + k * sdzx / m * inv * mean[ch]);
        for (p, &v) in plane.iter_mut().zip(src) {
            *p = a * v + b;
        }
        let kt = T::from_f64(k);
        let base = (i * c + ch) * oh * ow;
        for (o, (&code, &g)) in codes[base..base + oh * ow].iter().zip(&gp[base..base + oh * ow]).enumerate() {
            if code != MASKED {
                plane[at(o, code)] += kt * g;
            }
        }
    });
    for ch in 0..c {
        rest[ch] = T::from_f64(sums[ch].1);
        rest[c + ch] = T::from_f64(sums[ch].0);
    }
    out
}

impl CustomOp3 for BnReluPoolBackward {
    fn name(&self) -> &'static str {
        "protonet-batchnorm-relu-pool-backward"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let d = dims4(l1)?;
        let len = l1.shape().elem_count();
        if l2.dims() != [d.0, d.1, d.2 / 2, d.3 / 2] || l3.shape().elem_count() != 2 * d.1 {
            candle_core::bail!("batch-norm-relu-pool backward: mismatched shapes");
        }
        let saved = self.stats.lock().expect("stats lock");
        let out = match (s1, s2, s3) {
            (CpuStorage::F32(x), CpuStorage::F32(g), CpuStorage::F32(gb)) => {
                let gb = contiguous(gb, l3)?;
                CpuStorage::F32(train_bwd(contiguous(x, l1)?, contiguous(g, l2)?, &gb[..d.1], &gb[d.1..], d, &saved))
            }
            (CpuStorage::F64(x), CpuStorage::F64(g), CpuStorage::F64(gb)) => {
                let gb = contiguous(gb, l3)?;
                CpuStorage::F64(train_bwd(contiguous(x, l1)?, contiguous(g, l2)?, &gb[..d.1], &gb[d.1..], d, &saved))
            }
            _ => candle_core::bail!("batch-norm-relu-pool backward: only f32 and f64 of one dtype"),
        };
        Ok((out, Shape::from(len + 2 * d.1)))
    }
}

/// Evaluation-mode forward with fixed per-channel `scale` and `shift` (from the running
/// statistics): `x -> maxpool(relu(x * scale + shift))`. Its gradient reaches `x` only
/// (the statistics and the BatchNorm parameters are constants in evaluation mode).
pub(crate) struct AffineReluPool {
    pub(crate) scale: Vec<f64>,
    pub(crate) shift: Vec<f64>,
}

impl AffineReluPool {
    fn typed<T: WithDType>(&self) -> (Vec<T>, Vec<T>) {
        (self.scale.iter().map(|&v| T::from_f64(v)).collect(), self.shift.iter().map(|&v| T::from_f64(v)).collect())
    }
}

impl CustomOp1 for AffineReluPool {
    fn name(&self) -> &'static str {
        "protonet-affine-relu-pool"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let d = dims4(l)?;
        if self.scale.len() != d.1 || self.shift.len() != d.1 {
            candle_core::bail!("affine-relu-pool: {} channels, {} scales", d.1, self.scale.len());
        }
        let out = match s {
            CpuStorage::F32(x) => {
                let (sc, sh) = self.typed::<f32>();
                CpuStorage::F32(pool_affine_relu(contiguous(x, l)?, &sc, &sh, d))
            }
            CpuStorage::F64(x) => {
                let (sc, sh) = self.typed::<f64>();
                CpuStorage::F64(pool_affine_relu(contiguous(x, l)?, &sc, &sh, d))
            }
            _ => candle_core::bail!("affine-relu-pool: only f32 and f64"),
        };
        Ok((out, Shape::from((d.0, d.1, d.2 / 2, d.3 / 2))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let op = AffineReluPoolGrad { scale: self.scale.clone(), shift: self.shift.clone() };
        Ok(Some(arg.apply_op2_no_bwd(&grad.contiguous()?, &op)?))
    }
}

/// Gradient of [`AffineReluPool`]: `(x, d pooled) -> dx`.
struct AffineReluPoolGrad {
    scale: Vec<f64>,
    shift: Vec<f64>,
}

fn affine_bwd<T: WithDType + Send + Sync>(x: &[T], gp: &[T], scale: &[T], shift: &[T], (n, c, h, w): (usize, usize, usize, usize)) -> Vec<T> {
    let (hw, oh, ow) = (h * w, h / 2, w / 2);
    let mut dx = vec![T::zero(); x.len()];
    per_channel_planes(&mut dx, (n, c, hw), |ch, i, plane| {
        let src = &x[(i * c + ch) * hw..][..hw];
        let g = &gp[(i * c + ch) * oh * ow..][..oh * ow];
        for oy in 0..oh {
            for ox in 0..ow {
                let (j, z, _) = window(src, w, oy, ox, scale[ch], shift[ch]);
                if z > T::zero() {
                    plane[j] = g[oy * ow + ox] * scale[ch];
                }
            }
        }
    });
    dx
}

impl CustomOp2 for AffineReluPoolGrad {
    fn name(&self) -> &'static str {
        "protonet-affine-relu-pool-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let d = dims4(l1)?;
        if l2.dims() != [d.0, d.1, d.2 / 2, d.3 / 2] {
            candle_core::bail!("affine-relu-pool backward: mismatched shapes");
        }
        let typed = AffineReluPool { scale: self.scale.clone(), shift: self.shift.clone() };
        let out = match (s1, s2) {
            (CpuStorage::F32(x), CpuStorage::F32(g)) => {
                let (sc, sh) = typed.typed::<f32>();
                CpuStorage::F32(affine_bwd(contiguous(x, l1)?, contiguous(g, l2)?, &sc, &sh, d))
            }
            (CpuStorage::F64(x), CpuStorage::F64(g)) => {
                let (sc, sh) = typed.typed::<f64>();
                CpuStorage::F64(affine_bwd(contiguous(x, l1)?, contiguous(g, l2)?, &sc, &sh, d))
            }
            _ => candle_core::bail!("affine-relu-pool backward: only f32 and f64"),
        };
        Ok((out, l1.shape().clone()))
    }
}
