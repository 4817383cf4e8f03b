//! Coin photos as phones take them: a coin photo (already a crop of its coin) pasted
//! small into a larger scene, to measure the coin crop on (the shared coin sets are crops).

use image::{DynamicImage, Rgb, RgbImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// `photo`'s central disc (the coin) pasted at a random place of a scene three times its
/// side: a plain surface of a random colour with a soft gradient and grain. Seeded.
pub fn paste_small(photo: &DynamicImage, seed: u64) -> DynamicImage {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let coin = photo.to_rgb8();
    let side = coin.width().min(coin.height());
    let canvas = 3 * side;
    let base: [f32; 3] = [rng.random_range(40.0..220.0), rng.random_range(40.0..220.0), rng.random_range(40.0..220.0)];
    let (gx, gy) = (rng.random_range(-40.0..40.0f32), rng.random_range(-40.0..40.0f32));
    let mut scene = RgbImage::from_fn(canvas, canvas, |x, y| {
        let t = (x as f32 / canvas as f32 - 0.5, y as f32 / canvas as f32 - 0.5);
        Rgb(base.map(|c| (c + gx * t.0 + gy * t.1).clamp(0.0, 255.0) as u8))
    });
    for p in scene.pixels_mut() {
        let n: i16 = rng.random_range(-6..=6);
        p.0 = p.0.map(|c| (c as i16 + n).clamp(0, 255) as u8);
    }
    let (ox, oy) = (rng.random_range(0..=canvas - side), rng.random_range(0..=canvas - side));
    let (cx, cy) = (coin.width() as f32 / 2.0, coin.height() as f32 / 2.0);
    let r = 0.48 * side as f32;
    for y in 0..side {
        for x in 0..side {
            let (sx, sy) = (x + (coin.width() - side) / 2, y + (coin.height() - side) / 2);
            if ((sx as f32 + 0.5 - cx).powi(2) + (sy as f32 + 0.5 - cy).powi(2)).sqrt() <= r {
                scene.put_pixel(ox + x, oy + y, *coin.get_pixel(sx, sy));
            }
        }
    }
    DynamicImage::ImageRgb8(scene)
}
