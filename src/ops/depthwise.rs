//! Depthwise 2-D convolution (one filter per channel, any stride, explicit zero padding)
//! for the CPU as a candle custom op. candle 0.11 runs a grouped convolution as one
//! convolution per group, which is very slow for the hundreds of groups of a depthwise
//! layer. The backward pass (input and kernel gradients) is two more CPU kernels, checked
//! against finite differences. Off the CPU, [`depthwise_conv2d_portable`] builds the same
//! convolution from operations every back-end has.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor, WithDType};
use rayon::prelude::*;

use crate::error::Result;

/// Depthwise convolution of `x` `(N, C, H, W)` with `w` `(C, 1, KH, KW)`, stride
/// `stride`, after padding `x` with `pad = (top, bottom, left, right)` zeros. On other
/// devices, candle's grouped `conv2d`.
///
/// ```
/// use candle_core::{Device, Tensor};
/// let x = Tensor::randn(0f32, 1., (2, 4, 9, 9), &Device::Cpu)?;
/// let w = Tensor::randn(0f32, 1., (4, 1, 3, 3), &Device::Cpu)?;
/// let fast = protonet::ops::depthwise_conv2d(&x, &w, 2, (1, 1, 1, 1))?;
/// let plain = x.conv2d(&w, 1, 2, 1, 4)?;
/// assert!((fast - plain)?.abs()?.max_all()?.to_scalar::<f32>()? < 1e-4);
/// # Ok::<(), protonet::Error>(())
/// ```
pub fn depthwise_conv2d(x: &Tensor, w: &Tensor, stride: usize, pad: (usize, usize, usize, usize)) -> Result<Tensor> {
    if x.device().is_cpu() {
        Ok(x.contiguous()?.apply_op2(&w.contiguous()?, Depthwise { stride, pad, clamp: None })?)
    } else {
        depthwise_conv2d_portable(x, w, stride, pad)
    }
}

/// `clamp(depthwise_conv2d(x, w) + bias[c])`: [`depthwise_conv2d`] with a per-channel bias
/// and an optional clamp in the same pass (BatchNorm on running statistics, with its scale
/// folded into `w`, then ReLU6). On the CPU one custom op with its own backward pass
/// (gradients for `x`, `w` and `bias`); elsewhere [`depthwise_conv2d_portable`] and
/// candle's operations.
///
/// ```
/// use candle_core::{Device, Tensor};
/// let x = Tensor::randn(0f32, 1., (2, 3, 9, 9), &Device::Cpu)?;
/// let w = Tensor::randn(0f32, 1., (3, 1, 5, 5), &Device::Cpu)?;
/// let b = Tensor::new(&[0f32, 1., -1.], &Device::Cpu)?;
/// let fast = protonet::ops::depthwise_conv2d_bias(&x, &w, &b, 2, (1, 2, 1, 2), Some((0.0, 6.0)))?;
/// let plain = protonet::ops::depthwise_conv2d(&x, &w, 2, (1, 2, 1, 2))?.broadcast_add(&b.reshape((1, 3, 1, 1))?)?.clamp(0f32, 6f32)?;
/// assert!((fast - plain)?.abs()?.max_all()?.to_scalar::<f32>()? < 1e-5);
/// # Ok::<(), protonet::Error>(())
/// ```
pub fn depthwise_conv2d_bias(
    x: &Tensor,
    w: &Tensor,
    bias: &Tensor,
    stride: usize,
    pad: (usize, usize, usize, usize),
    clamp: Option<(f32, f32)>,
) -> Result<Tensor> {
    if x.device().is_cpu() {
        Ok(x.contiguous()?.apply_op3(&w.contiguous()?, &bias.contiguous()?, Depthwise { stride, pad, clamp })?)
    } else {
        depthwise_conv2d_bias_portable(x, w, bias, stride, pad, clamp)
    }
}

/// [`depthwise_conv2d_bias`] from operations every candle back-end has (what runs off the
/// CPU): [`depthwise_conv2d_portable`], a broadcast bias add and a clamp.
///
/// ```
/// use candle_core::{Device, Tensor};
/// let x = Tensor::randn(0f32, 1., (2, 3, 8, 8), &Device::Cpu)?;
/// let (w, b) = (Tensor::randn(0f32, 1., (3, 1, 3, 3), &Device::Cpu)?, Tensor::ones(3, candle_core::DType::F32, &Device::Cpu)?);
/// let portable = protonet::ops::depthwise_conv2d_bias_portable(&x, &w, &b, 2, (0, 1, 0, 1), Some((0.0, 6.0)))?;
/// let fast = protonet::ops::depthwise_conv2d_bias(&x, &w, &b, 2, (0, 1, 0, 1), Some((0.0, 6.0)))?;
/// assert!((portable - fast)?.abs()?.max_all()?.to_scalar::<f32>()? < 1e-5);
/// # Ok::<(), protonet::Error>(())
/// ```
pub fn depthwise_conv2d_bias_portable(
    x: &Tensor,
    w: &Tensor,
    bias: &Tensor,
    stride: usize,
    pad: (usize, usize, usize, usize),
    clamp: Option<(f32, f32)>,
) -> Result<Tensor> {
    super::epilogue::portable(&depthwise_conv2d_portable(x, w, stride, pad)?, bias, clamp)
}

