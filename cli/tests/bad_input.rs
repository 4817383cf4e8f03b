//! Bad input through every loader and every CLI command: a clear error naming the file
//! or parameter, never a panic. The corpus (corrupt PNG and JPEG bytes, zero-byte files,
//! wrong extensions, huge dimensions in a header, tiny images, empty folders, non-UTF-8
//! names, symbolic-link loops) is generated here.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::png_header_only;
use protonet::data::{list_image_folder, list_images, load_image, load_image_folder, load_image_folder_report, FolderOptions, ImageConfig};

fn protonet(args: &[&str]) -> (bool, String, String) {
    common::run_protonet(args)
}

fn encoded(format: image::ImageFormat, size: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(size, size, |x, y| image::Rgb([(x * 7) as u8, (y * 5) as u8, ((x + y) * 3) as u8]));
    let mut bytes = Vec::new();
    image::DynamicImage::ImageRgb8(img).write_to(&mut std::io::Cursor::new(&mut bytes), format).unwrap();
    bytes
}

/// The bad files: (name, bytes, what the error must say).
fn corpus() -> Vec<(&'static str, Vec<u8>, &'static str)> {
    let png = encoded(image::ImageFormat::Png, 40);
    let jpeg = encoded(image::ImageFormat::Jpeg, 40);
    let mut corrupt_png = png.clone();
    for b in corrupt_png.iter_mut().skip(40).step_by(3) {
        *b ^= 0x5a;
    }
    vec![
        ("corrupt.png", corrupt_png, "cannot decode image"),
        ("truncated.jpg", jpeg[..jpeg.len() / 3].to_vec(), "cannot decode image"),
        ("truncated.png", png[..png.len() / 2].to_vec(), "cannot decode image"),
        ("zero.png", Vec::new(), "empty (0 bytes)"),
        ("notes.jpg", b"these are my notes, not a photo".to_vec(), "not a PNG or JPEG"),
        ("huge.png", png_header_only(20000, 20000), "larger than the 16384-pixel limit"),
        ("tiny.png", encoded(image::ImageFormat::Png, 1), "1x1 pixels, smaller than 8x8"),
    ]
}

/// Three good classes of 6 glyphs, and `bad` written into the first class.
fn folder_with(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let root = dir.join(name.replace('.', "_"));
    common::write_glyph_folder(&root, 3, 6, 28, 4);
    std::fs::write(root.join("glyph000").join(name), bytes).unwrap();
    root
}

fn model_dir(dir: &Path) -> PathBuf {
    let data = dir.join("good");
    common::write_glyph_folder(&data, 4, 6, 28, 9);
    let model = dir.join("model");
    let (ok, _, stderr) = protonet(&[
        "train",
        "--dataset",
        "folder",
        "--data",
        data.to_str().unwrap(),
        "--out",
        model.to_str().unwrap(),
        "--channels",
        "1",
        "--image-size",
        "28",
        "--hidden",
        "8",
        "--way",
        "3",
        "--shot",
        "1",
        "--query",
        "1",
        "--episodes",
        "2",
        "--quiet",
    ]);
    assert!(ok, "{stderr}");
    model
}

#[test]
fn every_loader_names_the_bad_file() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ImageConfig::grey(28);
    for (name, bytes, message) in corpus() {
        let root = folder_with(dir.path(), name, &bytes);
        let file = root.join("glyph000").join(name);
        let err = load_image(&file, &cfg).unwrap_err().to_string();
        assert!(err.contains(name) && err.contains(message), "{name}: {err}");
        let err = load_image_folder(&root, &cfg, &FolderOptions::default()).unwrap_err().to_string();
        assert!(err.contains(name) && err.contains(message), "{name}: {err}");
        // Skipping: the bad file is reported and counted, the rest loads.
        let (set, skipped) = load_image_folder_report(&root, &cfg, &FolderOptions { skip_bad_images: true }).unwrap();
        assert_eq!((set.num_images(), skipped.len()), (18, 1), "{name}");
        assert_eq!(skipped[0].path, file);
    }
    // A JPEG named .png is read by its content.
    let root = folder_with(dir.path(), "photo.png", &encoded(image::ImageFormat::Jpeg, 32));
    assert_eq!(load_image_folder(&root, &cfg, &FolderOptions::default()).unwrap().num_images(), 19);
}

