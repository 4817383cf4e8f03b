//! 2-D convolution (zero padding, optional stride, bias and clamp) for the CPU as candle
//! custom ops, each pass through GEMMs (the `gemm` crate, which candle also uses):
//! - 3x3 kernels with stride 1 and at least 16 input channels (Conv-4's inner layers) run
//!   all three passes through Winograd's F(2x2, 3x3) ([`winograd`]): 16 multiplications
//!   per 2x2 outputs instead of 36;
//! - 1x1 kernels read the image as its own column matrix; the rest use im2col per image.
//!
//! candle 0.11 computes the input gradient with a direct `conv_transpose2d` loop that does
//! not use GEMM. Work is split over images across rayon's threads, each with its own
//! buffers; the kernel gradient is summed per thread and then reduced. Columns and tiles
//! are recomputed in the backward pass rather than stored.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor, WithDType};
use gemm::{gemm, Parallelism};
use rayon::prelude::*;

use super::winograd::{self, Tiling};
use crate::error::Result;

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

/// `clamp(conv2d(x, w) + bias[c])` with stride `stride`: [`conv2d`] with a stride, a
/// per-output-channel bias and an optional clamp applied in the same pass, block by block while the output is in cache
/// (BatchNorm on running statistics, with its scale folded into `w`, then ReLU6). `bias`
/// has `Cout` values. On the CPU one custom op with its own backward pass (gradients for
/// `x`, `w` and `bias`); elsewhere candle's operations.
///
/// ```
/// use candle_core::{Device, Tensor};
/// let x = Tensor::randn(0f32, 1., (2, 3, 5, 5), &Device::Cpu)?;
/// let w = Tensor::randn(0f32, 1., (4, 3, 1, 1), &Device::Cpu)?;
/// let b = Tensor::new(&[0f32, 1., -1., 2.], &Device::Cpu)?;
/// let fast = protonet::ops::conv2d_bias(&x, &w, &b, 1, 0, Some((0.0, 6.0)))?;
/// let plain = x.conv2d(&w, 0, 1, 1, 1)?.broadcast_add(&b.reshape((1, 4, 1, 1))?)?.clamp(0f32, 6f32)?;
/// assert!((fast - plain)?.abs()?.max_all()?.to_scalar::<f32>()? < 1e-5);
/// # Ok::<(), protonet::Error>(())
/// ```
pub fn conv2d_bias(x: &Tensor, w: &Tensor, bias: &Tensor, stride: usize, padding: usize, clamp: Option<(f32, f32)>) -> Result<Tensor> {
    if x.device().is_cpu() {
        Ok(x.contiguous()?.apply_op3(&w.contiguous()?, &bias.contiguous()?, Conv2dBias { padding, stride, clamp })?)
    } else {
        conv2d_bias_portable(x, w, bias, stride, padding, clamp)
    }
}

/// `maxpool2x2(relu(conv2d(x, w) + bias[c]))` with stride 1: a Conv-4 block in
/// evaluation mode, with BatchNorm's running statistics folded into `w` and `bias`. On the
/// CPU the convolution is pooled while it is in cache, a few images at a time, so the
/// full-size output is never stored; its backward pass recomputes the convolution.
/// Elsewhere, [`conv2d_bias_relu_pool_portable`].
///
/// ```
/// use candle_core::{Device, Tensor};
/// let x = Tensor::randn(0f32, 1., (2, 16, 6, 7), &Device::Cpu)?;
/// let w = Tensor::randn(0f32, 0.1, (4, 16, 3, 3), &Device::Cpu)?;
/// let b = Tensor::new(&[0f32, 0.5, -0.5, 1.], &Device::Cpu)?;
/// let fast = protonet::ops::conv2d_bias_relu_pool(&x, &w, &b, 1)?;
/// let portable = protonet::ops::conv2d_bias_relu_pool_portable(&x, &w, &b, 1)?;
/// assert_eq!(fast.dims(), &[2, 4, 3, 3]);
/// assert!((fast - portable)?.abs()?.max_all()?.to_scalar::<f32>()? < 1e-5);
/// # Ok::<(), protonet::Error>(())
/// ```
pub fn conv2d_bias_relu_pool(x: &Tensor, w: &Tensor, bias: &Tensor, padding: usize) -> Result<Tensor> {
    if x.device().is_cpu() {
        Ok(x.contiguous()?.apply_op3(&w.contiguous()?, &bias.contiguous()?, Conv2dBiasReluPool { padding })?)
    } else {
        conv2d_bias_relu_pool_portable(x, w, bias, padding)
    }
}

/// [`conv2d_bias_relu_pool`] from operations that run on every device: candle's `conv2d`,
/// a broadcast bias add, ReLU and [`super::max_pool2x2_portable`].
///
/// ```
/// use candle_core::{Device, Tensor};
/// let x = Tensor::randn(0f32, 1., (1, 2, 4, 4), &Device::Cpu)?;
/// let (w, b) = (Tensor::randn(0f32, 1., (3, 2, 3, 3), &Device::Cpu)?, Tensor::zeros(3, candle_core::DType::F32, &Device::Cpu)?);
/// assert_eq!(protonet::ops::conv2d_bias_relu_pool_portable(&x, &w, &b, 1)?.dims(), &[1, 3, 2, 2]);
/// # Ok::<(), protonet::Error>(())
/// ```
pub fn conv2d_bias_relu_pool_portable(x: &Tensor, w: &Tensor, bias: &Tensor, padding: usize) -> Result<Tensor> {
    let y = x.conv2d(w, padding, 1, 1, 1)?.broadcast_add(&bias.reshape((1, bias.elem_count(), 1, 1))?)?;
    super::max_pool2x2_portable(&y.relu()?)
}