/// The depthwise convolution of [`depthwise_conv2d`] from operations that every candle
/// back-end has, with their gradients: one multiply-add per kernel tap of a shifted (and,
/// for stride `s`, subsampled) view of the padded input, `KH x KW` whole-tensor operations
/// in all. candle's grouped `conv2d` instead runs one convolution per channel.
///
/// ```
/// use candle_core::{Device, Tensor};
/// let x = Tensor::randn(0f32, 1., (2, 4, 9, 9), &Device::Cpu)?;
/// let w = Tensor::randn(0f32, 1., (4, 1, 5, 5), &Device::Cpu)?;
/// let portable = protonet::ops::depthwise_conv2d_portable(&x, &w, 2, (1, 2, 1, 2))?;
/// let fast = protonet::ops::depthwise_conv2d(&x, &w, 2, (1, 2, 1, 2))?;
/// assert!((portable - fast)?.abs()?.max_all()?.to_scalar::<f32>()? < 1e-5);
/// # Ok::<(), protonet::Error>(())
/// ```
pub fn depthwise_conv2d_portable(x: &Tensor, w: &Tensor, stride: usize, pad: (usize, usize, usize, usize)) -> Result<Tensor> {
    let (n, c, h, wd) = x.dims4()?;
    let (c2, one, kh, kw) = w.dims4()?;
    let (ph, pw) = (h + pad.0 + pad.1, wd + pad.2 + pad.3);
    if c2 != c || one != 1 || kh == 0 || kw == 0 || ph < kh || pw < kw || stride == 0 {
        return Err(candle_core::Error::Msg(format!(
            "depthwise conv: kernel {:?} does not fit input {:?} (padding {pad:?}, stride {stride})",
            w.dims(),
            x.dims()
        ))
        .into());
    }
    let s = stride;
    let (oh, ow) = ((ph - kh) / s + 1, (pw - kw) / s + 1);
    // Pad so that every tap's window of `s * oh` rows (`s * ow` columns) fits.
    let (eh, ew) = ((kh - 1 + s * oh).saturating_sub(ph), (kw - 1 + s * ow).saturating_sub(pw));
    let xp = x.pad_with_zeros(2, pad.0, pad.1 + eh)?.pad_with_zeros(3, pad.2, pad.3 + ew)?;
    let pw = pw + ew;
    let mut out: Option<Tensor> = None;
    for ky in 0..kh {
        // Rows ky, ky + s, ..., as (N, C, OH, PW).
        let rows = xp.narrow(2, ky, s * oh)?;
        let rows = if s == 1 { rows } else { rows.contiguous()?.reshape((n, c, oh, s, pw))?.narrow(3, 0, 1)?.squeeze(3)? };
        for kx in 0..kw {
            let cols = rows.narrow(3, kx, s * ow)?;
            let cols = if s == 1 { cols } else { cols.contiguous()?.reshape((n, c, oh, ow, s))?.narrow(4, 0, 1)?.squeeze(4)? };
            let tap = w.narrow(2, ky, 1)?.narrow(3, kx, 1)?.reshape((1, c, 1, 1))?;
            let term = cols.broadcast_mul(&tap)?;
            out = Some(match out {
                None => term,
                Some(acc) => (acc + term)?,
            });
        }
    }
    out.ok_or_else(|| candle_core::Error::Msg("depthwise conv: empty kernel".into()).into())
}

struct Depthwise {
    stride: usize,
    pad: (usize, usize, usize, usize),
    clamp: Option<(f32, f32)>,
}

/// Outputs each kernel loop accumulates in registers at once (two AVX registers of f32).
const LANES: usize = 16;

/// How one channel's plane is laid out for the kernels. The zero-padded input is split
/// into `s x s` phase planes, phase `(r, q)` holding the padded pixels `(s*i + r, s*j + q)`,
/// so that a stride-`s` convolution becomes a sum of stride-1 ones: tap `(ky, kx)` reads
/// phase `(ky % s, kx % s)` shifted by `(ky / s, kx / s)`. Each phase plane is stored flat
/// with `wp` columns per row, and outputs are computed flat in the same layout (output
/// `(oy, ox)` at `oy * wp + ox`; the columns `ox >= ow` are computed and dropped), so each
/// tap is one long run of multiply-adds at a fixed offset, whatever the image width.
#[derive(Clone, Copy, Debug)]
struct Plan {
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    s: usize,
    top: usize,
    left: usize,
    oh: usize,
    ow: usize,
    /// Columns (the row stride) of the phase planes and of the flat outputs.
    wp: usize,
    /// Flat outputs computed: `oh * wp`, rounded up to `LANES`.
    len: usize,
    /// Flat positions of a phase plane covered by the input gradient, rounded up to `LANES`.
    span: usize,
    /// The largest tap offset.
    reach: usize,
    /// Length of one phase plane in the scratch buffer (room for every tap's reads).
    plane: usize,
}

