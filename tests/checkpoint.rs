//! Model directories and training checkpoints: round trips, damage, resume.

mod common;

use candle_core::{Device, Tensor};
use protonet::backbone::{BackboneConfig, Conv4Config};
use protonet::data::ImageConfig;
use protonet::{train, Model, ModelConfig, TrainConfig, TrainOptions};

fn small_config() -> ModelConfig {
    ModelConfig::new(BackboneConfig::Conv4(Conv4Config { in_channels: 1, hidden: 16, depth: 4, ..Default::default() }), ImageConfig::grey(28))
}

fn small_training(episodes: usize) -> TrainConfig {
    TrainConfig {
        way: 5,
        shot: 2,
        query: 3,
        episodes,
        val_way: 5,
        val_query: 3,
        val_every: 5,
        val_episodes: 4,
        checkpoint_every: 3,
        patience: None,
        ..Default::default()
    }
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

#[test]
fn save_then_load_gives_identical_embeddings() {
    let dir = tempfile::tempdir().unwrap();
    let set = common::glyph_set(10, 6, 28, 1);
    let mut model = Model::new(small_config(), 3, &Device::Cpu).unwrap();
    // Train a little so the BatchNorm running statistics are not the initial ones.
    train(&mut model, &set, None, &small_training(4), dir.path(), &TrainOptions::default()).unwrap();
    let loaded = Model::load(dir.path(), &Device::Cpu).unwrap();
    assert_eq!(loaded.config().backbone, model.config().backbone);
    assert!(loaded.config().training.is_some(), "training record saved");
    let x = Tensor::randn(0f32, 1.0, (7, 1, 28, 28), &Device::Cpu).unwrap();
    for train_mode in [false, true] {
        let a = model.net().embed(&x, train_mode).unwrap();
        let b = loaded.net().embed(&x, train_mode).unwrap();
        assert_eq!(max_abs_diff(&a, &b), 0.0);
    }
}

#[test]
fn same_seed_same_initial_weights() {
    let a = Model::new(small_config(), 5, &Device::Cpu).unwrap().tensors();
    let b = Model::new(small_config(), 5, &Device::Cpu).unwrap().tensors();
    let c = Model::new(small_config(), 6, &Device::Cpu).unwrap().tensors();
    let key = "block0.conv.weight";
    assert_eq!(max_abs_diff(&a[key], &b[key]), 0.0);
    assert!(max_abs_diff(&a[key], &c[key]) > 0.0);
}

#[test]
fn mismatched_or_damaged_checkpoints_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let model = Model::new(small_config(), 3, &Device::Cpu).unwrap();
    model.save(dir.path()).unwrap();

    // A config that does not match the weights.
    let config_path = dir.path().join("config.json");
    let good_config = std::fs::read_to_string(&config_path).unwrap();
    std::fs::write(&config_path, good_config.replace("\"hidden\": 16", "\"hidden\": 32")).unwrap();
    let err = Model::load(dir.path(), &Device::Cpu).err().expect("mismatch must fail").to_string();
    assert!(err.contains("model.safetensors") && err.contains("shape"), "{err}");

    // Another depth: the file has tensors this configuration does not know.
    std::fs::write(&config_path, good_config.replace("\"depth\": 4", "\"depth\": 3")).unwrap();
    let err = Model::load(dir.path(), &Device::Cpu).err().expect("extra tensor must fail").to_string();
    assert!(err.contains("unexpected tensor") && err.contains("another backbone"), "{err}");

    // A config that is not JSON.
    std::fs::write(&config_path, "{ not json").unwrap();
    let err = Model::load(dir.path(), &Device::Cpu).err().expect("bad json must fail").to_string();
    assert!(err.contains("config.json") && err.contains("invalid config"), "{err}");
    std::fs::write(&config_path, &good_config).unwrap();

    // Truncated weights.
    let weights = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    let err = Model::load(dir.path(), &Device::Cpu).err().expect("truncated must fail").to_string();
    assert!(err.contains("model.safetensors") && err.contains("truncated"), "{err}");

    // A missing directory.
    let err = Model::load(&dir.path().join("nope"), &Device::Cpu).err().expect("missing dir must fail").to_string();
    assert!(err.contains("config.json"), "{err}");
}

#[test]
fn interrupted_then_resumed_training_equals_an_uninterrupted_run() {
    let set = common::glyph_set(12, 8, 28, 2);
    let val = common::glyph_set(6, 8, 28, 3);
    let cfg = small_training(10);

    let straight_dir = tempfile::tempdir().unwrap();
    let mut straight = Model::new(small_config(), 4, &Device::Cpu).unwrap();
    let r1 = train(&mut straight, &set, Some(&val), &cfg, straight_dir.path(), &TrainOptions::default()).unwrap();

    let resumed_dir = tempfile::tempdir().unwrap();
    let mut first = Model::new(small_config(), 4, &Device::Cpu).unwrap();
    let stop = TrainOptions { stop_after: Some(6), ..Default::default() };
    let partial = train(&mut first, &set, Some(&val), &cfg, resumed_dir.path(), &stop).unwrap();
    assert_eq!(partial.episodes, 6);
    // A new process would start from a fresh model and the checkpoint.
    let mut second = Model::new(small_config(), 99, &Device::Cpu).unwrap();
    let resume = TrainOptions { mode: protonet::OutputMode::Resume, ..Default::default() };
    let r2 = train(&mut second, &set, Some(&val), &cfg, resumed_dir.path(), &resume).unwrap();
    assert_eq!(r2.episodes, 10);
    // The same history, timings aside.
    let strip = |h: &[protonet::record::HistoryPoint]| h.iter().map(|p| (p.episode, p.train_loss, p.val_accuracy)).collect::<Vec<_>>();
    assert_eq!(strip(&r1.history), strip(&r2.history));
    let a = straight.tensors();
    let b = second.tensors();
    for (name, t) in &a {
        assert_eq!(max_abs_diff(t, &b[name]), 0.0, "{name} differs after resume");
    }

    // Resuming on another training set (other classes) is refused: the saved sampler
    // would draw indices that do not exist there.
    let other_set = common::glyph_set(9, 8, 28, 2);
    let err = train(&mut second, &other_set, Some(&val), &cfg, resumed_dir.path(), &resume).unwrap_err().to_string();
    assert!(err.contains("cannot resume on this training set"), "{err}");

    // Resuming with other settings is refused with a clear message.
    let other = TrainConfig { way: 4, ..cfg.clone() };
    let err = train(&mut second, &set, Some(&val), &other, resumed_dir.path(), &resume).unwrap_err().to_string();
    assert!(err.contains("checkpoint.safetensors") && err.contains("other training settings"), "{err}");
}