#[test]
fn every_cli_command_names_the_bad_file() {
    let dir = tempfile::tempdir().unwrap();
    let model = model_dir(dir.path());
    let m = model.to_str().unwrap();
    for (name, bytes, message) in corpus() {
        let root = folder_with(dir.path(), name, &bytes);
        let d = root.to_str().unwrap();
        let out = dir.path().join(format!("out-{name}"));
        let o = out.to_str().unwrap();
        let png = dir.path().join("x.png");
        let commands: Vec<Vec<&str>> = vec![
            vec![
                "train",
                "--dataset",
                "folder",
                "--data",
                d,
                "--out",
                o,
                "--channels",
                "1",
                "--image-size",
                "28",
                "--way",
                "2",
                "--shot",
                "1",
                "--query",
                "1",
                "--episodes",
                "1",
                "--quiet",
            ],
            vec!["eval", "--model", m, "--dataset", "folder", "--data", d, "--way", "2", "--episodes", "2", "--query", "2", "--quiet"],
            vec!["predict", "--model", m, "--support", d, "--query", d],
            vec!["embed", "--model", m, "--data", d, "--out", o],
            vec!["plot-embeddings", "--model", m, "--data", d, "--out", png.to_str().unwrap()],
        ];
        for args in &commands {
            let (ok, _, stderr) = protonet(args);
            assert!(!ok, "{name}: protonet {} accepted a bad file", args[0]);
            assert!(stderr.contains(name) && stderr.contains(message), "{name}, protonet {}: {stderr}", args[0]);
        }
        // As a query, a bad file is reported and the others are still answered.
        let good = root.join("glyph001");
        let bad = root.join("glyph000").join(name);
        let (ok, stdout, stderr) = protonet(&[
            "predict",
            "--model",
            m,
            "--support",
            model.parent().unwrap().join("good").to_str().unwrap(),
            "--query",
            bad.to_str().unwrap(),
            good.to_str().unwrap(),
        ]);
        assert!(!ok && stderr.contains(name) && stderr.contains("1 of 7 queries"), "{name}: {stderr}");
        assert_eq!(stdout.lines().count(), 6);
        // With --skip-bad-images, training and evaluation go on, and say what they skipped.
        let (ok, _, stderr) = protonet(&[&commands[1][..], &["--skip-bad-images"]].concat());
        assert!(ok, "{name}: {stderr}");
        assert!(stderr.contains("skipped 1 of 19 image files") && stderr.contains(name), "{name}: {stderr}");
    }
}

#[test]
fn bad_folders_and_parameters_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let model = model_dir(dir.path());
    let m = model.to_str().unwrap();
    let data = dir.path().join("data");
    common::write_glyph_folder(&data, 3, 6, 28, 5);
    let d = data.to_str().unwrap();
    let eval = |extra: &[&str]| protonet(&[&["eval", "--model", m, "--dataset", "folder", "--data", d, "--episodes", "2", "--quiet"], extra].concat());

    // N-way larger than the classes, K or Q of 0, too few images for the episode.
    let (ok, _, e) = eval(&["--way", "5"]);
    assert!(!ok && e.contains("5-way episodes need at least 5 classes, but the dataset has only 3"), "{e}");
    let (ok, _, e) = eval(&["--way", "2", "--shot", "0"]);
    assert!(!ok && e.contains("`shot`: must be at least 1"), "{e}");
    let (ok, _, e) = eval(&["--way", "2", "--query", "0"]);
    assert!(!ok && e.contains("`query`: must be at least 1"), "{e}");
    let (ok, _, e) = eval(&["--way", "2", "--shot", "3", "--query", "5"]);
    assert!(!ok && e.contains("class `glyph000` has 6 images, but a 3-shot 5-query episode needs 8"), "{e}");

    // A single class.
    let single = dir.path().join("single");
    common::write_glyph_folder(&single, 1, 6, 28, 5);
    let (ok, _, e) = protonet(&["eval", "--model", m, "--dataset", "folder", "--data", single.to_str().unwrap(), "--way", "2", "--quiet"]);
    assert!(!ok && e.contains("the dataset has only 1"), "{e}");

    // An empty class folder, an empty data folder, a missing folder.
    let empty_class = dir.path().join("empty-class");
    common::write_glyph_folder(&empty_class, 2, 6, 28, 5);
    std::fs::create_dir_all(empty_class.join("nothing-here")).unwrap();
    let err = list_image_folder(&empty_class).unwrap_err().to_string();
    assert!(err.contains("nothing-here") && err.contains("holds no PNG or JPEG images"), "{err}");
    let (ok, _, e) = protonet(&["eval", "--model", m, "--dataset", "folder", "--data", empty_class.to_str().unwrap(), "--way", "2", "--quiet"]);
    assert!(!ok && e.contains("nothing-here"), "{e}");
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let err = list_image_folder(&empty).unwrap_err().to_string();
    assert!(err.contains("no class sub-folders"), "{err}");
    let (ok, _, e) = protonet(&["predict", "--model", m, "--support", dir.path().join("missing").to_str().unwrap(), "--query", d]);
    assert!(!ok && e.contains("missing") && e.contains("does not exist") && e.contains("`support`") && e.contains("--support takes a folder"), "{e}");
    // A missing query path is reported like an unreadable file: the other queries are answered.
    let (ok, out, e) = protonet(&["predict", "--model", m, "--support", d, "--query", dir.path().join("nope.png").to_str().unwrap(), d]);
    assert!(!ok && e.contains("--query") && e.contains("nope.png") && e.contains("no such file") && e.contains("1 of 19 queries"), "{e}");
    assert_eq!(out.lines().count(), 18, "{out}");
    // Queries in folders named like the support classes are scored.
    assert!(e.contains("queries in folders named like support classes") && e.contains("among the 80% most confident"), "{e}");

    // Bad numbers for training.
    let (ok, _, e) = protonet(&["train", "--dataset", "folder", "--data", d, "--out", dir.path().join("t").to_str().unwrap(), "--lr=-1", "--quiet"]);
    assert!(!ok && (e.contains("lr") || e.contains("learning")), "{e}");
    let (ok, _, e) = protonet(&["predict", "--model", m, "--support", d, "--query", d, "--threshold=-3"]);
    assert!(!ok && e.contains("threshold") && e.contains("positive"), "{e}");
    let (ok, _, e) = protonet(&["predict", "--model", m, "--support", d, "--query", d, "--reject", "--quantile", "2"]);
    assert!(!ok && e.contains("quantile"), "{e}");
}