/// [`conv2d_bias`] from candle's operations (what runs off the CPU): candle's `conv2d`,
/// a broadcast bias add and a clamp.
///
/// ```
/// use candle_core::{Device, Tensor};
/// let x = Tensor::randn(0f32, 1., (2, 3, 7, 7), &Device::Cpu)?;
/// let (w, b) = (Tensor::randn(0f32, 1., (4, 3, 3, 3), &Device::Cpu)?, Tensor::ones(4, candle_core::DType::F32, &Device::Cpu)?);
/// let portable = protonet::ops::conv2d_bias_portable(&x, &w, &b, 2, 1, None)?;
/// let fast = protonet::ops::conv2d_bias(&x, &w, &b, 2, 1, None)?;
/// assert!((portable - fast)?.abs()?.max_all()?.to_scalar::<f32>()? < 1e-4);
/// # Ok::<(), protonet::Error>(())
/// ```
pub fn conv2d_bias_portable(x: &Tensor, w: &Tensor, bias: &Tensor, stride: usize, padding: usize, clamp: Option<(f32, f32)>) -> Result<Tensor> {
    super::epilogue::portable(&x.conv2d(w, padding, stride, 1, 1)?, bias, clamp)
}

#[derive(Clone, Copy, Debug)]
pub(super) struct Geometry {
    pub(super) n: usize,
    c: usize,
    h: usize,
    w: usize,
    pub(super) cout: usize,
    kh: usize,
    kw: usize,
    pad: usize,
    stride: usize,
    pub(super) oh: usize,
    pub(super) ow: usize,
}

impl Geometry {
    pub(super) fn new(x: &Layout, w: &Layout, pad: usize, stride: usize) -> candle_core::Result<Self> {
        let (n, c, h, wd) = x.shape().dims4()?;
        let (cout, c2, kh, kw) = w.shape().dims4()?;
        if c != c2 {
            candle_core::bail!("conv2d: input has {c} channels, kernel expects {c2}");
        }
        if h + 2 * pad < kh || wd + 2 * pad < kw {
            candle_core::bail!("conv2d: kernel {kh}x{kw} larger than padded input {h}x{wd}");
        }
        if stride == 0 {
            candle_core::bail!("conv2d: stride 0");
        }
        Ok(Self { n, c, h, w: wd, cout, kh, kw, pad, stride, oh: (h + 2 * pad - kh) / stride + 1, ow: (wd + 2 * pad - kw) / stride + 1 })
    }
    fn k(&self) -> usize {
        self.c * self.kh * self.kw
    }
    /// A 1x1 convolution without padding: the image (C x H*W) is its own column matrix,
    /// so the GEMMs read and write it directly, without im2col.
    fn pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.pad == 0 && self.stride == 1
    }
    fn p(&self) -> usize {
        self.oh * self.ow
    }
    /// Whether all three passes run through Winograd's F(2x2, 3x3) ([`winograd`]).
    fn winograd(&self) -> bool {
        self.kh == 3 && self.kw == 3 && self.stride == 1 && self.pad <= 2 && self.c >= WINOGRAD_MIN_CHANNELS
    }
    /// The Winograd tiles of the forward pass (and of the kernel gradient).
    fn tiling(&self) -> Tiling {
        Tiling::new(self.c, self.h, self.w, self.pad, self.cout)
    }
    fn in_len(&self) -> usize {
        self.c * self.h * self.w
    }
    fn out_len(&self) -> usize {
        self.cout * self.p()
    }
}

/// The output columns `ox` whose input column `ox * stride + kx - pad` lies in `0..w`.
#[inline(always)]
fn valid_columns(g: &Geometry, kx: usize) -> std::ops::Range<usize> {
    let lo = g.pad.saturating_sub(kx).div_ceil(g.stride).min(g.ow);
    let hi = if g.pad + g.w > kx { (g.pad + g.w - kx).div_ceil(g.stride).min(g.ow) } else { 0 };
    lo..hi.max(lo)
}

