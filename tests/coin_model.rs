//! The shipped coin model (`data/coins-efficientnet-lite0`) loads as a user loads it, says
//! what it is, carries its inference settings (the coin crop, 4 rotations, support
//! centring + L2, the support adaptation; its stem and all its blocks trained), and
//! classifies real coin photos from 4 per denomination. The won photos are among the 28
//! denominations it was trained on, so this checks the model works as shipped, not how it generalises (that
//! is `scripts/coins-loco.sh`).

mod common;

use candle_core::Device;
use protonet::data::list_image_folder;
use protonet::FewShotClassifier;

#[test]
fn the_shipped_coin_model_loads_and_predicts_needs_data() {
    common::pretrained_weights("the_shipped_coin_model_loads_and_predicts_needs_data");
    let dir = common::repo_root().join("data/coins-efficientnet-lite0");
    let mut clf = FewShotClassifier::from_model_dir(&dir, &Device::Cpu).unwrap();
    let config = clf.model().config();
    assert!(config.description.to_lowercase().contains("coin"), "{}", config.description);
    assert_eq!(clf.rotations(), 4, "the model's own setting: 4 quarter turns");
    assert_eq!(clf.store().normalization(), &protonet::FeatureNorm::CenterSupportL2);
    assert!(matches!(clf.store().method().config(), protonet::MethodConfig::Adapted(a) if a.is_active()), "the model adapts to its support set");
    assert!(config.image.crop.is_some(), "the model crops each photo to its coin");
    assert!(matches!(config.backbone, protonet::backbone::BackboneConfig::EfficientNetLite0 { trained_from_block: Some(0), .. }), "{:?}", config.backbone);
    let won = common::require_data("coins/korean-won-cho0h5", "the_shipped_coin_model_loads_and_predicts_needs_data");
    let classes = list_image_folder(&won).unwrap();
    let mut queries = Vec::new();
    for (name, files) in &classes {
        clf.add_class_files(name, &files[..4]).unwrap();
        queries.extend(files[4..].iter().step_by(3).map(|f| (name.clone(), f.clone())));
    }
    let files: Vec<_> = queries.iter().map(|q| q.1.clone()).collect();
    let predictions = clf.predict_files(&files).unwrap();
    let right = predictions.iter().zip(&queries).filter(|(p, q)| p.prediction().and_then(|a| a.class.as_deref()) == Some(q.0.as_str())).count();
    let accuracy = right as f64 / queries.len() as f64;
    println!("4-way 4-shot on won photos: {accuracy:.3} over {} queries", queries.len());
    // Denominations it was trained on: far above chance (0.25).
    assert!(accuracy > 0.6, "{accuracy}");
}
