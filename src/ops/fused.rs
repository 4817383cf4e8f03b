//! BatchNorm + ReLU + 2x2 max-pool in one pass for the CPU, the tail of every Conv-4
//! block. The unfused chain writes and reads the full-size activation several times
//! (BatchNorm output, pool input, pool gradient, BatchNorm gradient); here the forward
//! pass reads the convolution's output once and writes only the pooled map, and the
//! backward pass recomputes the normalized values and each window's maximum from the
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

/// Code of a window whose maximum has `z <= 0` (or a NaN): no gradient passes.
const MASKED: u8 = u8::MAX;

/// One window `v` (row-major) through `z = v * s + b` and ReLU: its pooled value, the
/// position of its first maximum (0..4) or [`MASKED`] where `z <= 0` there, and the input
/// value at that maximum. Branch-free (selects), so that loops over windows vectorize; a
/// NaN anywhere in the window gives NaN, as `max_pool2x2(relu(z))` does.
#[inline(always)]
fn window<T: WithDType>(v: [T; 4], s: T, b: T) -> (T, u8, T) {
    let z = [v[0] * s + b, v[1] * s + b, v[2] * s + b, v[3] * s + b];
    let (mut k, mut bz, mut bx) = (0u8, z[0], v[0]);
    for j in 1..4 {
        let better = z[j] > bz;
        k = if better { j as u8 } else { k };
        bz = if better { z[j] } else { bz };
        bx = if better { v[j] } else { bx };
    }
    #[allow(clippy::eq_op)]
    let nan = (z[0] != z[0]) | (z[1] != z[1]) | (z[2] != z[2]) | (z[3] != z[3]);
    let pass = bz > T::zero();
    let relu = if pass { bz } else { T::zero() };
    (if nan { z[0] + z[1] + z[2] + z[3] } else { relu }, if pass & !nan { k } else { MASKED }, bx)
}

/// The four values of window `o` of a row pair `r0`, `r1`.
#[inline(always)]
fn at<T: Copy>(r0: &[T], r1: &[T], o: usize) -> [T; 4] {
    [r0[2 * o], r0[2 * o + 1], r1[2 * o], r1[2 * o + 1]]
}

/// The windows of a plane `src` (`w` wide; the last row and column are dropped when odd)
/// as four runs of `n` values each in `q`: the top-left, top-right, bottom-left and
/// bottom-right value of every window, so that loops over windows run over the whole
/// plane at once (a row has only 3 to 14 windows here).
#[inline(always)]
fn split_windows<T: Copy>(src: &[T], w: usize, q: &mut [T]) {
    let (ow, n) = (w / 2, q.len() / 4);
    let (tl, rest) = q.split_at_mut(n);
    let (tr, rest) = rest.split_at_mut(n);
    let (bl, br) = rest.split_at_mut(n);
    for (oy, rows) in src.chunks_exact(2 * w).enumerate().take(n / ow.max(1)) {
        let (r0, r1) = rows.split_at(w);
        let o = oy * ow..(oy + 1) * ow;
        let dst = tl[o.clone()].iter_mut().zip(&mut tr[o.clone()]).zip(bl[o.clone()].iter_mut().zip(&mut br[o]));
        for (((a, b), (c, d)), (p, q)) in dst.zip(r0.chunks_exact(2).zip(r1.chunks_exact(2))) {
            *a = p[0];
            *b = p[1];
            *c = q[0];
            *d = q[1];
        }
    }
}

/// The four runs of [`split_windows`], each cut to `n`.
#[inline(always)]
fn runs<T>(q: &[T], n: usize) -> [&[T]; 4] {
    [&q[..n], &q[n..2 * n], &q[2 * n..3 * n], &q[3 * n..4 * n]]
}

vectorized! {
/// The pooled plane of `src` (`h x w`) through `z = v * s + b` and ReLU (see [`window`]).
pub(super) fn pool_plane<T: WithDType>(src: &[T], w: usize, s: T, b: T, out: &mut [T]) {
    let n = out.len();
    let mut q = vec![T::zero(); 4 * n];
    split_windows(src, w, &mut q);
    let [tl, tr, bl, br] = runs(&q, n);
    for o in 0..n {
        out[o] = window([tl[o], tr[o], bl[o], br[o]], s, b).0;
    }
}
}

vectorized! {
/// [`pool_plane`], also writing each window's code and the input value at its maximum,
/// for the backward pass.
fn pool_plane_saved<T: WithDType>(src: &[T], w: usize, s: T, b: T, out: &mut [T], codes: &mut [u8], maxima: &mut [T]) {
    let n = out.len();
    let mut q = vec![T::zero(); 4 * n];
    split_windows(src, w, &mut q);
    let [tl, tr, bl, br] = runs(&q, n);
    let (codes, maxima) = (&mut codes[..n], &mut maxima[..n]);
    for o in 0..n {
        let (y, code, xm) = window([tl[o], tr[o], bl[o], br[o]], s, b);
        out[o] = y;
        codes[o] = code;
        maxima[o] = xm;
    }
}
}