vectorized! {
/// Fills `cols` (K x P, row-major) from one image (C x H x W).
fn im2col<T: WithDType>(img: &[T], g: &Geometry, cols: &mut [T]) {
    let p = g.p();
    for c in 0..g.c {
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                let row = &mut cols[((c * g.kh + ky) * g.kw + kx) * p..][..p];
                let valid = valid_columns(g, kx);
                for oy in 0..g.oh {
                    let iy = (oy * g.stride + ky) as isize - g.pad as isize;
                    let dst = &mut row[oy * g.ow..(oy + 1) * g.ow];
                    if iy < 0 || iy >= g.h as isize || valid.is_empty() {
                        dst.fill(T::zero());
                        continue;
                    }
                    let src = &img[(c * g.h + iy as usize) * g.w..][..g.w];
                    dst[..valid.start].fill(T::zero());
                    dst[valid.end..].fill(T::zero());
                    let first = valid.start * g.stride + kx - g.pad;
                    if g.stride == 1 {
                        dst[valid.clone()].copy_from_slice(&src[first..first + valid.len()]);
                    } else {
                        for (d, &v) in dst[valid.clone()].iter_mut().zip(src[first..].iter().step_by(g.stride)) {
                            *d = v;
                        }
                    }
                }
            }
        }
    }
}
}

vectorized! {
/// Adds the columns `cols` (K x P) back into one image gradient (C x H x W).
fn col2im_add<T: WithDType>(cols: &[T], g: &Geometry, img: &mut [T]) {
    let p = g.p();
    for c in 0..g.c {
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                let row = &cols[((c * g.kh + ky) * g.kw + kx) * p..][..p];
                let valid = valid_columns(g, kx);
                if valid.is_empty() {
                    continue;
                }
                let first = valid.start * g.stride + kx - g.pad;
                for oy in 0..g.oh {
                    let iy = (oy * g.stride + ky) as isize - g.pad as isize;
                    if iy < 0 || iy >= g.h as isize {
                        continue;
                    }
                    let dst = &mut img[(c * g.h + iy as usize) * g.w..][..g.w];
                    let src = &row[oy * g.ow..(oy + 1) * g.ow][valid.clone()];
                    if g.stride == 1 {
                        for (d, &v) in dst[first..first + valid.len()].iter_mut().zip(src) {
                            *d += v;
                        }
                    } else {
                        for (d, &v) in dst[first..].iter_mut().step_by(g.stride).zip(src) {
                            *d += v;
                        }
                    }
                }
            }
        }
    }
}
}

