//! Few-shot methods on one shape: scores computed by hand, training through the episodic
//! trainer, classifier round trips per method, and the models shipped before methods were
//! recorded loading as they were.

mod common;

use candle_core::{Device, Tensor};
use protonet::adapt::SupportAdaptation;
use protonet::backbone::{BackboneConfig, Conv4Config};
use protonet::data::ImageConfig;
use protonet::method::{Baseline, BaselineConfig, ClassifierKind, Matching, MatchingConfig, Method, Prototypes, Relation, RelationConfig};
use protonet::{FewShotClassifier, MethodConfig, Model, ModelConfig, TrainConfig, Trainer};

fn small_model(method: MethodConfig, seed: u64) -> Model {
    let conv4 = Conv4Config { in_channels: 1, hidden: 16, depth: 4, layout: method.conv4_layout() };
    let mut cfg = ModelConfig::new(BackboneConfig::Conv4(conv4), ImageConfig::grey(28));
    cfg.method = method;
    Model::new(cfg, seed, &Device::Cpu).unwrap()
}

fn tensor(rows: &[&[f32]]) -> Tensor {
    let d = rows[0].len();
    Tensor::from_vec(rows.concat(), (rows.len(), d), &Device::Cpu).unwrap()
}

/// Matching networks: the softmax of the scaled cosine similarities to every support row,
/// summed per class, computed here in f64 from the definitions.
#[test]
fn matching_scores_are_the_softmax_weighted_support_labels() {
    let support: [&[f32]; 5] = [&[1.0, 0.0, 0.5], &[0.8, 0.3, 0.0], &[0.0, 1.0, 0.2], &[-0.2, 0.9, 0.4], &[0.3, -0.5, 1.0]];
    let counts = [2, 2, 1];
    let queries: [&[f32]; 2] = [&[0.9, 0.1, 0.3], &[0.1, 0.2, -1.0]];
    let scale = 3.0;
    let m = Matching::new(MatchingConfig { scale });
    let fitted = m.fit(&tensor(&support), &counts).unwrap();
    let got = m.logits(&fitted, &tensor(&queries)).unwrap().to_vec2::<f32>().unwrap();
    let cos = |a: &[f32], b: &[f32]| {
        let dot: f64 = a.iter().zip(b).map(|(x, y)| (*x as f64) * (*y as f64)).sum();
        let n = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        dot / (n(a) * n(b))
    };
    let labels = [0, 0, 1, 1, 2];
    for (q, row) in queries.iter().zip(&got) {
        let w: Vec<f64> = support.iter().map(|s| (scale as f64 * cos(q, s)).exp()).collect();
        let total: f64 = w.iter().sum();
        for (k, &logit) in row.iter().enumerate() {
            let p: f64 = w.iter().zip(labels).filter(|(_, l)| *l == k).map(|(w, _)| w / total).sum();
            assert!((logit as f64 - p.ln()).abs() < 1e-5, "class {k}: {logit} vs ln {p}");
        }
    }
    assert!(!m.has_distances(), "matching networks have no class distances");
}

/// The prototypes method is the prototypical network's formula: negative squared
/// distances to the class means, and those distances for rejection.
#[test]
fn prototypes_score_by_squared_distance_to_class_means() {
    let s = tensor(&[&[0.0, 0.0], &[0.0, 2.0], &[4.0, 0.0], &[6.0, 0.0], &[8.0, 0.0]]);
    let q = tensor(&[&[1.0, 1.0]]);
    let fitted = Prototypes.fit(&s, &[2, 3]).unwrap();
    assert_eq!(Prototypes.logits(&fitted, &q).unwrap().to_vec2::<f32>().unwrap(), vec![vec![-1.0, -26.0]]);
    assert_eq!(Prototypes.distances(&fitted, &q).unwrap().to_vec2::<f32>().unwrap(), vec![vec![1.0, 26.0]]);
    assert!(Prototypes.fit(&s, &[2, 2]).is_err(), "class sizes that do not split the support set");
}