/// Pooled `relu(x * scale + shift)` per channel; with `saved`, also each window's code
/// (see [`window`]) and the input value at its maximum, for the backward pass.
fn pool_affine_relu<T: WithDType + Send + Sync>(
    x: &[T],
    scale: &[T],
    shift: &[T],
    (n, c, h, w): (usize, usize, usize, usize),
    saved: bool,
) -> (Vec<T>, Vec<u8>, Vec<T>) {
    let (oh, ow) = (h / 2, w / 2);
    let len = n * c * oh * ow;
    let mut out = vec![T::zero(); len];
    let mut codes = vec![0u8; if saved { len } else { 0 }];
    let mut maxima = vec![T::zero(); if saved { len } else { 0 }];
    let (codes_ptr, maxima_ptr) = (SendPtr(codes.as_mut_ptr()), SendPtr(maxima.as_mut_ptr()));
    per_channel_planes(&mut out, (n, c, oh * ow), |ch, i, plane| {
        let src = &x[(i * c + ch) * h * w..][..h * w];
        if !saved {
            return pool_plane(src, w, scale[ch], shift[ch], plane);
        }
        let at = (i * c + ch) * oh * ow;
        // SAFETY: plane (i, ch) of the codes and maxima is written by this task only, like
        // `plane`.
        let (codes, maxima) =
            unsafe { (std::slice::from_raw_parts_mut(codes_ptr.get().add(at), oh * ow), std::slice::from_raw_parts_mut(maxima_ptr.get().add(at), oh * ow)) };
        pool_plane_saved(src, w, scale[ch], shift[ch], plane, codes, maxima);
    });
    (out, codes, maxima)
}

