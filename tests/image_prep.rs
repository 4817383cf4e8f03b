//! Image preparation, value by value: tiny PNGs with known pixels through `load_image`,
//! checked against the formula `(pixel / 255 - mean[c]) / std[c]` in CHW order (channel
//! planes R, G, B), inversion for Omniglot-style grey, and resizing of uniform areas.

use protonet::data::{load_image, ImageConfig};

/// Pixel (x, y) of the test image: every channel different, so a swapped channel or a
/// transposed plane shows.
fn rgb_pixel(x: u32, y: u32) -> [u8; 3] {
    [(10 + 30 * x) as u8, (5 + 29 * y) as u8, (200 - 7 * x - 11 * y) as u8]
}

#[test]
fn rgb_values_are_normalized_per_channel_in_chw_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rgb.png");
    image::RgbImage::from_fn(8, 8, |x, y| image::Rgb(rgb_pixel(x, y))).save(&path).unwrap();
    let config = ImageConfig::rgb(8);
    let v = load_image(&path, &config).unwrap();
    assert_eq!(v.len(), 3 * 64);
    for c in 0..3 {
        for y in 0..8u32 {
            for x in 0..8u32 {
                let expected = (rgb_pixel(x, y)[c] as f32 / 255.0 - config.mean[c]) / config.std[c];
                let got = v[c * 64 + (y * 8 + x) as usize];
                assert!((got - expected).abs() < 1e-5, "channel {c} at ({x}, {y}): {got} vs {expected}");
            }
        }
    }
}

#[test]
fn grey_values_are_scaled_and_inverted_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("grey.png");
    let level = |x: u32, y: u32| (x * 32 + y * 3) as u8;
    image::GrayImage::from_fn(8, 8, |x, y| image::Luma([level(x, y)])).save(&path).unwrap();
    let plain = load_image(&path, &ImageConfig::grey(8)).unwrap();
    let inverted = load_image(&path, &ImageConfig { invert: true, ..ImageConfig::grey(8) }).unwrap();
    for y in 0..8u32 {
        for x in 0..8u32 {
            let i = (y * 8 + x) as usize;
            let expected = level(x, y) as f32 / 255.0;
            assert!((plain[i] - expected).abs() < 1e-6, "({x}, {y}): {} vs {expected}", plain[i]);
            assert!((inverted[i] - (1.0 - expected)).abs() < 1e-6);
        }
    }
}

#[test]
fn resizing_keeps_uniform_areas_and_their_place() {
    // 16x16: left half red, right half blue; at 8x8 the halves stay where they were.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("halves.png");
    image::RgbImage::from_fn(16, 16, |x, _| if x < 8 { image::Rgb([255, 0, 0]) } else { image::Rgb([0, 0, 255]) }).save(&path).unwrap();
    let config = ImageConfig { mean: vec![0.0; 3], std: vec![1.0; 3], ..ImageConfig::rgb(8) };
    let v = load_image(&path, &config).unwrap();
    let at = |c: usize, x: usize, y: usize| v[c * 64 + y * 8 + x];
    for y in 0..8 {
        for x in [0, 1, 2] {
            assert!((at(0, x, y) - 1.0).abs() < 1e-6 && at(2, x, y).abs() < 1e-6, "left is red at ({x}, {y})");
        }
        for x in [5, 6, 7] {
            assert!(at(0, x, y).abs() < 1e-6 && (at(2, x, y) - 1.0).abs() < 1e-6, "right is blue at ({x}, {y})");
        }
    }
}
