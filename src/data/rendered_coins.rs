//! A procedural coin renderer: made-up currencies whose denominations are classes.
//!
//! Every denomination has a design (disc or polygon, metal or bimetal, rim, reeded or
//! plain edge, an embossed numeral and a small emblem); every rendered instance varies
//! the pose (position, scale, rotation), the light direction, wear, blur, noise and the
//! background. Relief is a height map lit with a Lambert and a specular term, so
//! embossing reads as it does in photographs. Nothing here comes from real photographs,
//! so the rendered images may be shipped and used freely.

use std::f32::consts::PI;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{ImageConfig, ImageSet};
use crate::error::Result;

/// Metals as linear RGB base colours.
const METALS: [(&str, [f32; 3]); 6] = [
    ("copper", [0.72, 0.42, 0.22]),
    ("bronze", [0.55, 0.38, 0.22]),
    ("brass", [0.80, 0.65, 0.30]),
    ("nordic-gold", [0.86, 0.72, 0.38]),
    ("nickel", [0.74, 0.74, 0.72]),
    ("steel", [0.62, 0.64, 0.68]),
];

/// Seven-segment strokes of the digits 0-9 in a unit box (x right, y down).
fn digit_strokes(d: u32) -> Vec<[f32; 4]> {
    let seg = |c: char| -> [f32; 4] {
        match c {
            'a' => [0.0, 0.0, 1.0, 0.0],
            'b' => [1.0, 0.0, 1.0, 0.5],
            'c' => [1.0, 0.5, 1.0, 1.0],
            'd' => [0.0, 1.0, 1.0, 1.0],
            'e' => [0.0, 0.5, 0.0, 1.0],
            'f' => [0.0, 0.0, 0.0, 0.5],
            _ => [0.0, 0.5, 1.0, 0.5],
        }
    };
    let segs = ["abcdef", "bc", "abged", "abgcd", "fgbc", "afgcd", "afgedc", "abc", "abcdefg", "abcdfg"][d as usize % 10];
    segs.chars().map(seg).collect()
}

/// The design of one denomination.
#[derive(Debug, Clone, PartialEq)]
pub struct CoinDesign {
    /// Face value shown as the numeral.
    pub value: u32,
    /// 0 for a disc, else the number of polygon sides (7 to 12).
    pub sides: u32,
    /// Outer (or only) metal colour.
    pub metal: [f32; 3],
    /// Inner metal colour of a bimetallic coin.
    pub inner_metal: Option<[f32; 3]>,
    /// Rim width as a fraction of the radius.
    pub rim: f32,
    /// Number of reeds on the edge (0: plain).
    pub reeds: u32,
    /// Emblem strokes (in the unit box above the numeral).
    pub emblem: Vec<[f32; 4]>,
    /// Ring of dots (count; 0 for none).
    pub dots: u32,
    /// Relative size of the coin in the frame.
    pub size: f32,
}

impl CoinDesign {
    /// A random design showing `value`.
    pub fn random(value: u32, rng: &mut ChaCha8Rng) -> Self {
        let metal = METALS[rng.random_range(0..METALS.len())].1;
        let inner_metal = if rng.random_bool(0.25) { Some(METALS[rng.random_range(0..METALS.len())].1) } else { None };
        Self {
            value,
            sides: if rng.random_bool(0.2) { rng.random_range(7..=12) } else { 0 },
            metal,
            inner_metal,
            rim: rng.random_range(0.06..0.14),
            reeds: if rng.random_bool(0.5) { rng.random_range(40..90) } else { 0 },
            emblem: (0..rng.random_range(1..4)).map(|_| [rng.random(), rng.random(), rng.random(), rng.random()]).collect(),
            dots: if rng.random_bool(0.4) { rng.random_range(8..16) } else { 0 },
            size: rng.random_range(0.8..1.0),
        }
    }
}

/// A made-up currency: `n` denominations with distinct values and designs.
///
/// ```
/// use rand::SeedableRng;
/// let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
/// let designs = protonet::data::rendered_coins::currency(5, &mut rng);
/// assert_eq!(designs.len(), 5);
/// ```
pub fn currency(n: usize, rng: &mut ChaCha8Rng) -> Vec<CoinDesign> {
    const VALUES: [u32; 12] = [1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000];
    let mut values: Vec<u32> = VALUES.to_vec();
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let v = if values.is_empty() { rng.random_range(1..1000) } else { values.remove(rng.random_range(0..values.len())) };
        out.push(CoinDesign::random(v, rng));
    }
    out
}

