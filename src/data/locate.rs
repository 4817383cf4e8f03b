//! Finding the coin in a photo: a Hough circle detector (gradient voting, as OpenCV's
//! `HOUGH_GRADIENT`) on a small grey copy, and the square crop around the circle it finds,
//! so that a coin photographed small in a large frame fills the network's input as the
//! coins it learnt from do.

use image::{DynamicImage, GrayImage, RgbImage};
use serde::{Deserialize, Serialize};

/// A circle in image coordinates (pixels of the original photo).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Circle {
    /// Centre, x (column).
    pub x: f32,
    /// Centre, y (row).
    pub y: f32,
    /// Radius.
    pub radius: f32,
}

/// Settings of the coin crop; part of a model's image preparation
/// ([`ImageConfig::crop`](super::ImageConfig)).
///
/// ```
/// use protonet::data::CoinCrop;
/// // A grey photo with a bright disc of radius 60 centred at (200, 120).
/// let photo = image::GrayImage::from_fn(320, 240, |x, y| {
///     let d = ((x as f32 - 200.0).powi(2) + (y as f32 - 120.0).powi(2)).sqrt();
///     image::Luma([if d < 60.0 { 200 } else { 40 }])
/// });
/// let c = CoinCrop::default().find(&image::DynamicImage::ImageLuma8(photo)).unwrap();
/// assert!((c.x - 200.0).abs() < 4.0 && (c.y - 120.0).abs() < 4.0 && (c.radius - 60.0).abs() < 4.0);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CoinCrop {
    /// The long side of the grey copy the detector works on, in pixels.
    pub work_side: u32,
    /// The smallest radius looked for, as a fraction of the photo's short side.
    pub min_radius: f32,
    /// The largest radius looked for, as a fraction of the photo's short side.
    pub max_radius: f32,
    /// The crop's half side, as a multiple of the radius.
    pub margin: f32,
    /// The fraction of the circumference that must carry an edge for a circle to count
    /// (less the fraction of a ring just outside it that does).
    pub min_support: f32,
}

impl Default for CoinCrop {
    /// A 256-pixel copy, radii from 0.15 to 0.6 of the short side, a crop of 1.1 radii,
    /// half of the circumference on an edge.
    fn default() -> Self {
        Self { work_side: 256, min_radius: 0.15, max_radius: 0.6, margin: 1.1, min_support: 0.5 }
    }
}

impl CoinCrop {
    /// Checks the settings.
    pub fn validate(&self) -> crate::Result<()> {
        let bad = |what: &str| Err(crate::Error::param("crop", what.to_string()));
        if !(32..=2048).contains(&self.work_side) {
            return bad("work_side must be in 32..=2048");
        }
        if !(self.min_radius > 0.0 && self.min_radius < self.max_radius && self.max_radius <= 1.0) {
            return bad("radii must satisfy 0 < min_radius < max_radius <= 1");
        }
        if !((1.0..=3.0).contains(&self.margin) && (0.0..=1.0).contains(&self.min_support)) {
            return bad("margin must be in 1..=3 and min_support in 0..=1");
        }
        Ok(())
    }

    /// The coin in `img`: the best-supported circle with radius in range, preferring large
    /// and central ones; `None` when no circle has enough edge support.
    pub fn find(&self, img: &DynamicImage) -> Option<Circle> {
        let (w, h) = (img.width(), img.height());
        let scale = self.work_side as f32 / w.max(h) as f32;
        let (sw, sh) = (((w as f32 * scale).round() as u32).max(8), ((h as f32 * scale).round() as u32).max(8));
        let grey = image::imageops::resize(&img.to_luma8(), sw, sh, image::imageops::FilterType::Triangle);
        let grey = median5(&grey);
        let short = sw.min(sh) as f32;
        let (rmin, rmax) = (self.min_radius * short, self.max_radius * short);
        let edges = edge_points(&grey);
        let votes = centre_votes(&edges, sw as usize, sh as usize, rmin, rmax);
        let best = candidates(&votes, sw as usize, sh as usize, 6, rmin.max(4.0))
            .into_iter()
            .filter_map(|(cx, cy)| {
                let (cx, cy, r, support) = refine(&edges, cx as f32, cy as f32, rmin, rmax)?;
                // A circle inside a larger textured thing (a coin's inner ring, its
                // portrait) has as many edges just outside as inside: not the coin.
                let inside = ring_density(&edges, cx, cy, 0.0, 0.95 * r);
                let outside = ring_density(&edges, cx, cy, 1.15 * r, 1.6 * r);
                (support >= self.min_support && outside <= 0.5 * inside.max(1e-6)).then(|| {
                    let off = ((cx - sw as f32 / 2.0).powi(2) + (cy - sh as f32 / 2.0).powi(2)).sqrt() / short;
                    let score = support * (r / short) * (1.0 - off).max(0.1);
                    (score, cx, cy, r)
                })
            })
            .max_by(|a, b| a.0.total_cmp(&b.0))?;
        let (_, cx, cy, r) = best;
        // Back to the photo's pixels (pixel centres).
        Some(Circle { x: (cx + 0.5) / scale - 0.5, y: (cy + 0.5) / scale - 0.5, radius: r / scale })
    }

