//! The procedural coin renderer: deterministic for a seed, and its denominations are
//! distinguishable (a briefly trained network beats chance by a wide margin on
//! denominations it never saw).

use candle_core::Device;
use protonet::backbone::{BackboneConfig, Conv4Config};
use protonet::data::rendered_coins::{currency, render_set, CoinDesign};
use protonet::data::ImageConfig;
use protonet::{evaluate, train, EpisodeSpec, Model, ModelConfig, TrainConfig, TrainOptions};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn designs(currencies: usize, per: usize, seed: u64) -> Vec<CoinDesign> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..currencies).flat_map(|_| currency(per, &mut rng)).collect()
}

#[test]
fn rendering_is_deterministic_for_a_seed() {
    let d = designs(1, 3, 5);
    assert_eq!(d, designs(1, 3, 5));
    let config = ImageConfig::rgb(40);
    let a = render_set(&d, 3, &config, 11, "").unwrap();
    let b = render_set(&d, 3, &config, 11, "").unwrap();
    let c = render_set(&d, 3, &config, 12, "").unwrap();
    for k in 0..3 {
        for i in 0..3 {
            assert_eq!(a.image(k, i), b.image(k, i));
        }
    }
    assert_ne!(a.image(0, 0), c.image(0, 0), "another seed, other instances");
    assert_ne!(a.image(0, 0), a.image(0, 1), "instances of a class differ");
    assert!(a.image(0, 0).iter().all(|v| v.is_finite()));
}

#[test]
fn unseen_denominations_are_recognised_after_brief_training() {
    let config = ImageConfig::rgb(32);
    let train_set = render_set(&designs(6, 5, 1), 12, &config, 100, "train-").unwrap();
    let test_set = render_set(&designs(3, 5, 2), 12, &config, 200, "test-").unwrap();
    let backbone = BackboneConfig::Conv4(Conv4Config { in_channels: 3, hidden: 32, depth: 4, ..Default::default() });
    let mut model = Model::new(ModelConfig::new(backbone, config), 3, &Device::Cpu).unwrap();
    let cfg = TrainConfig {
        way: 10,
        shot: 4,
        query: 4,
        episodes: 120,
        val_way: 5,
        val_shot: Some(4),
        val_query: 4,
        val_every: 120,
        val_episodes: 10,
        patience: None,
        ..Default::default()
    };
    let dir = tempfile::tempdir().unwrap();
    train(&mut model, &train_set, None, &cfg, dir.path(), &TrainOptions::default()).unwrap();
    let spec = EpisodeSpec::new(5, 4, 6).unwrap();
    let report = evaluate(&model, &test_set, &protonet::EvalConfig::new(spec, 200, 0), &protonet::Silent).unwrap();
    println!("5-way 4-shot on unseen rendered denominations: {report}");
    assert!(report.accuracy > 0.6, "chance is 0.2: {report}");
}