#[test]
#[cfg(unix)]
fn non_utf8_names_and_symlink_loops() {
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().unwrap();
    let model = model_dir(dir.path());
    let data = dir.path().join("data");
    common::write_glyph_folder(&data, 3, 6, 28, 5);
    // A file name that is not UTF-8 (Latin-1 "é").
    let odd = data.join("glyph001").join(std::ffi::OsStr::from_bytes(b"caf\xe9.png"));
    std::fs::copy(data.join("glyph001/00.png"), &odd).unwrap();
    let set = load_image_folder(&data, &ImageConfig::grey(28), &FolderOptions::default()).unwrap();
    assert_eq!(set.num_images(), 19);
    // Through the command line (as an OsStr argument); the JSON shows the name lossily.
    let out = Command::new(env!("CARGO_BIN_EXE_protonet"))
        .args(["predict", "--model", model.to_str().unwrap(), "--support", data.to_str().unwrap(), "--json", "--query"])
        .arg(&odd)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert!(v["file"].as_str().unwrap().ends_with("caf\u{fffd}.png"), "{v}");

    // A symbolic-link loop inside a query folder.
    let loop_dir = dir.path().join("queries");
    std::fs::create_dir_all(&loop_dir).unwrap();
    std::fs::copy(data.join("glyph001/00.png"), loop_dir.join("a.png")).unwrap();
    std::os::unix::fs::symlink(&loop_dir, loop_dir.join("again")).unwrap();
    let err = list_images(std::slice::from_ref(&loop_dir)).unwrap_err().to_string();
    assert!(err.contains("symbolic-link loop"), "{err}");
    let (ok, _, e) = protonet(&["predict", "--model", model.to_str().unwrap(), "--support", data.to_str().unwrap(), "--query", loop_dir.to_str().unwrap()]);
    assert!(!ok && e.contains("symbolic-link loop"), "{e}");
}

