//! Output directories are never replaced by accident: training or saving into a directory
//! that holds a model, classifier or run needs `OutputMode::Resume` or
//! `OutputMode::Overwrite`; the default refuses and leaves every file as it was.

mod common;

use candle_core::Device;
use protonet::backbone::{BackboneConfig, Conv4Config};
use protonet::data::ImageConfig;
use protonet::{train, Error, FewShotClassifier, Model, ModelConfig, OutputMode, TrainConfig, TrainOptions};

fn model() -> Model {
    Model::new(
        ModelConfig::new(BackboneConfig::Conv4(Conv4Config { in_channels: 1, hidden: 8, depth: 2, ..Default::default() }), ImageConfig::grey(16)),
        1,
        &Device::Cpu,
    )
    .unwrap()
}

fn training(episodes: usize) -> TrainConfig {
    TrainConfig {
        way: 3,
        shot: 1,
        query: 2,
        episodes,
        val_way: 3,
        val_query: 2,
        val_every: 2,
        val_episodes: 2,
        checkpoint_every: 2,
        patience: None,
        ..Default::default()
    }
}

#[test]
fn training_into_a_finished_model_is_refused_unless_resumed_or_overwritten() {
    let set = common::glyph_set(5, 5, 16, 3);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    // A missing directory works as before.
    let first = train(&mut model(), &set, Some(&set), &training(4), &out, &TrainOptions::default()).unwrap();
    assert_eq!(first.episodes, 4);
    let before = common::snapshot(&out);
    assert!(before.contains_key("config.json") && before.contains_key("checkpoint.safetensors"));

    // The default refuses, names the directory and what it holds, and writes nothing.
    let err = train(&mut model(), &set, Some(&set), &training(2), &out, &TrainOptions::default()).unwrap_err();
    assert!(matches!(err, Error::OutputExists { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains(&out.display().to_string()) && msg.contains("a model trained for") && msg.contains("best validation"), "{msg}");
    assert!(msg.contains("episode 4 of 4") && msg.contains("Resume") && msg.contains("overwrite"), "{msg}");
    assert_eq!(common::snapshot(&out), before, "a refused run must leave every file byte-identical");
    // So does saving a model there.
    assert!(matches!(model().save(&out), Err(Error::OutputExists { .. })));
    assert_eq!(common::snapshot(&out), before);

    // Resume continues the run.
    let resume = TrainOptions { mode: OutputMode::Resume, ..Default::default() };
    let resumed = train(&mut model(), &set, Some(&set), &training(6), &out, &resume).unwrap();
    assert_eq!((resumed.episodes, resumed.history.first().map(|h| h.episode)), (6, Some(2)), "resumed from episode 4, history kept");

    // Overwrite replaces it with a new run.
    let overwrite = TrainOptions { mode: OutputMode::Overwrite, ..Default::default() };
    let fresh = train(&mut model(), &set, Some(&set), &training(2), &out, &overwrite).unwrap();
    assert_eq!((fresh.episodes, fresh.history.len()), (2, 1));
    let record = Model::load(&out, &Device::Cpu).unwrap().config().training.clone().unwrap();
    assert_eq!(record.config.episodes, 2);

    // An empty directory works in the default mode.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    train(&mut model(), &set, None, &training(2), &empty, &TrainOptions::default()).unwrap();
}

#[test]
fn resuming_a_directory_with_a_model_but_no_run_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    model().save(dir.path()).unwrap();
    let before = common::snapshot(dir.path());
    let set = common::glyph_set(5, 5, 16, 3);
    let resume = TrainOptions { mode: OutputMode::Resume, ..Default::default() };
    let err = train(&mut model(), &set, None, &training(2), dir.path(), &resume).unwrap_err().to_string();
    assert!(err.contains("no training run to resume"), "{err}");
    assert_eq!(common::snapshot(dir.path()), before);
}

#[test]
fn classifiers_are_not_saved_over_unless_asked() {
    let dir = tempfile::tempdir().unwrap();
    let mut clf = FewShotClassifier::new(model());
    clf.add_class("a", &[vec![0.1; 256]]).unwrap();
    clf.add_class("b", &[vec![0.9; 256]]).unwrap();
    clf.save(dir.path()).unwrap();
    let before = common::snapshot(dir.path());
    clf.add_class("c", &[vec![0.5; 256]]).unwrap();
    let err = clf.save(dir.path()).unwrap_err().to_string();
    assert!(err.contains("a saved classifier"), "{err}");
    assert_eq!(common::snapshot(dir.path()), before);
    clf.save_with(dir.path(), OutputMode::Overwrite).unwrap();
    assert_eq!(FewShotClassifier::load(dir.path(), &Device::Cpu).unwrap().class_names(), ["a", "b", "c"]);
}
