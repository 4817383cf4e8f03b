//! Winograd's minimal filtering F(2x2, 3x3) for 3x3 convolutions with stride 1
//! (Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks", 2016).
//!
//! The output is cut into 2x2 tiles; each comes from a 4x4 input tile `d` as
//! `Y = Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A`, so a tile costs 16 multiplications per channel pair
//! instead of 36. Over a batch of tiles the 16 element-wise products become 16 GEMMs,
//! one per position `ξ` of the 4x4 transformed tile: `M_ξ (rows x T) = U_ξ (rows x C) *
//! V_ξ (C x T)`, with `U` the transformed kernels and `V` the transformed input tiles.
//! The transforms only add, subtract and halve, so the rounding error stays close to a
//! direct convolution's.
//!
//! The three passes of a convolution all take this form:
//! - forward: `V` from the input, `U` from the kernel;
//! - input gradient: the same with the output gradient as input, the kernel rotated by
//!   180° with its channel axes swapped, and padding `2 - pad`;
//! - kernel gradient: `dU_ξ (Cout x C) = dM_ξ (Cout x T) * V_ξᵀ`, with `dM = A dY Aᵀ` the
//!   output gradient's tiles taken back through the output transform, then
//!   `dg = Gᵀ dU G`. This is the exact gradient of the forward formula, which equals the
//!   convolution.
//!
//! Buffers are laid out `[ξ][channel][tile]`, so that each `ξ` is a row-major matrix with
//! tiles along its rows.

use candle_core::WithDType;

/// The tiles of one 3x3, stride-1 convolution over a batch of images: the input has
/// `c` channels of `h x w` and `pad` zeros on every side, the output `rows` channels of
/// `oh x ow`, covered by `th x tw` tiles of 2x2.
#[derive(Clone, Copy, Debug)]
pub(super) struct Tiling {
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub pad: usize,
    pub rows: usize,
    pub oh: usize,
    pub ow: usize,
    pub th: usize,
    pub tw: usize,
}

impl Tiling {
    /// A convolution of `c x h x w` inputs with `pad` (at most 2) into `rows` channels.
    pub fn new(c: usize, h: usize, w: usize, pad: usize, rows: usize) -> Self {
        debug_assert!(pad <= 2 && h + 2 * pad >= 3 && w + 2 * pad >= 3);
        let (oh, ow) = (h + 2 * pad - 2, w + 2 * pad - 2);
        Self { c, h, w, pad, rows, oh, ow, th: oh.div_ceil(2), tw: ow.div_ceil(2) }
    }

    /// Tiles per image.
    pub fn per_image(&self) -> usize {
        self.th * self.tw
    }

    /// Images per batch of tiles: enough tiles for efficient GEMMs, few enough that the
    /// transformed tiles stay in cache.
    pub fn images_per_batch(&self) -> usize {
        (TILES_PER_BATCH / self.per_image()).max(1)
    }
}

/// About this many tiles go through the GEMMs together.
const TILES_PER_BATCH: usize = 512;

/// `U = G g Gᵀ` for every 3x3 kernel of `w` (`cout x c x 3 x 3`), laid out `[ξ][o][i]`.
/// Forward (`rotated` false): `o` is the output channel, `i` the input channel. For the
/// input gradient (`rotated` true): the kernel turned by 180° with `o` the convolution's
/// input channel and `i` its output channel.
pub(super) fn transform_kernel<T: WithDType>(w: &[T], cout: usize, c: usize, rotated: bool) -> Vec<T> {
    let half = T::from_f64(0.5);
    let (rows, cols) = if rotated { (c, cout) } else { (cout, c) };
    let mut u = vec![T::zero(); 16 * rows * cols];
    for co in 0..cout {
        for ci in 0..c {
            let k = &w[(co * c + ci) * 9..][..9];
            let g = |y: usize, x: usize| if rotated { k[(2 - y) * 3 + 2 - x] } else { k[y * 3 + x] };
            // q = G g (4 x 3), column by column, then U = q Gᵀ (4 x 4).
            let column = |x: usize| {
                let (g0, g1, g2) = (g(0, x), g(1, x), g(2, x));
                [g0, (g0 + g1 + g2) * half, (g0 - g1 + g2) * half, g2]
            };
            let columns = [column(0), column(1), column(2)];
            let q: [[T; 3]; 4] = std::array::from_fn(|a| [columns[0][a], columns[1][a], columns[2][a]]);
            let (o, i) = if rotated { (ci, co) } else { (co, ci) };
            for (a, qa) in q.iter().enumerate() {
                let row = [qa[0], (qa[0] + qa[1] + qa[2]) * half, (qa[0] - qa[1] + qa[2]) * half, qa[2]];
                for (b, &v) in row.iter().enumerate() {
                    u[((a * 4 + b) * rows + o) * cols + i] = v;
                }
            }
        }
    }
    u
}

