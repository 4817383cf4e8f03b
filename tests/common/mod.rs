//! Helpers shared by the integration tests: synthetic glyph data sets and data paths.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use protonet::data::ImageSet;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A random "character": a few thick strokes on a `size x size` canvas, as stroke
/// endpoints in [0, 1].
pub fn random_glyph(rng: &mut ChaCha8Rng) -> Vec<(f32, f32, f32, f32)> {
    (0..3).map(|_| (rng.random(), rng.random(), rng.random(), rng.random())).collect()
}

/// Draws one instance of `glyph`: shifted by up to 2 pixels, strokes 1 on 0, with noise.
pub fn draw_glyph(glyph: &[(f32, f32, f32, f32)], size: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
    let mut img = vec![0f32; size * size];
    let (dx, dy) = (rng.random_range(-2.0..2.0f32), rng.random_range(-2.0..2.0f32));
    let m = 4.0;
    let span = size as f32 - 2.0 * m;
    for &(x0, y0, x1, y1) in glyph {
        for s in 0..=40 {
            let t = s as f32 / 40.0;
            let x = m + span * (x0 + (x1 - x0) * t) + dx;
            let y = m + span * (y0 + (y1 - y0) * t) + dy;
            for oy in -1..=1 {
                for ox in -1..=1 {
                    let (px, py) = ((x.round() as i32 + ox), (y.round() as i32 + oy));
                    if px >= 0 && py >= 0 && (px as usize) < size && (py as usize) < size {
                        img[py as usize * size + px as usize] = 1.0;
                    }
                }
            }
        }
    }
    for v in &mut img {
        *v = (*v + rng.random_range(-0.1..0.1f32)).clamp(0.0, 1.0);
    }
    img
}

/// An in-memory set of `classes` glyph classes with `per_class` drawings each.
pub fn glyph_set(classes: usize, per_class: usize, size: usize, seed: u64) -> ImageSet {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut set = ImageSet::new(1, size, size);
    for c in 0..classes {
        let g = random_glyph(&mut rng);
        let imgs = (0..per_class).map(|_| draw_glyph(&g, size, &mut rng)).collect();
        set.push_class(format!("glyph{c:03}"), imgs).unwrap();
    }
    set
}

/// Writes a glyph set as an image folder of PNGs (one sub-folder per class).
pub fn write_glyph_folder(dir: &Path, classes: usize, per_class: usize, size: usize, seed: u64) {
    let set = glyph_set(classes, per_class, size, seed);
    for c in 0..set.num_classes() {
        let cdir = dir.join(set.class_name(c));
        std::fs::create_dir_all(&cdir).unwrap();
        for i in 0..set.class_len(c) {
            let px: Vec<u8> = set.image(c, i).iter().map(|v| (v * 255.0).round() as u8).collect();
            let img = image::GrayImage::from_raw(size as u32, size as u32, px).unwrap();
            img.save(cdir.join(format!("{i:02}.png"))).unwrap();
        }
    }
}

/// Every file of `dir` (not its sub-folders' contents) and its bytes: compare two to see
/// that nothing was written.
pub fn snapshot(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.path().is_file())
        .map(|e| (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap()))
        .collect()
}

/// The shared data sets: `$PROTONET_DATA`, else `../shared/data` beside the checkout.
pub fn data_root() -> PathBuf {
    if let Some(d) = std::env::var_os("PROTONET_DATA") {
        return PathBuf::from(d);
    }
    repo_root().join("../shared/data")
}

/// The checkout's root (the workspace), from the library's or the CLI package's tests.
pub fn repo_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    if manifest.join("Cargo.lock").exists() {
        manifest
    } else {
        manifest.parent().map(Path::to_path_buf).unwrap_or(manifest)
    }
}

/// How to leave out the tests that need the shared data or the fetched weights.
pub const SKIP_HINT: &str = "to leave out the tests that need data, run `cargo test --release -- --skip needs_data` \
     (they are named *_needs_data, and the summary counts them as filtered out)";

/// The shared Omniglot folder, or a clear message of why it is missing.
pub fn omniglot_root() -> Result<PathBuf, String> {
    let root = data_root().join("omniglot");
    if root.join("splits/vinyals/train.txt").is_file() {
        Ok(root)
    } else {
        Err(format!("Omniglot not found at {} (set PROTONET_DATA to the folder holding omniglot/)", root.display()))
    }
}

/// The Omniglot root, or a panic that names the test, the missing folder and [`SKIP_HINT`].
pub fn require_omniglot(test: &str) -> PathBuf {
    omniglot_root().unwrap_or_else(|msg| panic!("{test}: {msg}; {SKIP_HINT}"))
}

/// The converted EfficientNet-Lite0 ImageNet weights, or a panic that says how to fetch
/// them (CI's `.ci/run` does, with `scripts/fetch-pretrained.sh`).
pub fn pretrained_weights(test: &str) -> PathBuf {
    protonet::pretrained::PretrainedWeights::efficientnet_lite0()
        .loadable(protonet::pretrained::CONVERTED_WEIGHTS)
        .unwrap_or_else(|e| panic!("{test}: {e}; {SKIP_HINT}"))
}

/// A folder of the shared data (`sub`, for example `coins/korean-won-cho0h5`), or a panic
/// naming it.
pub fn require_data(sub: &str, test: &str) -> PathBuf {
    let path = data_root().join(sub);
    if !path.is_dir() {
        panic!("{test}: {} not found (set PROTONET_DATA to the folder holding it); {SKIP_HINT}", path.display());
    }
    path
}