    /// The square crop of `margin` radii around the coin of `img` (edge pixels repeated
    /// where it leaves the photo), or `img` itself when no coin is found.
    pub fn crop(&self, img: &DynamicImage) -> Option<DynamicImage> {
        let c = self.find(img)?;
        let half = (c.radius * self.margin).max(4.0);
        let side = (2.0 * half).round() as u32;
        let rgb = img.to_rgb8();
        let (w, h) = (rgb.width() as i64, rgb.height() as i64);
        let (x0, y0) = ((c.x - half).round() as i64, (c.y - half).round() as i64);
        let out = RgbImage::from_fn(side, side, |x, y| *rgb.get_pixel((x0 + x as i64).clamp(0, w - 1) as u32, (y0 + y as i64).clamp(0, h - 1) as u32));
        Some(DynamicImage::ImageRgb8(out))
    }
}

/// 5x5 median filter (edges repeated).
fn median5(img: &GrayImage) -> GrayImage {
    let (w, h) = (img.width() as i64, img.height() as i64);
    GrayImage::from_fn(img.width(), img.height(), |x, y| {
        let mut v = [0u8; 25];
        let mut n = 0;
        for dy in -2..=2 {
            for dx in -2..=2 {
                v[n] = img.get_pixel((x as i64 + dx).clamp(0, w - 1) as u32, (y as i64 + dy).clamp(0, h - 1) as u32).0[0];
                n += 1;
            }
        }
        v.sort_unstable();
        image::Luma([v[12]])
    })
}

/// An edge pixel: position and unit gradient direction.
struct Edge {
    x: f32,
    y: f32,
    gx: f32,
    gy: f32,
}

/// Pixels whose Sobel gradient is a local maximum along its direction and among the
/// strongest of the image (above a quarter of the 99th percentile, and above 20 grey levels).
fn edge_points(img: &GrayImage) -> Vec<Edge> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let p = |x: usize, y: usize| img.get_pixel(x as u32, y as u32).0[0] as f32;
    let mut gx = vec![0f32; w * h];
    let mut gy = vec![0f32; w * h];
    let mut mag = vec![0f32; w * h];
    for y in 1..h - 1 {
        for x in 1..w - 1 {
            let a = p(x + 1, y - 1) + 2.0 * p(x + 1, y) + p(x + 1, y + 1) - p(x - 1, y - 1) - 2.0 * p(x - 1, y) - p(x - 1, y + 1);
            let b = p(x - 1, y + 1) + 2.0 * p(x, y + 1) + p(x + 1, y + 1) - p(x - 1, y - 1) - 2.0 * p(x, y - 1) - p(x + 1, y - 1);
            let i = y * w + x;
            (gx[i], gy[i], mag[i]) = (a, b, (a * a + b * b).sqrt());
        }
    }
    let mut sorted: Vec<f32> = mag.iter().copied().filter(|m| *m > 0.0).collect();
    if sorted.is_empty() {
        return Vec::new();
    }
    sorted.sort_unstable_by(f32::total_cmp);
    let threshold = (0.25 * sorted[(sorted.len() - 1) * 99 / 100]).max(80.0);
    let mut out = Vec::new();
    for y in 1..h - 1 {
        for x in 1..w - 1 {
            let i = y * w + x;
            let m = mag[i];
            if m < threshold {
                continue;
            }
            let (ux, uy) = (gx[i] / m, gy[i] / m);
            let at = |s: f32| {
                let (xx, yy) = ((x as f32 + s * ux).round() as usize, (y as f32 + s * uy).round() as usize);
                mag[yy.min(h - 1) * w + xx.min(w - 1)]
            };
            if m >= at(1.0) && m >= at(-1.0) {
                out.push(Edge { x: x as f32, y: y as f32, gx: ux, gy: uy });
            }
        }
    }
    out
}

