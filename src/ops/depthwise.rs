//! Depthwise 2-D convolution (one filter per channel, any stride, explicit zero padding)
//! for the CPU as a candle custom op. candle 0.11 runs a grouped convolution as one
//! convolution per group, which is very slow for the hundreds of groups of a depthwise
//! layer. The backward pass (input and kernel gradients) is two more CPU kernels, checked
//! against finite differences. Off the CPU, [`depthwise_conv2d_portable`] builds the same
//! convolution from operations every back-end has.

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor, WithDType};
use rayon::prelude::*;

use crate::Result;

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
        Ok(x.contiguous()?.apply_op2(&w.contiguous()?, Depthwise { stride, pad })?)
    } else {
        depthwise_conv2d_portable(x, w, stride, pad)
    }
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
}

/// The output columns `ox` whose input column `ox * s + kx - pad_left` lies in `0..wd`.
#[inline]
fn valid_columns(ow: usize, wd: usize, kx: usize, s: usize, pad_left: usize) -> std::ops::Range<usize> {
    // ox * s + kx >= pad_left  and  ox * s + kx < pad_left + wd.
    let lo = pad_left.saturating_sub(kx).div_ceil(s);
    let hi = if pad_left + wd > kx { (pad_left + wd - kx).div_ceil(s).min(ow) } else { 0 };
    lo..hi.max(lo)
}

/// `out[ox] += w * row[ox * s + kx - pad_left]` over the valid columns (vectorisable for stride 1).
#[inline]
fn tap_row<T: WithDType>(out: &mut [T], row: &[T], w: T, cols: std::ops::Range<usize>, s: usize, kx: usize, pad_left: usize) {
    if cols.is_empty() {
        return;
    }
    let first = cols.start * s + kx - pad_left;
    if s == 1 {
        for (o, &v) in out[cols.clone()].iter_mut().zip(&row[first..first + cols.len()]) {
            *o += w * v;
        }
    } else {
        for (o, &v) in out[cols.clone()].iter_mut().zip(row[first..].iter().step_by(s)) {
            *o += w * v;
        }
    }
}

fn run<T: WithDType + Send + Sync>(
    x: &[T],
    w: &[T],
    (n, c, h, wd): (usize, usize, usize, usize),
    (kh, kw): (usize, usize),
    s: usize,
    pad: (usize, usize, usize, usize),
) -> (Vec<T>, usize, usize) {
    let (ph, pw) = (h + pad.0 + pad.1, wd + pad.2 + pad.3);
    let (oh, ow) = ((ph - kh) / s + 1, (pw - kw) / s + 1);
    let mut out = vec![T::zero(); n * c * oh * ow];
    let cols: Vec<_> = (0..kw).map(|kx| valid_columns(ow, wd, kx, s, pad.2)).collect();
    out.par_chunks_mut(oh * ow).enumerate().for_each(|(plane, o)| {
        let ch = plane % c;
        let img = &x[plane * h * wd..][..h * wd];
        let k = &w[ch * kh * kw..][..kh * kw];
        for oy in 0..oh {
            for ky in 0..kh {
                let iy = (oy * s + ky) as isize - pad.0 as isize;
                if iy < 0 || iy >= h as isize {
                    continue;
                }
                let row = &img[iy as usize * wd..][..wd];
                let orow = &mut o[oy * ow..][..ow];
                for kx in 0..kw {
                    tap_row(orow, row, k[ky * kw + kx], cols[kx].clone(), s, kx, pad.2);
                }
            }
        }
    });
    (out, oh, ow)
}

/// `dL/dx` from `dL/dy` `g` `(N, C, OH, OW)` and the kernel, for an input of `h x wd`.
fn grad_input<T: WithDType + Send + Sync>(
    g: &[T],
    w: &[T],
    (n, c, oh, ow): (usize, usize, usize, usize),
    (h, wd): (usize, usize),
    (kh, kw): (usize, usize),
    s: usize,
    pad: (usize, usize, usize, usize),
) -> Vec<T> {
    let mut out = vec![T::zero(); n * c * h * wd];
    let cols: Vec<_> = (0..kw).map(|kx| valid_columns(ow, wd, kx, s, pad.2)).collect();
    out.par_chunks_mut(h * wd).enumerate().for_each(|(plane, gx)| {
        let ch = plane % c;
        let go = &g[plane * oh * ow..][..oh * ow];
        let k = &w[ch * kh * kw..][..kh * kw];
        for oy in 0..oh {
            for ky in 0..kh {
                let iy = (oy * s + ky) as isize - pad.0 as isize;
                if iy < 0 || iy >= h as isize {
                    continue;
                }
                let row = &mut gx[iy as usize * wd..][..wd];
                let grow = &go[oy * ow..][..ow];
                for kx in 0..kw {
                    let (wv, r) = (k[ky * kw + kx], cols[kx].clone());
                    if r.is_empty() {
                        continue;
                    }
                    let first = r.start * s + kx - pad.2;
                    if s == 1 {
                        for (x, &gv) in row[first..first + r.len()].iter_mut().zip(&grow[r]) {
                            *x += wv * gv;
                        }
                    } else {
                        for (x, &gv) in row[first..].iter_mut().step_by(s).zip(&grow[r]) {
                            *x += wv * gv;
                        }
                    }
                }
            }
        }
    });
    out
}

