//! Depthwise 2-D convolution (one filter per channel, any stride, explicit zero padding)
//! for the CPU as a candle custom op. candle 0.11 runs a grouped convolution as one
//! convolution per group, which is very slow for the hundreds of groups of a depthwise
//! layer. Forward only for now: the op has no backward pass.

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
/// let fast = protonet::backbone::depthwise_conv2d(&x, &w, 2, (1, 1, 1, 1))?;
/// let plain = x.conv2d(&w, 1, 2, 1, 4)?;
/// assert!((fast - plain)?.abs()?.max_all()?.to_scalar::<f32>()? < 1e-4);
/// # Ok::<(), protonet::Error>(())
/// ```
pub fn depthwise_conv2d(x: &Tensor, w: &Tensor, stride: usize, pad: (usize, usize, usize, usize)) -> Result<Tensor> {
    if x.device().is_cpu() {
        Ok(x.contiguous()?.apply_op2_no_bwd(&w.contiguous()?, &Depthwise { stride, pad })?)
    } else {
        let x = x.pad_with_zeros(2, pad.0, pad.1)?.pad_with_zeros(3, pad.2, pad.3)?;
        Ok(x.conv2d(w, 0, stride, 1, x.dim(1)?)?)
    }
}

struct Depthwise {
    stride: usize,
    pad: (usize, usize, usize, usize),
}

fn run<T: WithDType + Send + Sync>(x: &[T], w: &[T], (n, c, h, wd): (usize, usize, usize, usize), (kh, kw): (usize, usize), s: usize, pad: (usize, usize, usize, usize)) -> (Vec<T>, usize, usize) {
    let (ph, pw) = (h + pad.0 + pad.1, wd + pad.2 + pad.3);
    let (oh, ow) = ((ph - kh) / s + 1, (pw - kw) / s + 1);
    let mut out = vec![T::zero(); n * c * oh * ow];
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
                    let wv = k[ky * kw + kx];
                    for (ox, ov) in orow.iter_mut().enumerate() {
                        let ix = (ox * s + kx) as isize - pad.2 as isize;
                        if ix >= 0 && ix < wd as isize {
                            *ov += wv * row[ix as usize];
                        }
                    }
                }
            }
        }
    });
    (out, oh, ow)
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
        let (Some((a1, b1)), Some((a2, b2))) = (l1.contiguous_offsets(), l2.contiguous_offsets()) else {
            candle_core::bail!("depthwise conv: inputs must be contiguous");
        };
        let (out, oh, ow) = match (s1, s2) {
            (CpuStorage::F32(x), CpuStorage::F32(w)) => {
                let (o, oh, ow) = run(&x[a1..b1], &w[a2..b2], d, (kh, kw), self.stride, self.pad);
                (CpuStorage::F32(o), oh, ow)
            }
            (CpuStorage::F64(x), CpuStorage::F64(w)) => {
                let (o, oh, ow) = run(&x[a1..b1], &w[a2..b2], d, (kh, kw), self.stride, self.pad);
                (CpuStorage::F64(o), oh, ow)
            }
            _ => candle_core::bail!("depthwise conv: only f32 and f64 of one dtype"),
        };
        Ok((out, Shape::from((d.0, d.1, oh, ow))))
    }
}

#[cfg(test)]
mod tests {
    use super::depthwise_conv2d;
    use candle_core::{Device, Tensor};

    #[test]
    fn matches_candle_grouped_conv_with_asymmetric_padding() {
        for &(n, c, h, k, s, pad) in &[(1, 3, 7, 3, 1, (1, 1, 1, 1)), (2, 5, 8, 3, 2, (0, 1, 0, 1)), (1, 4, 9, 5, 2, (1, 2, 1, 2)), (3, 2, 6, 5, 1, (2, 2, 2, 2)), (1, 1, 3, 3, 2, (0, 0, 0, 0))] {
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
}