struct SendPtr<T>(*mut T);
unsafe impl<T> Sync for SendPtr<T> {}
unsafe impl<T> Send for SendPtr<T> {}
impl<T> SendPtr<T> {
    fn get(&self) -> *mut T {
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
/// per window its code and the input value at its maximum (see [`pool_row`]).
pub(crate) struct Saved {
    pub(crate) mean: Vec<f64>,
    pub(crate) var: Vec<f64>,
    codes: Vec<u8>,
    maxima: CpuStorage,
}

pub(super) fn train_fwd<T: WithDType + Send + Sync>(x: &[T], gamma: &[T], beta: &[T], d: (usize, usize, usize, usize)) -> (Vec<T>, Saved) {
    let (n, c, h, w) = d;
    let (mean, var): (Vec<f64>, Vec<f64>) = (0..c).into_par_iter().map(|ch| channel_stats(x, (n, c, h * w), ch)).unzip();
    let (scale, shift) = affine(gamma, beta, &mean, &var);
    let (y, codes, maxima) = pool_affine_relu(x, &scale, &shift, d, true);
    (y, Saved { mean, var, codes, maxima: T::to_cpu_storage_owned(maxima) })
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
pub(super) struct BnReluPoolBackward {
    pub(super) stats: Arc<Mutex<Option<Saved>>>,
}

vectorized! {
/// Over the windows of one plane whose maximum passed the ReLU (code not [`MASKED`]):
/// `sum(g)` and `sum(g * (x_max - mean))`, in 8 lanes of `T`.
fn window_sums<T: WithDType>(codes: &[u8], g: &[T], maxima: &[T], mean: T) -> (f64, f64) {
    let (mut sg, mut sgx) = ([T::zero(); 8], [T::zero(); 8]);
    let chunks = codes.chunks_exact(8).zip(g.chunks_exact(8)).zip(maxima.chunks_exact(8));
    for ((cc, gc), mc) in chunks {
        for j in 0..8 {
            let gv = if cc[j] != MASKED { gc[j] } else { T::zero() };
            sg[j] += gv;
            sgx[j] += gv * (mc[j] - mean);
        }
    }
    let done = codes.len() / 8 * 8;
    let (mut a, mut b) = (0.0, 0.0);
    for ((&cv, &gv), &mv) in codes[done..].iter().zip(&g[done..]).zip(&maxima[done..]) {
        if cv != MASKED {
            a += gv.to_f64();
            b += (gv * (mv - mean)).to_f64();
        }
    }
    (sg.iter().fold(a, |s, v| s + v.to_f64()), sgx.iter().fold(b, |s, v| s + v.to_f64()))
}
}

vectorized! {
/// The input gradient of one `h x w` plane: `a * x + b` everywhere, plus `k * g` at each
/// window's maximum (its code says where; none when [`MASKED`]).
fn plane_gradient<T: WithDType>(x: &[T], codes: &[u8], g: &[T], h: usize, w: usize, coefficients: (T, T, T), dx: &mut [T]) {
    let (a, b, k) = coefficients;
    let ow = w / 2;
    for (oy, (rows, dxs)) in x.chunks_exact(2 * w).zip(dx.chunks_exact_mut(2 * w)).enumerate() {
        let (x0, x1) = rows.split_at(w);
        let (d0, d1) = dxs.split_at_mut(w);
        let windows = d0.chunks_exact_mut(2).zip(d1.chunks_exact_mut(2)).zip(x0.chunks_exact(2).zip(x1.chunks_exact(2)));
        for (((p, q), (u, v)), (&code, &gv)) in windows.zip(codes[oy * ow..][..ow].iter().zip(&g[oy * ow..][..ow])) {
            let add = k * gv;
            let pick = |j: u8| if code == j { add } else { T::zero() };
            p[0] = a * u[0] + b + pick(0);
            p[1] = a * u[1] + b + pick(1);
            q[0] = a * v[0] + b + pick(2);
            q[1] = a * v[1] + b + pick(3);
        }
        if w % 2 == 1 {
            d0[w - 1] = a * x0[w - 1] + b;
            d1[w - 1] = a * x1[w - 1] + b;
        }
    }
    if h % 2 == 1 {
        for (d, &v) in dx[(h - 1) * w..].iter_mut().zip(&x[(h - 1) * w..]) {
            *d = a * v + b;
        }
    }
}
}

fn train_bwd<T: WithDType + Send + Sync>(x: &[T], gp: &[T], gamma: &[T], beta: &[T], d: (usize, usize, usize, usize), saved: &Option<Saved>) -> Vec<T> {
    let (n, c, h, w) = d;
    let (hw, pooled) = (h * w, (h / 2) * (w / 2));
    let m = (n * hw) as f64;
    let recomputed;
    let kept = saved.as_ref().and_then(|s| {
        let maxima = T::cpu_storage_as_slice(&s.maxima).ok()?;
        (s.mean.len() == c && s.var.len() == c && s.codes.len() == gp.len() && maxima.len() == gp.len()).then_some((
            &s.mean[..],
            &s.var[..],
            &s.codes[..],
            maxima,
        ))
    });
    let (mean, var, codes, maxima) = match kept {
        Some(k) => k,
        None => {
            let (mu, v): (Vec<f64>, Vec<f64>) = (0..c).into_par_iter().map(|ch| channel_stats(x, (n, c, hw), ch)).unzip();
            let (scale, shift) = affine(gamma, beta, &mu, &v);
            let (_, codes, maxima) = pool_affine_relu(x, &scale, &shift, d, true);
            recomputed = (mu, v, codes, maxima);
            (&recomputed.0[..], &recomputed.1[..], &recomputed.2[..], &recomputed.3[..])
        }
    };
    // Per channel: sum(dz) and sum(dz * xhat) over the window maxima where z > 0 (the only
    // places with a gradient: dz = d pooled there).
    let sums: Vec<(f64, f64)> = (0..c)
        .into_par_iter()
        .map(|ch| {
            let inv = 1.0 / (var[ch] + EPS).sqrt();
            let (mut sdz, mut sdzx) = (0.0, 0.0);
            for i in 0..n {
                let at = (i * c + ch) * pooled..(i * c + ch + 1) * pooled;
                let (sg, sgx) = window_sums(&codes[at.clone()], &gp[at.clone()], &maxima[at], T::from_f64(mean[ch]));
                sdz += sg;
                sdzx += sgx * inv;
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
        // dx = k * (dz - sum(dz)/m - xhat * sum(dz xhat)/m), dz = 0 off the maxima.
        let a = T::from_f64(-k * sdzx / m * inv);
        let b = T::from_f64(-k * sdz / m + k * sdzx / m * inv * mean[ch]);
        let at = (i * c + ch) * pooled..(i * c + ch + 1) * pooled;
        plane_gradient(&x[(i * c + ch) * hw..][..hw], &codes[at.clone()], &gp[at], h, w, (a, b, T::from_f64(k)), plane);
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
                CpuStorage::F32(pool_affine_relu(contiguous(x, l)?, &sc, &sh, d, false).0)
            }
            CpuStorage::F64(x) => {
                let (sc, sh) = self.typed::<f64>();
                CpuStorage::F64(pool_affine_relu(contiguous(x, l)?, &sc, &sh, d, false).0)
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
pub(super) struct AffineReluPoolGrad {
    pub(super) scale: Vec<f64>,
    pub(super) shift: Vec<f64>,
}

fn affine_bwd<T: WithDType + Send + Sync>(x: &[T], gp: &[T], scale: &[T], shift: &[T], (n, c, h, w): (usize, usize, usize, usize)) -> Vec<T> {
    let (hw, oh, ow) = (h * w, h / 2, w / 2);
    let mut dx = vec![T::zero(); x.len()];
    per_channel_planes(&mut dx, (n, c, hw), |ch, i, plane| {
        let src = &x[(i * c + ch) * hw..][..hw];
        let g = &gp[(i * c + ch) * oh * ow..][..oh * ow];
        for oy in 0..oh {
            let (r0, r1) = (&src[2 * oy * w..][..w], &src[(2 * oy + 1) * w..][..w]);
            for ox in 0..ow {
                let code = window(at(r0, r1, ox), scale[ch], shift[ch]).1;
                if code != MASKED {
                    plane[(2 * oy + (code as usize >> 1)) * w + 2 * ox + (code as usize & 1)] = g[oy * ow + ox] * scale[ch];
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

#[cfg(test)]
mod tests {
    use super::super::{batchnorm::channel_stats, simd};
    use crate::backbone::BatchNormRelu;
    use crate::ops::Ops;
    use candle_core::{DType, Device, Tensor, Var};
    use candle_nn::{VarBuilder, VarMap};

    /// The baseline copies of the BatchNorm + ReLU + pool kernels (statistics, pooling with
    /// and without the saved maxima, window sums, input gradient) compute what the AVX2
    /// copies compute, on odd sides.
    #[test]
    fn baseline_and_avx2_copies_agree() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0.3f32, 1.0, (3, 5, 11, 9), &dev).unwrap()).unwrap();
        let r = Tensor::randn(0f32, 1.0, (3, 5, 5, 4), &dev).unwrap();
        let run = || {
            // A fresh layer each time: the training step updates the running statistics.
            let vm = VarMap::new();
            let bn = BatchNormRelu::new(5, VarBuilder::from_varmap(&vm, DType::F32, &dev), Ops::Fast).unwrap();
            let y = bn.forward_pool(x.as_tensor(), true).unwrap();
            let eval = bn.forward_pool(x.as_tensor(), false).unwrap();
            let grads = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let mut out = vec![y, eval, grads.get(x.as_tensor()).unwrap().clone()];
            for name in ["weight", "bias"] {
                let v = vm.data().lock().unwrap()[name].clone();
                out.push(grads.get(v.as_tensor()).unwrap().clone());
            }
            out.iter().map(|t| t.flatten_all().unwrap().to_vec1::<f32>().unwrap()).collect::<Vec<_>>()
        };
        let (fast, baseline) = (run(), simd::baseline_only(run));
        for (k, (a, b)) in fast.iter().zip(&baseline).enumerate() {
            let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-30);
            let d = a.iter().zip(b).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(d / scale < 1e-5, "output {k}: baseline and AVX2 copies differ by {d} (largest {scale})");
        }
    }

    /// The one-pass statistics stay accurate in f32 when the mean is large next to the
    /// spread (values around 1000 with standard deviation 0.5), and match a two-pass f64
    /// computation.
    #[test]
    fn channel_statistics_are_accurate_with_a_large_mean() {
        let (n, c, hw) = (7, 3, 53);
        let x = Tensor::randn(1000f64, 0.5, (n, c, hw), &Device::Cpu).unwrap();
        let x64 = x.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let x32: Vec<f32> = x64.iter().map(|&v| v as f32).collect();
        for ch in 0..c {
            let vals: Vec<f64> = (0..n).flat_map(|i| x32[(i * c + ch) * hw..][..hw].iter().map(|&v| v as f64)).collect();
            let mean = vals.iter().sum::<f64>() / vals.len() as f64;
            let var = vals.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / vals.len() as f64;
            let (m, v) = channel_stats(&x32, (n, c, hw), ch);
            assert!((m - mean).abs() < 1e-4, "mean {m} vs {mean}");
            assert!((v - var).abs() < 1e-3 * var, "variance {v} vs {var}");
            let (m, v) = channel_stats(&x64, (n, c, hw), ch);
            let vals: Vec<f64> = (0..n).flat_map(|i| x64[(i * c + ch) * hw..][..hw].to_vec()).collect();
            let mean = vals.iter().sum::<f64>() / vals.len() as f64;
            let var = vals.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / vals.len() as f64;
            assert!((m - mean).abs() < 1e-10 && (v - var).abs() < 1e-10 * var, "f64: {m} {v} vs {mean} {var}");
        }
    }
}
