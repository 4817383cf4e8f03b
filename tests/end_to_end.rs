//! End to end: an image folder the test writes itself, episodic training, then
//! evaluation on classes never seen in training.

mod common;

use candle_core::Device;
use protonet::backbone::{BackboneConfig, Conv4Config};
use protonet::data::{load_image_folder, FolderOptions, ImageConfig};
use protonet::{evaluate, train, EpisodeSpec, Model, ModelConfig, TrainConfig, TrainOptions};

#[test]
fn trains_on_generated_glyphs_and_recognises_unseen_ones() {
    let started = std::time::Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let (train_dir, test_dir) = (dir.path().join("train"), dir.path().join("test"));
    common::write_glyph_folder(&train_dir, 40, 10, 28, 100);
    common::write_glyph_folder(&test_dir, 20, 10, 28, 200);
    let image = ImageConfig::grey(28);
    let train_set = load_image_folder(&train_dir, &image, &FolderOptions::default()).unwrap();
    let test_set = load_image_folder(&test_dir, &image, &FolderOptions::default()).unwrap();
    assert_eq!((train_set.num_classes(), train_set.num_images()), (40, 400));

    let backbone = BackboneConfig::Conv4(Conv4Config { in_channels: 1, hidden: 32, depth: 4, ..Default::default() });
    let mut model = Model::new(ModelConfig::new(backbone, image), 7, &Device::Cpu).unwrap();
    let spec = EpisodeSpec::new(5, 1, 9).unwrap();
    let before = evaluate(&model, &test_set, &protonet::EvalConfig::new(spec, 100, 1), &protonet::Silent).unwrap();

    let cfg = TrainConfig {
        way: 10,
        shot: 1,
        query: 5,
        episodes: 150,
        val_way: 5,
        val_shot: Some(1),
        val_query: 9,
        val_every: 50,
        val_episodes: 50,
        patience: None,
        ..Default::default()
    };
    let out = dir.path().join("model");
    let report = train(&mut model, &train_set, Some(&test_set), &cfg, &out, &TrainOptions::default()).unwrap();
    assert_eq!(report.episodes, 150);

    let loaded = Model::load(&out, &Device::Cpu).unwrap();
    let after = evaluate(&loaded, &test_set, &protonet::EvalConfig::new(spec, 300, 2), &protonet::Silent).unwrap();
    println!("5-way 1-shot on unseen glyphs: before training {before}, after {after}; {:.1}s", started.elapsed().as_secs_f64());
    assert!(after.accuracy > 0.9, "after training: {after}");
    assert!(after.accuracy > before.accuracy + 0.05, "training helped: {before} -> {after}");
    // The interval is 1.96 std / sqrt(episodes): 0 for a perfect model, never negative.
    assert!(after.ci95 >= 0.0 && after.ci95 < 0.05);
    assert!((after.ci95 - 1.96 * after.std / 300f64.sqrt()).abs() < 1e-12);
}