/// `dg = Gᵀ dU G` for every kernel: `du` laid out `[ξ][cout][c]`, the result
/// `cout x c x 3 x 3`.
pub(super) fn kernel_gradient<T: WithDType>(du: &[T], cout: usize, c: usize) -> Vec<T> {
    let half = T::from_f64(0.5);
    let mut dw = vec![T::zero(); cout * c * 9];
    for co in 0..cout {
        for ci in 0..c {
            let d = |a: usize, b: usize| du[((a * 4 + b) * cout + co) * c + ci];
            // p = Gᵀ dU (3 x 4), column by column, then dg = p G (3 x 3).
            let columns: [[T; 3]; 4] = std::array::from_fn(|b| {
                let (d0, d1, d2, d3) = (d(0, b), d(1, b), d(2, b), d(3, b));
                [d0 + (d1 + d2) * half, (d1 - d2) * half, (d1 + d2) * half + d3]
            });
            let p: [[T; 4]; 3] = std::array::from_fn(|a| std::array::from_fn(|b| columns[b][a]));
            let out = &mut dw[(co * c + ci) * 9..][..9];
            for (a, pa) in p.iter().enumerate() {
                out[a * 3] = pa[0] + (pa[1] + pa[2]) * half;
                out[a * 3 + 1] = (pa[1] - pa[2]) * half;
                out[a * 3 + 2] = (pa[1] + pa[2]) * half + pa[3];
            }
        }
    }
    dw
}

/// `out[t] = x[t] + y[t]` (`add`) or `x[t] - y[t]`, over a run.
#[inline(always)]
fn combine<T: WithDType>(out: &mut [T], x: &[T], y: &[T], add: bool) {
    if add {
        for (o, (&x, &y)) in out.iter_mut().zip(x.iter().zip(y)) {
            *o = x + y;
        }
    } else {
        for (o, (&x, &y)) in out.iter_mut().zip(x.iter().zip(y)) {
            *o = x - y;
        }
    }
}

/// The four rows of `Bᵀ` applied to rows `d0..d3` of every tile: `d1 ± d2` and so on,
/// as `(x, y, add)` for [`combine`]. `Bᵀ` applied across columns is the same.
#[inline(always)]
fn b_transposed<T>(d: [&[T]; 4]) -> [(&[T], &[T], bool); 4] {
    [(d[0], d[2], false), (d[1], d[2], true), (d[2], d[1], false), (d[1], d[3], false)]
}