fn segment_distance(px: f32, py: f32, s: &[f32; 4]) -> f32 {
    let (dx, dy) = (s[2] - s[0], s[3] - s[1]);
    let len2 = (dx * dx + dy * dy).max(1e-6);
    let t = (((px - s[0]) * dx + (py - s[1]) * dy) / len2).clamp(0.0, 1.0);
    ((px - s[0] - t * dx).powi(2) + (py - s[1] - t * dy).powi(2)).sqrt()
}

/// Relief height of a design at unit-disc coordinates (u, v); `None` outside the coin.
fn height(d: &CoinDesign, u: f32, v: f32, strokes: &[[f32; 4]]) -> Option<(f32, bool)> {
    let r = (u * u + v * v).sqrt();
    let theta = v.atan2(u);
    let edge = if d.sides >= 3 {
        let k = 2.0 * PI / d.sides as f32;
        (PI / d.sides as f32).cos() / ((theta.rem_euclid(k)) - k / 2.0).cos()
    } else {
        1.0
    };
    let rn = r / edge;
    if rn > 1.0 {
        return None;
    }
    let inner = d.inner_metal.is_some() && rn < 0.62;
    let mut h = 0.0;
    if rn > 1.0 - d.rim {
        h = 1.0;
        if d.reeds > 0 && rn > 0.97 {
            h *= 0.7 + 0.3 * (theta * d.reeds as f32).sin().abs();
        }
    } else {
        let stroke = strokes.iter().map(|s| segment_distance(u, v, s)).fold(f32::MAX, f32::min);
        if stroke < 0.07 {
            h = 0.8 * (1.0 - stroke / 0.07).sqrt();
        }
        if d.dots > 0 {
            let k = 2.0 * PI / d.dots as f32;
            let a = theta.rem_euclid(k) - k / 2.0;
            let (du, dv) = (rn - 0.8, a * 0.8);
            if (du * du + dv * dv).sqrt() < 0.04 {
                h = h.max(0.6);
            }
        }
        if inner && (rn - 0.62).abs() < 0.015 {
            h = h.max(0.4);
        }
    }
    Some((h, inner))
}

/// The strokes of a design in unit-disc coordinates: the numeral across the centre and
/// the emblem above it.
fn design_strokes(d: &CoinDesign) -> Vec<[f32; 4]> {
    let digits: Vec<u32> = d.value.to_string().chars().map(|c| c.to_digit(10).unwrap_or(0)).collect();
    let n = digits.len() as f32;
    let (w, h) = ((0.9 / n).min(0.32), 0.5);
    let gap = w * 0.45;
    let total = n * w + (n - 1.0) * gap;
    let mut out = Vec::new();
    for (i, &dg) in digits.iter().enumerate() {
        let x0 = -total / 2.0 + i as f32 * (w + gap);
        // Slanted (italic) digits: 7-segment numerals are otherwise all right angles.
        let slant = |x: f32, y: f32| x0 + (x + 0.3 * (1.0 - y)) * w * 0.8;
        for s in digit_strokes(dg) {
            out.push([slant(s[0], s[1]), -0.15 + s[1] * h, slant(s[2], s[3]), -0.15 + s[3] * h]);
        }
    }
    for e in &d.emblem {
        out.push([-0.2 + 0.4 * e[0], -0.55 + 0.3 * e[1], -0.2 + 0.4 * e[2], -0.55 + 0.3 * e[3]]);
    }
    out
}

/// The pose, light and surroundings of one rendered instance, drawn at random.
struct Scene {
    /// Coin radius and centre, in pixels.
    radius: f32,
    centre: (f32, f32),
    /// Sine and cosine of the coin's rotation.
    rotation: (f32, f32),
    /// Unit vector towards the light.
    light: [f32; 3],
    /// Offset of the coin's shadow on the background, in pixels (opposite the light).
    shadow: (f32, f32),
    /// 1: crisp relief; lower: worn, noisier relief.
    wear: f32,
    tint: [f32; 3],
    background: [f32; 3],
    /// Background brightness gradient across x and y.
    gradient: [f32; 2],
}