impl Plan {
    fn new((h, w): (usize, usize), (kh, kw): (usize, usize), s: usize, pad: (usize, usize, usize, usize)) -> Self {
        let (ph, pw) = (h + pad.0 + pad.1, w + pad.2 + pad.3);
        let (oh, ow) = ((ph - kh) / s + 1, (pw - kw) / s + 1);
        let wp = (ow + (kw - 1) / s).max(pw.div_ceil(s));
        let hp = (oh + (kh - 1) / s).max(ph.div_ceil(s));
        let len = (oh * wp).next_multiple_of(LANES);
        let span = (hp * wp).next_multiple_of(LANES).max(len);
        let reach = ((kh - 1) / s) * wp + (kw - 1) / s;
        Self { h, w, kh, kw, s, top: pad.0, left: pad.2, oh, ow, wp, len, span, reach, plane: span + reach }
    }

    fn phases(&self) -> usize {
        self.s * self.s
    }

    /// Where tap `(ky, kx)` starts reading in the phase buffer.
    fn tap_start(&self, ky: usize, kx: usize) -> usize {
        let (s, wp) = (self.s, self.wp);
        ((ky % s) * s + kx % s) * self.plane + (ky / s) * wp + kx / s
    }

    /// The input columns `x` of phase column `q`, as (first x, first phase column).
    fn columns(&self, q: usize) -> (usize, usize) {
        let s = self.s;
        let x0 = (q + s - self.left % s) % s;
        (x0, (x0 + self.left) / s)
    }

    /// Where input row `y`'s pixels start in the phase buffer (phase column 0 of its phase row).
    fn row_start(&self, y: usize) -> usize {
        let (s, py) = (self.s, y + self.top);
        (py % s) * s * self.plane + (py / s) * self.wp
    }

    /// Splits one input plane into the phase planes of `buf` (zeros elsewhere).
    #[inline(always)]
    fn split<T: WithDType>(&self, img: &[T], buf: &mut [T]) {
        buf.fill(T::zero());
        let s = self.s;
        for (y, row) in img.chunks_exact(self.w).enumerate() {
            let at = self.row_start(y);
            for q in 0..s {
                let (x0, j0) = self.columns(q);
                let dst = &mut buf[at + q * self.plane + j0..];
                for (d, &v) in dst.iter_mut().zip(row[x0..].iter().step_by(s)) {
                    *d = v;
                }
            }
        }
    }

    /// Gathers one input plane back from the phase planes of `buf` (the inverse of `split`).
    #[inline(always)]
    fn merge<T: WithDType>(&self, buf: &[T], img: &mut [T]) {
        let s = self.s;
        for (y, row) in img.chunks_exact_mut(self.w).enumerate() {
            let at = self.row_start(y);
            for q in 0..s {
                let (x0, j0) = self.columns(q);
                for (d, &v) in row[x0..].iter_mut().step_by(s).zip(&buf[at + q * self.plane + j0..]) {
                    *d = v;
                }
            }
        }
    }

    /// Lays one output-shaped plane (`oh x ow`) out flat with `wp` columns, after `front`
    /// zeros (zeros in the dropped columns and up to the end of `buf`).
    #[inline(always)]
    fn spread<T: WithDType>(&self, g: &[T], front: usize, buf: &mut [T]) {
        buf.fill(T::zero());
        for (oy, row) in g.chunks_exact(self.ow).enumerate() {
            buf[front + oy * self.wp..][..self.ow].copy_from_slice(row);
        }
    }
}

/// `acc[i] = sum over taps of w * src[start + i]` for `i < acc.len()` (a multiple of LANES).
#[inline(always)]
fn taps_forward<T: WithDType>(acc: &mut [T], src: &[T], taps: &[(usize, T)]) {
    for (i0, out) in acc.chunks_exact_mut(LANES).enumerate() {
        let mut a = [T::zero(); LANES];
        for &(start, wv) in taps {
            let x: &[T; LANES] = src[start + i0 * LANES..][..LANES].try_into().expect("LANES values");
            for (a, &x) in a.iter_mut().zip(x) {
                *a += wv * x;
            }
        }
        out.copy_from_slice(&a);
    }
}

/// `sum(a[i] * b[i])` over equal-length slices whose length is a multiple of LANES.
#[inline(always)]
fn dot<T: WithDType>(a: &[T], b: &[T]) -> T {
    let mut acc = [T::zero(); LANES];
    for (x, y) in a.chunks_exact(LANES).zip(b.chunks_exact(LANES)) {
        for ((acc, &x), &y) in acc.iter_mut().zip(x).zip(y) {
            *acc += x * y;
        }
    }
    acc.iter().fold(T::zero(), |s, &v| s + v)
}

vectorized! {
/// One output plane: `clamp(sum of taps + b)` (no epilogue unless `epilogue`).
fn forward_plane<T: WithDType>(p: &Plan, img: &[T], taps: &[(usize, T)], b: T, epilogue: bool, clamp: Option<(T, T)>, phases: &mut [T], acc: &mut [T], out: &mut [T]) {
    p.split(img, phases);
    taps_forward(acc, phases, taps);
    for (oy, row) in out.chunks_exact_mut(p.ow).enumerate() {
        row.copy_from_slice(&acc[oy * p.wp..][..p.ow]);
        if epilogue || clamp.is_some() {
            super::epilogue::apply(row, b, clamp);
        }
    }
}

}

