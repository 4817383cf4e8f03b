//! The few-shot classifier: stored prototypes, incremental classes, persistence and
//! open-set rejection (the last on Omniglot with the shipped model).

mod common;

use std::path::Path;

use candle_core::{Device, Tensor};
use protonet::backbone::{BackboneConfig, Conv4Config};
use protonet::data::{load_omniglot, ImageConfig, ImageSet, OmniglotSplit};
use protonet::openset::evaluate_open_set;
use protonet::{prototypes, squared_distances, FewShotClassifier, Model, ModelConfig, PrototypeStore};

fn small_model(seed: u64) -> Model {
    let cfg = ModelConfig::new(BackboneConfig::Conv4(Conv4Config { in_channels: 1, hidden: 16, depth: 4, ..Default::default() }), ImageConfig::grey(28));
    Model::new(cfg, seed, &Device::Cpu).unwrap()
}

fn images(set: &ImageSet, class: usize, range: std::ops::Range<usize>) -> Vec<Vec<f32>> {
    range.map(|i| set.image(class, i).to_vec()).collect()
}

#[test]
fn stored_prototypes_predict_as_prototypes_recomputed_from_the_support_images() {
    let set = common::glyph_set(5, 8, 28, 11);
    let (shot, way) = (3, 5);
    let mut clf = FewShotClassifier::new(small_model(3));
    for c in 0..way {
        clf.add_class(set.class_name(c), &images(&set, c, 0..shot)).unwrap();
    }
    let queries: Vec<Vec<f32>> = (0..way).flat_map(|c| images(&set, c, shot..8)).collect();
    let predictions = clf.predict_batch(&queries).unwrap();

    // The reference: one batch of support images through the network, prototypes and
    // distances from the library's episode functions.
    let net = clf.model().net();
    let support: Vec<f32> = (0..way).flat_map(|c| images(&set, c, 0..shot)).flatten().collect();
    let s = net.embed(&Tensor::from_vec(support, (way * shot, 1, 28, 28), &Device::Cpu).unwrap(), false).unwrap();
    let q = net.embed(&Tensor::from_vec(queries.concat(), (queries.len(), 1, 28, 28), &Device::Cpu).unwrap(), false).unwrap();
    let d = squared_distances(&q, &prototypes(&s, way, shot).unwrap()).unwrap().to_vec2::<f32>().unwrap();
    for (p, row) in predictions.iter().zip(&d) {
        let best = (0..way).min_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap();
        assert_eq!(p.class.as_deref(), Some(set.class_name(best)));
        for score in &p.ranked {
            let c = (0..way).find(|&c| set.class_name(c) == score.class).unwrap();
            let d = score.distance.unwrap();
            assert!((d - row[c]).abs() <= 1e-4 * row[c].max(1.0), "{} vs {}", d, row[c]);
        }
        let total: f32 = p.ranked.iter().map(|s| s.probability).sum();
        assert!((total - 1.0).abs() < 1e-5);
        assert!(p.ranked.windows(2).all(|w| w[0].distance <= w[1].distance));
        assert_eq!(p.confidence, p.ranked[0].probability);
    }
}

