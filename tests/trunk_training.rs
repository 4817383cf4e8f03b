//! Trunk training (`protonet::finetune::trunk`): it moves the trained blocks and only
//! them, lowers the loss, resumes from its checkpoint, and the model it writes embeds
//! as it did in memory; and the support-adapted classifier keeps its answers through
//! save and load. Uses the real ImageNet weights (`scripts/fetch-pretrained.sh`) and
//! rendered coins.

mod common;

use candle_core::Device;
use protonet::adapt::SupportAdaptation;
use protonet::data::rendered_coins::{currency, render_set};
use protonet::data::ImageConfig;
use protonet::finetune::trunk::{train_trunk, TrunkConfig};
use protonet::train::supervised::{SupervisedConfig, TrainingAugment};
use protonet::{FewShotClassifier, Model, OutputMode, TrainOptions};
use rand::SeedableRng;

fn small_config() -> TrunkConfig {
    TrunkConfig {
        image: ImageConfig::rgb(64),
        first_block: 13,
        training: SupervisedConfig {
            epochs: 4,
            batch: 8,
            learning_rate: 1e-3,
            classifier_learning_rate: Some(1e-2),
            dropout: 0.0,
            augment: Some(TrainingAugment { size: 64, ..SupervisedConfig::coin_trunk().augment.unwrap() }),
            ..SupervisedConfig::coin_trunk()
        },
        ..TrunkConfig::default()
    }
}

#[test]
fn trunk_training_moves_the_tail_lowers_the_loss_and_resumes_needs_data() {
    common::pretrained_weights("trunk training test");
    let config = small_config();
    let designs = currency(3, &mut rand_chacha::ChaCha8Rng::seed_from_u64(4));
    let set = render_set(&designs, 8, &config.image, 5, "coin-").unwrap();
    let dir = std::env::temp_dir().join(format!("protonet-trunk-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    let dev = Device::Cpu;

    // The ImageNet starting point, as the untrained model holds it.
    let before = {
        let (model, report) = train_trunk(&config, &set, &dir, &TrainOptions { stop_after: Some(0), ..Default::default() }, &dev, &protonet::Silent).unwrap();
        assert_eq!((report.epochs, report.finished), (0, false));
        model.tensors()
    };
    assert!(
        before.keys().all(|k| k.starts_with("trunk._blocks.13")
            || k.starts_with("trunk._blocks.14")
            || k.starts_with("trunk._blocks.15")
            || k.starts_with("trunk._conv_head")
            || k.starts_with("trunk._bn1")),
        "{:?}",
        before.keys().collect::<Vec<_>>()
    );

    // Two epochs, then two more after a resume.
    let half = TrainOptions { mode: OutputMode::Overwrite, stop_after: Some(2) };
    let (_, first) = train_trunk(&config, &set, &dir, &half, &dev, &protonet::Silent).unwrap();
    assert_eq!(first.epochs, 2);
    let rest = TrainOptions { mode: OutputMode::Resume, stop_after: None };
    let (model, second) = train_trunk(&config, &set, &dir, &rest, &dev, &protonet::Silent).unwrap();
    assert!(second.finished && second.losses.len() == 4);
    assert_eq!(first.losses[..], second.losses[..2], "a resume keeps the losses done");
    let losses = second.losses.clone();
    println!("losses by epoch: {losses:?}");
    assert!(losses[3] < losses[0], "the loss did not fall: {losses:?}");

    let after = model.tensors();
    let moved = |name: &str| (&before[name] - &after[name]).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(moved("trunk._blocks.15._project_conv.weight") > 1e-6);
    assert!(moved("trunk._conv_head.weight") > 1e-6);
    assert_eq!(moved("trunk._bn1.running_mean"), 0.0, "running statistics must stay frozen");

    // The written model embeds as the trained one does.
    let loaded = Model::load_for_images(&dir, &dev).unwrap();
    let x = candle_core::Tensor::from_vec(set.image(0, 0).to_vec(), (1, 3, 64, 64), &dev).unwrap();
    let (a, b) = (model.net().embed(&x, false).unwrap(), loaded.net().embed(&x, false).unwrap());
    assert!((a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() < 1e-5);
    assert_eq!(loaded.config().method, protonet::MethodConfig::Adapted(SupportAdaptation::default()));

    // A classifier on it adapts to its support set; it answers the same after save and load.
    let mut clf = FewShotClassifier::new(loaded);
    for k in 0..set.num_classes() {
        let images: Vec<Vec<f32>> = (0..4).map(|i| set.image(k, i).to_vec()).collect();
        clf.add_class(set.class_name(k), &images).unwrap();
    }
    let queries: Vec<Vec<f32>> = (0..set.num_classes()).flat_map(|k| (4..8).map(move |i| (k, i))).map(|(k, i)| set.image(k, i).to_vec()).collect();
    let answers = clf.predict_batch(&queries).unwrap();
    let saved = dir.join("classifier");
    clf.save(&saved).unwrap();
    let again = FewShotClassifier::load(&saved, &dev).unwrap().predict_batch(&queries).unwrap();
    for (x, y) in answers.iter().zip(&again) {
        assert_eq!(x.class, y.class);
        assert!((x.distance.unwrap() - y.distance.unwrap()).abs() < 1e-5 && (x.confidence - y.confidence).abs() < 1e-5);
    }
    std::fs::remove_dir_all(&dir).ok();
}
