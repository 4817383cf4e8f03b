//! Augmentation of coin photos for training: any rotation angle (the border colour fills
//! the corners), a random square crop of part of the image, colour, brightness, contrast,
//! saturation and hue jitter, random greyscale and blur. Never a mirror image: a mirrored
//! coin is not a coin.

use rand::Rng;
use serde::{Deserialize, Serialize};

/// Settings of the coin augmentation.
///
/// ```
/// use protonet::data::CoinAugment;
/// use rand::SeedableRng;
/// let aug = CoinAugment::default();
/// let image = vec![0.5f32; 3 * 32 * 32];
/// let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
/// let out = aug.apply(&image, 32, 24, &[0.0; 3], &[1.0; 3], &mut rng);
/// assert_eq!(out.len(), 3 * 24 * 24);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CoinAugment {
    /// The smallest and largest share of the image's area the crop keeps.
    pub area: (f32, f32),
    /// Brightness, contrast and saturation factors are drawn from `1 -+ jitter`.
    pub jitter: f32,
    /// Hue shift, as a fraction of a full turn, drawn from `-+ hue`.
    pub hue: f32,
    /// Probability of a grey image.
    pub greyscale: f32,
    /// Probability of a 3x3 blur.
    pub blur: f32,
    /// The crop's aspect ratio (width / height) is drawn log-uniformly from this range
    /// and the crop is resized square, as torchvision's `RandomResizedCrop` does with
    /// (3/4, 4/3); (1, 1): square crops only.
    #[serde(default = "square", skip_serializing_if = "is_square")]
    pub aspect: (f32, f32),
}

fn square() -> (f32, f32) {
    (1.0, 1.0)
}

fn is_square(aspect: &(f32, f32)) -> bool {
    *aspect == square()
}

/// torchvision's `RandomResizedCrop` aspect-ratio range, (3/4, 4/3).
pub const RESIZED_CROP_ASPECT: (f32, f32) = (0.75, 4.0 / 3.0);

impl Default for CoinAugment {
    /// Area 0.6 to 1, square crops, jitter 0.3, hue 0.05, greyscale 0.2, blur 0.3.
    fn default() -> Self {
        Self { area: (0.6, 1.0), jitter: 0.3, hue: 0.05, greyscale: 0.2, blur: 0.3, aspect: square() }
    }
}

/// The geometric part of one augmentation: output pixel offsets from the centre `p` (in
/// units of the output side) map to source offsets `matrix * p` (in units of the source
/// side) around the source point `centre` (in the same units, 0.5 is the middle).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Warp {
    /// Row-major 2x2: a rotation times a scale, so its determinant is positive (no mirror).
    pub matrix: [f32; 4],
    /// The source point the output's centre comes from.
    pub centre: (f32, f32),
}

impl CoinAugment {
    /// Draws the geometric part: a rotation by any angle and a crop of `area` of the
    /// image (of an aspect ratio from `aspect`, each side at most the image's), placed at
    /// random where it fits.
    pub fn sample_warp(&self, rng: &mut impl Rng) -> Warp {
        let theta = rng.random_range(0.0..std::f32::consts::TAU);
        let area = rng.random_range(self.area.0..=self.area.1);
        let ratio = if self.aspect.0 < self.aspect.1 { rng.random_range(self.aspect.0.ln()..=self.aspect.1.ln()).exp() } else { self.aspect.0 };
        let (w, h) = ((area * ratio).sqrt().min(1.0), (area / ratio).sqrt().min(1.0));
        let (room_x, room_y) = ((1.0 - w) / 2.0, (1.0 - h) / 2.0);
        let centre = (0.5 + rng.random_range(-room_x..=room_x), 0.5 + rng.random_range(-room_y..=room_y));
        let (c, s) = (theta.cos(), theta.sin());
        Warp { matrix: [c * w, -s * h, s * w, c * h], centre }
    }