/// A few episodes of the episodic trainer lower each trainable method's loss (the mean
/// of the first 5 episodes against the last 5, on the same glyph classes).
#[test]
fn a_short_training_lowers_the_loss_of_each_method() {
    let set = common::glyph_set(12, 8, 28, 4);
    let config = TrainConfig { way: 5, shot: 2, query: 3, episodes: 60, learning_rate: 2e-3, val_every: 1000, patience: None, ..Default::default() };
    for method in [
        MethodConfig::Protonet,
        MethodConfig::Matching(MatchingConfig::default()),
        MethodConfig::MetaBaseline(Default::default()),
        MethodConfig::Relation(RelationConfig::new(16)),
    ] {
        let mut model = small_model(method, 2);
        let mut trainer = Trainer::new(&mut model, &set, None, &config).unwrap();
        let losses: Vec<f32> = (0..40).map(|_| trainer.step().unwrap().loss).collect();
        let (first, last) = (losses[..5].iter().sum::<f32>() / 5.0, losses[35..].iter().sum::<f32>() / 5.0);
        assert!(last < 0.7 * first, "{}: loss {first} -> {last}", method.name());
    }
}

/// A method fitted at test time only (the support adaptation) cannot train a backbone.
#[test]
fn the_trainer_refuses_a_method_fitted_at_test_time() {
    let set = common::glyph_set(6, 4, 28, 1);
    for method in [MethodConfig::Adapted(SupportAdaptation::default()), MethodConfig::Baseline(BaselineConfig::new(ClassifierKind::Linear))] {
        let mut model = small_model(method, 1);
        let config = TrainConfig { way: 3, shot: 1, query: 1, episodes: 2, ..Default::default() };
        let e = Trainer::new(&mut model, &set, None, &config).err().expect("refused").to_string();
        assert!(e.contains("method") && e.contains(method.name()), "{e}");
    }
}

/// Baseline and Baseline++'s support fit (the paper's SGD settings) classifies every
/// support embedding of a separable support set correctly, and reproducibly.
#[test]
fn the_baseline_support_classifier_fits_a_separable_support_set() {
    // Four classes around four directions of a 16-d space, 5 shots each, noisy.
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(5);
    let mut rows = Vec::new();
    for k in 0..4 {
        for _ in 0..5 {
            rows.extend((0..16).map(|i| if i % 4 == k { 1.0 } else { 0.0 } + rand::Rng::random_range(&mut rng, -0.3f32..0.3)));
        }
    }
    let s = Tensor::from_vec(rows, (20, 16), &Device::Cpu).unwrap();
    for kind in [ClassifierKind::Linear, ClassifierKind::Cosine] {
        let m = Baseline::new(BaselineConfig::new(kind));
        let fitted = m.fit(&s, &[5; 4]).unwrap();
        let pred = m.logits(&fitted, &s).unwrap().argmax(1).unwrap().to_vec1::<u32>().unwrap();
        assert_eq!(pred, (0..4u32).flat_map(|k| [k; 5]).collect::<Vec<_>>(), "{kind:?}");
        let again = m.logits(&m.fit(&s, &[5; 4]).unwrap(), &s).unwrap();
        assert_eq!(again.to_vec2::<f32>().unwrap(), m.logits(&fitted, &s).unwrap().to_vec2::<f32>().unwrap(), "{kind:?}: reproducible");
    }
}