impl Scene {
    fn random(design: &CoinDesign, size: usize, rng: &mut ChaCha8Rng) -> Self {
        let s = size as f32;
        let radius = s * 0.42 * design.size * rng.random_range(0.88..1.05);
        let centre = (s / 2.0 + rng.random_range(-0.06..0.06) * s, s / 2.0 + rng.random_range(-0.06..0.06) * s);
        let rotation = rng.random_range(0.0..2.0 * PI).sin_cos();
        let light_az = rng.random_range(0.0..2.0 * PI);
        let light_el = rng.random_range(0.5..1.1f32);
        let light = [light_az.cos() * light_el.sin(), light_az.sin() * light_el.sin(), light_el.cos()];
        let wear = rng.random_range(0.5..1.0f32);
        let tint: [f32; 3] = [rng.random_range(0.9..1.1), rng.random_range(0.9..1.1), rng.random_range(0.9..1.1)];
        let backgrounds = [[0.92, 0.92, 0.90], [0.85, 0.78, 0.65], [0.45, 0.32, 0.2], [0.2, 0.2, 0.22], [0.6, 0.6, 0.6]];
        let background = backgrounds[rng.random_range(0..backgrounds.len())];
        let gradient = [rng.random_range(-0.1..0.1f32), rng.random_range(-0.1..0.1f32)];
        let shadow = (-light[0] * radius * 0.08, -light[1] * radius * 0.08);
        Self { radius, centre, rotation, light, shadow, wear, tint, background, gradient }
    }
}

/// The relief over the frame (NaN off the coin) and which pixels are the inner metal.
fn height_map(design: &CoinDesign, scene: &Scene, size: usize, rng: &mut ChaCha8Rng) -> (Vec<f32>, Vec<bool>) {
    let strokes = design_strokes(design);
    let (sin_r, cos_r) = scene.rotation;
    let mut hmap = vec![f32::NAN; size * size];
    let mut inner = vec![false; size * size];
    for y in 0..size {
        for x in 0..size {
            let (dx, dy) = ((x as f32 + 0.5 - scene.centre.0) / scene.radius, (y as f32 + 0.5 - scene.centre.1) / scene.radius);
            let (u, v) = (cos_r * dx + sin_r * dy, -sin_r * dx + cos_r * dy);
            if let Some((h, i)) = height(design, u, v, &strokes) {
                let noise = rng.random_range(-0.05..0.05f32) * (1.0 - scene.wear);
                hmap[y * size + x] = h * scene.wear + noise;
                inner[y * size + x] = i;
            }
        }
    }
    (hmap, inner)
}

/// The background at (x, y), with a soft shadow of the coin opposite the light.
fn background(scene: &Scene, size: usize, x: usize, y: usize) -> [f32; 3] {
    let s = size as f32;
    let (sx, sy) = (x as f32 + 0.5 - scene.centre.0 - scene.shadow.0, y as f32 + 0.5 - scene.centre.1 - scene.shadow.1);
    let d = (sx * sx + sy * sy).sqrt() / scene.radius;
    let shade = if d < 1.08 { 0.75 + 0.25 * ((d - 0.95) / 0.13).clamp(0.0, 1.0) } else { 1.0 };
    let g = 1.0 + scene.gradient[0] * (x as f32 / s - 0.5) + scene.gradient[1] * (y as f32 / s - 0.5);
    scene.background.map(|b| b * shade * g)
}

/// The metal at (x, y), lit from the relief's normal: a Lambert and a specular term.
fn metal(design: &CoinDesign, scene: &Scene, hmap: &[f32], inner: bool, size: usize, x: usize, y: usize) -> [f32; 3] {
    let h = |xx: usize, yy: usize| {
        let v = hmap[yy * size + xx];
        if v.is_nan() {
            0.0
        } else {
            v
        }
    };
    let relief = size as f32 / 24.0;
    let light = scene.light;
    let (xl, xr) = (x.saturating_sub(1), (x + 1).min(size - 1));
    let (yu, yd) = (y.saturating_sub(1), (y + 1).min(size - 1));
    let nx = -(h(xr, y) - h(xl, y)) * relief / 2.0;
    let ny = -(h(x, yd) - h(x, yu)) * relief / 2.0;
    let norm = (nx * nx + ny * ny + 1.0).sqrt();
    let n = [nx / norm, ny / norm, 1.0 / norm];
    let lambert = (n[0] * light[0] + n[1] * light[1] + n[2] * light[2]).max(0.0);
    let half = [light[0], light[1], light[2] + 1.0];
    let hn = (half[0] * half[0] + half[1] * half[1] + half[2] * half[2]).sqrt();
    let spec = ((n[0] * half[0] + n[1] * half[1] + n[2] * half[2]) / hn).max(0.0).powi(24) * 0.5;
    let colour = if inner { design.inner_metal.unwrap_or(design.metal) } else { design.metal };
    let k = 0.3 + 0.8 * lambert;
    [0, 1, 2].map(|c| colour[c] * k * scene.tint[c] + spec)
}