    /// One augmented copy, `out` pixels square, of the CHW image `img` (`size` pixels
    /// square, 1 or 3 channels by its length, normalized by `mean` and `std` as an
    /// [`ImageConfig`](super::ImageConfig) does), normalized the same way.
    pub fn apply(&self, img: &[f32], size: usize, out: usize, mean: &[f32], std: &[f32], rng: &mut impl Rng) -> Vec<f32> {
        let channels = img.len() / (size * size);
        let plane = size * size;
        // Back to [0, 1].
        let raw: Vec<f32> = (0..img.len()).map(|i| img[i] * std[i / plane] + mean[i / plane]).collect();
        let warp = self.sample_warp(rng);
        let mut x = warp_image(&raw, channels, size, out, &warp);
        if channels == 3 {
            self.colour(&mut x, out * out, rng);
        } else {
            let b = rng.random_range(1.0 - self.jitter..=1.0 + self.jitter);
            x.iter_mut().for_each(|v| *v *= b);
        }
        if rng.random::<f32>() < self.blur {
            x = blur3(&x, channels, out);
        }
        let oplane = out * out;
        x.iter_mut().enumerate().for_each(|(i, v)| *v = (v.clamp(0.0, 1.0) - mean[i / oplane]) / std[i / oplane]);
        x
    }

    /// Brightness, contrast, saturation, hue, then greyscale, on RGB values in [0, 1].
    fn colour(&self, x: &mut [f32], plane: usize, rng: &mut impl Rng) {
        let j = self.jitter;
        let (b, c, s) = (rng.random_range(1.0 - j..=1.0 + j), rng.random_range(1.0 - j..=1.0 + j), rng.random_range(1.0 - j..=1.0 + j));
        let hue = rng.random_range(-self.hue..=self.hue) * std::f32::consts::TAU;
        let grey_out = rng.random::<f32>() < self.greyscale;
        let luma = |r: f32, g: f32, b: f32| 0.299 * r + 0.587 * g + 0.114 * b;
        let mean_luma = (0..plane).map(|i| luma(x[i], x[plane + i], x[2 * plane + i])).sum::<f32>() / plane as f32 * b;
        let (ch, sh) = (hue.cos(), hue.sin());
        for i in 0..plane {
            let mut p = [x[i] * b, x[plane + i] * b, x[2 * plane + i] * b];
            p = p.map(|v| (v - mean_luma) * c + mean_luma);
            let y = luma(p[0], p[1], p[2]);
            p = p.map(|v| y + (v - y) * s);
            // Hue: rotate the chroma (I, Q) of YIQ.
            let (i_, q_) = (0.596 * p[0] - 0.274 * p[1] - 0.322 * p[2], 0.211 * p[0] - 0.523 * p[1] + 0.312 * p[2]);
            let (i2, q2) = (i_ * ch - q_ * sh, i_ * sh + q_ * ch);
            p = [y + 0.956 * i2 + 0.621 * q2, y - 0.272 * i2 - 0.647 * q2, y - 1.106 * i2 + 1.703 * q2];
            if grey_out {
                let g = luma(p[0], p[1], p[2]);
                p = [g; 3];
            }
            (x[i], x[plane + i], x[2 * plane + i]) = (p[0], p[1], p[2]);
        }
    }
}

/// Samples `img` (CHW, `size` square, values in [0, 1]) through `warp` into `out` square,
/// bilinearly; outside the source, each channel's mean border value.
fn warp_image(img: &[f32], channels: usize, size: usize, out: usize, warp: &Warp) -> Vec<f32> {
    let plane = size * size;
    let border: Vec<f32> = (0..channels)
        .map(|c| {
            let ch = &img[c * plane..(c + 1) * plane];
            let edge = (0..size).flat_map(|i| [ch[i], ch[(size - 1) * size + i], ch[i * size], ch[i * size + size - 1]]);
            edge.sum::<f32>() / (4 * size) as f32
        })
        .collect();
    let [a, b, c, d] = warp.matrix;
    let mut res = vec![0f32; channels * out * out];
    for v in 0..out {
        for u in 0..out {
            let (px, py) = ((u as f32 + 0.5) / out as f32 - 0.5, (v as f32 + 0.5) / out as f32 - 0.5);
            let sx = (warp.centre.0 + a * px + b * py) * size as f32 - 0.5;
            let sy = (warp.centre.1 + c * px + d * py) * size as f32 - 0.5;
            for ch in 0..channels {
                res[ch * out * out + v * out + u] = bilinear(&img[ch * plane..(ch + 1) * plane], size, sx, sy, border[ch]);
            }
        }
    }
    res
}

fn bilinear(ch: &[f32], size: usize, x: f32, y: f32, fill: f32) -> f32 {
    let (x0, y0) = (x.floor(), y.floor());
    let (fx, fy) = (x - x0, y - y0);
    let at = |xx: f32, yy: f32| if xx < 0.0 || yy < 0.0 || xx >= size as f32 || yy >= size as f32 { fill } else { ch[yy as usize * size + xx as usize] };
    let top = at(x0, y0) * (1.0 - fx) + at(x0 + 1.0, y0) * fx;
    let bottom = at(x0, y0 + 1.0) * (1.0 - fx) + at(x0 + 1.0, y0 + 1.0) * fx;
    top * (1.0 - fy) + bottom * fy
}

