//! 2-D convolution (stride 1, zero padding, no bias) for the CPU as a candle custom op:
//! im2col per image and a GEMM (the `gemm` crate, which candle also uses), with both
//! gradients through GEMMs as well. candle 0.11 computes the input gradient with a
//! direct `conv_transpose2d` loop that does not use GEMM.
//!
//! Work is split over images across rayon's threads, each with its own im2col buffer;
//! the weight gradient is summed per thread and then reduced. Columns are recomputed in
//! the backward pass rather than stored.

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor, WithDType};
use gemm::{gemm, Parallelism};
use rayon::prelude::*;

use crate::Result;

/// `conv2d(x, w)` with stride 1 and `padding` zeros on every side, no bias.
/// `x` is `(N, C, H, W)`, `w` is `(Cout, C, KH, KW)`. On the CPU it runs the custom op
/// (f32 and f64); elsewhere candle's `conv2d`.
///
/// ```
/// use candle_core::{Device, Tensor};
/// let x = Tensor::randn(0f32, 1., (2, 3, 7, 7), &Device::Cpu)?;
/// let w = Tensor::randn(0f32, 1., (4, 3, 3, 3), &Device::Cpu)?;
/// let fast = protonet::ops::conv2d(&x, &w, 1)?;
/// let plain = x.conv2d(&w, 1, 1, 1, 1)?;
/// assert!((fast - plain)?.abs()?.max_all()?.to_scalar::<f32>()? < 1e-4);
/// # Ok::<(), protonet::Error>(())
/// ```
pub fn conv2d(x: &Tensor, w: &Tensor, padding: usize) -> Result<Tensor> {
    if x.device().is_cpu() {
        Ok(x.contiguous()?.apply_op2(&w.contiguous()?, Conv2d { padding })?)
    } else {
        Ok(x.conv2d(w, padding, 1, 1, 1)?)
    }
}

#[derive(Clone, Copy, Debug)]
struct Geometry {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    cout: usize,
    kh: usize,
    kw: usize,
    pad: usize,
    oh: usize,
    ow: usize,
}

impl Geometry {
    fn new(x: &Layout, w: &Layout, pad: usize) -> candle_core::Result<Self> {
        let (n, c, h, wd) = x.shape().dims4()?;
        let (cout, c2, kh, kw) = w.shape().dims4()?;
        if c != c2 {
            candle_core::bail!("conv2d: input has {c} channels, kernel expects {c2}");
        }
        if h + 2 * pad < kh || wd + 2 * pad < kw {
            candle_core::bail!("conv2d: kernel {kh}x{kw} larger than padded input {h}x{wd}");
        }
        Ok(Self { n, c, h, w: wd, cout, kh, kw, pad, oh: h + 2 * pad - kh + 1, ow: wd + 2 * pad - kw + 1 })
    }
    fn k(&self) -> usize {
        self.c * self.kh * self.kw
    }
    /// A 1x1 convolution without padding: the image (C x H*W) is its own column matrix,
    /// so the GEMMs read and write it directly, without im2col.
    fn pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.pad == 0
    }
    fn p(&self) -> usize {
        self.oh * self.ow
    }
    fn in_len(&self) -> usize {
        self.c * self.h * self.w
    }
    fn out_len(&self) -> usize {
        self.cout * self.p()
    }
}

/// Fills `cols` (K x P, row-major) from one image (C x H x W).
fn im2col<T: WithDType>(img: &[T], g: &Geometry, cols: &mut [T]) {
    let p = g.p();
    for c in 0..g.c {
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                let row = &mut cols[((c * g.kh + ky) * g.kw + kx) * p..][..p];
                for oy in 0..g.oh {
                    let iy = oy as isize + ky as isize - g.pad as isize;
                    let dst = &mut row[oy * g.ow..(oy + 1) * g.ow];
                    if iy < 0 || iy >= g.h as isize {
                        dst.fill(T::zero());
                        continue;
                    }
                    let src = &img[(c * g.h + iy as usize) * g.w..][..g.w];
                    for (ox, d) in dst.iter_mut().enumerate() {
                        let ix = ox as isize + kx as isize - g.pad as isize;
                        *d = if ix < 0 || ix >= g.w as isize { T::zero() } else { src[ix as usize] };
                    }
                }
            }
        }
    }
}

