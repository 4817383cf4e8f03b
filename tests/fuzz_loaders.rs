//! Property tests with many random inputs ("fuzzing" without a nightly toolchain): the
//! model, classifier and checkpoint loaders and the image and dataset loaders return an
//! error or a value for any bytes, never panic.
//!
//! `PROTONET_FUZZ_ITERS` sets the iterations per target (default 300; the README quotes a
//! run with 20000): `PROTONET_FUZZ_ITERS=20000 cargo test --release --test fuzz_loaders`.
//! An input that panics is saved under `target/fuzz-failures/` and named in the failure.

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use candle_core::Device;
use protonet::backbone::{BackboneConfig, Conv4Config};
use protonet::data::{load_image, load_image_folder, FolderOptions, ImageConfig};
use protonet::{train, FewShotClassifier, Model, ModelConfig, TrainConfig, TrainOptions};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn iterations() -> usize {
    std::env::var("PROTONET_FUZZ_ITERS").ok().and_then(|v| v.parse().ok()).unwrap_or(300)
}

/// A random mutation of `bytes`: flipped, overwritten, inserted or removed bytes,
/// truncation, or a changed digit (JSON numbers), with a bias to the first 256 bytes
/// (headers).
fn mutate(bytes: &[u8], rng: &mut ChaCha8Rng) -> Vec<u8> {
    let mut b = bytes.to_vec();
    for _ in 0..rng.random_range(1..=4) {
        if b.is_empty() {
            b.push(rng.random());
            continue;
        }
        let pos = if rng.random_bool(0.6) { rng.random_range(0..b.len().min(256)) } else { rng.random_range(0..b.len()) };
        match rng.random_range(0..6) {
            0 => b[pos] ^= 1 << rng.random_range(0..8),
            1 => b[pos] = rng.random(),
            2 => b.insert(pos, rng.random()),
            3 => {
                b.remove(pos);
            }
            4 => b.truncate(pos),
            _ => {
                if let Some(d) = b[pos..].iter().position(|c| c.is_ascii_digit()) {
                    b[pos + d] = b"0123456789"[rng.random_range(0..10)];
                }
            }
        }
    }
    b
}

/// Runs `f`, and on a panic saves `input` and fails naming it.
fn no_panic(target: &str, i: usize, input: &[u8], f: impl FnOnce()) {
    if catch_unwind(AssertUnwindSafe(f)).is_err() {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-failures");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{target}-{i}"));
        std::fs::write(&path, input).unwrap();
        panic!("{target}: iteration {i} panicked; input saved to {}", path.display());
    }
}

fn small_model() -> Model {
    let cfg = ModelConfig::new(BackboneConfig::Conv4(Conv4Config { in_channels: 1, hidden: 4, depth: 2, ..Default::default() }), ImageConfig::grey(12));
    Model::new(cfg, 1, &Device::Cpu).unwrap()
}

#[test]
fn model_and_classifier_loaders_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good");
    let mut clf = FewShotClassifier::new(small_model());
    clf.add_class("a", &[vec![0.1; 144], vec![0.2; 144]]).unwrap();
    clf.add_class("b", &[vec![0.9; 144]]).unwrap();
    clf.calibrate_threshold(0.9).unwrap();
    clf.save(&good).unwrap();
    let files = ["model.safetensors", "config.json", "classifier.json", "prototypes.safetensors"];
    let originals: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(good.join(f)).unwrap()).collect();
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(0xf22);
    let (mut ok, mut err) = (0, 0);
    for i in 0..iterations() {
        let which = rng.random_range(0..files.len());
        for (f, o) in files.iter().zip(&originals) {
            std::fs::write(work.join(f), o).unwrap();
        }
        let bad = mutate(&originals[which], &mut rng);
        std::fs::write(work.join(files[which]), &bad).unwrap();
        no_panic(files[which], i, &bad, || {
            let r = FewShotClassifier::load(&work, &Device::Cpu);
            if let Ok(c) = &r {
                // Whatever loads must also predict without panicking.
                let _ = c.predict(&vec![0.5; 144]);
            }
            match r {
                Ok(_) => ok += 1,
                Err(_) => err += 1,
            }
        });
    }
    eprintln!("model/classifier loaders: {ok} mutated inputs loaded, {err} refused with an error");
    assert!(err > 0);
}