/// A 3x3 binomial blur (edges repeated).
fn blur3(x: &[f32], channels: usize, n: usize) -> Vec<f32> {
    let w = [0.25f32, 0.5, 0.25];
    let mut out = vec![0f32; x.len()];
    for c in 0..channels {
        let p = &x[c * n * n..(c + 1) * n * n];
        for y in 0..n {
            for xx in 0..n {
                let mut s = 0.0;
                for (dy, wy) in w.iter().enumerate() {
                    for (dx, wx) in w.iter().enumerate() {
                        let yy = (y + dy).saturating_sub(1).min(n - 1);
                        let xs = (xx + dx).saturating_sub(1).min(n - 1);
                        s += wy * wx * p[yy * n + xs];
                    }
                }
                out[c * n * n + y * n + xx] = s;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::CoinAugment;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn picture(n: usize) -> Vec<f32> {
        (0..3 * n * n).map(|i| ((i * 7919) % 101) as f32 / 100.0).collect()
    }

    #[test]
    fn the_same_seed_gives_the_same_copy() {
        let aug = CoinAugment::default();
        let img = picture(16);
        let a = aug.apply(&img, 16, 12, &[0.4; 3], &[0.2; 3], &mut ChaCha8Rng::seed_from_u64(5));
        let b = aug.apply(&img, 16, 12, &[0.4; 3], &[0.2; 3], &mut ChaCha8Rng::seed_from_u64(5));
        let c = aug.apply(&img, 16, 12, &[0.4; 3], &[0.2; 3], &mut ChaCha8Rng::seed_from_u64(6));
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn never_mirrors() {
        let aug = CoinAugment::default();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for _ in 0..1000 {
            let [a, b, c, d] = aug.sample_warp(&mut rng).matrix;
            assert!(a * d - b * c > 0.0, "a mirroring warp");
        }
    }

    #[test]
    fn crops_keep_their_area_and_aspect_ratio_and_are_square_by_default() {
        let side = |m: [f32; 4], col: usize| (m[col] * m[col] + m[2 + col] * m[2 + col]).sqrt();
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let (mut narrow, mut wide) = (false, false);
        let aug = CoinAugment { aspect: super::RESIZED_CROP_ASPECT, ..CoinAugment::default() };
        for _ in 0..2000 {
            let m = aug.sample_warp(&mut rng).matrix;
            let (w, h) = (side(m, 0), side(m, 1));
            assert!(w <= 1.0 + 1e-6 && h <= 1.0 + 1e-6 && w * h <= 1.0 + 1e-5 && w * h >= 0.6 * 0.75 - 1e-5, "{w} x {h}");
            assert!((0.75 - 1e-4..=4.0 / 3.0 + 1e-4).contains(&(w / h)), "ratio {}", w / h);
            narrow |= w / h < 0.8;
            wide |= w / h > 1.25;
        }
        assert!(narrow && wide, "the ratios must cover their range");
        for _ in 0..200 {
            let m = CoinAugment::default().sample_warp(&mut rng).matrix;
            assert!((side(m, 0) - side(m, 1)).abs() < 1e-6, "square crops by default");
        }
    }

    #[test]
    fn without_jitter_or_rotation_it_is_the_image() {
        // A plain resample: no rotation draws (angle range forced by checking the warp
        // of the whole image), no colour change.
        let aug = CoinAugment { area: (1.0, 1.0), jitter: 0.0, hue: 0.0, greyscale: 0.0, blur: 0.0, aspect: (1.0, 1.0) };
        let img = picture(8);
        let warp = super::Warp { matrix: [1.0, 0.0, 0.0, 1.0], centre: (0.5, 0.5) };
        let same = super::warp_image(&img, 3, 8, 8, &warp);
        for (a, b) in same.iter().zip(&img) {
            assert!((a - b).abs() < 1e-5);
        }
        let mut x = img.clone();
        aug.colour(&mut x, 64, &mut ChaCha8Rng::seed_from_u64(0));
        for (a, b) in x.iter().zip(&img) {
            // The YIQ coefficients have 3 digits: the round trip is good to about 2e-3.
            assert!((a - b).abs() < 3e-3, "{a} vs {b}");
        }
    }
}