vectorized! {
/// `V = Bᵀ d B` for every 4x4 input tile of `images` (`n x c x h x w`), into `v`
/// (`[ξ][c][tile]`, `16 * c * n * per_image` values).
pub(super) fn input_tiles<T: WithDType>(images: &[T], g: &Tiling, v: &mut [T]) {
    let (hw, tiles, per) = (g.h * g.w, images.len() / (g.c * g.h * g.w) * g.per_image(), g.per_image());
    // One plane with its zero padding (`hp x wp`; the borders stay zero), then `B` across
    // every row: `across[b]` holds column `b` of `d B` for every padded row and tile
    // column, even rows first, then odd rows, so that rows 2ty, 2ty+1, 2ty+2, 2ty+3 of
    // all tiles are four runs of `per` values.
    let (hp, wp) = (2 * g.th + 2, 2 * g.tw + 2);
    let mut padded = vec![T::zero(); hp * wp];
    let half = (g.th + 1) * g.tw;
    let mut across = vec![T::zero(); 4 * 2 * half];
    for (i, img) in images.chunks_exact(g.c * hw).enumerate() {
        for ch in 0..g.c {
            let plane = &img[ch * hw..][..hw];
            for (y, src) in plane.chunks_exact(g.w).enumerate().take(hp - g.pad) {
                let dst = &mut padded[(y + g.pad) * wp + g.pad..][..g.w.min(wp - g.pad)];
                for (d, &s) in dst.iter_mut().zip(src) {
                    *d = s;
                }
            }
            for (y, row) in padded.chunks_exact(wp).enumerate() {
                let at = (y % 2) * half + (y / 2) * g.tw;
                let (a0, rest) = across.split_at_mut(2 * half);
                let (a1, rest) = rest.split_at_mut(2 * half);
                let (a2, a3) = rest.split_at_mut(2 * half);
                let outs = a0[at..][..g.tw].iter_mut().zip(&mut a1[at..][..g.tw]).zip(a2[at..][..g.tw].iter_mut().zip(&mut a3[at..][..g.tw]));
                // Columns 2tx..2tx+4 of the row: the pairs tx and tx + 1.
                for (((o0, o1), (o2, o3)), (p, q)) in outs.zip(row.chunks_exact(2).zip(row[2..].chunks_exact(2))) {
                    *o0 = p[0] - q[0];
                    *o1 = p[1] + q[0];
                    *o2 = q[0] - p[1];
                    *o3 = p[1] - q[1];
                }
            }
            // Then Bᵀ down the columns, over all the image's tiles at once.
            for b in 0..4 {
                let col = &across[b * 2 * half..][..2 * half];
                let (even, odd) = col.split_at(half);
                let d = [&even[..per], &odd[..per], &even[g.tw..][..per], &odd[g.tw..][..per]];
                for (a, (x, y, add)) in b_transposed(d).into_iter().enumerate() {
                    combine(&mut v[((a * 4 + b) * g.c + ch) * tiles + i * per..][..per], x, y, add);
                }
            }
        }
    }
}
}

vectorized! {
/// `Y = Aᵀ M A` for every tile: `m` laid out `[ξ][rows][tile]`, the 2x2 outputs written
/// into `out` (`n x rows x oh x ow`), dropping those past the output's edge.
pub(super) fn output_tiles<T: WithDType>(m: &[T], g: &Tiling, out: &mut [T]) {
    let (p, per) = (g.oh * g.ow, g.per_image());
    let tiles = out.len() / (g.rows * p) * per;
    // `Aᵀ` down the columns of all the image's tiles: s[k][b] is row k of Aᵀ M at column b;
    // then `A` across gives the four outputs y_kl of each tile.
    let mut s = vec![T::zero(); 8 * per];
    let mut y = vec![T::zero(); 4 * per];
    for (i, img) in out.chunks_exact_mut(g.rows * p).enumerate() {
        for o in 0..g.rows {
            let tile = |a: usize, b: usize| &m[((a * 4 + b) * g.rows + o) * tiles + i * per..][..per];
            for b in 0..4 {
                let (m0, m1, m2, m3) = (tile(0, b), tile(1, b), tile(2, b), tile(3, b));
                let (s0, s1) = s[2 * b * per..][..2 * per].split_at_mut(per);
                for t in 0..per {
                    s0[t] = m0[t] + m1[t] + m2[t];
                    s1[t] = m1[t] - m2[t] - m3[t];
                }
            }
            let col = |k: usize, b: usize| &s[(2 * b + k) * per..][..per];
            for (k, ys) in y.chunks_exact_mut(2 * per).enumerate() {
                let (left, right) = ys.split_at_mut(per);
                let (a0, a1, a2, a3) = (col(k, 0), col(k, 1), col(k, 2), col(k, 3));
                for t in 0..per {
                    left[t] = a0[t] + a1[t] + a2[t];
                    right[t] = a1[t] - a2[t] - a3[t];
                }
            }
            let plane = &mut img[o * p..][..p];
            for (oy, row) in plane.chunks_exact_mut(g.ow).enumerate() {
                let at = (oy % 2) * 2 * per + (oy / 2) * g.tw;
                let (left, right) = (&y[at..][..g.tw], &y[at + per..][..g.tw]);
                for (pair, (&l, &r)) in row.chunks_exact_mut(2).zip(left.iter().zip(right)) {
                    pair[0] = l;
                    pair[1] = r;
                }
                if g.ow % 2 == 1 {
                    row[g.ow - 1] = left[g.tw - 1];
                }
            }
        }
    }
}
}

