//! Fine-tuning EfficientNet-Lite0's head (src/finetune.rs) on the real ImageNet weights:
//! the head starts exactly at the ImageNet network, training moves it (temperature
//! included) and lowers the training loss, and the model directory holds only the head
//! plus the reference to the weights, and loads back to the same embeddings.

mod common;

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use protonet::backbone::{trunk_side, Backbone, BackboneConfig, EfficientNetLite0, HeadConfig};
use protonet::data::rendered_coins as coins;
use protonet::data::ImageConfig;
use protonet::finetune::{fine_tune_efficientnet, head_model, trunk_features, FineTuneConfig, HEAD_TRAINING_DIR};
use protonet::pretrained::PretrainedWeights;
use protonet::{Model, Silent, TrainConfig, TrainOptions};
use rand::SeedableRng;

fn weights() -> PathBuf {
    common::pretrained_weights("fine-tuning test")
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
}

fn rendered(classes: usize, per_class: usize, size: usize, seed: u64) -> protonet::data::ImageSet {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let designs: Vec<_> = (0..classes.div_ceil(4)).flat_map(|_| coins::currency(4, &mut rng)).take(classes).collect();
    coins::render_set(&designs, per_class, &ImageConfig::rgb(size), seed, "c").unwrap()
}

#[test]
fn head_model_starts_at_the_imagenet_head_needs_data() {
    let path = weights();
    let dev = Device::Cpu;
    let net = EfficientNetLite0::load(&path, &dev).unwrap();
    let set = rendered(2, 2, 96, 3);
    let x = Tensor::from_vec(set.gather(&[(0, 0), (0, 1), (1, 0)]), (3, 3, 96, 96), &dev).unwrap();
    let frozen = net.embed(&x, false).unwrap();
    let trunk = net.trunk(&x).unwrap();
    assert_eq!(trunk.dims(), &[3, 320, trunk_side(96), trunk_side(96)]);

    // Without normalization the head is the ImageNet head at temperature 1.
    let plain = head_model(&net, &HeadConfig { normalize: false }, trunk_side(96), &dev).unwrap();
    assert!(max_diff(&plain.net().embed(&trunk, false).unwrap(), &frozen) < 1e-5);
    // With it, unit vectors scaled by sqrt(5) (cosine temperature 10).
    let cosine = head_model(&net, &HeadConfig::default(), trunk_side(96), &dev).unwrap();
    let norm = frozen.sqr().unwrap().sum_keepdim(1).unwrap().sqrt().unwrap();
    let expected = (frozen.broadcast_div(&norm).unwrap() * 5f64.sqrt()).unwrap();
    assert!(max_diff(&cosine.net().embed(&trunk, false).unwrap(), &expected) < 1e-5);

    // The cached features are the trunk's maps, image i at rotation r at i * rotations + r.
    let cached = trunk_features(&net, &set, 2, 3, &dev, &Silent).unwrap();
    assert_eq!(cached.class_len(0), 4);
    let t0: Vec<f32> = trunk.get(1).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    let c = cached.image(0, 2);
    assert!(t0.iter().zip(c).all(|(a, b)| (a - b).abs() < 1e-4));
    let rot = Tensor::from_vec(set.rotated(1).unwrap().gather(&[(1, 0)]), (1, 3, 96, 96), &dev).unwrap();
    let r: Vec<f32> = net.trunk(&rot).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    assert!(r.iter().zip(cached.image(1, 1)).all(|(a, b)| (a - b).abs() < 1e-4));
}

#[test]
fn fine_tuning_trains_the_head_and_saves_only_it_needs_data() {
    let _ = weights();
    let dev = Device::Cpu;
    let size = 96;
    let image = ImageConfig::rgb(size);
    let set = rendered(8, 8, size, 11);
    let config = FineTuneConfig {
        train: TrainConfig {
            way: 6,
            shot: 2,
            query: 4,
            episodes: 60,
            learning_rate: 1e-3,
            lr_halve_every: 0,
            val_every: 20,
            patience: None,
            seed: 5,
            ..TrainConfig::default()
        },
        rotations: 2,
        head: HeadConfig::default(),
        batch: 16,
        description: "a test coin model".into(),
        image: image.clone(),
        weights: PretrainedWeights::efficientnet_lite0(),
    };
    let dir = tempfile::tempdir().unwrap();
    let (model, report) = fine_tune_efficientnet(&config, &set, None, dir.path(), &TrainOptions::default(), &Device::Cpu, &Silent).unwrap();
    assert_eq!(report.episodes, 60);
    let first = report.history.first().unwrap().train_loss;
    let last = report.history.last().unwrap().train_loss;
    assert!(last.is_finite() && last < first, "training loss went from {first} to {last}");

    // Only the head is stored, with the reference to the ImageNet weights.
    let stored = model.tensors();
    assert!(stored.keys().all(|k| k.starts_with("head.")), "{:?}", stored.keys());
    assert_eq!(stored.len(), 6);
    let bytes = std::fs::metadata(dir.path().join("model.safetensors")).unwrap().len();
    assert!(bytes < 2_000_000, "{bytes} bytes");
    let text = std::fs::read_to_string(dir.path().join("config.json")).unwrap();
    assert!(text.contains("579344248a93") && text.contains("\"head\"") && text.contains("a test coin model"), "{text}");
    assert!(dir.path().join(HEAD_TRAINING_DIR).join("checkpoint.safetensors").is_file());
    match &model.config().backbone {
        BackboneConfig::EfficientNetLite0 { head: Some(h), .. } => assert!(h.normalize),
        other => panic!("{other:?}"),
    }

    // Training moved the head and its temperature away from the ImageNet start.
    let net = EfficientNetLite0::load(&weights(), &dev).unwrap();
    let start = head_model(&net, &HeadConfig::default(), trunk_side(size), &dev).unwrap().tensors();
    assert!(max_diff(&stored["head.conv.weight"], &start["head.conv.weight"]) > 1e-4);
    assert!(max_diff(&stored["head.log_temperature"], &start["head.log_temperature"]) > 1e-5);

    // The directory loads back to the same embeddings of images.
    let again = Model::load(dir.path(), &dev).unwrap();
    let x = Tensor::from_vec(set.gather(&[(0, 0), (3, 1)]), (2, 3, size, size), &dev).unwrap();
    let a = model.net().embed(&x, false).unwrap();
    assert_eq!(a.dims(), &[2, 1280]);
    assert!(max_diff(&a, &again.net().embed(&x, false).unwrap()) < 1e-6);
}