vectorized! {
/// One plane of the input gradient from one plane `g` of the output gradient.
fn input_grad_plane<T: WithDType>(p: &Plan, g: &[T], kernel: &[T], taps: &mut Vec<(usize, T)>, spread: &mut [T], phases: &mut [T], dx: &mut [T]) {
    let k = p.kh * p.kw;
    p.spread(g, p.reach, spread);
    for (ph, dst) in phases.chunks_exact_mut(p.plane).enumerate() {
        // The taps reading phase `ph`, as starts in `spread`: reach - offset.
        taps.clear();
        taps.extend((0..k).filter_map(|t| {
            let start = p.tap_start(t / p.kw, t % p.kw);
            (start / p.plane == ph).then(|| (p.reach - (start - ph * p.plane), kernel[t]))
        }));
        taps_forward(&mut dst[..p.span], spread, taps);
    }
    p.merge(phases, dx);
}

}

vectorized! {
/// Adds one image's contribution to one channel's kernel gradient `gk`.
fn kernel_grad_plane<T: WithDType>(p: &Plan, img: &[T], g: &[T], starts: &[usize], spread: &mut [T], phases: &mut [T], gk: &mut [T]) {
    p.split(img, phases);
    p.spread(g, 0, spread);
    for (gk, &start) in gk.iter_mut().zip(starts) {
        *gk += dot(spread, &phases[start..][..p.len]);
    }
}
}

/// Planes per parallel task: enough work per task for a few thousand outputs.
fn planes_per_task(plane_len: usize) -> usize {
    (4096 / plane_len.max(1)).max(1)
}

#[allow(clippy::too_many_arguments)]
fn run<T: WithDType + Send + Sync>(x: &[T], w: &[T], bias: Option<&[T]>, clamp: Option<(T, T)>, (n, c): (usize, usize), p: &Plan) -> Vec<T> {
    let (oh, ow, k) = (p.oh, p.ow, p.kh * p.kw);
    let mut out = vec![T::zero(); n * c * oh * ow];
    let per = planes_per_task(oh * ow);
    out.par_chunks_mut(per * oh * ow).enumerate().for_each(|(task, o)| {
        let mut phases = vec![T::zero(); p.phases() * p.plane];
        let mut acc = vec![T::zero(); p.len];
        let mut taps = Vec::with_capacity(k);
        for (i, o) in o.chunks_exact_mut(oh * ow).enumerate() {
            let plane = task * per + i;
            let ch = plane % c;
            let kernel = &w[ch * k..][..k];
            taps.clear();
            taps.extend((0..k).map(|t| (p.tap_start(t / p.kw, t % p.kw), kernel[t])));
            let b = bias.map_or(T::zero(), |b| b[ch]);
            let img = &x[plane * p.h * p.w..][..p.h * p.w];
            forward_plane(p, img, &taps, b, bias.is_some(), clamp, &mut phases, &mut acc, o);
        }
    });
    out
}

/// `dL/dx` from `dL/dy` `g` `(N, C, OH, OW)` and the kernel: each phase plane of the input
/// gradient gathers `w * g` from the flat output gradient at minus its taps' offsets.
fn grad_input<T: WithDType + Send + Sync>(g: &[T], w: &[T], (n, c): (usize, usize), p: &Plan) -> Vec<T> {
    let (oh, ow, k) = (p.oh, p.ow, p.kh * p.kw);
    let mut out = vec![T::zero(); n * c * p.h * p.w];
    let per = planes_per_task(p.h * p.w);
    out.par_chunks_mut(per * p.h * p.w).enumerate().for_each(|(task, dx)| {
        let mut spread = vec![T::zero(); p.reach + p.span];
        let mut phases = vec![T::zero(); p.phases() * p.plane];
        let mut taps = Vec::with_capacity(k);
        for (i, dx) in dx.chunks_exact_mut(p.h * p.w).enumerate() {
            let plane = task * per + i;
            let kernel = &w[(plane % c) * k..][..k];
            let go = &g[plane * oh * ow..][..oh * ow];
            input_grad_plane(p, go, kernel, &mut taps, &mut spread, &mut phases, dx);
        }
    });
    out
}

/// `dL/dw` `(C, 1, KH, KW)` from the input `x` `(N, C, H, W)` and `dL/dy` `g`: per tap, the
/// dot product of the flat output gradient with the tap's shifted phase plane.
fn grad_kernel<T: WithDType + Send + Sync>(x: &[T], g: &[T], (n, c): (usize, usize), p: &Plan) -> Vec<T> {
    let (oh, ow, k) = (p.oh, p.ow, p.kh * p.kw);
    let mut out = vec![T::zero(); c * k];
    out.par_chunks_mut(k).enumerate().for_each(|(ch, gk)| {
        let mut spread = vec![T::zero(); p.len];
        let mut phases = vec![T::zero(); p.phases() * p.plane];
        let starts: Vec<usize> = (0..k).map(|t| p.tap_start(t / p.kw, t % p.kw)).collect();
        for b in 0..n {
            let plane = b * c + ch;
            let (img, go) = (&x[plane * p.h * p.w..][..p.h * p.w], &g[plane * oh * ow..][..oh * ow]);
            kernel_grad_plane(p, img, go, &starts, &mut spread, &mut phases, gk);
        }
    });
    out
}

