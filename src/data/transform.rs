use std::path::Path;

use image::{imageops::FilterType, DynamicImage};
use serde::{Deserialize, Serialize};

use super::locate::CoinCrop;
use crate::error::{Error, Result};

/// How images are turned into network input: size, colour, normalization.
///
/// It is stored in every model's `config.json`, so evaluation and prediction prepare
/// images exactly as training did.
///
/// ```
/// use protonet::data::ImageConfig;
/// let omni = ImageConfig::omniglot();
/// assert_eq!((omni.size, omni.channels), (28, 1));
/// let rgb = ImageConfig::rgb(84);
/// rgb.validate().unwrap();
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// Images are resized to `size x size` pixels.
    pub size: usize,
    /// 1 (grey) or 3 (RGB).
    pub channels: usize,
    /// Per-channel mean subtracted after scaling pixels to [0, 1].
    pub mean: Vec<f32>,
    /// Per-channel standard deviation divided by after subtracting the mean.
    pub std: Vec<f32>,
    /// Use `1 - value` (Omniglot: strokes become 1 on a 0 background, as in Snell et al.).
    #[serde(default)]
    pub invert: bool,
    /// Crop each photo to the coin it shows first ([`CoinCrop`]), keeping the whole photo
    /// when no circle is found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crop: Option<CoinCrop>,
}

impl ImageConfig {
    /// Omniglot as in the paper's code: 28x28 grey, inverted, no further normalization.
    pub fn omniglot() -> Self {
        Self { size: 28, channels: 1, mean: vec![0.0], std: vec![1.0], invert: true, crop: None }
    }

    /// RGB at `size x size`, normalized with the ImageNet channel statistics.
    pub fn rgb(size: usize) -> Self {
        Self { size, channels: 3, mean: vec![0.485, 0.456, 0.406], std: vec![0.229, 0.224, 0.225], invert: false, crop: None }
    }

    /// Grey at `size x size`, values in [0, 1].
    pub fn grey(size: usize) -> Self {
        Self { size, channels: 1, mean: vec![0.0], std: vec![1.0], invert: false, crop: None }
    }

    /// Checks the sizes and statistics.
    pub fn validate(&self) -> Result<()> {
        if !(1..=4096).contains(&self.size) {
            return Err(Error::param("image-size", format!("must be in 1..=4096, got {}", self.size)));
        }
        if self.channels != 1 && self.channels != 3 {
            return Err(Error::param("channels", format!("must be 1 or 3, got {}", self.channels)));
        }
        if self.mean.len() != self.channels || self.std.len() != self.channels {
            return Err(Error::param("mean/std", format!("need {} values each", self.channels)));
        }
        if self.std.iter().any(|s| !(s.is_finite() && *s > 0.0)) || self.mean.iter().any(|m| !m.is_finite()) {
            return Err(Error::param("mean/std", "std must be positive and all values finite"));
        }
        self.crop.as_ref().map_or(Ok(()), CoinCrop::validate)
    }

    /// Crops (when `crop` says so), resizes, converts and normalizes a decoded image into
    /// CHW `f32` values.
    pub fn prepare(&self, img: &DynamicImage) -> Vec<f32> {
        match self.crop.as_ref().and_then(|c| c.crop(img)) {
            Some(coin) => self.prepare_whole(&coin),
            None => self.prepare_whole(img),
        }
    }

    fn prepare_whole(&self, img: &DynamicImage) -> Vec<f32> {
        let n = self.size as u32;
        let plane = self.size * self.size;
        let mut out = vec![0f32; self.channels * plane];
        if self.channels == 1 {
            let resized = image::imageops::resize(&img.to_luma32f(), n, n, FilterType::Triangle);
            for (i, p) in resized.pixels().enumerate() {
                out[i] = p.0[0];
            }
        } else {
            let resized = image::imageops::resize(&img.to_rgb32f(), n, n, FilterType::Triangle);
            for (i, p) in resized.pixels().enumerate() {
                for c in 0..3 {
                    out[c * plane + i] = p.0[c];
                }
            }
        }
        for c in 0..self.channels {
            let (m, s) = (self.mean[c], self.std[c]);
            for v in &mut out[c * plane..(c + 1) * plane] {
                let x = if self.invert { 1.0 - v.clamp(0.0, 1.0) } else { v.clamp(0.0, 1.0) };
                *v = (x - m) / s;
            }
        }
        out
    }
}

