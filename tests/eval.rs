//! Evaluation: the embed-once path agrees with the per-episode path; normalizations.

mod common;

use candle_core::{Device, Tensor};
use protonet::backbone::{BackboneConfig, Conv4Config};
use protonet::data::ImageConfig;
use protonet::eval::evaluate_embedded;
use protonet::FeatureNorm;
use protonet::{evaluate, EpisodeSpec, Model, ModelConfig};

#[test]
fn embedding_once_gives_the_same_episodes_and_accuracy() {
    let set = common::glyph_set(8, 6, 28, 4);
    let cfg = ModelConfig::new(BackboneConfig::Conv4(Conv4Config { hidden: 16, ..Default::default() }), ImageConfig::grey(28));
    let model = Model::new(cfg, 2, &Device::Cpu).unwrap();
    let spec = EpisodeSpec::new(4, 2, 3).unwrap();
    // 2 episodes x 20 images <= 48 images: the per-episode path.
    let direct = evaluate(&model, &set, &protonet::EvalConfig::new(spec, 2, 9), &protonet::Silent).unwrap();
    let embedded = protonet::embed::Embedder { batch: 5, rotations: 1 }.embed_set(model.net(), &set, &Device::Cpu, &protonet::Silent).unwrap();
    assert_eq!(embedded.image_dims(), (16, 1, 1));
    assert_eq!(embedded.class_names(), set.class_names());
    let once = evaluate_embedded(
        &embedded,
        &protonet::EvalConfig::new(spec, 2, 9),
        &FeatureNorm::None,
        &(std::sync::Arc::new(protonet::method::Prototypes) as std::sync::Arc<dyn protonet::Method>),
        &Device::Cpu,
        &protonet::Silent,
    )
    .unwrap();
    assert!((direct.accuracy - once.accuracy).abs() < 1e-9, "{direct} vs {once}");
    // Many episodes take the embed-once path inside `evaluate`; each of its episodes is
    // checked against a different path: that episode's images through the network
    // (`forward_episode`), the accuracy computed here from its logits.
    let many = evaluate(&model, &set, &protonet::EvalConfig::new(spec, 40, 9), &protonet::Silent).unwrap();
    let mut sampler = protonet::EpisodeSampler::new(&set, spec, 9).unwrap();
    let mut accuracies = Vec::new();
    for _ in 0..40 {
        let (images, labels) = sampler.sample().tensors(&set, &Device::Cpu).unwrap();
        let logits = model.net().forward_episode(&images, spec, &labels, false).unwrap().logits.to_vec2::<f32>().unwrap();
        let labels = labels.to_vec1::<u32>().unwrap();
        let right = logits.iter().zip(&labels).filter(|(row, &l)| row.iter().enumerate().all(|(j, &v)| j == l as usize || v < row[l as usize])).count();
        accuracies.push(right as f64 / labels.len() as f64);
    }
    let (mean, ci) = protonet::eval::mean_ci95(&accuracies);
    // Episode accuracies are f32 inside `evaluate`.
    assert!((many.accuracy - mean).abs() < 1e-6 && (many.ci95 - ci).abs() < 1e-6, "{many} vs {mean} ± {ci}");
    assert!(accuracies.iter().any(|&a| a < 1.0) && accuracies.iter().any(|&a| a > 0.0), "a random network gives varied episodes");
}

#[test]
fn feature_normalizations_have_unit_norm_and_centre() {
    let s = Tensor::new(&[[3f32, 4.0], [1.0, 0.0]], &Device::Cpu).unwrap();
    let q = Tensor::new(&[[0f32, 2.0]], &Device::Cpu).unwrap();
    let (a, b) = FeatureNorm::L2.apply(&s, &q).unwrap();
    assert_eq!(a.to_vec2::<f32>().unwrap(), vec![vec![0.6, 0.8], vec![1.0, 0.0]]);
    assert_eq!(b.to_vec2::<f32>().unwrap(), vec![vec![0.0, 1.0]]);
    // Support mean (2, 2): support becomes (1, 2)/|.| and (-1, -2)/|.|.
    let (a, _) = FeatureNorm::CenterSupportL2.apply(&s, &q).unwrap();
    let a = a.to_vec2::<f32>().unwrap();
    assert!((a[0][0] + a[1][0]).abs() < 1e-6 && (a[0][1] - 2.0 / 5f32.sqrt()).abs() < 1e-6);
    let (_, b) = FeatureNorm::CenterL2(vec![0.0, 1.0]).apply(&s, &q).unwrap();
    assert_eq!(b.to_vec2::<f32>().unwrap(), vec![vec![0.0, 1.0]]);
}

/// With `confidences`, every query's answer from the deployable classifier (a
/// `PrototypeStore` of the episode's support set) is counted: its answers are right as
/// often as the method's argmax (the same classes), and the calibration sums up.
#[test]
fn confidences_are_measured_as_the_classifier_reports_them() {
    let set = common::glyph_set(8, 6, 28, 4);
    let cfg = ModelConfig::new(BackboneConfig::Conv4(Conv4Config { hidden: 16, ..Default::default() }), ImageConfig::grey(28));
    let model = Model::new(cfg, 2, &Device::Cpu).unwrap();
    let spec = EpisodeSpec::new(4, 2, 3).unwrap();
    for episodes in [2, 30] {
        let config = protonet::EvalConfig { confidences: true, ..protonet::EvalConfig::new(spec, episodes, 9) };
        let r = evaluate(&model, &set, &config, &protonet::Silent).unwrap();
        let c = r.calibration.expect("calibration measured");
        assert_eq!(c.count, episodes * 4 * 3);
        assert!((c.accuracy - r.accuracy).abs() < 1e-6, "classifier {} vs argmax {}", c.accuracy, r.accuracy);
        assert!(c.mean_confidence > 0.25 && c.mean_confidence <= 1.0, "{c:?}");
        assert!(c.ece >= 0.0 && c.ece <= 1.0);
        assert_eq!(c.bins.iter().map(|b| b.count).sum::<usize>(), c.count);
    }
    let plain = evaluate(&model, &set, &protonet::EvalConfig::new(spec, 2, 9), &protonet::Silent).unwrap();
    assert!(plain.calibration.is_none());
}