#[test]
fn adding_images_one_by_one_gives_the_prototype_of_adding_them_at_once() {
    let set = common::glyph_set(2, 6, 28, 5);
    let mut at_once = FewShotClassifier::new(small_model(9));
    let mut one_by_one = FewShotClassifier::new(small_model(9));
    at_once.add_class("a", &images(&set, 0, 0..6)).unwrap();
    for i in 0..6 {
        one_by_one.add_class("a", &images(&set, 0, i..i + 1)).unwrap();
    }
    let (p, q) = (at_once.prototype("a").unwrap(), one_by_one.prototype("a").unwrap());
    // Embeddings of a batch and of single images may differ in the last bits (blocked
    // matrix products); the running mean itself is exact (summed in f64, in order).
    for (x, y) in p.iter().zip(q) {
        assert!((x - y).abs() <= 1e-5 * x.abs().max(1.0), "{x} vs {y}");
    }
    // The running mean of the first 3 and then 3 more equals the mean over all 6.
    let mut halves = FewShotClassifier::new(small_model(9));
    halves.add_class("a", &images(&set, 0, 0..3)).unwrap();
    let first = halves.prototype("a").unwrap().to_vec();
    halves.add_class("a", &images(&set, 0, 3..6)).unwrap();
    assert_ne!(first, halves.prototype("a").unwrap());
    assert_eq!(halves.store().embeddings("a").unwrap().len(), 6);
    for (x, y) in p.iter().zip(halves.prototype("a").unwrap()) {
        assert!((x - y).abs() <= 1e-5 * x.abs().max(1.0));
    }
}

#[test]
fn save_then_load_gives_identical_predictions() {
    let set = common::glyph_set(4, 7, 28, 21);
    let mut clf = FewShotClassifier::new(small_model(4));
    for c in 0..4 {
        clf.add_class(set.class_name(c), &images(&set, c, 0..4)).unwrap();
    }
    clf.calibrate_threshold(0.9).unwrap();
    let queries: Vec<Vec<f32>> = (0..4).flat_map(|c| images(&set, c, 4..7)).collect();
    let before = clf.predict_batch(&queries).unwrap();
    let dir = tempfile::tempdir().unwrap();
    clf.save(dir.path()).unwrap();
    let loaded = FewShotClassifier::load(dir.path(), &Device::Cpu).unwrap();
    assert_eq!(loaded.class_names(), clf.class_names());
    assert_eq!(loaded.threshold(), clf.threshold());
    assert_eq!(loaded.predict_batch(&queries).unwrap(), before);

    // A damaged store is an error naming its file, not a panic.
    let emb = dir.path().join(protonet::output::EMBEDDINGS_FILE);
    let bytes = std::fs::read(&emb).unwrap();
    std::fs::write(&emb, &bytes[..bytes.len() / 2]).unwrap();
    let err = FewShotClassifier::load(dir.path(), &Device::Cpu).err().expect("truncated store must fail").to_string();
    assert!(err.contains("prototypes.safetensors"), "{err}");
}

#[test]
fn classes_can_be_removed_and_renamed() {
    let set = common::glyph_set(3, 4, 28, 8);
    let mut clf = FewShotClassifier::new(small_model(1));
    assert!(clf.predict(set.image(0, 0)).unwrap_err().to_string().contains("add at least one class"));
    for c in 0..3 {
        clf.add_class(&format!("c{c}"), &images(&set, c, 0..2)).unwrap();
    }
    clf.rename_class("c1", "one").unwrap();
    assert_eq!(clf.class_names(), ["c0", "one", "c2"]);
    assert!(clf.rename_class("c0", "c2").unwrap_err().to_string().contains("exists"));
    clf.remove_class("c2").unwrap();
    assert_eq!(clf.class_names(), ["c0", "one"]);
    // One class alone is refused without a threshold, and answers "this class or unknown" with one.
    clf.remove_class("one").unwrap();
    let err = clf.predict(set.image(0, 3)).unwrap_err().to_string();
    assert!(err.contains("only one class (`c0`)") && err.contains("threshold"), "{err}");
    clf.set_threshold(Some(1e9)).unwrap();
    assert_eq!(clf.predict(set.image(0, 3)).unwrap().class.as_deref(), Some("c0"));
    clf.set_threshold(None).unwrap();
    clf.add_class("one", &images(&set, 1, 0..2)).unwrap();
    assert!(clf.remove_class("c2").unwrap_err().to_string().contains("no class `c2`"));
    let p = clf.predict(set.image(2, 3)).unwrap();
    assert!(p.ranked.iter().all(|s| s.class != "c2"));
    // A wrong image size is an error, not a panic.
    assert!(clf.predict(&[0.0; 10]).unwrap_err().to_string().contains("values"));
}