#[test]
fn checkpoint_resume_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let set = common::glyph_set(4, 4, 12, 1);
    let config = TrainConfig { way: 2, shot: 1, query: 1, episodes: 2, val_every: 1, checkpoint_every: 1, ..Default::default() };
    let run = dir.path().join("run");
    train(&mut small_model(), &set, None, &config, &run, &TrainOptions::default()).unwrap();
    let ckpt = run.join("checkpoint.safetensors");
    let original = std::fs::read(&ckpt).unwrap();
    let more = TrainConfig { episodes: 3, ..config };
    let mut rng = ChaCha8Rng::seed_from_u64(0xc4e);
    let mut refused = 0;
    for i in 0..iterations() / 3 {
        let bad = mutate(&original, &mut rng);
        std::fs::write(&ckpt, &bad).unwrap();
        no_panic("checkpoint", i, &bad, || {
            let r = train(&mut small_model(), &set, None, &more, &run, &TrainOptions { mode: protonet::OutputMode::Resume, ..Default::default() });
            refused += r.is_err() as usize;
        });
    }
    eprintln!("checkpoint resume: {refused} of {} mutated checkpoints refused with an error", iterations() / 3);
    assert!(refused > 0);
}

#[test]
fn image_loader_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let mut seeds: Vec<(&str, Vec<u8>)> = Vec::new();
    for (ext, format) in [("png", image::ImageFormat::Png), ("jpg", image::ImageFormat::Jpeg)] {
        let img = image::RgbImage::from_fn(24, 20, |x, y| image::Rgb([(x * 9) as u8, (y * 11) as u8, 128]));
        let mut bytes = Vec::new();
        image::DynamicImage::ImageRgb8(img).write_to(&mut std::io::Cursor::new(&mut bytes), format).unwrap();
        seeds.push((ext, bytes));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(0x1a6e);
    let path: PathBuf = dir.path().join("x");
    let (mut decoded, mut refused) = (0, 0);
    for i in 0..iterations() * 3 {
        let (ext, seed) = &seeds[i % seeds.len()];
        let bad = mutate(seed, &mut rng);
        let file = path.with_extension(ext);
        std::fs::write(&file, &bad).unwrap();
        no_panic("image", i, &bad, || match load_image(&file, &ImageConfig::rgb(16)) {
            Ok(v) => {
                assert_eq!(v.len(), 3 * 16 * 16);
                decoded += 1;
            }
            Err(e) => {
                assert!(e.to_string().contains("x."), "the error names the file: {e}");
                refused += 1;
            }
        });
    }
    eprintln!("image loader: {decoded} mutated images decoded, {refused} refused with an error");
    assert!(refused > 0);
}

#[test]
fn dataset_loader_never_panics_on_random_folders() {
    let mut rng = ChaCha8Rng::seed_from_u64(0xd1);
    let png = {
        let mut bytes = Vec::new();
        image::DynamicImage::ImageLuma8(image::GrayImage::from_fn(16, 16, |x, _| image::Luma([(x * 16) as u8])))
            .write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)
            .unwrap();
        bytes
    };
    let (mut loaded, mut refused) = (0, 0);
    for i in 0..iterations() / 3 {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("data");
        std::fs::create_dir_all(&root).unwrap();
        for c in 0..rng.random_range(0..4) {
            let class = root.join(format!("class{c}"));
            std::fs::create_dir_all(&class).unwrap();
            for f in 0..rng.random_range(0..4) {
                let name = ["a.png", "b.jpg", "c.txt", "d.PNG", ".hidden.png"][rng.random_range(0..5)];
                let bytes = match rng.random_range(0..3) {
                    0 => png.clone(),
                    1 => mutate(&png, &mut rng),
                    _ => Vec::new(),
                };
                std::fs::write(class.join(format!("{f}{name}")), bytes).unwrap();
            }
            if rng.random_bool(0.2) {
                std::fs::create_dir_all(class.join("nested")).unwrap();
            }
            #[cfg(unix)]
            if rng.random_bool(0.1) {
                std::os::unix::fs::symlink(&root, class.join("loop")).unwrap();
            }
        }
        if rng.random_bool(0.2) {
            std::fs::write(root.join("stray.png"), &png).unwrap();
        }
        let skip = rng.random_bool(0.5);
        no_panic("dataset", i, &[], || match load_image_folder(&root, &ImageConfig::grey(12), &FolderOptions { skip_bad_images: skip }) {
            Ok(set) => {
                assert!(set.num_classes() > 0 && set.num_images() > 0);
                loaded += 1;
            }
            Err(_) => refused += 1,
        });
    }
    eprintln!("dataset loader: {loaded} random folders loaded, {refused} refused with an error");
    assert!(refused > 0 && loaded > 0);
}