/// Per method: a classifier saved and loaded answers exactly as before saving (class,
/// confidence, distance and the whole ranking), and a model's method comes back from
/// its config.json.
#[test]
fn each_method_round_trips_through_a_saved_classifier() {
    let set = common::glyph_set(4, 5, 28, 9);
    let images = |c: usize| (0..5).map(|i| set.image(c, i).to_vec()).collect::<Vec<_>>();
    for method in [
        MethodConfig::Protonet,
        MethodConfig::Adapted(SupportAdaptation { steps: 20, ..Default::default() }),
        MethodConfig::Matching(MatchingConfig { scale: 5.0 }),
        MethodConfig::MetaBaseline(Default::default()),
        MethodConfig::Relation(RelationConfig::new(16)),
    ] {
        let mut clf = FewShotClassifier::new(small_model(method, 3));
        for c in 0..3 {
            clf.add_class(&format!("c{c}"), &images(c)[..4]).unwrap();
        }
        let queries: Vec<Vec<f32>> = (0..4).flat_map(|c| images(c).into_iter().skip(3)).collect();
        let before: Vec<_> = queries.iter().map(|q| clf.predict(q).unwrap()).collect();
        let dir = tempfile::tempdir().unwrap();
        clf.save(dir.path()).unwrap();
        let loaded = FewShotClassifier::load(dir.path(), &Device::Cpu).unwrap();
        assert_eq!(loaded.model().config().method, method);
        assert_eq!(loaded.store().method().config(), method);
        let after: Vec<_> = queries.iter().map(|q| loaded.predict(q).unwrap()).collect();
        assert_eq!(before, after, "{}", method.name());
        assert_eq!(
            before[0].distance.is_some(),
            matches!(method, MethodConfig::Protonet | MethodConfig::Adapted(_) | MethodConfig::MetaBaseline(_)),
            "{}: distances",
            method.name()
        );
    }
}

/// A method without distances cannot reject by a distance threshold: a clear error
/// naming the method, before any query.
#[test]
fn a_threshold_needs_a_method_with_distances() {
    let mut clf = FewShotClassifier::new(small_model(MethodConfig::Matching(MatchingConfig::default()), 1));
    let e = clf.set_threshold(Some(1.0)).unwrap_err().to_string();
    assert!(e.contains("matching") && e.contains("distances"), "{e}");
    let set = common::glyph_set(2, 3, 28, 1);
    for c in 0..2 {
        clf.add_class(&format!("c{c}"), &[set.image(c, 0).to_vec(), set.image(c, 1).to_vec()]).unwrap();
    }
    let e = clf.calibrate_threshold(0.95).unwrap_err().to_string();
    assert!(e.contains("matching") && e.contains("distances"), "{e}");
    assert!(clf.threshold().is_none());
}

/// Every model directory shipped in data/ loads with the method its config.json meant
/// before methods were recorded (`adaptation`, when active, is the adapted method; else
/// prototypes), and a config written back reads the same.
#[test]
fn the_shipped_models_load_with_the_method_they_were_saved_with() {
    let data = common::repo_root().join("data");
    let mut seen = 0;
    for entry in std::fs::read_dir(&data).unwrap() {
        let dir = entry.unwrap().path();
        let Ok(text) = std::fs::read_to_string(dir.join("config.json")) else { continue };
        let raw: serde_json::Value = serde_json::from_str(&text).unwrap();
        let expected = match (raw.get("method"), raw.get("adaptation")) {
            (Some(m), _) => serde_json::from_value(m.clone()).unwrap(),
            (None, Some(a)) => MethodConfig::from_adaptation(Some(serde_json::from_value(a.clone()).unwrap())),
            (None, None) => MethodConfig::Protonet,
        };
        let config = ModelConfig::read(&dir).unwrap();
        assert_eq!(config.method, expected, "{}", dir.display());
        let again: ModelConfig = serde_json::from_str(&serde_json::to_string(&config).unwrap()).unwrap();
        assert_eq!(again, config, "{}", dir.display());
        seen += 1;
    }
    assert!(seen >= 4, "only {seen} model directories in {}", data.display());
    let coins = ModelConfig::read(&data.join("coins-efficientnet-lite0")).unwrap();
    assert!(matches!(coins.method, MethodConfig::Adapted(a) if a.steps > 0), "the coin model adapts to its support set: {:?}", coins.method);
}

