//! Evaluation: the embed-once path agrees with the per-episode path; normalisations.

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
    let direct = evaluate(model.net(), &set, &protonet::EvalConfig::new(spec, 2, 9), &Device::Cpu, &protonet::Silent).unwrap();
    let embedded = protonet::eval::Embedder { batch: 5, rotations: 1 }.embed_set(model.net(), &set, &Device::Cpu, &protonet::Silent).unwrap();
    assert_eq!(embedded.image_dims(), (16, 1, 1));
    assert_eq!(embedded.class_names(), set.class_names());
    let once = evaluate_embedded(&embedded, &protonet::EvalConfig::new(spec, 2, 9), &FeatureNorm::None, &Device::Cpu, &protonet::Silent).unwrap();
    assert!((direct.accuracy - once.accuracy).abs() < 1e-9, "{direct} vs {once}");
    // Many episodes take the embed-once path inside `evaluate`, with the same result.
    let many = evaluate(model.net(), &set, &protonet::EvalConfig::new(spec, 40, 9), &Device::Cpu, &protonet::Silent).unwrap();
    let many_once = evaluate_embedded(&embedded, &protonet::EvalConfig::new(spec, 40, 9), &FeatureNorm::None, &Device::Cpu, &protonet::Silent).unwrap();
    assert!((many.accuracy - many_once.accuracy).abs() < 1e-9);
}

#[test]
fn feature_normalisations_have_unit_norm_and_centre() {
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