/// `dst (m x n) = [dst +] a (m x k) * b (k x n)`, each with explicit strides: `dst` rows
/// `dst_rs` apart (a block of columns of a wider output when `dst_rs > n`), `a` and `b`
/// with (row, column) strides.
fn matmul<T: WithDType>(
    (m, n, k): (usize, usize, usize),
    (dst, dst_rs): (&mut [T], usize),
    accumulate: bool,
    (a, a_rs, a_cs): (&[T], usize, usize),
    (b, b_rs, b_cs): (&[T], usize, usize),
    par: Parallelism,
) {
    // The last element each operand is read or written at, so that the GEMM stays inside
    // the slices whatever the strides.
    let last = |rows: usize, cols: usize, rs: usize, cs: usize| (rows > 0 && cols > 0).then(|| (rows - 1) * rs + (cols - 1) * cs);
    assert!(last(m, n, dst_rs, 1).is_none_or(|i| i < dst.len()), "matmul: destination too short");
    assert!(last(m, k, a_rs, a_cs).is_none_or(|i| i < a.len()), "matmul: left operand too short");
    assert!(last(k, n, b_rs, b_cs).is_none_or(|i| i < b.len()), "matmul: right operand too short");
    // SAFETY: the asserts keep every strided access inside its slice, and `dst`, borrowed
    // mutably, aliases neither `a` nor `b`.
    unsafe {
        gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
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

/// Output columns per GEMM call, so that a block of the output (`cout` rows) is still in
/// cache when the epilogue runs over it.
fn block_columns(cout: usize, p: usize) -> usize {
    (16384 / cout.max(1)).next_multiple_of(16).clamp(64, p.max(64))
}

/// Input channels from which a 3x3 convolution with stride 1 (and padding at most 2) runs
/// its three passes through Winograd's F(2x2, 3x3) ([`winograd`]).
const WINOGRAD_MIN_CHANNELS: usize = 16;

/// Work buffers kept across calls by one thread's share of a batch, so that they are
/// allocated and zero-filled once rather than for every few images.
struct Scratch<T> {
    a: Vec<T>,
    b: Vec<T>,
}

impl<T: WithDType> Scratch<T> {
    fn new() -> Self {
        Self { a: Vec::new(), b: Vec::new() }
    }

    /// Two buffers of at least `a` and `b` values (their contents are left over from
    /// earlier use).
    fn two(&mut self, a: usize, b: usize) -> (&mut [T], &mut [T]) {
        if self.a.len() < a {
            self.a.resize(a, T::zero());
        }
        if self.b.len() < b {
            self.b.resize(b, T::zero());
        }
        (&mut self.a[..a], &mut self.b[..b])
    }
}

/// `out = conv(images, kernel)` through Winograd tiles, batch by batch of images: `u` is
/// the transformed kernel ([`winograd::transform_kernel`]), `t` the tiling, and the bias and
/// clamp are applied to each output plane once written.
#[allow(clippy::too_many_arguments)]
fn winograd_conv<T: WithDType>(
    images: &[T],
    u: &[T],
    t: &Tiling,
    out: &mut [T],
    bias: Option<&[T]>,
    clamp: Option<(T, T)>,
    par: Parallelism,
    scratch: &mut Scratch<T>,
) {
    let (in_len, p) = (t.c * t.h * t.w, t.oh * t.ow);
    let batch = t.images_per_batch().min(images.len() / in_len.max(1)).max(1);
    let (v, m) = scratch.two(16 * t.c * batch * t.per_image(), 16 * t.rows * batch * t.per_image());
    for (xs, os) in images.chunks(batch * in_len).zip(out.chunks_mut(batch * t.rows * p)) {
        let tiles = xs.len() / in_len * t.per_image();
        let (v, m) = (&mut v[..16 * t.c * tiles], &mut m[..16 * t.rows * tiles]);
        winograd::input_tiles(xs, t, v);
        for xi in 0..16 {
            // M_ξ (rows x tiles) = U_ξ (rows x C) * V_ξ (C x tiles)
            matmul(
                (t.rows, tiles, t.c),
                (&mut m[xi * t.rows * tiles..], tiles),
                false,
                (&u[xi * t.rows * t.c..], t.c, 1),
                (&v[xi * t.c * tiles..], tiles, 1),
                par,
            );
        }
        winograd::output_tiles(m, t, os);
        if let Some(b) = bias {
            for (plane, &bv) in os.chunks_exact_mut(p).zip(b.iter().cycle()) {
                super::epilogue::apply_run(plane, bv, clamp);
            }
        }
    }
}

/// The transformed kernel gradient `dU` (`[ξ][Cout][C]`, see [`winograd`]) of `images`
/// and their output gradient `grad`, summed over the images.
fn winograd_kernel_gradient<T: WithDType>(images: &[T], grad: &[T], t: &Tiling, par: Parallelism) -> Vec<T> {
    let (in_len, out_len) = (t.c * t.h * t.w, t.rows * t.oh * t.ow);
    let batch = t.images_per_batch().min(images.len() / in_len.max(1)).max(1);
    let mut v = vec![T::zero(); 16 * t.c * batch * t.per_image()];
    let mut dm = vec![T::zero(); 16 * t.rows * batch * t.per_image()];
    let mut du = vec![T::zero(); 16 * t.rows * t.c];
    for (xs, gs) in images.chunks(batch * in_len).zip(grad.chunks(batch * out_len)) {
        let tiles = xs.len() / in_len * t.per_image();
        let (v, dm) = (&mut v[..16 * t.c * tiles], &mut dm[..16 * t.rows * tiles]);
        winograd::input_tiles(xs, t, v);
        winograd::gradient_tiles(gs, t, dm);
        for xi in 0..16 {
            // dU_ξ (Cout x C) += dM_ξ (Cout x tiles) * V_ξᵀ (tiles x C)
            matmul(
                (t.rows, t.c, tiles),
                (&mut du[xi * t.rows * t.c..], t.c),
                true,
                (&dm[xi * t.rows * tiles..], tiles, 1),
                (&v[xi * t.c * tiles..], 1, tiles),
                par,
            );
        }
    }
    du
}

pub(super) fn forward<T: WithDType + Send + Sync>(x: &[T], w: &[T], g: &Geometry, bias: Option<&[T]>, clamp: Option<(T, T)>) -> Vec<T> {
    let mut out = vec![T::zero(); g.n * g.out_len()];
    let (chunks, par) = plan(g.n);
    let per = chunk_len(g.n, chunks);
    let kernel = g.winograd().then(|| winograd::transform_kernel(w, g.cout, g.c, false));
    out.par_chunks_mut(per * g.out_len()).zip(x.par_chunks(per * g.in_len())).for_each(|(o, xs)| {
        convolve(xs, w, kernel.as_deref(), g, o, bias, clamp, par, &mut Scratch::new());
    });
    out
}

/// The convolution of the images `xs` into `out`, with the bias and clamp applied; `kernel`
/// is the Winograd-transformed kernel when the geometry takes that path.
#[allow(clippy::too_many_arguments)]
fn convolve<T: WithDType>(
    xs: &[T],
    w: &[T],
    kernel: Option<&[T]>,
    g: &Geometry,
    out: &mut [T],
    bias: Option<&[T]>,
    clamp: Option<(T, T)>,
    par: Parallelism,
    scratch: &mut Scratch<T>,
) {
    if let Some(u) = kernel {
        return winograd_conv(xs, u, &g.tiling(), out, bias, clamp, par, scratch);
    }
    let (k, p) = (g.k(), g.p());
    let block = if bias.is_some() { block_columns(g.cout, p) } else { p };
    let mut cols = vec![T::zero(); if g.pointwise() { 0 } else { k * p }];
    for (oi, xi) in out.chunks_mut(g.out_len()).zip(xs.chunks(g.in_len())) {
        let cols = if g.pointwise() {
            xi
        } else {
            im2col(xi, g, &mut cols);
            &cols
        };
        for start in (0..p).step_by(block) {
            let width = block.min(p - start);
            // out[:, block] (Cout x width) = W (Cout x K) * cols[:, block] (K x width)
            matmul((g.cout, width, k), (&mut oi[start..], p), false, (w, k, 1), (&cols[start..], p, 1), par);
            if let Some(b) = bias {
                for (co, &bv) in b.iter().enumerate() {
                    let run = &mut oi[co * p + start..][..width];
                    super::epilogue::apply_run(run, bv, clamp);
                }
            }
        }
    }
}

/// `maxpool2x2(relu(conv(x, w) + bias))`: a few images at a time are convolved into a
/// buffer that stays in cache, then pooled from it with the bias and ReLU, so that the
/// full-size output is never written.
fn forward_pooled<T: WithDType + Send + Sync>(x: &[T], w: &[T], g: &Geometry, bias: &[T]) -> Vec<T> {
    let pooled = g.cout * (g.oh / 2) * (g.ow / 2);
    let mut out = vec![T::zero(); g.n * pooled];
    let (chunks, par) = plan(g.n);
    let per = chunk_len(g.n, chunks);
    let kernel = g.winograd().then(|| winograd::transform_kernel(w, g.cout, g.c, false));
    // About 512 KiB of f32 convolution output per batch.
    let batch = (131072 / g.out_len().max(1)).max(1);
    out.par_chunks_mut(per * pooled).zip(x.par_chunks(per * g.in_len())).for_each(|(o, xs)| {
        let mut full = vec![T::zero(); batch.min(per) * g.out_len()];
        let mut scratch = Scratch::new();
        for (ob, xb) in o.chunks_mut(batch * pooled).zip(xs.chunks(batch * g.in_len())) {
            let full = &mut full[..xb.len() / g.in_len() * g.out_len()];
            convolve(xb, w, kernel.as_deref(), g, full, None, None, par, &mut scratch);
            for (k, (src, dst)) in full.chunks_exact(g.p()).zip(ob.chunks_exact_mut(pooled / g.cout)).enumerate() {
                super::fused::pool_plane(src, g.ow, T::one(), bias[k % g.cout], dst);
            }
        }
    });
    out
}

fn backward_input<T: WithDType + Send + Sync>(gy: &[T], w: &[T], g: &Geometry) -> Vec<T> {
    let (k, p) = (g.k(), g.p());
    let mut dx = vec![T::zero(); g.n * g.in_len()];
    let (chunks, par) = plan(g.n);
    let per = chunk_len(g.n, chunks);
    // The input gradient of a 3x3 convolution with padding `pad` is a 3x3 convolution of the
    // output gradient, padded by `2 - pad`, with the kernel rotated and transposed.
    let kernel = g.winograd().then(|| (winograd::transform_kernel(w, g.cout, g.c, true), Tiling::new(g.cout, g.oh, g.ow, 2 - g.pad, g.c)));
    dx.par_chunks_mut(per * g.in_len()).zip(gy.par_chunks(per * g.out_len())).for_each(|(d, gs)| {
        if let Some((u, tiling)) = &kernel {
            winograd_conv(gs, u, tiling, d, None, None, par, &mut Scratch::new());
            return;
        }
        let mut cols = vec![T::zero(); if g.pointwise() { 0 } else { k * p }];
        for (di, gi) in d.chunks_mut(g.in_len()).zip(gs.chunks(g.out_len())) {
            // dcols (K x P) = W^T (K x Cout) * gy (Cout x P)
            if g.pointwise() {
                matmul((k, p, g.cout), (di, p), false, (w, 1, k), (gi, p, 1), par);
            } else {
                matmul((k, p, g.cout), (&mut cols, p), false, (w, 1, k), (gi, p, 1), par);
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
            if g.winograd() {
                return winograd_kernel_gradient(xs, gs, &g.tiling(), par);
            }
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
                matmul((g.cout, k, p), (&mut dw, k), true, (gi, p, 1), (cols, 1, p), par);
            }
            dw
        })
        .collect();
    let mut sum = vec![T::zero(); if g.winograd() { 16 * g.cout * g.c } else { g.cout * k }];
    for part in partial {
        for (a, b) in sum.iter_mut().zip(part) {
            *a += b;
        }
    }
    if g.winograd() {
        winograd::kernel_gradient(&sum, g.cout, g.c)
    } else {
        sum
    }
}

pub(super) fn slice<'a, T>(data: &'a [T], l: &Layout, what: &str) -> candle_core::Result<&'a [T]> {
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
        let g = Geometry::new(l1, l2, self.padding, 1)?;
        let out = match (s1, s2) {
            (CpuStorage::F32(x), CpuStorage::F32(w)) => CpuStorage::F32(forward(slice(x, l1, "input")?, slice(w, l2, "kernel")?, &g, None, None)),
            (CpuStorage::F64(x), CpuStorage::F64(w)) => CpuStorage::F64(forward(slice(x, l1, "input")?, slice(w, l2, "kernel")?, &g, None, None)),
            _ => candle_core::bail!("conv2d: only f32 and f64 inputs of the same dtype"),
        };
        Ok((out, Shape::from((g.n, g.cout, g.oh, g.ow))))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let (dx, dw) = ConvGrad::both(x, w, &grad, self.padding, 1)?;
        Ok((dx, Some(dw)))
    }
}