/// The matching network's loss has the gradient its finite differences give, with
/// respect to the support and the query embeddings (f64), so that episodic training
/// reaches the backbone through it.
#[test]
fn matching_loss_gradients_match_finite_differences() {
    use candle_core::{DType, Var};
    let dev = Device::Cpu;
    let support = Var::from_tensor(&Tensor::randn(0f64, 1.0, (6, 4), &dev).unwrap()).unwrap();
    let query = Var::from_tensor(&Tensor::randn(0f64, 1.0, (3, 4), &dev).unwrap()).unwrap();
    let labels = Tensor::new(&[0u32, 2, 1], &dev).unwrap();
    let m = Matching::new(MatchingConfig { scale: 4.0 });
    let loss = |s: &Tensor, q: &Tensor| -> Tensor {
        let fitted = m.fit(s, &[2, 2, 2]).unwrap();
        m.loss(&m.logits(&fitted, q).unwrap(), &labels).unwrap()
    };
    let grads = loss(support.as_tensor(), query.as_tensor()).backward().unwrap();
    let eps = 1e-6;
    for (var, other_is_query) in [(&support, true), (&query, false)] {
        let g = grads.get(var.as_tensor()).expect("a gradient").flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let x = var.as_tensor().flatten_all().unwrap().to_vec1::<f64>().unwrap();
        for i in 0..x.len() {
            let at = |delta: f64| {
                let mut v = x.clone();
                v[i] += delta;
                let t = Tensor::from_vec(v, var.as_tensor().dims(), &dev).unwrap();
                let l = if other_is_query { loss(&t, query.as_tensor()) } else { loss(support.as_tensor(), &t) };
                l.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
            };
            let fd = (at(eps) - at(-eps)) / (2.0 * eps);
            assert!((fd - g[i]).abs() < 1e-6 * (1.0 + fd.abs()), "element {i}: finite difference {fd}, gradient {}", g[i]);
        }
    }
}

/// Meta-Baseline's temperature starts at 10, is learned by episodic training (it moves),
/// and a saved model keeps the learned value.
#[test]
fn meta_baseline_learns_its_temperature_and_a_saved_model_keeps_it() {
    let set = common::glyph_set(12, 8, 28, 4);
    let mut model = small_model(MethodConfig::MetaBaseline(Default::default()), 2);
    let temperature = |m: &Model| m.tensors()["method.temperature"].to_scalar::<f32>().unwrap();
    assert_eq!(temperature(&model), 10.0);
    let config = TrainConfig { way: 5, shot: 2, query: 3, episodes: 20, learning_rate: 2e-2, val_every: 1000, patience: None, ..Default::default() };
    let mut trainer = Trainer::new(&mut model, &set, None, &config).unwrap();
    for _ in 0..20 {
        trainer.step().unwrap();
    }
    drop(trainer);
    let learned = temperature(&model);
    assert!((learned - 10.0).abs() > 1e-3, "the temperature did not move: {learned}");
    let dir = tempfile::tempdir().unwrap();
    model.save(dir.path()).unwrap();
    let loaded = Model::load(dir.path(), &Device::Cpu).unwrap();
    assert_eq!(temperature(&loaded), learned);
    let x = Tensor::from_vec(set.image(0, 0).to_vec(), (1, 1, 28, 28), &Device::Cpu).unwrap();
    let (a, b) = (model.net().embed(&x, false).unwrap(), loaded.net().embed(&x, false).unwrap());
    assert_eq!(a.to_vec2::<f32>().unwrap(), b.to_vec2::<f32>().unwrap());
}