/// Adds the columns `cols` (K x P) back into one image gradient (C x H x W).
fn col2im_add<T: WithDType>(cols: &[T], g: &Geometry, img: &mut [T]) {
    let p = g.p();
    for c in 0..g.c {
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                let row = &cols[((c * g.kh + ky) * g.kw + kx) * p..][..p];
                for oy in 0..g.oh {
                    let iy = oy as isize + ky as isize - g.pad as isize;
                    if iy < 0 || iy >= g.h as isize {
                        continue;
                    }
                    let dst = &mut img[(c * g.h + iy as usize) * g.w..][..g.w];
                    for (ox, &v) in row[oy * g.ow..(oy + 1) * g.ow].iter().enumerate() {
                        let ix = ox as isize + kx as isize - g.pad as isize;
                        if ix >= 0 && ix < g.w as isize {
                            dst[ix as usize] += v;
                        }
                    }
                }
            }
        }
    }
}

/// `dst (m x n) = [dst +] a (m x k) * b (k x n)`, with explicit (row, column) strides.
#[allow(clippy::too_many_arguments)]
fn matmul<T: WithDType>(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [T],
    accumulate: bool,
    a: &[T],
    a_rs: usize,
    a_cs: usize,
    b: &[T],
    b_rs: usize,
    b_cs: usize,
    par: Parallelism,
) {
    assert!(dst.len() >= m * n);
    // SAFETY: the slices cover the strided extents described (checked by the callers'
    // geometry), and dst does not alias a or b.
    unsafe {
        gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.as_ptr(),
            a_cs as isize,
            a_rs as isize,
            b.as_ptr(),
            b_cs as isize,
            b_rs as isize,
            T::one(),
            T::one(),
            false,
            false,
            false,
            par,
        )
    }
}

/// How to share the work: across images (each GEMM single-threaded) when there are
/// enough of them, else inside each GEMM.
fn plan(n: usize) -> (usize, Parallelism) {
    let threads = rayon::current_num_threads().max(1);
    if n >= 2 * threads || threads == 1 {
        (threads, Parallelism::None)
    } else {
        (1, Parallelism::Rayon(threads))
    }
}

fn chunk_len(n: usize, chunks: usize) -> usize {
    n.div_ceil(chunks).max(1)
}

fn forward<T: WithDType + Send + Sync>(x: &[T], w: &[T], g: &Geometry) -> Vec<T> {
    let (k, p) = (g.k(), g.p());
    let mut out = vec![T::zero(); g.n * g.out_len()];
    let (chunks, par) = plan(g.n);
    let per = chunk_len(g.n, chunks);
    out.par_chunks_mut(per * g.out_len()).zip(x.par_chunks(per * g.in_len())).for_each(|(o, xs)| {
        let mut cols = vec![T::zero(); if g.pointwise() { 0 } else { k * p }];
        for (oi, xi) in o.chunks_mut(g.out_len()).zip(xs.chunks(g.in_len())) {
            let cols = if g.pointwise() {
                xi
            } else {
                im2col(xi, g, &mut cols);
                &cols
            };
            // out (Cout x P) = W (Cout x K) * cols (K x P)
            matmul(g.cout, p, k, oi, false, w, k, 1, cols, p, 1, par);
        }
    });
    out
}

fn backward_input<T: WithDType + Send + Sync>(gy: &[T], w: &[T], g: &Geometry) -> Vec<T> {
    let (k, p) = (g.k(), g.p());
    let mut dx = vec![T::zero(); g.n * g.in_len()];
    let (chunks, par) = plan(g.n);
    let per = chunk_len(g.n, chunks);
    dx.par_chunks_mut(per * g.in_len()).zip(gy.par_chunks(per * g.out_len())).for_each(|(d, gs)| {
        let mut cols = vec![T::zero(); if g.pointwise() { 0 } else { k * p }];
        for (di, gi) in d.chunks_mut(g.in_len()).zip(gs.chunks(g.out_len())) {
            // dcols (K x P) = W^T (K x Cout) * gy (Cout x P)
            if g.pointwise() {
                matmul(k, p, g.cout, di, false, w, 1, k, gi, p, 1, par);
            } else {
                matmul(k, p, g.cout, &mut cols, false, w, 1, k, gi, p, 1, par);
                col2im_add(&cols, g, di);
            }
        }
    });
    dx
}

fn backward_weight<T: WithDType + Send + Sync>(x: &[T], gy: &[T], g: &Geometry) -> Vec<T> {
    let (k, p) = (g.k(), g.p());
    let (chunks, par) = plan(g.n);
    let per = chunk_len(g.n, chunks);
    let partial: Vec<Vec<T>> = x
        .par_chunks(per * g.in_len())
        .zip(gy.par_chunks(per * g.out_len()))
        .map(|(xs, gs)| {
            let mut cols = vec![T::zero(); if g.pointwise() { 0 } else { k * p }];
            let mut dw = vec![T::zero(); g.cout * k];
            for (xi, gi) in xs.chunks(g.in_len()).zip(gs.chunks(g.out_len())) {
                let cols = if g.pointwise() {
                    xi
                } else {
                    im2col(xi, g, &mut cols);
                    &cols
                };
                // dW (Cout x K) += gy (Cout x P) * cols^T (P x K)
                matmul(g.cout, k, p, &mut dw, true, gi, p, 1, cols, 1, p, par);
            }
            dw
        })
        .collect();
    let mut dw = vec![T::zero(); g.cout * k];
    for part in partial {
        for (a, b) in dw.iter_mut().zip(part) {
            *a += b;
        }
    }
    dw
}