#[test]
fn a_class_never_added_is_answered_unknown_with_a_threshold() {
    let set = common::glyph_set(4, 8, 28, 33);
    let mut clf = FewShotClassifier::new(small_model(2));
    for c in 0..3 {
        clf.add_class(set.class_name(c), &images(&set, c, 0..5)).unwrap();
    }
    let query = set.image(3, 0).to_vec();
    let p = clf.predict(&query).unwrap();
    assert!(p.class.is_some(), "without a threshold every query gets a class");
    clf.set_threshold(Some(p.distance.unwrap() * 0.5)).unwrap();
    assert_eq!(clf.predict(&query).unwrap().class, None);
    assert!(clf.set_threshold(Some(f32::NAN)).is_err() && clf.set_threshold(Some(-1.0)).is_err());
}

/// Open-set rejection with the shipped Omniglot model at the calibrated threshold
/// (quantile 0.95): characters that were added are mostly accepted, characters that
/// were not are mostly rejected. The README quotes `cargo run --release --example open_set`.
#[test]
fn calibrated_rejection_on_omniglot_separates_seen_and_unseen_characters_needs_data() {
    let root = common::require_omniglot("calibrated_rejection_on_omniglot_separates_seen_and_unseen_characters_needs_data");
    let model = Model::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("data/omniglot-conv4"), &Device::Cpu).unwrap();
    let test = load_omniglot(&root, OmniglotSplit::Test).unwrap();
    // Every 4th class: one rotation of 423 characters, embedded once.
    let subset = test.subset(&(0..test.num_classes()).step_by(4).collect::<Vec<_>>());
    let embedded = protonet::embed::Embedder { batch: 256, rotations: 1 }.embed_set(model.net(), &subset, &Device::Cpu, &protonet::Silent).unwrap();
    let r = evaluate_open_set(&embedded, 20, 5, 20, 60, 0.95, 7).unwrap();
    eprintln!("{r}");
    assert!(r.known_accepted > 0.85, "{r}");
    assert!(r.known_correct > 0.85, "{r}");
    assert!(r.unknown_rejected > 0.8, "{r}");
    // A tighter quantile rejects more of both.
    let tight = evaluate_open_set(&embedded, 20, 5, 20, 60, 0.5, 7).unwrap();
    assert!(tight.known_accepted < r.known_accepted && tight.unknown_rejected > r.unknown_rejected, "{tight}");
}

/// With centring on the support mean and L2 normalization (SimpleShot), predictions do
/// not change when every embedding is shifted by one vector or scaled by one factor, and
/// the setting survives save and load.
#[test]
fn normalization_makes_predictions_shift_and_scale_invariant() {
    use protonet::FeatureNorm;
    use protonet::PrototypeStore;
    let set = common::glyph_set(3, 6, 28, 13);
    let clf = FewShotClassifier::new(small_model(5));
    let emb: Vec<Vec<Vec<f32>>> = (0..3).map(|c| clf.embed(&images(&set, c, 0..6)).unwrap()).collect();
    let build = |f: &dyn Fn(&[f32]) -> Vec<f32>| {
        let mut s = PrototypeStore::new(emb[0][0].len());
        s.set_normalization(FeatureNorm::CenterSupportL2).unwrap();
        for (c, e) in emb.iter().enumerate() {
            s.add(&format!("c{c}"), e[..3].iter().map(|v| f(v)).collect()).unwrap();
        }
        let queries: Vec<Vec<f32>> = emb.iter().flat_map(|e| e[3..].iter().map(|v| f(v))).collect();
        s.predict(&queries).unwrap().into_iter().map(|p| p.class).collect::<Vec<_>>()
    };
    let plain = build(&|v| v.to_vec());
    let shifted = build(&|v| v.iter().enumerate().map(|(i, x)| x + 3.0 + i as f32).collect());
    let scaled = build(&|v| v.iter().map(|x| x * 7.5).collect());
    assert_eq!(plain, shifted);
    assert_eq!(plain, scaled);

    let mut clf = clf;
    for c in 0..3 {
        clf.add_class(&format!("c{c}"), &images(&set, c, 0..3)).unwrap();
    }
    clf.set_normalization(FeatureNorm::CenterSupportL2).unwrap();
    let dir = tempfile::tempdir().unwrap();
    clf.save(dir.path()).unwrap();
    let loaded = FewShotClassifier::load(dir.path(), &Device::Cpu).unwrap();
    assert_eq!(loaded.store().normalization(), &FeatureNorm::CenterSupportL2);
    let q = images(&set, 1, 3..6);
    assert_eq!(loaded.predict_batch(&q).unwrap(), clf.predict_batch(&q).unwrap());
}