/// `dL/dw` `(C, 1, KH, KW)` from the input `x` `(N, C, H, W)` and `dL/dy` `g`.
fn grad_kernel<T: WithDType + Send + Sync>(
    x: &[T],
    g: &[T],
    (n, c, h, wd): (usize, usize, usize, usize),
    (oh, ow): (usize, usize),
    (kh, kw): (usize, usize),
    s: usize,
    pad: (usize, usize, usize, usize),
) -> Vec<T> {
    let mut out = vec![T::zero(); c * kh * kw];
    let cols: Vec<_> = (0..kw).map(|kx| valid_columns(ow, wd, kx, s, pad.2)).collect();
    out.par_chunks_mut(kh * kw).enumerate().for_each(|(ch, gk)| {
        for b in 0..n {
            let plane = b * c + ch;
            let img = &x[plane * h * wd..][..h * wd];
            let go = &g[plane * oh * ow..][..oh * ow];
            for oy in 0..oh {
                for ky in 0..kh {
                    let iy = (oy * s + ky) as isize - pad.0 as isize;
                    if iy < 0 || iy >= h as isize {
                        continue;
                    }
                    let row = &img[iy as usize * wd..][..wd];
                    let grow = &go[oy * ow..][..ow];
                    for kx in 0..kw {
                        let r = cols[kx].clone();
                        if r.is_empty() {
                            continue;
                        }
                        let first = r.start * s + kx - pad.2;
                        let mut acc = T::zero();
                        if s == 1 {
                            for (&v, &gv) in row[first..first + r.len()].iter().zip(&grow[r]) {
                                acc += v * gv;
                            }
                        } else {
                            for (&v, &gv) in row[first..].iter().step_by(s).zip(&grow[r]) {
                                acc += v * gv;
                            }
                        }
                        gk[ky * kw + kx] += acc;
                    }
                }
            }
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
        let d = l1.shape().dims4()?;
        let (_, _, a, b) = l2.shape().dims4()?;
        let pair = f32_or_f64("depthwise conv backward", s1, l1, s2, l2)?;
        let (s, p) = (self.stride, self.pad);
        Ok(match self.wrt {
            Wrt::Input(hw) => {
                let out = match pair {
                    Pair::F32(g, w) => CpuStorage::F32(grad_input(g, w, d, hw, (a, b), s, p)),
                    Pair::F64(g, w) => CpuStorage::F64(grad_input(g, w, d, hw, (a, b), s, p)),
                };
                (out, Shape::from((d.0, d.1, hw.0, hw.1)))
            }
            Wrt::Kernel(k) => {
                let out = match pair {
                    Pair::F32(x, g) => CpuStorage::F32(grad_kernel(x, g, d, (a, b), k, s, p)),
                    Pair::F64(x, g) => CpuStorage::F64(grad_kernel(x, g, d, (a, b), k, s, p)),
                };
                (out, Shape::from((d.1, 1, k.0, k.1)))
            }
        })
    }
}

impl CustomOp2 for Depthwise {
    fn name(&self) -> &'static str {
        "protonet-depthwise-conv2d"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let d = l1.shape().dims4()?;
        let (c2, one, kh, kw) = l2.shape().dims4()?;
        if c2 != d.1 || one != 1 {
            candle_core::bail!("depthwise conv: kernel {:?} does not fit input {:?}", l2.shape(), l1.shape());
        }
        if d.2 + self.pad.0 + self.pad.1 < kh || d.3 + self.pad.2 + self.pad.3 < kw || self.stride == 0 {
            candle_core::bail!("depthwise conv: kernel larger than the padded input, or stride 0");
        }
        let (out, oh, ow) = match f32_or_f64("depthwise conv", s1, l1, s2, l2)? {
            Pair::F32(x, w) => {
                let (o, oh, ow) = run(x, w, d, (kh, kw), self.stride, self.pad);
                (CpuStorage::F32(o), oh, ow)
            }
            Pair::F64(x, w) => {
                let (o, oh, ow) = run(x, w, d, (kh, kw), self.stride, self.pad);
                (CpuStorage::F64(o), oh, ow)
            }
        };
        Ok((out, Shape::from((d.0, d.1, oh, ow))))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (_, _, h, wd) = x.dims4()?;
        let (_, _, kh, kw) = w.dims4()?;
        let grad = grad.contiguous()?;
        let gx = grad.apply_op2_no_bwd(w, &DepthwiseGrad { stride: self.stride, pad: self.pad, wrt: Wrt::Input((h, wd)) })?;
        let gw = x.apply_op2_no_bwd(&grad, &DepthwiseGrad { stride: self.stride, pad: self.pad, wrt: Wrt::Kernel((kh, kw)) })?;
        Ok((Some(gx), Some(gw)))
    }
}

#[cfg(test)]
mod tests {
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
}