fn slice<'a, T>(data: &'a [T], l: &Layout, what: &str) -> candle_core::Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("conv2d: {what} must be contiguous"),
    }
}

struct Conv2d {
    padding: usize,
}

impl CustomOp2 for Conv2d {
    fn name(&self) -> &'static str {
        "protonet-conv2d"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = Geometry::new(l1, l2, self.padding)?;
        let out = match (s1, s2) {
            (CpuStorage::F32(x), CpuStorage::F32(w)) => CpuStorage::F32(forward(slice(x, l1, "input")?, slice(w, l2, "kernel")?, &g)),
            (CpuStorage::F64(x), CpuStorage::F64(w)) => CpuStorage::F64(forward(slice(x, l1, "input")?, slice(w, l2, "kernel")?, &g)),
            _ => candle_core::bail!("conv2d: only f32 and f64 inputs of the same dtype"),
        };
        Ok((out, Shape::from((g.n, g.cout, g.oh, g.ow))))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let dx = if x.track_op() { Some(grad.apply_op2_no_bwd(w, &ConvGrad { padding: self.padding, input: true, x_dims: x.dims4()? })?) } else { None };
        let dw = grad.apply_op2_no_bwd(x, &ConvGrad { padding: self.padding, input: false, x_dims: x.dims4()? })?;
        Ok((dx, Some(dw)))
    }
}

/// A gradient of [`Conv2d`]: `(grad of output, kernel) -> grad of input` when `input`,
/// else `(grad of output, input) -> grad of kernel`.
struct ConvGrad {
    padding: usize,
    input: bool,
    x_dims: (usize, usize, usize, usize),
}