/// The rejection threshold from synthetic embeddings, computed here by hand: leave-one-out
/// distances scaled by (n+1)(n-1)/n², their quantile by linear interpolation; with it, a
/// query near a class is accepted and one far from both is answered "unknown".
#[test]
fn calibrated_threshold_is_the_quantile_of_scaled_leave_one_out_distances() {
    let a = vec![vec![0.0, 0.0], vec![1.0, 0.0], vec![0.0, 2.0], vec![1.0, 1.0]];
    let b = vec![vec![10.0, 10.0], vec![10.5, 10.0], vec![10.0, 11.0]];
    let mut store = protonet::PrototypeStore::new(2);
    store.add("a", a.clone()).unwrap();
    store.add("b", b.clone()).unwrap();
    let mut expected = Vec::new();
    for class in [&a, &b] {
        let n = class.len() as f64;
        let sum: Vec<f64> = (0..2).map(|d| class.iter().map(|e| e[d] as f64).sum()).collect();
        for e in class {
            let others: Vec<f64> = (0..2).map(|d| (sum[d] - e[d] as f64) / (n - 1.0)).collect();
            let dist: f64 = (0..2).map(|d| (e[d] as f64 - others[d]).powi(2)).sum();
            expected.push(dist * (n + 1.0) * (n - 1.0) / (n * n));
        }
    }
    let got = store.leave_one_out_distances().unwrap();
    assert_eq!(got.len(), expected.len());
    for (g, e) in got.iter().zip(&expected) {
        assert!((*g as f64 - e).abs() < 1e-5, "{got:?} vs {expected:?}");
    }
    let mut sorted = expected.clone();
    sorted.sort_by(f64::total_cmp);
    let q = 0.7;
    let pos = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    let want = sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64);
    let t = store.calibrate_threshold(q as f32).unwrap();
    assert!((t as f64 - want).abs() < 1e-5, "threshold {t} vs {want}");
    let p = store.predict(&[vec![0.5, 0.5], vec![10.2, 10.3], vec![5.0, -20.0]]).unwrap();
    assert_eq!(p[0].class.as_deref(), Some("a"));
    assert_eq!(p[1].class.as_deref(), Some("b"));
    assert_eq!(p[2].class, None, "far from both classes: unknown");
}

/// Rotation averaging: the embedding of an image with 4 rotations is the mean of the
/// network's embeddings of its 4 quarter turns, rotated here by hand.
#[test]
fn rotation_averaging_is_the_mean_over_quarter_turns() {
    let model = small_model(3);
    let set = common::glyph_set(1, 2, 28, 44);
    let image = set.image(0, 1).to_vec();
    let mut clf = FewShotClassifier::new(model);
    clf.set_rotations(4).unwrap();
    let averaged = clf.embed(std::slice::from_ref(&image)).unwrap().remove(0);
    clf.set_rotations(1).unwrap();
    // Quarter turns counter-clockwise, by index arithmetic.
    let turn = |img: &[f32]| -> Vec<f32> { (0..28 * 28).map(|i| img[(i % 28) * 28 + (27 - i / 28)]).collect() };
    let mut turns = vec![image.clone()];
    for _ in 1..4 {
        let next = turn(turns.last().unwrap());
        turns.push(next);
    }
    assert_ne!(turns[0], turns[1], "the glyph is not rotation-symmetric");
    let each = clf.embed(&turns).unwrap();
    for (d, v) in averaged.iter().enumerate() {
        let mean = each.iter().map(|e| e[d]).sum::<f32>() / 4.0;
        assert!((v - mean).abs() < 1e-5 * (1.0 + mean.abs()), "dimension {d}: {v} vs {mean}");
    }
}