struct Conv2dBias {
    padding: usize,
    stride: usize,
    clamp: Option<(f32, f32)>,
}

impl CustomOp3 for Conv2dBias {
    fn name(&self) -> &'static str {
        "protonet-conv2d-bias"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = Geometry::new(l1, l2, self.padding, self.stride)?;
        if l3.dims() != [g.cout] {
            candle_core::bail!("conv2d: bias {:?} must have {} values (the kernel's output channels)", l3.dims(), g.cout);
        }
        let clamp = self.clamp;
        let out = match (s1, s2, s3) {
            (CpuStorage::F32(x), CpuStorage::F32(w), CpuStorage::F32(b)) => {
                CpuStorage::F32(forward(slice(x, l1, "input")?, slice(w, l2, "kernel")?, &g, Some(slice(b, l3, "bias")?), super::epilogue::bounds(clamp)))
            }
            (CpuStorage::F64(x), CpuStorage::F64(w), CpuStorage::F64(b)) => {
                CpuStorage::F64(forward(slice(x, l1, "input")?, slice(w, l2, "kernel")?, &g, Some(slice(b, l3, "bias")?), super::epilogue::bounds(clamp)))
            }
            _ => candle_core::bail!("conv2d: only f32 and f64 inputs of the same dtype"),
        };
        Ok((out, Shape::from((g.n, g.cout, g.oh, g.ow))))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _b: &Tensor, y: &Tensor, grad: &Tensor) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (grad, db) = super::epilogue::backward(grad, y, self.clamp)?;
        let (dx, dw) = ConvGrad::both(x, w, &grad, self.padding, self.stride)?;
        Ok((dx, Some(dw), Some(db)))
    }
}

