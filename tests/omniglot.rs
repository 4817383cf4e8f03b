//! Omniglot on the shared data: split sizes, image format, and the shipped model.

mod common;

use protonet::data::{load_omniglot, OmniglotSplit};

#[test]
fn vinyals_splits_have_the_papers_sizes_needs_data() {
    let root = common::require_omniglot("vinyals_splits_have_the_papers_sizes_needs_data");
    for (split, classes) in [(OmniglotSplit::Train, 4112), (OmniglotSplit::Val, 688), (OmniglotSplit::Test, 1692)] {
        let set = load_omniglot(&root, split).unwrap();
        assert_eq!(set.num_classes(), classes, "{split:?}");
        assert_eq!(set.image_dims(), (1, 28, 28));
        for c in 0..set.num_classes() {
            assert_eq!(set.class_len(c), 20, "{}", set.class_name(c));
        }
        // Strokes are 1 on a 0 background after inversion: mostly background.
        let img = set.image(0, 0);
        let mean = img.iter().sum::<f32>() / img.len() as f32;
        assert!(img.iter().all(|v| (0.0..=1.0).contains(v)));
        assert!(mean > 0.01 && mean < 0.5, "mean ink {mean}");
        // The four rotations of a character are distinct classes of rotated images.
        assert!(set.class_name(0).ends_with("rot000") && set.class_name(1).ends_with("rot090"));
        assert_ne!(set.image(0, 0), set.image(1, 0));
    }
}

#[test]
fn a_missing_character_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("splits/vinyals")).unwrap();
    std::fs::write(dir.path().join("splits/vinyals/test.txt"), "Nowhere/character01/rot000\n").unwrap();
    let err = load_omniglot(dir.path(), OmniglotSplit::Test).unwrap_err().to_string();
    assert!(err.contains("Nowhere/character01"), "{err}");
    std::fs::write(dir.path().join("splits/vinyals/test.txt"), "garbage line\n").unwrap();
    let err = load_omniglot(dir.path(), OmniglotSplit::Test).unwrap_err().to_string();
    assert!(err.contains("line 1"), "{err}");
    let err = load_omniglot(&dir.path().join("absent"), OmniglotSplit::Val).unwrap_err().to_string();
    assert!(err.contains("val.txt"), "{err}");
}

/// The Conv-4 shipped in data/omniglot-conv4 (trained with `protonet train`, see the
/// README) recognises test characters it never saw.
#[test]
fn shipped_model_recognises_unseen_characters_needs_data() {
    let root = common::require_omniglot("shipped_model_recognises_unseen_characters_needs_data");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/omniglot-conv4");
    let model = protonet::Model::load(&dir, &candle_core::Device::Cpu).unwrap();
    assert_eq!(model.config().image, protonet::data::ImageConfig::omniglot());
    let test = load_omniglot(&root, OmniglotSplit::Test).unwrap();
    let spec = protonet::EpisodeSpec::new(5, 1, 15).unwrap();
    let report = protonet::evaluate(&model, &test, &protonet::EvalConfig::new(spec, 200, 3), &protonet::Silent).unwrap();
    println!("shipped model, 5-way 1-shot on Omniglot test: {report}");
    assert!(report.accuracy > 0.95, "{report}");
}

/// The 1-shot model trained on train+val (data/omniglot-conv4-1shot-trainval, the model
/// whose 1000-episode results match the paper's in the README) loads and, on 200 20-way
/// 1-shot test episodes, is within reach of the paper's 96.0%.
#[test]
fn shipped_trainval_model_is_near_the_paper_on_20_way_1_shot_needs_data() {
    let root = common::require_omniglot("shipped_trainval_model_is_near_the_paper_on_20_way_1_shot_needs_data");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/omniglot-conv4-1shot-trainval");
    let model = protonet::Model::load(&dir, &candle_core::Device::Cpu).unwrap();
    let test = load_omniglot(&root, OmniglotSplit::Test).unwrap();
    let spec = protonet::EpisodeSpec::new(20, 1, 15).unwrap();
    let report = protonet::evaluate(&model, &test, &protonet::EvalConfig::new(spec, 200, 11), &protonet::Silent).unwrap();
    println!("train+val 1-shot model, 20-way 1-shot on Omniglot test: {report}");
    assert!(report.accuracy > 0.95, "{report}");
}
