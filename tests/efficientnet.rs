//! EfficientNet-Lite0 and Lite2 in candle against PyTorch's outputs (tests/fixtures,
//! written by scripts/efficientnet_reference.py) on the real ImageNet weights.

mod common;

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use protonet::backbone::{Backbone, EfficientNetLite0};

fn weights() -> PathBuf {
    common::pretrained_weights("efficientnet reference test")
}

/// The fixture's input formula: `1.5 * sin(0.05 h + 0.07 (c + 1) w + 1.3 i + 0.2 c)`.
fn fixed_input(n: usize, size: usize) -> Tensor {
    let mut v = Vec::with_capacity(n * 3 * size * size);
    for i in 0..n {
        for c in 0..3 {
            for h in 0..size {
                for w in 0..size {
                    let x = 0.05 * h as f64 + 0.07 * (c + 1) as f64 * w as f64 + 1.3 * i as f64 + 0.2 * c as f64;
                    v.push((1.5 * x.sin()) as f32);
                }
            }
        }
    }
    Tensor::from_vec(v, (n, 3, size, size), &Device::Cpu).unwrap()
}

fn relative_error(got: &Tensor, want: &[Vec<f64>]) -> f64 {
    let got = got.to_dtype(candle_core::DType::F64).unwrap().to_vec2::<f64>().unwrap();
    let mut max_diff = 0f64;
    let mut max_ref = 0f64;
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g.len(), w.len());
        for (a, b) in g.iter().zip(w) {
            max_diff = max_diff.max((a - b).abs());
            max_ref = max_ref.max(b.abs());
        }
    }
    max_diff / max_ref
}

/// The network on `path` against a fixture of PyTorch's embeddings and logits.
fn check_against_pytorch(path: &std::path::Path, fixture: &str) {
    let fixture: serde_json::Value = serde_json::from_str(fixture).unwrap();
    let net = EfficientNetLite0::load(path, &Device::Cpu).unwrap();
    for case in fixture["cases"].as_array().unwrap() {
        let (n, size) = (case["batch"].as_u64().unwrap() as usize, case["size"].as_u64().unwrap() as usize);
        let rows = |key: &str| -> Vec<Vec<f64>> { serde_json::from_value(case[key].clone()).unwrap() };
        let x = fixed_input(n, size);
        let emb = net.embed(&x, false).unwrap();
        assert_eq!(emb.dims(), &[n, 1280]);
        let e = relative_error(&emb, &rows("embedding"));
        let l = relative_error(&net.logits(&x).unwrap(), &rows("logits"));
        println!("{}: {n}x3x{size}x{size}: relative error embedding {e:.2e}, logits {l:.2e}", fixture["model"]);
        // Measured: about 1.6e-6 (embedding) and 1e-6 (logits) for Lite0; 1e-5 leaves room
        // for other CPUs and thread counts while still catching a wrong layer (errors of
        // 1e-2 and more).
        assert!(e < 1e-5 && l < 1e-5, "embedding {e}, logits {l}");
    }
}

#[test]
fn embeddings_and_logits_match_pytorch_needs_data() {
    check_against_pytorch(&weights(), include_str!("fixtures/efficientnet_lite0_reference.json"));
}

#[test]
fn lite2_embeddings_and_logits_match_pytorch_needs_data() {
    use protonet::backbone::LiteVariant;
    use protonet::pretrained::PretrainedWeights;
    let lite2 = PretrainedWeights::efficientnet_lite2();
    let path = lite2.loadable(&lite2.converted_name()).unwrap_or_else(|e| panic!("Lite2 reference test: {e}; run scripts/fetch-pretrained.sh"));
    assert_eq!(EfficientNetLite0::load(&path, &Device::Cpu).unwrap().variant(), LiteVariant::Lite2);
    check_against_pytorch(&path, include_str!("fixtures/efficientnet_lite2_reference.json"));
}