/// The contiguous slices of two storages of one float dtype, or an error naming `what`.
fn f32_or_f64<'a>(what: &str, s1: &'a CpuStorage, l1: &Layout, s2: &'a CpuStorage, l2: &Layout) -> candle_core::Result<Pair<'a>> {
    let (Some((a1, b1)), Some((a2, b2))) = (l1.contiguous_offsets(), l2.contiguous_offsets()) else {
        candle_core::bail!("{what}: inputs must be contiguous");
    };
    match (s1, s2) {
        (CpuStorage::F32(x), CpuStorage::F32(y)) => Ok(Pair::F32(&x[a1..b1], &y[a2..b2])),
        (CpuStorage::F64(x), CpuStorage::F64(y)) => Ok(Pair::F64(&x[a1..b1], &y[a2..b2])),
        _ => candle_core::bail!("{what}: only f32 and f64 of one dtype"),
    }
}

enum Pair<'a> {
    F32(&'a [f32], &'a [f32]),
    F64(&'a [f64], &'a [f64]),
}

/// Which gradient [`DepthwiseGrad`] computes.
enum Wrt {
    /// `dL/dx` of an input of this `(H, W)`, from (`dL/dy`, kernel).
    Input((usize, usize)),
    /// `dL/dw` of a kernel of this `(KH, KW)`, from (input, `dL/dy`).
    Kernel((usize, usize)),
}

/// One gradient of the depthwise convolution as an op (no backward of its own).
struct DepthwiseGrad {
    stride: usize,
    pad: (usize, usize, usize, usize),
    wrt: Wrt,
}

impl CustomOp2 for DepthwiseGrad {
    fn name(&self) -> &'static str {
        "protonet-depthwise-conv2d-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, c, h1, w1) = l1.shape().dims4()?;
        let (_, _, a, b) = l2.shape().dims4()?;
        let pair = f32_or_f64("depthwise conv backward", s1, l1, s2, l2)?;
        Ok(match self.wrt {
            Wrt::Input(hw) => {
                let p = Plan::new(hw, (a, b), self.stride, self.pad);
                let out = match pair {
                    Pair::F32(g, w) => CpuStorage::F32(grad_input(g, w, (n, c), &p)),
                    Pair::F64(g, w) => CpuStorage::F64(grad_input(g, w, (n, c), &p)),
                };
                (out, Shape::from((n, c, hw.0, hw.1)))
            }
            Wrt::Kernel(k) => {
                let p = Plan::new((h1, w1), k, self.stride, self.pad);
                let out = match pair {
                    Pair::F32(x, g) => CpuStorage::F32(grad_kernel(x, g, (n, c), &p)),
                    Pair::F64(x, g) => CpuStorage::F64(grad_kernel(x, g, (n, c), &p)),
                };
                (out, Shape::from((c, 1, k.0, k.1)))
            }
        })
    }
}

impl Depthwise {
    /// Checks the shapes and returns `(N, C)` and the plan.
    fn plan(&self, x: &Layout, w: &Layout) -> candle_core::Result<((usize, usize), Plan)> {
        let (n, c, h, wd) = x.shape().dims4()?;
        let (c2, one, kh, kw) = w.shape().dims4()?;
        if c2 != c || one != 1 || kh == 0 || kw == 0 {
            candle_core::bail!("depthwise conv: kernel {:?} does not fit input {:?}", w.shape(), x.shape());
        }
        if h + self.pad.0 + self.pad.1 < kh || wd + self.pad.2 + self.pad.3 < kw || self.stride == 0 {
            candle_core::bail!("depthwise conv: kernel larger than the padded input, or stride 0");
        }
        Ok(((n, c), Plan::new((h, wd), (kh, kw), self.stride, self.pad)))
    }

    fn compute(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        bias: Option<(&CpuStorage, &Layout)>,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let ((n, c), p) = self.plan(l1, l2)?;
        let bias = match bias {
            Some((_, l)) if l.dims() != [c] => candle_core::bail!("depthwise conv: bias {:?} must have {c} values (the channels)", l.dims()),
            Some((b, l)) => match l.contiguous_offsets() {
                Some(range) => Some((b, range)),
                None => candle_core::bail!("depthwise conv: bias must be contiguous"),
            },
            None => None,
        };
        let clamp = self.clamp;
        let out = match f32_or_f64("depthwise conv", s1, l1, s2, l2)? {
            Pair::F32(x, w) => {
                let b = match bias {
                    Some((b, (i, j))) => Some(&b.as_slice::<f32>()?[i..j]),
                    None => None,
                };
                CpuStorage::F32(run(x, w, b, super::epilogue::bounds(clamp), (n, c), &p))
            }
            Pair::F64(x, w) => {
                let b = match bias {
                    Some((b, (i, j))) => Some(&b.as_slice::<f64>()?[i..j]),
                    None => None,
                };
                CpuStorage::F64(run(x, w, b, super::epilogue::bounds(clamp), (n, c), &p))
            }
        };
        Ok((out, Shape::from((n, c, p.oh, p.ow))))
    }