/// Edge pixels per unit of area between radii `r0` and `r1` around `(cx, cy)` (the part
/// of the ring inside the image counted by its edges only, so a ring leaving the image
/// reads low).
fn ring_density(edges: &[Edge], cx: f32, cy: f32, r0: f32, r1: f32) -> f32 {
    let n = edges
        .iter()
        .filter(|e| {
            let d = ((e.x - cx).powi(2) + (e.y - cy).powi(2)).sqrt();
            d >= r0 && d < r1
        })
        .count();
    n as f32 / (std::f32::consts::PI * (r1 * r1 - r0 * r0)).max(1.0)
}

/// Votes for circle centres: each edge pixel votes along its gradient, both ways, at every
/// distance from `rmin` to `rmax`.
fn centre_votes(edges: &[Edge], w: usize, h: usize, rmin: f32, rmax: f32) -> Vec<f32> {
    let mut acc = vec![0f32; w * h];
    for e in edges {
        for sign in [-1.0f32, 1.0] {
            let mut r = rmin;
            while r <= rmax {
                let (x, y) = ((e.x + sign * r * e.gx).round(), (e.y + sign * r * e.gy).round());
                if x >= 0.0 && y >= 0.0 && (x as usize) < w && (y as usize) < h {
                    acc[y as usize * w + x as usize] += 1.0;
                }
                r += 1.0;
            }
        }
    }
    // 3x3 box smoothing.
    let mut out = vec![0f32; w * h];
    for y in 1..h.saturating_sub(1) {
        for x in 1..w.saturating_sub(1) {
            out[y * w + x] = (0..9).map(|k| acc[(y + k / 3 - 1) * w + x + k % 3 - 1]).sum();
        }
    }
    out
}

/// Up to `k` local maxima of `votes`, strongest first, at least `min_dist` apart.
fn candidates(votes: &[f32], w: usize, h: usize, k: usize, min_dist: f32) -> Vec<(usize, usize)> {
    let mut order: Vec<usize> = (0..votes.len()).filter(|&i| votes[i] > 0.0).collect();
    order.sort_unstable_by(|&a, &b| votes[b].total_cmp(&votes[a]));
    let mut out: Vec<(usize, usize)> = Vec::new();
    for i in order {
        let (x, y) = (i % w, i / w);
        if x == 0 || y == 0 || x + 1 >= w || y + 1 >= h {
            continue;
        }
        if out.iter().all(|&(ox, oy)| ((ox as f32 - x as f32).powi(2) + (oy as f32 - y as f32).powi(2)).sqrt() >= min_dist) {
            out.push((x, y));
            if out.len() == k {
                break;
            }
        }
    }
    out
}

/// The centre within 4 pixels of `(cx, cy)` (searched by whole pixels, then by half
/// pixels around the best) and the radius whose circle is covered best ([`best_radius`]),
/// with that cover.
fn refine(edges: &[Edge], cx: f32, cy: f32, rmin: f32, rmax: f32) -> Option<(f32, f32, f32, f32)> {
    let near: Vec<&Edge> = edges.iter().filter(|e| ((e.x - cx).powi(2) + (e.y - cy).powi(2)).sqrt() <= rmax + 12.0).collect();
    let mut best: Option<(f32, f32, f32, f32)> = None;
    let search = |x0: f32, y0: f32, reach: i32, step: f32, best: &mut Option<(f32, f32, f32, f32)>| {
        for dy in -reach..=reach {
            for dx in -reach..=reach {
                let (x, y) = (x0 + dx as f32 * step, y0 + dy as f32 * step);
                if let Some((r, cover)) = best_radius(near.iter().copied(), x, y, rmin, rmax) {
                    if best.is_none_or(|b| cover > b.3) {
                        *best = Some((x, y, r, cover));
                    }
                }
            }
        }
    };
    search(cx, cy, 4, 1.0, &mut best);
    let (bx, by, _, _) = best?;
    search(bx, by, 1, 0.5, &mut best);
    best
}