#[test]
fn missing_weights_say_how_to_fetch_them() {
    let err = EfficientNetLite0::load("no/such/weights.pth".as_ref(), &Device::Cpu).err().unwrap().to_string();
    assert!(err.contains("fetch-pretrained.sh") && err.contains("pretrained weights"), "{err}");
}

/// A model directory for the frozen EfficientNet-Lite0 holds no weights, only their name
/// and SHA-256; it loads, embeds as the network itself does, serves a FewShotClassifier,
/// and refuses weights with another SHA-256.
#[test]
fn model_directory_references_the_pretrained_weights_needs_data() {
    use protonet::backbone::BackboneConfig;
    use protonet::data::ImageConfig;
    use protonet::pretrained::PretrainedWeights;
    use protonet::{FewShotClassifier, Model, ModelConfig};
    let path = weights();
    let cfg = ModelConfig::new(
        BackboneConfig::EfficientNetLite0 { weights: PretrainedWeights::efficientnet_lite0(), head: None, trained_from_block: None },
        ImageConfig::rgb(96),
    );
    let dir = tempfile::tempdir().unwrap();
    Model::new(cfg.clone(), 0, &Device::Cpu).unwrap().save(dir.path()).unwrap();
    let size: u64 = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum();
    assert!(size < 10_000, "the directory must not copy the 18 MB of weights ({size} bytes)");
    let model = Model::load(dir.path(), &Device::Cpu).unwrap();
    let x = fixed_input(2, 96);
    let direct = EfficientNetLite0::load(&path, &Device::Cpu).unwrap().embed(&x, false).unwrap();
    let via_model = model.net().embed(&x, false).unwrap();
    assert_eq!(via_model.dims(), &[2, 1280]);
    let diff = (direct - &via_model).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(diff < 1e-5, "{diff}");

    let mut clf = FewShotClassifier::new(model);
    let img = |i: usize| x.get(i).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    clf.add_class("a", &[img(0)]).unwrap();
    clf.add_class("b", &[img(1)]).unwrap();
    assert_eq!(clf.predict(&img(1)).unwrap().class.as_deref(), Some("b"));

    // Other weights under the same name are refused with both hashes in the message.
    let config_path = dir.path().join("config.json");
    let text = std::fs::read_to_string(&config_path).unwrap().replace("579344248a93", "000000000000");
    std::fs::write(&config_path, text).unwrap();
    let err = Model::load(dir.path(), &Device::Cpu).err().expect("wrong sha256 must fail").to_string();
    assert!(err.contains("sha256 is 579344248a93") && err.contains("000000000000"), "{err}");
}

/// The one-liners a program on photos needs: a classifier on the pretrained network with
/// its settings, a support folder, predictions, and a saved classifier that predicts the same.
#[test]
fn pretrained_classifier_from_a_support_folder_saves_and_predicts_the_same_needs_data() {
    use protonet::{FewShotClassifier, OutputMode};
    weights();
    let dir = tempfile::tempdir().unwrap();
    let support = dir.path().join("support");
    common::write_glyph_folder(&support, 3, 3, 64, 5);
    let mut clf = FewShotClassifier::efficientnet_lite0(96, &Device::Cpu).unwrap();
    assert_eq!(clf.rotations(), 4);
    clf.add_support_folder(&support).unwrap();
    assert_eq!(clf.class_names(), ["glyph000", "glyph001", "glyph002"]);
    let queries = protonet::data::list_images(std::slice::from_ref(&support)).unwrap();
    let before: Vec<_> = clf.predict_files(&queries).unwrap().into_iter().map(|p| p.answer.unwrap()).collect();
    let right = before.iter().zip(&queries).filter(|(p, q)| q.to_string_lossy().contains(p.class.as_deref().unwrap())).count();
    assert!(right >= 7, "support images should mostly be classified as their own class ({right} of 9)");
    let saved = dir.path().join("clf");
    clf.save_with(&saved, OutputMode::New).unwrap();
    let loaded = FewShotClassifier::load(&saved, &Device::Cpu).unwrap();
    let after: Vec<_> = loaded.predict_files(&queries).unwrap().into_iter().map(|p| p.answer.unwrap()).collect();
    assert_eq!(after, before);
    let err = FewShotClassifier::load(&support, &Device::Cpu).err().expect("a support folder is not a classifier").to_string();
    assert!(err.contains("not a model directory (no config.json"), "{err}");
}