vectorized! {
/// `dM = A dY Aᵀ` for every tile of the output gradient `grad` (`n x rows x oh x ow`),
/// into `dm` (`[ξ][rows][tile]`); outputs past the edge have no gradient.
pub(super) fn gradient_tiles<T: WithDType>(grad: &[T], g: &Tiling, dm: &mut [T]) {
    let (p, per) = (g.oh * g.ow, g.per_image());
    let tiles = grad.len() / (g.rows * p) * per;
    // The four values of each tile, y_kl at row k and column l, each a run over the
    // image's tiles (zero past the edges); then `A` down (y_0l, y_0l + y_1l, y_0l - y_1l,
    // -y_1l) and the same across.
    let mut y = vec![T::zero(); 4 * per];
    let mut down = vec![T::zero(); 8 * per];
    for (i, img) in grad.chunks_exact(g.rows * p).enumerate() {
        for o in 0..g.rows {
            let plane = &img[o * p..][..p];
            for (oy, row) in plane.chunks_exact(g.ow).enumerate() {
                let at = (oy % 2) * 2 * per + (oy / 2) * g.tw;
                let (left, right) = y[at..][..per + g.tw].split_at_mut(per);
                for ((l, r), pair) in left.iter_mut().zip(right.iter_mut()).zip(row.chunks_exact(2)) {
                    *l = pair[0];
                    *r = pair[1];
                }
                if g.ow % 2 == 1 {
                    left[g.tw - 1] = row[g.ow - 1];
                    right[g.tw - 1] = T::zero();
                }
            }
            if g.oh % 2 == 1 {
                // The last tile row has no second output row.
                y[2 * per + (g.th - 1) * g.tw..][..g.tw].fill(T::zero());
                y[3 * per + (g.th - 1) * g.tw..][..g.tw].fill(T::zero());
            }
            let (y00, rest) = y.split_at(per);
            let (y01, rest) = rest.split_at(per);
            let (y10, y11) = rest.split_at(per);
            // down[a][l]: row a of A dY at column l.
            for (l, (top, bottom)) in [(y00, y10), (y01, y11)].into_iter().enumerate() {
                let d = |a: usize| (2 * a + l) * per;
                down[d(0)..][..per].copy_from_slice(top);
                combine(&mut down[d(1)..][..per], top, bottom, true);
                combine(&mut down[d(2)..][..per], top, bottom, false);
                for (o, &v) in down[d(3)..][..per].iter_mut().zip(bottom) {
                    *o = T::zero() - v;
                }
            }
            for a in 0..4 {
                let (left, right) = (&down[2 * a * per..][..per], &down[(2 * a + 1) * per..][..per]);
                let at = |b: usize| ((a * 4 + b) * g.rows + o) * tiles + i * per;
                dm[at(0)..][..per].copy_from_slice(left);
                combine(&mut dm[at(1)..][..per], left, right, true);
                combine(&mut dm[at(2)..][..per], left, right, false);
                for (o, &v) in dm[at(3)..][..per].iter_mut().zip(right) {
                    *o = T::zero() - v;
                }
            }
        }
    }
}
}

#[cfg(test)]
mod tests {
    use super::super::testing::{max_diff, relative_diff as rel, seeded_randn};
    use super::super::{conv2d, conv2d_bias};
    use super::Tiling;
    use candle_core::{Device, Tensor, Var};

