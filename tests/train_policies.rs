//! The trainer's policies, asserted on a synthetic run with a deliberately noisy validation
//! set (2 episodes of 2 queries per validation): early stopping ends the run at the right
//! validation, the saved and returned model is the one of the best validation (the same
//! weights as a run stopped at that episode), and the learning rate halves on schedule.

mod common;

use candle_core::Device;
use protonet::backbone::{BackboneConfig, Conv4Config};
use protonet::data::ImageConfig;
use protonet::record::HistoryPoint;
use protonet::train::EarlyStopping;
use protonet::{train, Model, ModelConfig, TrainConfig, TrainOptions};

fn model() -> Model {
    Model::new(
        ModelConfig::new(BackboneConfig::Conv4(Conv4Config { in_channels: 1, hidden: 8, depth: 2, ..Default::default() }), ImageConfig::grey(16)),
        4,
        &Device::Cpu,
    )
    .unwrap()
}

fn config(episodes: usize, patience: Option<usize>) -> TrainConfig {
    TrainConfig {
        way: 4,
        shot: 1,
        query: 2,
        episodes,
        learning_rate: 2e-3,
        lr_halve_every: 4,
        val_way: 4,
        val_query: 2,
        val_every: 2,
        val_episodes: 2,
        checkpoint_every: 2,
        patience,
        seed: 3,
        ..Default::default()
    }
}

/// The index of the first strictly best validation, as early stopping counts it.
fn best_index(history: &[HistoryPoint]) -> usize {
    let mut stop = EarlyStopping::default();
    let mut best = 0;
    for (i, h) in history.iter().enumerate() {
        if stop.update(h.episode, h.val_accuracy) {
            best = i;
        }
    }
    best
}

#[test]
fn early_stopping_keeps_the_best_model_and_stops_after_patience_validations() {
    let train_set = common::glyph_set(12, 5, 16, 21);
    let val_set = common::glyph_set(6, 3, 16, 22);
    let patience = 2;
    let dir = tempfile::tempdir().unwrap();
    let mut trained = model();
    let report = train(&mut trained, &train_set, Some(&val_set), &config(400, Some(patience)), dir.path(), &TrainOptions::default()).unwrap();
    let h = &report.history;
    let best = best_index(h);
    assert!(report.stopped_early, "a noisy 2-episode validation must stall within 400 episodes: {h:?}");
    // It stopped at the validation `patience` after the best one, no earlier, no later.
    assert_eq!(h.len(), best + patience + 1, "{h:?}");
    assert_eq!(report.episodes, h[best + patience].episode);
    assert_eq!(report.best_episode, h[best].episode);
    assert_eq!(report.best_val_accuracy, h[best].val_accuracy);
    // No validation between the best and the stop beat it.
    assert!(h[best + 1..].iter().all(|p| p.val_accuracy <= h[best].val_accuracy));

    // The saved model, and the one returned, are the weights at the best episode: the
    // same as a run with the same seed that simply ends there.
    let saved = Model::load(dir.path(), &Device::Cpu).unwrap().tensors();
    let returned = trained.tensors();
    let short_dir = tempfile::tempdir().unwrap();
    let mut short = model();
    train(&mut short, &train_set, Some(&val_set), &config(report.best_episode, None), short_dir.path(), &TrainOptions::default()).unwrap();
    let reference = short.tensors();
    for (name, t) in &reference {
        let same = |x: &candle_core::Tensor| (x - t).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(same(&saved[name]), 0.0, "saved {name} differs from the weights at the best episode");
        assert_eq!(same(&returned[name]), 0.0, "returned {name} differs from the weights at the best episode");
    }
    let record = Model::load(dir.path(), &Device::Cpu).unwrap().config().training.clone().unwrap();
    assert_eq!((record.episode, record.val_accuracy), (report.best_episode, report.best_val_accuracy));
}

#[test]
fn the_learning_rate_halves_every_lr_halve_every_episodes_in_the_history() {
    let set = common::glyph_set(8, 4, 16, 5);
    let dir = tempfile::tempdir().unwrap();
    let report = train(&mut model(), &set, None, &config(12, None), dir.path(), &TrainOptions::default()).unwrap();
    let rates: Vec<(usize, f64)> = report.history.iter().map(|h| (h.episode, h.learning_rate)).collect();
    // Validation after episode e records the rate of episode e, whose index is e - 1.
    assert_eq!(rates, vec![(2, 2e-3), (4, 2e-3), (6, 1e-3), (8, 1e-3), (10, 5e-4), (12, 5e-4)]);
}