/// The Rust converter of legacy `.pth` files gives, tensor for tensor, what the
/// standard-library Python converter (`scripts/pth_to_safetensors.py`, checked against
/// `torch.load`) wrote; a file of another format is refused with its name.
#[test]
fn legacy_pth_converts_to_the_same_tensors_as_the_python_converter_needs_data() {
    let converted = weights();
    let pth = protonet::pretrained::PretrainedWeights::efficientnet_lite0().locate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("converted.safetensors");
    let n = protonet::pretrained::convert_legacy_pth(&pth, &out).unwrap();
    let ours = candle_core::safetensors::load(&out, &Device::Cpu).unwrap();
    let python = candle_core::safetensors::load(&converted, &Device::Cpu).unwrap();
    assert_eq!(n, python.len());
    assert_eq!(ours.len(), python.len());
    for (name, want) in &python {
        let got = ours.get(name).unwrap_or_else(|| panic!("{name} missing"));
        assert_eq!(got.dims(), want.dims(), "{name}");
        assert_eq!(got.flatten_all().unwrap().to_vec1::<f32>().unwrap(), want.flatten_all().unwrap().to_vec1::<f32>().unwrap(), "{name}");
    }
    let err = protonet::pretrained::convert_legacy_pth(&converted, &dir.path().join("x.safetensors")).unwrap_err().to_string();
    assert!(err.contains("not a legacy PyTorch file") && err.contains("efficientnet-lite0.safetensors"), "{err}");
    assert!(!dir.path().join("x.safetensors").exists());
}

/// For a method that scores feature maps (the Relation Network), EfficientNet-Lite0 gives
/// its head's 1280-channel map, whose spatial mean is the usual embedding, and a relation
/// model on it embeds and scores a support set.
#[test]
fn feature_maps_for_the_relation_network_needs_data() {
    use protonet::backbone::BackboneConfig;
    use protonet::data::ImageConfig;
    use protonet::method::RelationConfig;
    use protonet::pretrained::PretrainedWeights;
    use protonet::{FewShotClassifier, MethodConfig, Model, ModelConfig};
    let path = weights();
    let net = EfficientNetLite0::load(&path, &Device::Cpu).unwrap();
    let x = fixed_input(2, 96);
    let maps = net.feature_maps(&x, false).unwrap();
    assert_eq!(maps.dims(), &[2, 1280, 3, 3]);
    let pooled = maps.mean(3).unwrap().mean(2).unwrap();
    let diff = (pooled - net.embed(&x, false).unwrap()).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(diff < 1e-5, "{diff}");
    let mut cfg = ModelConfig::new(
        BackboneConfig::EfficientNetLite0 { weights: PretrainedWeights::efficientnet_lite0(), head: None, trained_from_block: None },
        ImageConfig::rgb(96),
    );
    cfg.method = MethodConfig::Relation(RelationConfig::new(1280));
    assert_eq!(cfg.embedding_dim(), 1280 * 9);
    let model = Model::new(cfg, 0, &Device::Cpu).unwrap();
    assert_eq!(model.net().embed(&x, false).unwrap().dims(), &[2, 1280 * 9]);
    let mut clf = FewShotClassifier::new(model);
    let img = |i: usize| x.get(i).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    clf.add_class("a", &[img(0)]).unwrap();
    clf.add_class("b", &[img(1)]).unwrap();
    let p = clf.predict(&img(1)).unwrap();
    assert!(p.distance.is_none() && (0.0..=1.0).contains(&p.confidence), "{p:?}");
}