/// A tiny relation network scored by hand: 2-channel 1x1 maps (so each 3x3 convolution
/// is its centre tap), known weights, BatchNorm on its initial running statistics; the
/// class map is the mean of its two support maps and is stacked before the query map.
#[test]
fn relation_scores_of_a_tiny_episode_computed_by_hand() {
    let mut vm = candle_nn::VarMap::new();
    let vb = candle_nn::VarBuilder::from_varmap(&vm, candle_core::DType::F32, &Device::Cpu);
    let settings = RelationConfig { hidden: 2, fc: 2, ..RelationConfig::new(2) };
    Relation::new(settings, vb).unwrap(); // creates the variables
                                          // conv1: (2 out, 4 in = class c0 c1, query c0 c1); conv2: (2, 2); centre taps only.
    let w1 = [[0.5f32, -1.0, 1.0, 0.25], [-0.5, 0.75, 0.5, 1.0]];
    let w2 = [[1.0f32, -0.5], [0.25, 0.5]];
    let (f1, b1, f2, b2) = ([[0.8f32, -0.3], [0.4, 0.6]], [0.1f32, -0.2], [1.5f32, -0.7], 0.05f32);
    let centre = |w: &[&[f32]], cin: usize| {
        let mut k = vec![0f32; w.len() * cin * 9];
        for (o, row) in w.iter().enumerate() {
            for (i, v) in row.iter().enumerate() {
                k[(o * cin + i) * 9 + 4] = *v;
            }
        }
        Tensor::from_vec(k, (w.len(), cin, 3, 3), &Device::Cpu).unwrap()
    };
    vm.set_one("conv1.weight", centre(&[&w1[0], &w1[1]], 4)).unwrap();
    vm.set_one("conv2.weight", centre(&[&w2[0], &w2[1]], 2)).unwrap();
    vm.set_one("fc1.weight", tensor(&[&f1[0], &f1[1]])).unwrap();
    vm.set_one("fc1.bias", Tensor::new(&b1, &Device::Cpu).unwrap()).unwrap();
    vm.set_one("fc2.weight", tensor(&[&f2])).unwrap();
    vm.set_one("fc2.bias", Tensor::new(&[b2], &Device::Cpu).unwrap()).unwrap();
    let m = Relation::new(settings, candle_nn::VarBuilder::from_varmap(&vm, candle_core::DType::F32, &Device::Cpu)).unwrap();
    let support: [&[f32]; 4] = [&[1.0, 0.0], &[0.0, 2.0], &[-1.0, 1.0], &[0.5, 0.5]];
    let queries: [&[f32]; 2] = [&[0.3, -0.4], &[1.0, 1.0]];
    let fitted = m.fit(&tensor(&support), &[2, 2]).unwrap();
    let got = m.logits(&fitted, &tensor(&queries)).unwrap().to_vec2::<f32>().unwrap();
    let bn = |x: f64| (x / (1.0 + 1e-5f64).sqrt()).max(0.0); // running mean 0, variance 1
    let class_maps = [[0.5f64, 1.0], [-0.25, 0.75]];
    for (qi, q) in queries.iter().enumerate() {
        for (k, c) in class_maps.iter().enumerate() {
            let input = [c[0], c[1], q[0] as f64, q[1] as f64];
            let h1: Vec<f64> = w1.iter().map(|w| bn(w.iter().zip(&input).map(|(a, b)| *a as f64 * b).sum())).collect();
            let h2: Vec<f64> = w2.iter().map(|w| bn(w.iter().zip(&h1).map(|(a, b)| *a as f64 * b).sum())).collect();
            let h3: Vec<f64> = f1.iter().zip(b1).map(|(w, b)| (w[0] as f64 * h2[0] + w[1] as f64 * h2[1] + b as f64).max(0.0)).collect();
            let z = f2[0] as f64 * h3[0] + f2[1] as f64 * h3[1] + b2 as f64;
            let want = 1.0 / (1.0 + (-z).exp());
            assert!((got[qi][k] as f64 - want).abs() < 1e-5, "query {qi} class {k}: {} vs {want}", got[qi][k]);
        }
    }
    // The loss is the mean squared error against the one-hot labels.
    let scores = tensor(&[&[0.9, 0.2], &[0.4, 0.7]]);
    let loss = m.loss(&scores, &Tensor::new(&[0u32, 1], &Device::Cpu).unwrap()).unwrap().to_scalar::<f32>().unwrap();
    assert!((loss - (0.01 + 0.04 + 0.16 + 0.09) / 4.0).abs() < 1e-6, "{loss}");
}