#[test]
fn fine_tuning_settings_are_checked() {
    let mut c = FineTuneConfig::default();
    c.train.rotation_augment = true;
    assert!(c.validate().unwrap_err().to_string().contains("rotation"));
    let c = FineTuneConfig { rotations: 5, ..FineTuneConfig::default() };
    assert!(c.validate().unwrap_err().to_string().contains("rotations"));
    // Grey images are refused before any work.
    let grey = ImageConfig::grey(96);
    let set = protonet::data::ImageSet::new(1, 96, 96);
    let dir = tempfile::tempdir().unwrap();
    let config = FineTuneConfig { image: grey, ..FineTuneConfig::default() };
    let err =
        fine_tune_efficientnet(&config, &set, None, dir.path(), &TrainOptions::default(), &Device::Cpu, &Silent).err().expect("grey images must be refused");
    assert!(err.to_string().contains("RGB"), "{err}");
}

#[test]
fn fine_tune_command_end_to_end_and_its_errors_needs_data() {
    use common::run_protonet;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("classes");
    common::write_glyph_folder(&data, 5, 6, 40, 21);
    let data_s = data.to_str().unwrap();
    let out = tmp.path().join("model");
    let out_s = out.to_str().unwrap();

    // Errors that need no weights: a missing folder, a class in two folders, a bad size.
    let (ok, _, err) = run_protonet(&["fine-tune", "--data", "/no/such/folder", "--out", out_s]);
    assert!(!ok && err.contains("/no/such/folder"), "{err}");
    let (ok, _, err) = run_protonet(&["fine-tune", "--data", data_s, "--data", data_s, "--out", out_s]);
    assert!(!ok && err.contains("in both sets"), "{err}");
    let (ok, _, err) = run_protonet(&["fine-tune", "--data", data_s, "--out", out_s, "--image-size", "8"]);
    assert!(!ok && err.contains("image-size"), "{err}");
    // --lite2 is for the trunk training, and its blocks are Lite2's 21.
    let (ok, _, err) = run_protonet(&["fine-tune", "--data", data_s, "--out", out_s, "--lite2"]);
    assert!(!ok && err.contains("--trunk"), "{err}");
    let (ok, _, err) = run_protonet(&["fine-tune", "--data", data_s, "--out", out_s, "--first-block", "3"]);
    assert!(!ok && err.contains("first-block") && err.contains("--trunk"), "{err}");
    let (ok, _, err) = run_protonet(&["fine-tune", "--data", data_s, "--out", out_s, "--trunk", "--lite2", "--first-block", "21", "--image-size", "64"]);
    assert!(!ok && err.contains("first-block") && err.contains("below 21"), "{err}");
    assert!(!out.join("model.safetensors").exists());

    weights();
    let args = [
        "fine-tune",
        "--data",
        data_s,
        "--out",
        out_s,
        "--image-size",
        "64",
        "--episodes",
        "10",
        "--way",
        "3",
        "--shot",
        "2",
        "--query",
        "2",
        "--rotations",
        "2",
        "--val-every",
        "5",
        "--description",
        "glyph test",
        "--quiet",
    ];
    let (ok, stdout, err) = run_protonet(&args);
    assert!(ok, "{err}");
    assert!(stdout.contains("fine-tuned 10 episodes"), "{stdout}");
    let eval = ["eval", "--model", out_s, "--dataset", "folder", "--data", data_s, "--way", "3", "--shot", "2", "--query", "2", "--episodes", "5", "--json"];
    let (ok, stdout, err) = run_protonet(&eval);
    assert!(ok && stdout.contains("\"accuracy\""), "{stdout}{err}");
    // The head-only model under head-training/ is refused for images, with a pointer.
    let head = out.join(HEAD_TRAINING_DIR);
    let mut eval_head = eval;
    eval_head[2] = head.to_str().unwrap();
    let (ok, _, err) = run_protonet(&eval_head);
    assert!(!ok && err.contains("use the model directory above it"), "{err}");
}