impl CustomOp2 for ConvGrad {
    fn name(&self) -> &'static str {
        if self.input {
            "protonet-conv2d-grad-input"
        } else {
            "protonet-conv2d-grad-kernel"
        }
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, c, h, wd) = self.x_dims;
        let (gn, cout, _, _) = l1.shape().dims4()?;
        let x_layout = Layout::contiguous((n, c, h, wd));
        if self.input {
            let g = Geometry::new(&x_layout, l2, self.padding)?;
            if gn != n || cout != g.cout {
                candle_core::bail!("conv2d backward: gradient shape {:?} does not fit", l1.shape());
            }
            let out = match (s1, s2) {
                (CpuStorage::F32(gy), CpuStorage::F32(w)) => CpuStorage::F32(backward_input(slice(gy, l1, "gradient")?, slice(w, l2, "kernel")?, &g)),
                (CpuStorage::F64(gy), CpuStorage::F64(w)) => CpuStorage::F64(backward_input(slice(gy, l1, "gradient")?, slice(w, l2, "kernel")?, &g)),
                _ => candle_core::bail!("conv2d backward: only f32 and f64"),
            };
            Ok((out, Shape::from(self.x_dims)))
        } else {
            let (_, _, oh, ow) = l1.shape().dims4()?;
            let (kh, kw) = (h + 2 * self.padding + 1 - oh, wd + 2 * self.padding + 1 - ow);
            let w_layout = Layout::contiguous((cout, c, kh, kw));
            let g = Geometry::new(&x_layout, &w_layout, self.padding)?;
            let out = match (s1, s2) {
                (CpuStorage::F32(gy), CpuStorage::F32(x)) => CpuStorage::F32(backward_weight(slice(x, l2, "input")?, slice(gy, l1, "gradient")?, &g)),
                (CpuStorage::F64(gy), CpuStorage::F64(x)) => CpuStorage::F64(backward_weight(slice(x, l2, "input")?, slice(gy, l1, "gradient")?, &g)),
                _ => candle_core::bail!("conv2d backward: only f32 and f64"),
            };
            Ok((out, Shape::from((cout, c, kh, kw))))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::conv2d;
    use candle_core::{Device, Tensor, Var};

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap()
    }

    /// Values and both gradients against candle's plain conv2d, on odd sizes too.
    #[test]
    fn matches_candle_conv2d_values_and_gradients() {
        for &(n, c, h, w, cout, k, pad) in &[
            (1, 1, 3, 3, 2, 3, 1),
            (2, 3, 7, 7, 4, 3, 1),
            (5, 2, 8, 5, 3, 3, 1),
            (3, 4, 6, 6, 2, 3, 0),
            (1, 2, 5, 5, 3, 1, 0),
            (7, 5, 4, 6, 3, 1, 0),
            (9, 3, 28, 28, 8, 3, 1),
        ] {
            let x = Var::from_tensor(&Tensor::randn(0f64, 1.0, (n, c, h, w), &Device::Cpu).unwrap()).unwrap();
            let wt = Var::from_tensor(&Tensor::randn(0f64, 1.0, (cout, c, k, k), &Device::Cpu).unwrap()).unwrap();
            let fast = conv2d(x.as_tensor(), wt.as_tensor(), pad).unwrap();
            let plain = x.as_tensor().conv2d(wt.as_tensor(), pad, 1, 1, 1).unwrap();
            assert_eq!(fast.dims(), plain.dims());
            assert!(max_diff(&fast, &plain) < 1e-10, "values {n} {c} {h} {w}");
            let r = Tensor::randn(0f64, 1.0, plain.dims(), &Device::Cpu).unwrap();
            let gf = (&fast * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let gp = (&plain * &r).unwrap().sum_all().unwrap().backward().unwrap();
            for v in [&x, &wt] {
                let (a, b) = (gf.get(v.as_tensor()).unwrap(), gp.get(v.as_tensor()).unwrap());
                assert!(max_diff(a, b) < 1e-9, "gradient {:?} for {n} {c} {h} {w}", v.dims());
            }
        }
    }

    #[test]
    fn f32_matches_too() {
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (4, 3, 9, 9), &Device::Cpu).unwrap()).unwrap();
        let w = Tensor::randn(0f32, 1.0, (5, 3, 3, 3), &Device::Cpu).unwrap();
        let fast = conv2d(x.as_tensor(), &w, 1).unwrap();
        let plain = x.as_tensor().conv2d(&w, 1, 1, 1, 1).unwrap();
        let d = (fast - plain).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(d < 1e-4, "{d}");
    }

    /// Both ways of sharing the work (per-image chunks with a cross-thread sum of the
    /// weight gradient, or threads inside each GEMM) are chosen from the thread count:
    /// pin it to 1, 2 and 8 threads, with batches below and above twice the thread count,
    /// so every path is checked on every machine, in f32 (as training runs) and f64.
    #[test]
    fn every_thread_layout_gives_candles_values_and_gradients_in_f32_and_f64() {
        use candle_core::DType;
        for threads in [1, 2, 8] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                // 3x3 (im2col) and 1x1 (the image as its own columns).
                let cases = [1, 2 * threads + 1]
                    .into_iter()
                    .flat_map(|n| [DType::F32, DType::F64].into_iter().flat_map(move |d| [(3, 1), (1, 0)].map(|kp| (n, d, kp))));
                for (n, dtype, (k, pad)) in cases {
                    let x = Var::from_tensor(&Tensor::randn(0f64, 1.0, (n, 3, 9, 7), &Device::Cpu).unwrap().to_dtype(dtype).unwrap()).unwrap();
                    let wt = Var::from_tensor(&Tensor::randn(0f64, 1.0, (4, 3, k, k), &Device::Cpu).unwrap().to_dtype(dtype).unwrap()).unwrap();
                    let fast = conv2d(x.as_tensor(), wt.as_tensor(), pad).unwrap();
                    let plain = x.as_tensor().conv2d(wt.as_tensor(), pad, 1, 1, 1).unwrap();
                    let r = Tensor::randn(0f64, 1.0, plain.dims(), &Device::Cpu).unwrap().to_dtype(dtype).unwrap();
                    let gf = (&fast * &r).unwrap().sum_all().unwrap().backward().unwrap();
                    let gp = (&plain * &r).unwrap().sum_all().unwrap().backward().unwrap();
                    // Relative to the largest value: 1e-5 in f32 (a real bug is O(1)), 1e-12 in f64.
                    let tol = if dtype == DType::F32 { 1e-5 } else { 1e-12 };
                    let rel = |a: &Tensor, b: &Tensor| {
                        let (a, b) = (a.to_dtype(DType::F64).unwrap(), b.to_dtype(DType::F64).unwrap());
                        max_diff(&a, &b) / b.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap().max(1e-30)
                    };
                    assert!(rel(&fast, &plain) < tol, "values, {threads} threads, n={n}, {dtype:?}, {k}x{k}");
                    for (what, v) in [("input", &x), ("weight", &wt)] {
                        let e = rel(gf.get(v.as_tensor()).unwrap(), gp.get(v.as_tensor()).unwrap());
                        assert!(e < tol, "{what} gradient, {threads} threads, n={n}, {dtype:?}, {k}x{k}: {e}");
                    }
                }
            });
        }
    }
}