/// The relation network's Conv-4 keeps 64x5x5 maps of 28 px glyphs (no pooling in its
/// last two blocks, as the paper's encoder), and a model that would average its maps over
/// rotations is refused with the reason.
#[test]
fn relation_scores_five_by_five_maps_and_refuses_rotations() {
    let method = MethodConfig::Relation(RelationConfig::new(64));
    let conv4 = Conv4Config { layout: method.conv4_layout(), ..Default::default() };
    let mut cfg = ModelConfig::new(BackboneConfig::Conv4(conv4), ImageConfig::grey(28));
    cfg.method = method;
    assert_eq!(cfg.embedding_dim(), 64 * 5 * 5);
    let model = Model::new(cfg.clone(), 1, &Device::Cpu).unwrap();
    let x = Tensor::zeros((2, 1, 28, 28), candle_core::DType::F32, &Device::Cpu).unwrap();
    assert_eq!(model.net().backbone().feature_maps(&x, false).unwrap().dims(), &[2, 64, 5, 5]);
    assert_eq!(model.net().embed(&x, false).unwrap().dims(), &[2, 1600]);
    cfg.rotations = 4;
    let e = Model::new(cfg, 1, &Device::Cpu).err().expect("refused").to_string();
    assert!(e.contains("rotations") && e.contains("relation") && e.contains("feature maps"), "{e}");
    let embedder = protonet::embed::Embedder { rotations: 2, ..Default::default() };
    let e = embedder.embed_tensor(model.net(), &x).unwrap_err().to_string();
    assert!(e.contains("rotations") && e.contains("feature maps"), "{e}");
}

/// `method_only` trains the method's own parameters on a backbone that stays as it is
/// (the relation module on a trained backbone), still lowering the loss; a method without
/// parameters of its own is refused.
#[test]
fn method_only_training_leaves_the_backbone_and_trains_the_method() {
    let set = common::glyph_set(12, 8, 28, 4);
    let mut model = small_model(MethodConfig::Relation(RelationConfig::new(16)), 3);
    let before = model.tensors();
    let config =
        TrainConfig { way: 5, shot: 2, query: 3, episodes: 60, learning_rate: 2e-3, val_every: 1000, patience: None, method_only: true, ..Default::default() };
    let mut trainer = Trainer::new(&mut model, &set, None, &config).unwrap();
    let losses: Vec<f32> = (0..40).map(|_| trainer.step().unwrap().loss).collect();
    drop(trainer);
    let (first, last) = (losses[..5].iter().sum::<f32>() / 5.0, losses[35..].iter().sum::<f32>() / 5.0);
    assert!(last < 0.9 * first, "loss {first} -> {last}");
    let after = model.tensors();
    for (name, t) in &before {
        let moved = (t - &after[name]).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        if name.starts_with("method.") && !name.contains("running") {
            continue;
        }
        if !name.starts_with("method.") {
            assert_eq!(moved, 0.0, "{name} moved by {moved}: the backbone must stay as it is");
        }
    }
    let moved_method = before
        .keys()
        .filter(|n| n.starts_with("method.") && !n.contains("running"))
        .any(|n| (&before[n] - &after[n]).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() > 1e-6);
    assert!(moved_method, "the relation module did not learn");
    let mut plain = small_model(MethodConfig::Protonet, 3);
    let e = Trainer::new(&mut plain, &set, None, &config).err().expect("refused").to_string();
    assert!(e.contains("no parameters of its own"), "{e}");
}