    /// The Winograd path of [`conv2d`] (3x3, stride 1, at least 16 input channels) against
    /// candle's convolution: values and both gradients, paddings 0, 1 and 2, odd sides,
    /// a single pixel, batch 1, and batches that span several batches of tiles; then the
    /// kernel and input gradients against finite differences.
    #[test]
    fn matches_candle_and_finite_differences() {
        let dev = Device::Cpu;
        for &(n, c, h, w, cout, pad) in
            &[(5, 16, 28, 28, 8, 1), (1, 16, 1, 1, 3, 1), (2, 16, 2, 3, 4, 2), (3, 17, 6, 5, 16, 0), (1, 24, 9, 4, 5, 1), (7, 16, 3, 3, 2, 1)]
        {
            let tiling = Tiling::new(c, h, w, pad, cout);
            assert_eq!((tiling.oh, tiling.ow), (h + 2 * pad - 2, w + 2 * pad - 2));
            let x = Var::from_tensor(&Tensor::randn(0f64, 1.0, (n, c, h, w), &dev).unwrap()).unwrap();
            let k = Var::from_tensor(&Tensor::randn(0f64, 1.0, (cout, c, 3, 3), &dev).unwrap()).unwrap();
            let fast = conv2d(x.as_tensor(), k.as_tensor(), pad).unwrap();
            let plain = x.as_tensor().conv2d(k.as_tensor(), pad, 1, 1, 1).unwrap();
            assert_eq!(fast.dims(), plain.dims());
            assert!(max_diff(&fast, &plain) < 1e-10, "values {n} {c} {h} {w} pad {pad}");
            let r = Tensor::randn(0f64, 1.0, plain.dims(), &dev).unwrap();
            let loss = |y: &Tensor| (y * &r).unwrap().sum_all().unwrap();
            let gf = loss(&fast).backward().unwrap();
            let gp = loss(&plain).backward().unwrap();
            for v in [&x, &k] {
                let e = max_diff(gf.get(v.as_tensor()).unwrap(), gp.get(v.as_tensor()).unwrap());
                assert!(e < 1e-9, "gradient {:?} for {n} {c} {h} {w} pad {pad}: {e}", v.dims());
            }
            for (v, step) in [(&k, 7), (&x, 11)] {
                let base = v.as_tensor().flatten_all().unwrap().to_vec1::<f64>().unwrap();
                let g = gf.get(v.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
                for i in (0..base.len()).step_by(step).take(6) {
                    let at = |d: f64| {
                        let mut p = base.clone();
                        p[i] += d;
                        let p = Tensor::from_vec(p, v.dims(), &dev).unwrap();
                        let y = if v.dims() == k.dims() { conv2d(x.as_tensor(), &p, pad) } else { conv2d(&p, k.as_tensor(), pad) };
                        loss(&y.unwrap()).to_scalar::<f64>().unwrap()
                    };
                    let fd = (at(1e-5) - at(-1e-5)) / 2e-5;
                    assert!((fd - g[i]).abs() < 1e-6 * (1.0 + fd.abs()), "{:?}[{i}]: {} vs {fd}", v.dims(), g[i]);
                }
            }
        }
    }

    /// In f32, as training runs, with the bias and clamp of [`conv2d_bias`]: within 1e-5 of
    /// the portable ops relative to the largest value (the transforms add little rounding).
    #[test]
    fn f32_with_bias_and_clamp_stays_close_to_the_portable_ops() {
        // Seeded inputs: with unseeded ones, an output within rounding of the clamp's bounds
        // once fell on different sides in the two paths, and the gradients' masks differed.
        let x = Var::from_tensor(&seeded_randn(&[9, 64, 14, 14], 1)).unwrap();
        let k = Var::from_tensor(&(seeded_randn(&[64, 64, 3, 3], 2) * 0.05).unwrap()).unwrap();
        let b = Var::from_tensor(&seeded_randn(&[64], 3)).unwrap();
        let fast = conv2d_bias(x.as_tensor(), k.as_tensor(), b.as_tensor(), 1, 1, Some((0.0, 6.0))).unwrap();
        let plain = super::super::conv2d_bias_portable(x.as_tensor(), k.as_tensor(), b.as_tensor(), 1, 1, Some((0.0, 6.0))).unwrap();
        assert!(rel(&fast, &plain) < 1e-5, "values: {}", rel(&fast, &plain));
        let r = seeded_randn(plain.dims(), 4);
        let gf = (&fast * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let gp = (&plain * &r).unwrap().sum_all().unwrap().backward().unwrap();
        for (what, v) in [("input", &x), ("kernel", &k), ("bias", &b)] {
            let e = rel(gf.get(v.as_tensor()).unwrap(), gp.get(v.as_tensor()).unwrap());
            assert!(e < 1e-5, "{what} gradient: {e}");
        }
    }
}
