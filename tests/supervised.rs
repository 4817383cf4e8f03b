//! The supervised trainer over all base classes: it learns, resumes bit for bit, and
//! refuses a resume with other settings.

mod common;

use candle_core::Device;
use protonet::backbone::{BackboneConfig, Conv4Config};
use protonet::data::ImageConfig;
use protonet::method::{BaselineConfig, ClassifierKind};
use protonet::train::supervised::{train_supervised, BaseClassifier, SupervisedConfig};
use protonet::{MethodConfig, Model, ModelConfig, OutputMode, Silent, TrainOptions};

fn model(seed: u64) -> Model {
    let mut cfg = ModelConfig::new(BackboneConfig::Conv4(Conv4Config { in_channels: 1, hidden: 16, depth: 4, ..Default::default() }), ImageConfig::grey(28));
    cfg.method = MethodConfig::Baseline(BaselineConfig::new(ClassifierKind::Cosine));
    Model::new(cfg, seed, &Device::Cpu).unwrap()
}

fn config(classifier: BaseClassifier, epochs: usize) -> SupervisedConfig {
    SupervisedConfig { classifier, epochs, batch: 8, learning_rate: 2e-3, dropout: 0.1, label_smoothing: 0.1, warmup_cosine: Some(0.1), ..Default::default() }
}

#[test]
fn the_loss_falls_over_epochs_for_both_classifiers() {
    let set = common::glyph_set(8, 6, 28, 3);
    for classifier in [BaseClassifier::Linear, BaseClassifier::baseline_pp(), BaseClassifier::Cosine { scale: 10.0, learn_scale: true, class_gains: false }] {
        let dir = tempfile::tempdir().unwrap();
        let mut m = model(1);
        let report = train_supervised(&mut m, &set, &config(classifier, 6), dir.path(), &TrainOptions::default(), &Silent).unwrap();
        assert!(report.finished && report.losses.len() == 6);
        assert!(report.losses[5] < 0.7 * report.losses[0], "{classifier:?}: {:?}", report.losses);
        // The model directory holds the trained backbone, with the method it was made for.
        let loaded = Model::load(dir.path(), &Device::Cpu).unwrap();
        assert_eq!(loaded.config().method, m.config().method);
        assert_eq!(loaded.tensors().keys().collect::<Vec<_>>(), m.tensors().keys().collect::<Vec<_>>());
        // Its config.json records the run: settings, epochs, losses, data.
        let record = loaded.config().supervised.clone().expect("a supervised record in config.json");
        assert_eq!((record.config, record.epochs, record.classes, record.images), (config(classifier, 6), 6, 8, 48));
        assert!(record.losses.len() == 6 && record.losses.iter().zip(&report.losses).all(|(a, b)| (a - b).abs() < 1e-12), "{:?}", record.losses);
        assert!(record.seconds > 0.0);
    }
}

#[test]
fn a_resumed_run_matches_an_uninterrupted_one_bit_for_bit() {
    let set = common::glyph_set(6, 5, 28, 8);
    let cfg = config(BaseClassifier::baseline_pp(), 3);
    let whole = tempfile::tempdir().unwrap();
    let mut a = model(2);
    let ra = train_supervised(&mut a, &set, &cfg, whole.path(), &TrainOptions::default(), &Silent).unwrap();
    let split = tempfile::tempdir().unwrap();
    let mut b = model(2);
    let first = train_supervised(&mut b, &set, &cfg, split.path(), &TrainOptions { stop_after: Some(1), ..Default::default() }, &Silent).unwrap();
    assert!(!first.finished && first.epochs == 1);
    let mut c = model(99); // other starting weights: everything must come from the checkpoint
    let rc = train_supervised(&mut c, &set, &cfg, split.path(), &TrainOptions { mode: OutputMode::Resume, stop_after: None }, &Silent).unwrap();
    assert_eq!(ra.losses, rc.losses);
    for ((name, x), (_, y)) in a.tensors().iter().zip(c.tensors().iter()) {
        assert_eq!(x.flatten_all().unwrap().to_vec1::<f32>().unwrap(), y.flatten_all().unwrap().to_vec1::<f32>().unwrap(), "{name}");
    }
}

#[test]
fn a_resume_with_other_settings_is_refused_by_name() {
    let set = common::glyph_set(6, 5, 28, 8);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(BaseClassifier::Linear, 2);
    train_supervised(&mut model(1), &set, &cfg, dir.path(), &TrainOptions { stop_after: Some(1), ..Default::default() }, &Silent).unwrap();
    let other = SupervisedConfig { learning_rate: 1e-2, ..cfg };
    let e = train_supervised(&mut model(1), &set, &other, dir.path(), &TrainOptions { mode: OutputMode::Resume, stop_after: None }, &Silent)
        .unwrap_err()
        .to_string();
    assert!(e.contains("checkpoint.safetensors") && e.contains("other settings"), "{e}");
}

#[test]
fn a_loss_that_is_not_finite_stops_the_run_with_a_clear_error() {
    let set = common::glyph_set(4, 4, 28, 8);
    let dir = tempfile::tempdir().unwrap();
    let cfg = SupervisedConfig { learning_rate: 1e30, epochs: 3, batch: 4, ..Default::default() };
    let e = train_supervised(&mut model(1), &set, &cfg, dir.path(), &TrainOptions::default(), &Silent).unwrap_err().to_string();
    assert!(e.contains("loss became") && e.contains("epoch"), "{e}");
}