struct Conv2dBiasReluPool {
    padding: usize,
}

impl CustomOp3 for Conv2dBiasReluPool {
    fn name(&self) -> &'static str {
        "protonet-conv2d-bias-relu-pool"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = Geometry::new(l1, l2, self.padding, 1)?;
        if l3.dims() != [g.cout] {
            candle_core::bail!("conv2d: bias {:?} must have {} values (the kernel's output channels)", l3.dims(), g.cout);
        }
        if g.oh < 2 || g.ow < 2 {
            candle_core::bail!("conv2d: a {}x{} output is too small for a 2x2 pool", g.oh, g.ow);
        }
        let out = match (s1, s2, s3) {
            (CpuStorage::F32(x), CpuStorage::F32(w), CpuStorage::F32(b)) => {
                CpuStorage::F32(forward_pooled(slice(x, l1, "input")?, slice(w, l2, "kernel")?, &g, slice(b, l3, "bias")?))
            }
            (CpuStorage::F64(x), CpuStorage::F64(w), CpuStorage::F64(b)) => {
                CpuStorage::F64(forward_pooled(slice(x, l1, "input")?, slice(w, l2, "kernel")?, &g, slice(b, l3, "bias")?))
            }
            _ => candle_core::bail!("conv2d: only f32 and f64 inputs of the same dtype"),
        };
        Ok((out, Shape::from((g.n, g.cout, g.oh / 2, g.ow / 2))))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, b: &Tensor, _y: &Tensor, grad: &Tensor) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // The convolution again, then the gradient of the pooled ReLU of `y + bias`.
        let y = x.apply_op2_no_bwd(w, &Conv2d { padding: self.padding })?;
        let shift = b.to_dtype(candle_core::DType::F64)?.to_vec1::<f64>()?;
        let op = super::fused::AffineReluPoolGrad { scale: vec![1.0; shift.len()], shift };
        let dy = y.apply_op2_no_bwd(&grad.contiguous()?, &op)?;
        let (dx, dw) = ConvGrad::both(x, w, &dy, self.padding, 1)?;
        Ok((dx, Some(dw), Some(dy.sum((0, 2, 3))?)))
    }
}

/// A gradient of [`Conv2d`]: `(grad of output, kernel) -> grad of input` when `input`,
/// else `(grad of output, input) -> grad of kernel`.
pub(super) struct ConvGrad {
    padding: usize,
    stride: usize,
    input: bool,
    x_dims: (usize, usize, usize, usize),
    k_dims: (usize, usize),
}

