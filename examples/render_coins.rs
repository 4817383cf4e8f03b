//! Writes a contact sheet of procedurally rendered coins: one row per denomination of a
//! made-up currency, several instances per row.
//!
//! `cargo run --release --example render_coins -- [OUT.png] [SEED]`

use protonet::data::rendered_coins as coins;
use protonet::data::ImageConfig;
use rand::SeedableRng;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let out = args.next().unwrap_or_else(|| "coins.png".into());
    let seed: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(1);
    let size: usize = std::env::var("COIN_SIZE").ok().and_then(|s| s.parse().ok()).unwrap_or(96);
    let (per_row, rows) = (8usize, 6usize);
    let designs = coins::currency(rows, &mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
    // Plain [0, 1] RGB so the sheet shows the rendered colours.
    let config = ImageConfig { mean: vec![0.0; 3], std: vec![1.0; 3], ..ImageConfig::rgb(size) };
    let set = coins::render_set(&designs, per_row, &config, seed, "")?;
    let mut sheet = image::RgbImage::new((size * per_row) as u32, (size * rows) as u32);
    let plane = size * size;
    for r in 0..rows {
        for k in 0..per_row {
            let img = set.image(r, k);
            for y in 0..size {
                for x in 0..size {
                    let px = [0, 1, 2].map(|c| (img[c * plane + y * size + x] * 255.0).round() as u8);
                    sheet.put_pixel((k * size + x) as u32, (r * size + y) as u32, image::Rgb(px));
                }
            }
        }
    }
    sheet.save(&out)?;
    println!("wrote {out}: {} denominations ({}) x {per_row} instances", rows, set.class_names().join(", "));
    Ok(())
}