/// A 3x3 box blur of each plane of a CHW image.
fn box_blur(img: &mut [f32], size: usize) {
    let plane = size * size;
    let src = img.to_vec();
    for c in 0..3 {
        for y in 0..size {
            for x in 0..size {
                let (mut acc, mut n) = (0.0, 0.0);
                for yy in y.saturating_sub(1)..=(y + 1).min(size - 1) {
                    for xx in x.saturating_sub(1)..=(x + 1).min(size - 1) {
                        acc += src[c * plane + yy * size + xx];
                        n += 1.0;
                    }
                }
                img[c * plane + y * size + x] = acc / n;
            }
        }
    }
}

/// Renders one photograph-like instance of `design` as RGB CHW values in [0, 1]: a
/// random pose and light, the relief lit over a background, an optional blur, then
/// sensor noise and exposure.
pub fn render(design: &CoinDesign, size: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
    let scene = Scene::random(design, size, rng);
    let (hmap, inner) = height_map(design, &scene, size, rng);
    let plane = size * size;
    let mut img = vec![0f32; 3 * plane];
    for y in 0..size {
        for x in 0..size {
            let i = y * size + x;
            let rgb = if hmap[i].is_nan() { background(&scene, size, x, y) } else { metal(design, &scene, &hmap, inner[i], size, x, y) };
            for c in 0..3 {
                img[c * plane + i] = rgb[c];
            }
        }
    }
    if rng.random_bool(0.5) {
        box_blur(&mut img, size);
    }
    let exposure = rng.random_range(0.8..1.2f32);
    let sigma = rng.random_range(0.0..0.04f32);
    for v in &mut img {
        *v = (*v * exposure + rng.random_range(-sigma..=sigma)).clamp(0.0, 1.0);
    }
    img
}

/// Renders `per_class` instances of every design into an [`ImageSet`] prepared as
/// `config` says (RGB: resized and normalized; grey: luminance), deterministically from
/// `seed`. Class names are `<prefix><value>-<index>`.
///
/// ```
/// use rand::SeedableRng;
/// use protonet::data::ImageConfig;
/// use protonet::data::rendered_coins as coins;
/// let designs = coins::currency(3, &mut rand_chacha::ChaCha8Rng::seed_from_u64(0));
/// let set = coins::render_set(&designs, 2, &ImageConfig::rgb(32), 7, "toy-")?;
/// assert_eq!((set.num_classes(), set.num_images()), (3, 6));
/// # Ok::<(), protonet::Error>(())
/// ```
pub fn render_set(designs: &[CoinDesign], per_class: usize, config: &ImageConfig, seed: u64, prefix: &str) -> Result<ImageSet> {
    config.validate()?;
    let mut set = ImageSet::new(config.channels, config.size, config.size);
    for (k, d) in designs.iter().enumerate() {
        let mut rng = ChaCha8Rng::seed_from_u64(seed.wrapping_mul(1_000_003).wrapping_add(k as u64));
        let images = (0..per_class)
            .map(|_| {
                let rgb = render(d, config.size, &mut rng);
                let img = image::RgbImage::from_fn(config.size as u32, config.size as u32, |x, y| {
                    let i = y as usize * config.size + x as usize;
                    let p = config.size * config.size;
                    image::Rgb([0, 1, 2].map(|c| (rgb[c * p + i] * 255.0).round() as u8))
                });
                config.prepare(&image::DynamicImage::ImageRgb8(img))
            })
            .collect();
        set.push_class(format!("{prefix}{}-{k}", d.value), images)?;
    }
    Ok(set)
}