impl ConvGrad {
    /// The input's gradient (when `x` needs one) and the kernel's, from the output's `grad`.
    pub(super) fn both(x: &Tensor, w: &Tensor, grad: &Tensor, padding: usize, stride: usize) -> candle_core::Result<(Option<Tensor>, Tensor)> {
        let (x_dims, (_, _, kh, kw)) = (x.dims4()?, w.dims4()?);
        let op = |input| ConvGrad { padding, stride, input, x_dims, k_dims: (kh, kw) };
        let dx = if x.track_op() { Some(grad.apply_op2_no_bwd(w, &op(true))?) } else { None };
        Ok((dx, grad.apply_op2_no_bwd(x, &op(false))?))
    }
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
            let g = Geometry::new(&x_layout, l2, self.padding, self.stride)?;
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
            let (kh, kw) = self.k_dims;
            let w_layout = Layout::contiguous((cout, c, kh, kw));
            let g = Geometry::new(&x_layout, &w_layout, self.padding, self.stride)?;
            if gn != n || l1.dims() != [n, cout, g.oh, g.ow] {
                candle_core::bail!("conv2d backward: gradient shape {:?} does not fit", l1.shape());
            }
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
    use super::super::testing::{max_diff, relative_diff as rel};
    use super::conv2d;
    use candle_core::{Device, Tensor, Var};

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
            // 16 channels or more: Winograd for 3x3, im2col for 5x5.
            (3, 16, 7, 9, 5, 3, 1),
            (1, 20, 5, 5, 3, 3, 0),
            (2, 16, 6, 6, 4, 5, 2),
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
                // 3 channels (im2col) and 16 (Winograd for 3x3).
                for ((n, dtype, (k, pad)), c) in cases.flat_map(|case| [(case, 3), (case, 16)]) {
                    let x = Var::from_tensor(&Tensor::randn(0f64, 1.0, (n, c, 9, 7), &Device::Cpu).unwrap().to_dtype(dtype).unwrap()).unwrap();
                    let wt = Var::from_tensor(&Tensor::randn(0f64, 1.0, (4, c, k, k), &Device::Cpu).unwrap().to_dtype(dtype).unwrap()).unwrap();
                    let fast = conv2d(x.as_tensor(), wt.as_tensor(), pad).unwrap();
                    let plain = x.as_tensor().conv2d(wt.as_tensor(), pad, 1, 1, 1).unwrap();
                    let r = Tensor::randn(0f64, 1.0, plain.dims(), &Device::Cpu).unwrap().to_dtype(dtype).unwrap();
                    let gf = (&fast * &r).unwrap().sum_all().unwrap().backward().unwrap();
                    let gp = (&plain * &r).unwrap().sum_all().unwrap().backward().unwrap();
                    // Relative to the largest value: 1e-5 in f32 (a real bug is O(1)), 1e-12 in f64.
                    let tol = if dtype == DType::F32 { 1e-5 } else { 1e-12 };
                    assert!(rel(&fast, &plain) < tol, "values, {threads} threads, n={n}, {dtype:?}, {k}x{k}");
                    for (what, v) in [("input", &x), ("weight", &wt)] {
                        let e = rel(gf.get(v.as_tensor()).unwrap(), gp.get(v.as_tensor()).unwrap());
                        assert!(e < tol, "{what} gradient, {threads} threads, n={n}, {dtype:?}, {k}x{k}: {e}");
                    }
                }
            });
        }
    }

    /// [`conv2d_bias`] against candle's convolution, bias add and clamp: values and the
    /// gradients of input, kernel and bias, f32 and f64, 1x1 and 3x3, strides 1 and 2, with
    /// and without the clamp, batch 1, and outputs wide enough to be split into several column blocks; the
    /// bias gradient also against finite differences.
    #[test]
    fn conv2d_bias_matches_the_plain_ops_and_finite_differences() {
        use super::conv2d_bias;
        use candle_core::DType;
        let dev = Device::Cpu;
        for dtype in [DType::F64, DType::F32] {
            for &(n, c, h, w, cout, k, pad, stride, clamp) in &[
                (1, 3, 9, 9, 300, 1, 0, 1, Some((0f32, 6f32))),
                (3, 5, 7, 6, 4, 1, 0, 1, None),
                (2, 3, 6, 5, 7, 3, 1, 1, Some((-0.5, 1.0))),
                (1, 16, 12, 12, 24, 1, 0, 1, Some((0.0, 6.0))),
                (2, 17, 6, 5, 4, 3, 1, 1, Some((0.0, 6.0))),
                // Strided: sizes where candle's own input gradient has the input's shape.
                (2, 3, 11, 13, 8, 3, 0, 2, Some((0.0, 6.0))),
                (5, 2, 9, 9, 3, 3, 1, 2, None),
                (1, 4, 9, 7, 5, 1, 0, 2, None),
            ] {
                let x = Var::from_tensor(&Tensor::randn(0f64, 1.0, (n, c, h, w), &dev).unwrap().to_dtype(dtype).unwrap()).unwrap();
                let wt = Var::from_tensor(&Tensor::randn(0f64, 1.0, (cout, c, k, k), &dev).unwrap().to_dtype(dtype).unwrap()).unwrap();
                let b = Var::from_tensor(&Tensor::randn(0f64, 1.0, cout, &dev).unwrap().to_dtype(dtype).unwrap()).unwrap();
                let fast = conv2d_bias(x.as_tensor(), wt.as_tensor(), b.as_tensor(), stride, pad, clamp).unwrap();
                // The path off the CPU is the reference: candle's conv2d, bias add and clamp.
                let plain = super::conv2d_bias_portable(x.as_tensor(), wt.as_tensor(), b.as_tensor(), stride, pad, clamp).unwrap();
                let tol = if dtype == DType::F32 { 1e-5 } else { 1e-12 };
                assert!(rel(&fast, &plain) < tol, "values {dtype:?} {n} {c} {h} {w} {cout} {k}");
                let r = Tensor::randn(0f64, 1.0, plain.dims(), &dev).unwrap().to_dtype(dtype).unwrap();
                let gf = (&fast * &r).unwrap().sum_all().unwrap().backward().unwrap();
                let gp = (&plain * &r).unwrap().sum_all().unwrap().backward().unwrap();
                for (what, v) in [("input", &x), ("kernel", &wt), ("bias", &b)] {
                    let e = rel(gf.get(v.as_tensor()).unwrap(), gp.get(v.as_tensor()).unwrap());
                    assert!(e < tol * 10.0, "{what} gradient {dtype:?} {n} {c} {h} {w} {cout} {k}: {e}");
                }
                if dtype == DType::F64 {
                    let g = gf.get(b.as_tensor()).unwrap().to_vec1::<f64>().unwrap();
                    let base = b.as_tensor().to_vec1::<f64>().unwrap();
                    for i in (0..cout).step_by(37) {
                        let at = |d: f64| {
                            let mut v = base.clone();
                            v[i] += d;
                            let bt = Tensor::new(v, &dev).unwrap();
                            (conv2d_bias(x.as_tensor(), wt.as_tensor(), &bt, stride, pad, clamp).unwrap() * &r)
                                .unwrap()
                                .sum_all()
                                .unwrap()
                                .to_scalar::<f64>()
                                .unwrap()
                        };
                        let fd = (at(1e-6) - at(-1e-6)) / 2e-6;
                        assert!((fd - g[i]).abs() < 1e-5 * (1.0 + fd.abs()), "bias [{i}]: {} vs {fd}", g[i]);
                    }
                }
            }
        }
    }
    /// [`conv2d_bias_relu_pool`] against its portable composition: values and the gradients
    /// of input, kernel and bias, in f64 and f32, through each convolution path (im2col for
    /// 1 channel, Winograd for 16 and 3x3, im2col for 5x5, the image as its own
    /// columns for 1x1), odd sides (the pool drops the last row and column), batch 1, and
    /// batches larger than one buffer; the bias gradient also against finite differences.
    #[test]
    fn conv2d_bias_relu_pool_matches_the_portable_ops() {
        use super::{conv2d_bias_relu_pool, conv2d_bias_relu_pool_portable};
        use candle_core::DType;
        let dev = Device::Cpu;
        for dtype in [DType::F64, DType::F32] {
            for &(n, c, h, w, cout, k, pad) in &[
                (3, 1, 28, 28, 8, 3, 1),
                (1, 1, 5, 7, 3, 3, 1),
                (2, 16, 7, 9, 5, 3, 1),
                (40, 16, 14, 14, 64, 3, 1),
                (1, 17, 6, 6, 4, 3, 0),
                (2, 16, 8, 7, 3, 5, 2),
                (3, 4, 5, 6, 2, 1, 0),
            ] {
                let x = Var::from_tensor(&Tensor::randn(0f64, 1.0, (n, c, h, w), &dev).unwrap().to_dtype(dtype).unwrap()).unwrap();
                let wt = Var::from_tensor(&Tensor::randn(0f64, 0.3, (cout, c, k, k), &dev).unwrap().to_dtype(dtype).unwrap()).unwrap();
                let b = Var::from_tensor(&Tensor::randn(0f64, 0.5, cout, &dev).unwrap().to_dtype(dtype).unwrap()).unwrap();
                let fast = conv2d_bias_relu_pool(x.as_tensor(), wt.as_tensor(), b.as_tensor(), pad).unwrap();
                let plain = conv2d_bias_relu_pool_portable(x.as_tensor(), wt.as_tensor(), b.as_tensor(), pad).unwrap();
                assert_eq!(fast.dims(), plain.dims());
                let tol = if dtype == DType::F32 { 1e-5 } else { 1e-12 };
                let case = format!("{dtype:?} {n} {c} {h} {w} {cout} {k}x{k}");
                assert!(rel(&fast, &plain) < tol, "values {case}");
                let r = Tensor::randn(0f64, 1.0, plain.dims(), &dev).unwrap().to_dtype(dtype).unwrap();
                let gf = (&fast * &r).unwrap().sum_all().unwrap().backward().unwrap();
                let gp = (&plain * &r).unwrap().sum_all().unwrap().backward().unwrap();
                for (what, v) in [("input", &x), ("kernel", &wt), ("bias", &b)] {
                    let e = rel(gf.get(v.as_tensor()).unwrap(), gp.get(v.as_tensor()).unwrap());
                    assert!(e < tol * 10.0, "{what} gradient {case}: {e}");
                }
                if dtype == DType::F64 && n < 10 {
                    let g = gf.get(b.as_tensor()).unwrap().to_vec1::<f64>().unwrap();
                    let base = b.as_tensor().to_vec1::<f64>().unwrap();
                    for i in 0..cout.min(3) {
                        let at = |d: f64| {
                            let mut v = base.clone();
                            v[i] += d;
                            let bt = Tensor::new(v, &dev).unwrap();
                            (conv2d_bias_relu_pool(x.as_tensor(), wt.as_tensor(), &bt, pad).unwrap() * &r)
                                .unwrap()
                                .sum_all()
                                .unwrap()
                                .to_scalar::<f64>()
                                .unwrap()
                        };
                        let fd = (at(1e-6) - at(-1e-6)) / 2e-6;
                        assert!((fd - g[i]).abs() < 1e-5 * (1.0 + fd.abs()), "bias [{i}] {case}: {} vs {fd}", g[i]);
                    }
                }
            }
        }
    }
}