/// The largest image side [`load_image`] decodes, in pixels; larger images are refused
/// from their header, before any pixel is decoded, so memory stays bounded (16384 x 16384
/// RGBA is 1 GiB).
pub const MAX_IMAGE_SIDE: u32 = 16384;
/// The smallest image side [`load_image`] accepts, in pixels: smaller images carry too
/// little to classify (and are often placeholders or broken thumbnails).
pub const MIN_IMAGE_SIDE: u32 = 8;

/// Decodes the image at `path` (PNG or JPEG, recognised by its content, whatever its
/// extension) and prepares it as `config` says.
///
/// Errors name the file: unreadable, not an image, truncated or corrupt data, sides
/// larger than [`MAX_IMAGE_SIDE`] (refused from the header, before decoding) or smaller
/// than [`MIN_IMAGE_SIDE`].
///
/// ```no_run
/// use protonet::data::{load_image, ImageConfig};
/// let pixels = load_image("coin.jpg".as_ref(), &ImageConfig::rgb(84))?;
/// assert_eq!(pixels.len(), 3 * 84 * 84);
/// # Ok::<(), protonet::Error>(())
/// ```
pub fn load_image(path: &Path, config: &ImageConfig) -> Result<Vec<f32>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    Ok(config.prepare(&decode_image(&bytes, path)?.0))
}

/// Decodes an image held in memory (PNG or JPEG, recognised by its content) with the
/// checks and limits of [`load_image`], before any preparation; `name` names it in errors
/// (a file, or an upload). Returns the image and, when it decodes but looks damaged (a
/// JPEG without its end-of-image marker, a PNG without `IEND`), a warning saying so.
///
/// ```
/// let img = image::RgbImage::from_pixel(16, 16, image::Rgb([200, 150, 0]));
/// let mut png = Vec::new();
/// image::DynamicImage::ImageRgb8(img).write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)?;
/// let (decoded, warning) = protonet::data::decode_image(&png, "upload.png".as_ref())?;
/// assert_eq!((decoded.width(), warning), (16, None));
/// let err = protonet::data::decode_image(b"hello", "notes.jpg".as_ref()).unwrap_err();
/// assert!(err.to_string().contains("notes.jpg") && err.to_string().contains("not a PNG or JPEG"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn decode_image(bytes: &[u8], name: &Path) -> Result<(DynamicImage, Option<String>)> {
    let bad = |reason: String| Error::Image { path: name.to_path_buf(), reason };
    // Recognise the format by the content, not the extension.
    match image::guess_format(bytes) {
        _ if bytes.is_empty() => return Err(bad("the file is empty (0 bytes)".into())),
        Ok(image::ImageFormat::Png | image::ImageFormat::Jpeg) => {}
        Ok(other) => return Err(bad(format!("a {other:?} file; only PNG and JPEG are read"))),
        Err(_) => return Err(bad("not a PNG or JPEG image (unrecognised content)".into())),
    }
    let reader = || image::ImageReader::new(std::io::Cursor::new(bytes)).with_guessed_format().map_err(|e| Error::io(name, e));
    // The size from the header alone, before any pixel is decoded.
    let (w, h) = reader()?.into_dimensions().map_err(|e| bad(e.to_string()))?;
    if w > MAX_IMAGE_SIDE || h > MAX_IMAGE_SIDE {
        return Err(bad(format!("the image is {w}x{h} pixels, larger than the {MAX_IMAGE_SIDE}-pixel limit; downscale it first")));
    }
    if w < MIN_IMAGE_SIDE || h < MIN_IMAGE_SIDE {
        return Err(bad(format!("the image is {w}x{h} pixels, smaller than {MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE}")));
    }
    let mut reader = reader()?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(1 << 30);
    reader.limits(limits);
    let img = reader.decode().map_err(|e| bad(e.to_string()))?;
    Ok((img, damage_warning(bytes)))
}

/// Like [`load_image`], with a warning when the file decodes but looks damaged: a JPEG
/// that ends before its end-of-image marker (a cut-off download or copy, whose missing
/// part the decoder fills with grey), or a PNG without its closing `IEND` chunk.
///
/// ```no_run
/// use protonet::data::{load_image_with_warning, ImageConfig};
/// let (pixels, warning) = load_image_with_warning("coin.jpg".as_ref(), &ImageConfig::rgb(84))?;
/// if let Some(w) = warning {
///     eprintln!("warning: {w}");
/// }
/// # Ok::<(), protonet::Error>(())
/// ```
pub fn load_image_with_warning(path: &Path, config: &ImageConfig) -> Result<(Vec<f32>, Option<String>)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let (img, warning) = decode_image(&bytes, path)?;
    Ok((config.prepare(&img), warning.map(|w| format!("{}: {w}", path.display()))))
}