/// The radius around `(cx, cy)` whose circle is covered best by edge pixels with a radial
/// gradient, and that cover: the fraction of its 36 sectors of 10 degrees holding such a
/// pixel within a pixel and a half of the radius.
fn best_radius<'a>(edges: impl Iterator<Item = &'a Edge>, cx: f32, cy: f32, rmin: f32, rmax: f32) -> Option<(f32, f32)> {
    let bins = (rmax - rmin).ceil() as usize + 1;
    // Six more rings for the outside of the largest radii.
    let mut sectors = vec![0u64; bins + 6];
    for e in edges {
        let (dx, dy) = (e.x - cx, e.y - cy);
        let d = (dx * dx + dy * dy).sqrt();
        if d < rmin - 1.5 || d > rmax + 7.5 || d < 1.0 {
            continue;
        }
        // The gradient of a circle's edge is radial.
        if ((dx * e.gx + dy * e.gy) / d).abs() < 0.95 {
            continue;
        }
        let sector = (((dy.atan2(dx) + std::f32::consts::PI) / (2.0 * std::f32::consts::PI) * 36.0) as u32).min(35);
        let lo = (d - 1.5 - rmin).ceil().max(0.0) as usize;
        let hi = ((d + 1.5 - rmin).floor().max(0.0) as usize).min(bins + 5);
        for s in sectors.iter_mut().take(hi + 1).skip(lo) {
            *s |= 1 << sector;
        }
    }
    // Cover minus the cover of the ring 6 pixels outside (a coin's rim has background
    // outside it; texture covers both), largest radius first among equals (the rim before
    // an inner ring).
    let cover = |b: usize| sectors[b].count_ones() as f32 / 36.0;
    (0..bins).map(|b| (rmin + b as f32, cover(b) - cover(b + 6))).max_by(|a, b| a.1.total_cmp(&b.1).then(a.0.total_cmp(&b.0)))
}

#[cfg(test)]
mod tests {
    use super::CoinCrop;
    use image::{DynamicImage, Rgb, RgbImage};
    use rand::{Rng, SeedableRng};

    fn disc_photo(w: u32, h: u32, cx: f32, cy: f32, r: f32, seed: u64) -> DynamicImage {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        DynamicImage::ImageRgb8(RgbImage::from_fn(w, h, |x, y| {
            let d = ((x as f32 - cx).powi(2) + (y as f32 - cy).powi(2)).sqrt();
            let n: i32 = rng.random_range(-12..12);
            let base = if d < r { [170, 150, 90] } else { [60, 80, 70] };
            Rgb(base.map(|c: i32| (c + n).clamp(0, 255) as u8))
        }))
    }

    #[test]
    fn finds_a_drawn_coin_within_a_few_pixels() {
        for (w, h, cx, cy, r) in [(640, 480, 400.0, 200.0, 80.0), (300, 300, 150.0, 150.0, 140.0), (800, 600, 200.0, 420.0, 110.0)] {
            let found = CoinCrop::default().find(&disc_photo(w, h, cx, cy, r, 1));
            eprintln!("{w}x{h} ({cx}, {cy}, {r}): {found:?}");
            let c = found.expect("a circle");
            let tol = 3.0 * w.max(h) as f32 / 256.0;
            assert!((c.x - cx).abs() <= tol && (c.y - cy).abs() <= tol && (c.radius - r).abs() <= tol, "{c:?} vs ({cx}, {cy}, {r})");
        }
    }

    #[test]
    fn leaves_a_photo_without_a_coin_alone() {
        // Noise, a flat photo and a rectangle: no circle.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
        let noise = DynamicImage::ImageRgb8(RgbImage::from_fn(320, 240, |_, _| Rgb([rng.random(), rng.random(), rng.random()])));
        let flat = DynamicImage::ImageRgb8(RgbImage::from_pixel(320, 240, Rgb([90, 90, 90])));
        let rect = DynamicImage::ImageRgb8(RgbImage::from_fn(320, 240, |x, y| {
            if (60..260).contains(&x) && (50..190).contains(&y) {
                Rgb([220, 220, 220])
            } else {
                Rgb([30, 30, 30])
            }
        }));
        for (name, img) in [("noise", noise), ("flat", flat), ("rectangle", rect)] {
            assert!(CoinCrop::default().crop(&img).is_none(), "{name}: found {:?}", CoinCrop::default().find(&img));
        }
    }

    #[test]
    fn the_crop_is_a_square_around_the_coin() {
        let img = disc_photo(640, 480, 400.0, 200.0, 80.0, 3);
        let crop = CoinCrop::default().crop(&img).unwrap();
        assert_eq!(crop.width(), crop.height());
        assert!((crop.width() as f32 - 176.0).abs() < 10.0, "{}", crop.width());
    }
}