    /// The input's (when it needs one) and the kernel's gradients from the gradient of the
    /// convolution's output.
    fn grads(&self, x: &Tensor, w: &Tensor, grad: &Tensor) -> candle_core::Result<(Option<Tensor>, Tensor)> {
        let (_, _, h, wd) = x.dims4()?;
        let (_, _, kh, kw) = w.dims4()?;
        let grad = grad.contiguous()?;
        let gx =
            if x.track_op() { Some(grad.apply_op2_no_bwd(w, &DepthwiseGrad { stride: self.stride, pad: self.pad, wrt: Wrt::Input((h, wd)) })?) } else { None };
        let gw = x.apply_op2_no_bwd(&grad, &DepthwiseGrad { stride: self.stride, pad: self.pad, wrt: Wrt::Kernel((kh, kw)) })?;
        Ok((gx, gw))
    }
}

impl CustomOp2 for Depthwise {
    fn name(&self) -> &'static str {
        "protonet-depthwise-conv2d"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        self.compute(s1, l1, s2, l2, None)
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, y: &Tensor, grad: &Tensor) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = match self.clamp {
            Some(_) => super::epilogue::backward(grad, y, self.clamp)?.0,
            None => grad.clone(),
        };
        let (gx, gw) = self.grads(x, w, &grad)?;
        Ok((gx, Some(gw)))
    }
}

