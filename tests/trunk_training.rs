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

#[test]
fn whole_trunk_training_moves_the_stem_with_drop_connect_off_in_evaluation_needs_data() {
    common::pretrained_weights("whole-trunk training test");
    let mut config = small_config();
    config.first_block = 0;
    config.training.epochs = 3;
    config.training.drop_connect = protonet::backbone::EFFICIENTNET_LITE0_DROP_CONNECT;
    let designs = currency(3, &mut rand_chacha::ChaCha8Rng::seed_from_u64(5));
    let set = render_set(&designs, 8, &config.image, 6, "coin-").unwrap();
    let dir = std::env::temp_dir().join(format!("protonet-trunk-whole-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    let dev = Device::Cpu;
    let before = {
        let (model, _) = train_trunk(&config, &set, &dir, &TrainOptions { stop_after: Some(0), ..Default::default() }, &dev, &protonet::Silent).unwrap();
        model.tensors()
    };
    assert!(before.contains_key("trunk._conv_stem.weight") && before.contains_key("trunk._blocks.0._depthwise_conv.weight"));
    let (model, report) = train_trunk(&config, &set, &dir, &TrainOptions { mode: OutputMode::Overwrite, stop_after: None }, &dev, &protonet::Silent).unwrap();
    println!("losses by epoch: {:?}", report.losses);
    assert!(report.losses[2] < report.losses[0], "the loss did not fall: {:?}", report.losses);
    let after = model.tensors();
    let moved = |name: &str| (&before[name] - &after[name]).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(moved("trunk._conv_stem.weight") > 1e-6, "the stem did not move");
    assert!(moved("trunk._blocks.0._depthwise_conv.weight") > 1e-6);
    assert_eq!(moved("trunk._bn0.running_var"), 0.0, "running statistics must stay frozen");

    // Drop-connect: off in evaluation (the written model embeds as the trained one, and
    // deterministically); in training it draws from its seed, and rate 0 is no drop.
    let images: Vec<f32> = (0..4).flat_map(|i| set.image(i % 3, i).to_vec()).collect();
    let x = candle_core::Tensor::from_vec(images, (4, 3, 64, 64), &dev).unwrap();
    let loaded = Model::load_for_images(&dir, &dev).unwrap();
    let diff = |a: &candle_core::Tensor, b: &candle_core::Tensor| (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    let eval = model.net().embed(&x, false).unwrap();
    assert!(diff(&eval, &loaded.net().embed(&x, false).unwrap()) < 1e-5);
    let backbone = model.net().backbone();
    let drop = |rate: f32, seed: u64| backbone.embed_drop_connect(&x, protonet::backbone::DropConnect { rate, seed }).unwrap();
    assert!(diff(&drop(0.0, 1), &model.net().embed(&x, true).unwrap()) < 1e-6, "rate 0 must drop nothing");
    assert_eq!(diff(&drop(0.5, 1), &drop(0.5, 1)), 0.0, "the same seed must draw the same drops");
    assert!(diff(&drop(0.5, 1), &drop(0.5, 2)) > 1e-4, "other seeds must draw other drops");
    assert!(backbone.embed_drop_connect(&x, protonet::backbone::DropConnect { rate: 1.0, seed: 0 }).is_err());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn lite2_trains_its_own_last_blocks_needs_data() {
    use protonet::backbone::LiteVariant;
    common::pretrained_weights("Lite2 trunk training test");
    let mut config = small_config();
    config.weights = LiteVariant::Lite2.weights();
    config.first_block = 19;
    config.training.epochs = 2;
    let designs = currency(3, &mut rand_chacha::ChaCha8Rng::seed_from_u64(6));
    let set = render_set(&designs, 6, &config.image, 7, "coin-").unwrap();
    let dir = std::env::temp_dir().join(format!("protonet-trunk-lite2-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    let (model, report) = train_trunk(&config, &set, &dir, &TrainOptions { mode: OutputMode::Overwrite, stop_after: None }, &Device::Cpu, &protonet::Silent)
        .unwrap_or_else(|e| panic!("Lite2 trunk training: {e}; run scripts/fetch-pretrained.sh"));
    assert!(report.finished && report.losses.iter().all(|l| l.is_finite()));
    let tensors = model.tensors();
    assert!(tensors
        .keys()
        .all(|k| k.starts_with("trunk._blocks.19") || k.starts_with("trunk._blocks.20") || k.starts_with("trunk._conv_head") || k.starts_with("trunk._bn1")));
    assert_eq!(tensors["trunk._conv_head.weight"].dims(), &[1280, 352, 1, 1], "Lite2's head takes 352 channels");
    let loaded = Model::load_for_images(&dir, &Device::Cpu).unwrap();
    let x = candle_core::Tensor::from_vec(set.image(0, 0).to_vec(), (1, 3, 64, 64), &Device::Cpu).unwrap();
    let diff =
        (model.net().embed(&x, false).unwrap() - loaded.net().embed(&x, false).unwrap()).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(diff < 1e-5);
    let mut too_far = config.clone();
    too_far.first_block = 21;
    assert!(too_far.validate().unwrap_err().to_string().contains("below 21"));
    std::fs::remove_dir_all(&dir).ok();
}