#[test]
fn damaged_models_and_checkpoints_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let model = model_dir(dir.path());
    let data = dir.path().join("good");
    let (m, d) = (model.to_str().unwrap(), data.to_str().unwrap());
    let train_args = [
        "train",
        "--dataset",
        "folder",
        "--data",
        d,
        "--out",
        m,
        "--channels",
        "1",
        "--image-size",
        "28",
        "--hidden",
        "8",
        "--way",
        "3",
        "--shot",
        "1",
        "--query",
        "1",
        "--episodes",
        "4",
        "--quiet",
        "--resume",
    ];

    // A truncated checkpoint: resuming says which file and why; the model is untouched.
    let ckpt = model.join("checkpoint.safetensors");
    let weights_before = std::fs::read(model.join("model.safetensors")).unwrap();
    let bytes = std::fs::read(&ckpt).unwrap();
    std::fs::write(&ckpt, &bytes[..bytes.len() - 100]).unwrap();
    let (ok, _, e) = protonet(&train_args);
    assert!(!ok && e.contains("checkpoint.safetensors") && e.contains("truncated"), "{e}");
    assert_eq!(std::fs::read(model.join("model.safetensors")).unwrap(), weights_before);
    std::fs::write(&ckpt, &bytes).unwrap();
    let (ok, stdout, e) = protonet(&train_args);
    assert!(ok && stdout.contains("trained 4 episodes"), "{e}");

    // Weights from another backbone, and a config that does not match its weights.
    let other = dir.path().join("other");
    let (ok, _, e) = protonet(&[
        "train",
        "--dataset",
        "folder",
        "--data",
        d,
        "--out",
        other.to_str().unwrap(),
        "--channels",
        "1",
        "--image-size",
        "28",
        "--hidden",
        "16",
        "--way",
        "3",
        "--shot",
        "1",
        "--query",
        "1",
        "--episodes",
        "1",
        "--quiet",
    ]);
    assert!(ok, "{e}");
    std::fs::copy(other.join("model.safetensors"), model.join("model.safetensors")).unwrap();
    let (ok, _, e) = protonet(&["eval", "--model", m, "--dataset", "folder", "--data", d, "--way", "2", "--episodes", "2", "--query", "2", "--quiet"]);
    assert!(!ok && e.contains("model.safetensors") && e.contains("shape"), "{e}");
    let (ok, _, e) = protonet(&["predict", "--model", m, "--support", d, "--query", d]);
    assert!(!ok && e.contains("model.safetensors") && e.contains("shape"), "{e}");
    std::fs::write(model.join("config.json"), "{\"format\": \"protonet-model\"").unwrap();
    let (ok, _, e) = protonet(&["embed", "--model", m, "--data", d, "--out", dir.path().join("e").to_str().unwrap()]);
    assert!(!ok && e.contains("config.json") && e.contains("invalid config"), "{e}");
}

/// A non-finite loss stops training with the episode and what to do, and writes no NaN
/// weights: the saved model and checkpoint are the last good ones.
#[test]
fn a_nan_loss_stops_training_without_saving_nan_weights() {
    use candle_core::Device;
    use protonet::backbone::{BackboneConfig, Conv4Config};
    use protonet::{train, Error, Model, ModelConfig, TrainConfig, TrainOptions};
    let mut set = common::glyph_set(6, 6, 28, 1);
    let dir = tempfile::tempdir().unwrap();
    let cfg = ModelConfig::new(BackboneConfig::Conv4(Conv4Config { in_channels: 1, hidden: 8, depth: 4, ..Default::default() }), ImageConfig::grey(28));
    let config = TrainConfig { way: 3, shot: 1, query: 1, episodes: 4, val_every: 2, checkpoint_every: 1, ..Default::default() };
    let mut model = Model::new(cfg.clone(), 1, &Device::Cpu).unwrap();
    train(&mut model, &set, None, &config, dir.path(), &TrainOptions::default()).unwrap();
    let saved = std::fs::read(dir.path().join("model.safetensors")).unwrap();
    let ckpt = std::fs::read(dir.path().join("checkpoint.safetensors")).unwrap();
    // Poison every image: the next episode's loss is NaN.
    for im in set.images_mut() {
        im[0] = f32::NAN;
    }
    let more = TrainConfig { episodes: 8, ..config };
    let err = train(&mut model, &set, None, &more, dir.path(), &TrainOptions { mode: protonet::OutputMode::Resume, ..Default::default() }).unwrap_err();
    assert!(matches!(err, Error::NonFiniteLoss { episode: 5, .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("episode 5") && msg.contains("resume from the last checkpoint"), "{msg}");
    assert_eq!(std::fs::read(dir.path().join("model.safetensors")).unwrap(), saved);
    assert_eq!(std::fs::read(dir.path().join("checkpoint.safetensors")).unwrap(), ckpt);
    let reloaded = Model::load(dir.path(), &Device::Cpu).unwrap();
    assert!(reloaded.tensors().values().all(|t| t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().all(|v| v.is_finite())));
}