impl CustomOp3 for Depthwise {
    fn name(&self) -> &'static str {
        "protonet-depthwise-conv2d-bias"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        self.compute(s1, l1, s2, l2, Some((s3, l3)))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _b: &Tensor, y: &Tensor, grad: &Tensor) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (grad, db) = super::epilogue::backward(grad, y, self.clamp)?;
        let (gx, gw) = self.grads(x, w, &grad)?;
        Ok((gx, Some(gw), Some(db)))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::relative_diff as rel;
    use super::depthwise_conv2d;
    use candle_core::{Device, Tensor, Var};

    /// Both gradients of `sum(r * conv(x, w))` for a random `r` against central finite
    /// differences in f64, on odd sizes, strides 1 and 2, asymmetric padding, batch 1.
    #[test]
    fn gradients_match_finite_differences() {
        for &(n, c, h, k, s, pad) in &[
            (1, 3, 7, 3, 1, (1, 1, 1, 1)),
            (2, 2, 8, 3, 2, (0, 1, 0, 1)),
            (1, 2, 9, 5, 2, (1, 2, 1, 2)),
            (2, 3, 5, 5, 1, (2, 2, 2, 2)),
            (1, 1, 3, 3, 1, (0, 0, 0, 0)),
        ] {
            let dev = Device::Cpu;
            let x = Var::randn(0f64, 1.0, (n, c, h, h), &dev).unwrap();
            let w = Var::randn(0f64, 1.0, (c, 1, k, k), &dev).unwrap();
            let y = depthwise_conv2d(x.as_tensor(), w.as_tensor(), s, pad).unwrap();
            let r = Tensor::randn(0f64, 1.0, y.dims(), &dev).unwrap();
            let loss = |x: &Tensor, w: &Tensor| (depthwise_conv2d(x, w, s, pad).unwrap() * &r).unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap();
            let grads = (y * &r).unwrap().sum_all().unwrap().backward().unwrap();
            for (var, other, is_x) in [(&x, &w, true), (&w, &x, false)] {
                let g = grads.get(var.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
                let base = var.as_tensor().flatten_all().unwrap().to_vec1::<f64>().unwrap();
                for (i, gi) in g.iter().enumerate() {
                    let eps = 1e-5;
                    let at = |d: f64| {
                        let mut v = base.clone();
                        v[i] += d;
                        let t = Tensor::from_vec(v, var.dims(), &dev).unwrap();
                        if is_x {
                            loss(&t, other.as_tensor())
                        } else {
                            loss(other.as_tensor(), &t)
                        }
                    };
                    let fd = (at(eps) - at(-eps)) / (2.0 * eps);
                    assert!((fd - gi).abs() < 1e-6 * (1.0 + fd.abs()), "{n} {c} {h} {k} {s} {pad:?} {} [{i}]: {gi} vs {fd}", if is_x { "x" } else { "w" });
                }
            }
        }
    }

    #[test]
    fn matches_candle_grouped_conv_with_asymmetric_padding() {
        for &(n, c, h, k, s, pad) in &[
            (1, 3, 7, 3, 1, (1, 1, 1, 1)),
            (2, 5, 8, 3, 2, (0, 1, 0, 1)),
            (1, 4, 9, 5, 2, (1, 2, 1, 2)),
            (3, 2, 6, 5, 1, (2, 2, 2, 2)),
            (1, 1, 3, 3, 2, (0, 0, 0, 0)),
        ] {
            let x = Tensor::randn(0f64, 1.0, (n, c, h, h), &Device::Cpu).unwrap();
            let w = Tensor::randn(0f64, 1.0, (c, 1, k, k), &Device::Cpu).unwrap();
            let fast = depthwise_conv2d(&x, &w, s, pad).unwrap();
            let xp = x.pad_with_zeros(2, pad.0, pad.1).unwrap().pad_with_zeros(3, pad.2, pad.3).unwrap();
            let plain = xp.conv2d(&w, 0, s, 1, c).unwrap();
            assert_eq!(fast.dims(), plain.dims());
            let d = (fast - plain).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap();
            assert!(d < 1e-10, "{n} {c} {h} {k} {s}: {d}");
        }
    }

    /// The path off the CPU ([`depthwise_conv2d_portable`]) has the same values and
    /// gradients as the CPU op, for the input and the kernel, in f64 and in f32, on odd
    /// sizes, strides 1 to 3 and asymmetric padding.
    #[test]
    fn the_portable_path_has_the_same_values_and_gradients() {
        use super::depthwise_conv2d_portable;
        use candle_core::DType;
        use candle_core::Var;
        for dtype in [DType::F64, DType::F32] {
            for &(n, c, h, k, s, pad) in &[
                (1, 3, 7, 3, 1, (1, 1, 1, 1)),
                (2, 5, 8, 3, 2, (0, 1, 0, 1)),
                (1, 4, 9, 5, 2, (1, 2, 1, 2)),
                (2, 3, 11, 5, 2, (2, 2, 2, 2)),
                (1, 2, 10, 3, 3, (1, 0, 0, 1)),
                (3, 2, 5, 5, 1, (2, 2, 2, 2)),
            ] {
                let x = Var::from_tensor(&Tensor::randn(0f64, 1.0, (n, c, h, h + 1), &Device::Cpu).unwrap().to_dtype(dtype).unwrap()).unwrap();
                let w = Var::from_tensor(&Tensor::randn(0f64, 1.0, (c, 1, k, k), &Device::Cpu).unwrap().to_dtype(dtype).unwrap()).unwrap();
                let fast = depthwise_conv2d(x.as_tensor(), w.as_tensor(), s, pad).unwrap();
                let portable = depthwise_conv2d_portable(x.as_tensor(), w.as_tensor(), s, pad).unwrap();
                assert_eq!(fast.dims(), portable.dims(), "{n} {c} {h} {k} {s} {pad:?}");
                let r = Tensor::randn(0f64, 1.0, fast.dims(), &Device::Cpu).unwrap().to_dtype(dtype).unwrap();
                let vd = (&fast - &portable)
                    .unwrap()
                    .abs()
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .max(0)
                    .unwrap()
                    .to_dtype(DType::F64)
                    .unwrap()
                    .to_scalar::<f64>()
                    .unwrap();
                let vtol = if dtype == DType::F32 { 1e-4 } else { 1e-12 };
                assert!(vd < vtol, "values, {dtype:?}, {n} {c} {h} {k} {s} {pad:?}: {vd}");
                let gf = (&fast * &r).unwrap().sum_all().unwrap().backward().unwrap();
                let gp = (&portable * &r).unwrap().sum_all().unwrap().backward().unwrap();
                for (what, v) in [("input", &x), ("kernel", &w)] {
                    let a = gf.get(v.as_tensor()).unwrap().to_dtype(DType::F64).unwrap();
                    let b = gp.get(v.as_tensor()).unwrap().to_dtype(DType::F64).unwrap();
                    let scale = b.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap().max(1e-30);
                    let d = (a - &b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap() / scale;
                    // Relative to the largest gradient: 1e-5 in f32 (training's type), 1e-12 in f64.
                    let tol = if dtype == DType::F32 { 1e-5 } else { 1e-12 };
                    assert!(d < tol, "{what} gradient, {dtype:?}, {n} {c} {h} {k} {s}: {d}");
                }
            }
        }
    }

    /// [`depthwise_conv2d_bias`] against its path off the CPU (the portable depthwise
    /// convolution, a bias add and a clamp from candle's operations): values and the gradients of input, kernel and bias, f32 and
    /// f64, strides 1 to 3, 3x3 and 5x5, odd and wide planes, batch 1, with and without the
    /// clamp.
    #[test]
    fn bias_and_clamp_match_the_plain_ops() {
        use super::{depthwise_conv2d_bias, depthwise_conv2d_bias_portable};
        use candle_core::DType;
        let dev = Device::Cpu;
        for dtype in [DType::F64, DType::F32] {
            for &(n, c, h, w, k, s, pad, clamp) in &[
                (1, 3, 7, 9, 3, 1, (1, 1, 1, 1), Some((0f32, 6f32))),
                (2, 4, 30, 31, 5, 2, (1, 2, 1, 2), Some((-0.5, 0.5))),
                (3, 2, 14, 14, 5, 1, (2, 2, 2, 2), None),
                (1, 5, 11, 8, 3, 3, (1, 0, 0, 1), Some((0.0, 6.0))),
                (40, 3, 4, 5, 3, 2, (0, 1, 0, 1), Some((0.0, 1.0))),
            ] {
                let x = Var::from_tensor(&Tensor::randn(0f64, 1.0, (n, c, h, w), &dev).unwrap().to_dtype(dtype).unwrap()).unwrap();
                let wt = Var::from_tensor(&Tensor::randn(0f64, 1.0, (c, 1, k, k), &dev).unwrap().to_dtype(dtype).unwrap()).unwrap();
                let b = Var::from_tensor(&Tensor::randn(0f64, 1.0, c, &dev).unwrap().to_dtype(dtype).unwrap()).unwrap();
                let fast = depthwise_conv2d_bias(x.as_tensor(), wt.as_tensor(), b.as_tensor(), s, pad, clamp).unwrap();
                // The path off the CPU is the reference: shifted views, bias add, clamp.
                let plain = depthwise_conv2d_bias_portable(x.as_tensor(), wt.as_tensor(), b.as_tensor(), s, pad, clamp).unwrap();
                let tol = if dtype == DType::F32 { 1e-5 } else { 1e-12 };
                assert!(rel(&fast, &plain) < tol, "values {dtype:?} {n} {c} {h} {w} {k} {s}");
                let r = Tensor::randn(0f64, 1.0, plain.dims(), &dev).unwrap().to_dtype(dtype).unwrap();
                let gf = (&fast * &r).unwrap().sum_all().unwrap().backward().unwrap();
                let gp = (&plain * &r).unwrap().sum_all().unwrap().backward().unwrap();
                for (what, v) in [("input", &x), ("kernel", &wt), ("bias", &b)] {
                    let e = rel(gf.get(v.as_tensor()).unwrap(), gp.get(v.as_tensor()).unwrap());
                    assert!(e < tol * 10.0, "{what} gradient {dtype:?} {n} {c} {h} {w} {k} {s}: {e}");
                }
            }
        }
    }

    /// The kernels' baseline copies (built for any x86-64 CPU) give the values and gradients
    /// of the AVX2 copies that run on this machine: depthwise with bias and clamp, the
    /// strided 1x1 and 3x3 convolutions with bias and clamp (im2col, col2im, epilogue, the
    /// clamp mask and the channel sums), in f32.
    #[test]
    fn baseline_and_avx2_copies_agree() {
        use super::super::{conv2d_bias, depthwise_conv2d_bias, simd};
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (3, 6, 13, 11), &dev).unwrap()).unwrap();
        let dw = Var::from_tensor(&Tensor::randn(0f32, 1.0, (6, 1, 5, 5), &dev).unwrap()).unwrap();
        let w3 = Var::from_tensor(&Tensor::randn(0f32, 1.0, (4, 6, 3, 3), &dev).unwrap()).unwrap();
        let b = Var::from_tensor(&Tensor::randn(0f32, 1.0, 6, &dev).unwrap()).unwrap();
        let b3 = Var::from_tensor(&Tensor::randn(0f32, 1.0, 4, &dev).unwrap()).unwrap();
        // 16 channels, 3x3, stride 1: the Winograd transforms.
        let x16 = Var::from_tensor(&Tensor::randn(0f32, 1.0, (3, 16, 9, 7), &dev).unwrap()).unwrap();
        let w16 = Var::from_tensor(&Tensor::randn(0f32, 1.0, (4, 16, 3, 3), &dev).unwrap()).unwrap();
        let run = || {
            let h = depthwise_conv2d_bias(x.as_tensor(), dw.as_tensor(), b.as_tensor(), 2, (1, 2, 1, 2), Some((0.0, 6.0))).unwrap();
            let y = conv2d_bias(&h, w3.as_tensor(), b3.as_tensor(), 2, 1, Some((-1.0, 1.0))).unwrap();
            let y16 = conv2d_bias(x16.as_tensor(), w16.as_tensor(), b3.as_tensor(), 1, 1, None).unwrap();
            let loss = (y.sqr().unwrap().sum_all().unwrap() + y16.sqr().unwrap().sum_all().unwrap()).unwrap();
            let grads = loss.backward().unwrap();
            let mut out = vec![y.flatten_all().unwrap().to_vec1::<f32>().unwrap(), y16.flatten_all().unwrap().to_vec1::<f32>().unwrap()];
            for v in [&x, &dw, &w3, &b, &b3, &x16, &w16] {
                out.push(grads.get(v.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap());
            }
            out
        };
        let (fast, baseline) = (run(), simd::baseline_only(run));
        for (k, (a, b)) in fast.iter().zip(&baseline).enumerate() {
            let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-30);
            let d = a.iter().zip(b).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(d / scale < 1e-6, "output {k}: baseline and AVX2 copies differ by {d} (largest {scale})");
        }
    }

    /// A bias of the wrong length is an error naming the bias, for both fused convolutions.
    #[test]
    fn a_bias_of_the_wrong_length_is_an_error() {
        use super::super::conv2d_bias;
        use super::depthwise_conv2d_bias;
        let x = Tensor::zeros((1, 3, 5, 5), candle_core::DType::F32, &Device::Cpu).unwrap();
        let b = Tensor::zeros(2, candle_core::DType::F32, &Device::Cpu).unwrap();
        let dw = Tensor::zeros((3, 1, 3, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
        let e = depthwise_conv2d_bias(&x, &dw, &b, 1, (1, 1, 1, 1), None).unwrap_err().to_string();
        assert!(e.contains("bias"), "{e}");
        let w = Tensor::zeros((4, 3, 1, 1), candle_core::DType::F32, &Device::Cpu).unwrap();
        let e = conv2d_bias(&x, &w, &b, 1, 0, None).unwrap_err().to_string();
        assert!(e.contains("bias"), "{e}");
    }
}