/// Why an image file that decoded looks damaged, if it does (see [`load_image_with_warning`]).
fn damage_warning(bytes: &[u8]) -> Option<String> {
    let last = |marker: [u8; 2]| bytes.windows(2).rposition(|w| w == marker);
    match image::guess_format(bytes) {
        // Inside entropy-coded data every 0xFF is followed by 0x00 or a restart marker, so
        // the last start-of-scan (FFDA) must be followed by an end-of-image (FFD9).
        Ok(image::ImageFormat::Jpeg) => match (last([0xFF, 0xDA]), last([0xFF, 0xD9])) {
            (Some(sos), Some(eoi)) if eoi > sos => None,
            _ => Some(format!(
                "the JPEG data ends early ({} bytes, no end-of-image marker): the file looks cut off, and its missing part was decoded as grey",
                bytes.len()
            )),
        },
        Ok(image::ImageFormat::Png) if !bytes.windows(4).rev().take(64).any(|w| w == b"IEND") => {
            Some(format!("the PNG has no closing IEND chunk ({} bytes): the file looks cut off", bytes.len()))
        }
        _ => None,
    }
}

/// Checks a number of quarter turns to average embeddings over: 1 (none) to 4.
///
/// ```
/// assert!(protonet::data::validate_rotations(4).is_ok() && protonet::data::validate_rotations(5).is_err());
/// ```
pub fn validate_rotations(rotations: usize) -> Result<()> {
    if !(1..=4).contains(&rotations) {
        return Err(Error::param("rotations", format!("must be 1 to 4, got {rotations}")));
    }
    Ok(())
}

/// Rotates a square CHW image (`channels` planes of `n x n`) counter-clockwise by
/// `quarter_turns * 90` degrees.
///
/// ```
/// // 2x2: [a b; c d] rotated counter-clockwise is [b d; a c].
/// let r = protonet::data::rotate_square_ccw(&[1.0, 2.0, 3.0, 4.0], 1, 2, 1);
/// assert_eq!(r, vec![2.0, 4.0, 1.0, 3.0]);
/// ```
pub fn rotate_square_ccw(img: &[f32], channels: usize, n: usize, quarter_turns: usize) -> Vec<f32> {
    let mut cur = img.to_vec();
    for _ in 0..quarter_turns % 4 {
        let mut next = vec![0f32; cur.len()];
        for c in 0..channels {
            let (src, dst) = (&cur[c * n * n..(c + 1) * n * n], &mut next[c * n * n..(c + 1) * n * n]);
            for y in 0..n {
                for x in 0..n {
                    // Counter-clockwise: the pixel at (y, x) comes from (x, n-1-y).
                    dst[y * n + x] = src[x * n + (n - 1 - y)];
                }
            }
        }
        cur = next;
    }
    cur
}

#[cfg(test)]
mod tests {
    use super::{damage_warning, rotate_square_ccw};

    #[test]
    fn cut_off_jpegs_and_pngs_are_told_apart_from_whole_ones() {
        let img = image::RgbImage::from_fn(64, 64, |x, y| image::Rgb([(x * 4) as u8, (y * 4) as u8, ((x + y) * 2) as u8]));
        let mut jpeg = Vec::new();
        image::DynamicImage::ImageRgb8(img.clone()).write_to(&mut std::io::Cursor::new(&mut jpeg), image::ImageFormat::Jpeg).unwrap();
        let mut png = Vec::new();
        image::DynamicImage::ImageRgb8(img).write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).unwrap();
        assert_eq!(damage_warning(&jpeg), None);
        assert_eq!(damage_warning(&png), None);
        let mut trailing = jpeg.clone();
        trailing.extend_from_slice(b"camera trailer");
        assert_eq!(damage_warning(&trailing), None, "data after the end-of-image marker is not damage");
        assert!(damage_warning(&jpeg[..jpeg.len() * 2 / 3]).is_some_and(|w| w.contains("cut off")));
        assert!(damage_warning(&png[..png.len() - 12]).is_some_and(|w| w.contains("IEND")));
    }

    #[test]
    fn rotation_is_cyclic_and_per_channel() {
        let img: Vec<f32> = (0..18).map(|v| v as f32).collect(); // 2 channels of 3x3
        assert_eq!(rotate_square_ccw(&img, 2, 3, 4), img);
        assert_eq!(rotate_square_ccw(&rotate_square_ccw(&img, 2, 3, 1), 2, 3, 3), img);
        let r = rotate_square_ccw(&img, 2, 3, 1);
        // Second channel rotated on its own: its top-left comes from its top-right.
        assert_eq!(r[9], img[9 + 2]);
    }
}