/// Confidence calibration on synthetic classes that overlap (Gaussian clusters, 4 support
/// images each): the mean confidence of new queries is close to the share answered
/// right, with the fitted scale; the paper's plain softmax (scale 1) on these distances
/// is far from it. Held-out queries, not the support set, are scored.
#[test]
fn fitted_confidence_matches_the_share_of_right_answers() {
    use protonet::classifier::PrototypeStore;
    use rand::{Rng, SeedableRng};
    let (classes, dim, shots) = (6, 16, 4);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    // A standard normal by Box-Muller.
    let mut normal = move || -> f32 {
        let (u, v): (f32, f32) = (rng.random_range(1e-7..1.0), rng.random());
        (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
    };
    // Class centres at spread 0.15, images at noise 0.18 around them: about 80% right, on a
    // distance scale as small as that of L2-normalized embeddings.
    let centres: Vec<Vec<f32>> = (0..classes).map(|_| (0..dim).map(|_| 0.15 * normal()).collect()).collect();
    let mut draw = |c: usize| -> Vec<f32> { centres[c].iter().map(|m| m + 0.18 * normal()).collect() };
    let mut store = PrototypeStore::new(dim);
    for c in 0..classes {
        let support: Vec<Vec<f32>> = (0..shots).map(|_| draw(c)).collect();
        store.add(&format!("c{c}"), support).unwrap();
    }
    let mut queries = Vec::new();
    let mut truth = Vec::new();
    for _ in 0..300 {
        for c in 0..classes {
            queries.push(draw(c));
            truth.push(format!("c{c}"));
        }
    }
    let predictions = store.predict(&queries).unwrap();
    let right = predictions.iter().zip(&truth).filter(|(p, t)| p.class.as_deref() == Some(t.as_str())).count() as f64 / truth.len() as f64;
    let mean_confidence = predictions.iter().map(|p| p.confidence as f64).sum::<f64>() / truth.len() as f64;
    assert!((0.4..0.95).contains(&right), "the synthetic task should be neither trivial nor hopeless: {right}");
    assert!(
        (mean_confidence - right).abs() < 0.1,
        "mean confidence {mean_confidence:.3} vs share right {right:.3}, scale {}",
        store.confidence_scale().unwrap()
    );
    // Right answers are more confident than wrong ones.
    let mean_of = |want: bool| {
        let v: Vec<f64> =
            predictions.iter().zip(&truth).filter(|(p, t)| (p.class.as_deref() == Some(t.as_str())) == want).map(|(p, _)| p.confidence as f64).collect();
        v.iter().sum::<f64>() / v.len() as f64
    };
    assert!(mean_of(true) > mean_of(false) + 0.05, "right {:.3} vs wrong {:.3}", mean_of(true), mean_of(false));
    // The plain softmax of these distances would be badly calibrated.
    let plain: f64 = queries
        .iter()
        .map(|q| {
            let d: Vec<f64> =
                store.class_names().iter().map(|c| store.prototype(c).unwrap().iter().zip(q).map(|(a, b)| ((a - b) as f64).powi(2)).sum()).collect();
            let min = d.iter().copied().fold(f64::INFINITY, f64::min);
            1.0 / d.iter().map(|x| (min - x).exp()).sum::<f64>()
        })
        .sum::<f64>()
        / queries.len() as f64;
    assert!(
        (plain - right).abs() > 0.1,
        "with scale 1 the mean confidence would be {plain:.3} for {right:.3} right: the test would not tell calibration apart"
    );
}

/// What a Rust user writes, through the public API only: a classifier from a model
/// directory (the shipped Omniglot Conv-4), a support folder, predictions for files, a
/// saved classifier that loads and gives identical predictions.
#[test]
fn classifier_from_a_model_directory_and_a_support_folder_saves_and_predicts_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let support = dir.path().join("support");
    common::write_glyph_folder(&support, 4, 5, 28, 21);
    let mut clf = FewShotClassifier::from_model_dir(common::repo_root().join("data/omniglot-conv4"), &Device::Cpu).unwrap();
    clf.add_support_folder(&support).unwrap();
    assert_eq!(clf.class_names(), ["glyph000", "glyph001", "glyph002", "glyph003"]);
    let files = protonet::data::list_images(std::slice::from_ref(&support)).unwrap();
    let answers: Vec<_> = clf.predict_files(&files).unwrap().into_iter().map(|p| p.answer.unwrap()).collect();
    // Its own support images: each is nearest its own class.
    for (f, a) in files.iter().zip(&answers) {
        assert_eq!(a.class.as_deref(), f.parent().unwrap().file_name().unwrap().to_str(), "{}", f.display());
    }
    clf.save(dir.path().join("saved")).unwrap();
    let loaded = FewShotClassifier::load(dir.path().join("saved"), &Device::Cpu).unwrap();
    let again: Vec<_> = loaded.predict_files(&files).unwrap().into_iter().map(|p| p.answer.unwrap()).collect();
    assert_eq!(again, answers);
}

