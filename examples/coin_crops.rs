//! A contact sheet of the coin crop, to judge it by eye: for photos of each denomination
//! of a folder, the photo as given (or pasted small into a larger scene with
//! `--paste-small`, as phone photos look) beside the crop the detector takes from it
//! (`protonet::data::CoinCrop`); a red frame marks photos where no coin was found (the
//! whole photo is kept).
//!
//! ```text
//! cargo run --release --example coin_crops -- --data ../shared/data/coins/euro-coins-kaa --paste-small --out crops.png
//! ```

use std::path::PathBuf;

use clap::Parser;
use image::{imageops::FilterType, DynamicImage, Rgb, RgbImage};
use protonet::data::{list_image_folder, CoinCrop};
use protonet::{Error, Result};

#[path = "support/mod.rs"]
mod support;

/// Contact sheet of coin crops.
#[derive(Parser, Debug)]
#[command(name = "coin_crops")]
struct Args {
    /// A folder with one sub-folder of photos per denomination.
    #[arg(long)]
    data: PathBuf,
    /// Photos per denomination.
    #[arg(long, default_value_t = 2)]
    per_class: usize,
    /// Paste each photo small into a larger scene first.
    #[arg(long)]
    paste_small: bool,
    /// The PNG to write.
    #[arg(long, default_value = "coin-crops.png")]
    out: PathBuf,
    /// Seed of the scenes.
    #[arg(long, default_value_t = 7)]
    seed: u64,
}

const THUMB: u32 = 128;

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn thumb(img: &DynamicImage, missed: bool) -> RgbImage {
    let mut t = image::imageops::resize(&img.to_rgb8(), THUMB, THUMB, FilterType::Triangle);
    if missed {
        for i in 0..THUMB {
            for w in 0..3 {
                for (x, y) in [(i, w), (i, THUMB - 1 - w), (w, i), (THUMB - 1 - w, i)] {
                    t.put_pixel(x, y, Rgb([230, 30, 30]));
                }
            }
        }
    }
    t
}

fn run(a: Args) -> Result<()> {
    let crop = CoinCrop::default();
    let mut pairs = Vec::new();
    let mut found = 0;
    for (k, (_, files)) in list_image_folder(&a.data)?.into_iter().enumerate() {
        for (i, f) in files.iter().take(a.per_class).enumerate() {
            let photo = image::open(f).map_err(|e| Error::Image { path: f.clone(), reason: e.to_string() })?;
            let photo = if a.paste_small { support::scene::paste_small(&photo, a.seed ^ ((k as u64) << 32 | i as u64)) } else { photo };
            let cropped = crop.crop(&photo);
            found += cropped.is_some() as usize;
            pairs.push((thumb(&photo, false), thumb(cropped.as_ref().unwrap_or(&photo), cropped.is_none())));
        }
    }
    if pairs.is_empty() {
        return Err(Error::Dataset { path: a.data.clone(), reason: "no photos".into() });
    }
    // Four pairs per row.
    let cols = 4u32;
    let rows = (pairs.len() as u32).div_ceil(cols);
    let gap = 6;
    let mut sheet = RgbImage::from_pixel(cols * (2 * THUMB + 3 * gap), rows * (THUMB + gap) + gap, Rgb([255, 255, 255]));
    for (n, (photo, coin)) in pairs.iter().enumerate() {
        let (c, r) = (n as u32 % cols, n as u32 / cols);
        let (x, y) = (c * (2 * THUMB + 3 * gap) + gap, r * (THUMB + gap) + gap);
        image::imageops::replace(&mut sheet, photo, x as i64, y as i64);
        image::imageops::replace(&mut sheet, coin, (x + THUMB + gap) as i64, y as i64);
    }
    sheet.save(&a.out).map_err(|e| Error::Image { path: a.out.clone(), reason: e.to_string() })?;
    println!("{} photos, a coin found in {found}; wrote {}", pairs.len(), a.out.display());
    Ok(())
}