/// The leave-one-out answers through the prototypes method: a left-out image's distance
/// to its own class is to the mean of the class's other images, scaled by
/// `(n+1)(n-1)/n²`; to the other classes, to their full means. One answer per image of
/// a class of at least 2.
#[test]
fn leave_one_out_answers_leave_each_image_out_of_its_own_class() {
    let mut store = PrototypeStore::new(1);
    store.add("a", vec![vec![0.0], vec![2.0], vec![4.0]]).unwrap();
    store.add("b", vec![vec![10.0], vec![12.0]]).unwrap();
    store.add("c", vec![vec![20.0]]).unwrap();
    let mut answers = store.leave_one_out_answers().unwrap();
    answers.sort_by(|x, y| x.0.cmp(&y.0).then(x.1[0].total_cmp(&y.1[0])));
    assert_eq!(answers.len(), 5);
    let s3 = 4.0 * 2.0 / 9.0; // n = 3
    let s2 = 3.0 * 1.0 / 4.0; // n = 2
                              // Image 0 of "a": others' mean 3 -> 9 s3; image 2: mean 2 -> 0; image 4: mean 1 -> 9 s3.
    let own_a: Vec<f64> = answers.iter().filter(|a| a.0 == 0).map(|a| a.1[0]).collect();
    let mut expect_a = vec![0.0, 9.0 * s3, 9.0 * s3];
    expect_a.sort_by(f64::total_cmp);
    let mut got_a = own_a.clone();
    got_a.sort_by(f64::total_cmp);
    for (g, w) in got_a.iter().zip(&expect_a) {
        assert!((g - w).abs() < 1e-4, "{got_a:?} vs {expect_a:?}");
    }
    // "b" left out one at a time: its own distance (12 - 10)² s2 = 4 s2; "c" (one image) is never left out.
    for a in answers.iter().filter(|a| a.0 == 1) {
        assert!((a.1[1] - 4.0 * s2).abs() < 1e-4, "{a:?}");
        assert!(a.1[0] > 30.0 && a.1[2] > 60.0, "{a:?}");
    }
}

/// "unknown" gets a meaningful confidence: the share of the support set's left-out
/// images nearer their own class than the query is to its nearest (just past a
/// threshold at the median: about half; far away: 1), also with one class.
#[test]
fn an_unknown_answer_says_how_far_out_the_query_is() {
    let mut store = PrototypeStore::new(1);
    store.add("a", (0..8).map(|i| vec![i as f32]).collect()).unwrap();
    let t = store.calibrate_threshold(0.5).unwrap();
    let just_past = store.predict(&[vec![3.5 + (t.sqrt() * 1.02)]]).unwrap().remove(0);
    assert!(just_past.class.is_none(), "{just_past:?}");
    assert!(just_past.confidence > 0.4 && just_past.confidence < 0.7, "{just_past:?}");
    let far = store.predict(&[vec![100.0]]).unwrap().remove(0);
    assert!(far.class.is_none() && far.confidence == 1.0, "{far:?}");
    let near = store.predict(&[vec![3.5]]).unwrap().remove(0);
    assert_eq!(near.class.as_deref(), Some("a"));
}

/// The confidence scale is fitted through the method, so changing the method refits it
/// (a scale fitted on prototypes is not kept for the support adaptation).
#[test]
fn changing_the_method_refits_the_confidence_scale() {
    let mut store = PrototypeStore::new(2);
    store.add("a", vec![vec![0.0, 1.0], vec![0.2, 1.1], vec![-0.1, 0.8]]).unwrap();
    store.add("b", vec![vec![1.0, 0.0], vec![0.9, 0.3], vec![1.2, -0.1]]).unwrap();
    let plain = store.confidence_scale().unwrap();
    let adapted = protonet::MethodConfig::Protonet.with_adaptation_steps(20).build_without_parameters().unwrap();
    store.set_method(adapted).unwrap();
    let mut fresh = store.clone();
    fresh.set_method(store.method().clone()).unwrap();
    assert_eq!(store.confidence_scale().unwrap(), fresh.confidence_scale().unwrap());
    assert_ne!(store.confidence_scale().unwrap(), plain, "the scale was not refitted for the new method");
}

/// The rejection threshold is calibrated in the method's own distances, the ones
/// predictions are answered and rejected with: for the support adaptation (cosine
/// classifier) they are not the squared distances to the class means.
#[test]
fn the_rejection_threshold_is_calibrated_in_the_methods_distances() {
    let mut store = PrototypeStore::new(2);
    store.add("a", vec![vec![0.0, 1.0], vec![0.2, 1.1], vec![-0.1, 0.8], vec![0.1, 1.3]]).unwrap();
    store.add("b", vec![vec![1.0, 0.0], vec![0.9, 0.3], vec![1.2, -0.1], vec![1.4, 0.2]]).unwrap();
    let plain = store.leave_one_out_distances().unwrap();
    let adapted = protonet::MethodConfig::Protonet.with_adaptation_steps(20).build_without_parameters().unwrap();
    store.set_method(adapted).unwrap();
    let own: Vec<f32> = {
        let mut by_class = [Vec::new(), Vec::new()];
        for (k, d) in store.leave_one_out_answers().unwrap() {
            by_class[k].push(d[k] as f32);
        }
        by_class.concat()
    };
    let got = store.leave_one_out_distances().unwrap();
    assert_eq!(got.len(), 8);
    for (g, o) in got.iter().zip(&own) {
        assert!((g - o).abs() < 1e-5, "{got:?} vs {own:?}");
    }
    assert!(got.iter().zip(&plain).any(|(g, p)| (g - p).abs() > 1e-3), "still the plain prototype distances: {got:?}");
    let t = store.calibrate_threshold(1.0).unwrap();
    assert!((t - got.iter().copied().fold(f32::MIN, f32::max)).abs() < 1e-5);
    // A support image is accepted at the largest quantile: its own distance is below it.
    let p = store.predict(&[vec![0.0, 1.0]]).unwrap().remove(0);
    assert_eq!(p.class.as_deref(), Some("a"), "{p:?}");
}
