//! The `protonet` command line: train, eval --json, bench --json, and its errors.

mod common;

fn protonet(args: &[&str]) -> (bool, String, String) {
    common::run_protonet(args)
}

#[test]
fn train_then_eval_json_on_an_image_folder() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("glyphs");
    common::write_glyph_folder(&data, 12, 8, 28, 5);
    let model = dir.path().join("model");
    let (d, m) = (data.to_str().unwrap(), model.to_str().unwrap());
    let (ok, stdout, stderr) = protonet(&[
        "train",
        "--dataset",
        "folder",
        "--data",
        d,
        "--out",
        m,
        "--channels",
        "1",
        "--image-size",
        "28",
        "--hidden",
        "16",
        "--way",
        "5",
        "--shot",
        "1",
        "--query",
        "3",
        "--episodes",
        "6",
        "--quiet",
    ]);
    assert!(ok, "train failed: {stderr}");
    assert!(stdout.contains("trained 6 episodes"), "{stdout}");
    assert!(model.join("config.json").is_file() && model.join("model.safetensors").is_file());

    let (ok, stdout, stderr) =
        protonet(&["eval", "--model", m, "--dataset", "folder", "--data", d, "--way", "4", "--shot", "2", "--query", "2", "--episodes", "7", "--json"]);
    assert!(ok, "eval failed: {stderr}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    assert_eq!((v["way"].as_u64(), v["shot"].as_u64(), v["query"].as_u64(), v["episodes"].as_u64()), (Some(4), Some(2), Some(2), Some(7)));
    let acc = v["accuracy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&acc) && v["ci95"].as_f64().unwrap() >= 0.0);
}

#[test]
fn bench_json_reports_timings() {
    let (ok, stdout, stderr) = protonet(&["bench", "--way", "3", "--shot", "1", "--query", "2", "--iters", "3", "--warmup", "1", "--train", "--json"]);
    assert!(ok, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let (med, min, max) = (v["median_ms"].as_f64().unwrap(), v["min_ms"].as_f64().unwrap(), v["max_ms"].as_f64().unwrap());
    assert!(min > 0.0 && min <= med && med <= max, "{v}");
}

#[test]
fn bad_arguments_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["train", "--dataset", "folder", "--data", missing.to_str().unwrap(), "--out", "x"], "does not exist"),
        (vec!["train", "--dataset", "folder", "--out", "x"], "--data"),
        (vec!["eval", "--model", missing.to_str().unwrap()], "config.json"),
        (vec!["bench", "--way", "1"], "way"),
        (vec!["bench", "--shot", "0"], "shot"),
        (vec!["train", "--out", "x", "--episodes", "0"], "episodes"),
    ];
    for (args, needle) in cases {
        let (ok, _, stderr) = protonet(&args);
        assert!(!ok, "{args:?} should fail");
        assert!(stderr.contains("error") && stderr.contains(needle), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
    }
    // Too few images per class for the episode: the class is named.
    let data = dir.path().join("small");
    common::write_glyph_folder(&data, 6, 3, 28, 1);
    let (ok, _, stderr) = protonet(&[
        "train",
        "--dataset",
        "folder",
        "--data",
        data.to_str().unwrap(),
        "--out",
        dir.path().join("m").to_str().unwrap(),
        "--channels",
        "1",
        "--image-size",
        "28",
        "--way",
        "5",
    ]);
    assert!(!ok && stderr.contains("glyph000") && stderr.contains("has 3 images"), "{stderr}");
}

#[test]
fn help_explains_every_subcommand() {
    let (ok, top, _) = protonet(&["--help"]);
    assert!(ok);
    // Every subcommand is listed with a description, and its own help names its flags.
    let subcommands = [
        ("train", "--out"),
        ("fine-tune", "--data"),
        ("eval", "--episodes"),
        ("bench", "--way"),
        ("predict", "--support"),
        ("embed", "--model"),
        ("plot-embeddings", "--shot"),
        ("plot-curves", "--model"),
        ("fetch-weights", "--dir"),
        ("serve", "--store"),
    ];
    // No subcommand goes unchecked: the list above covers --help's.
    let listed = top
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter(|l| !l.trim_start().starts_with("help "))
        .count();
    assert_eq!(listed, subcommands.len(), "{top}");
    for (sub, flag) in subcommands {
        let line = top.lines().find(|l| l.trim_start().starts_with(&format!("{sub} "))).unwrap_or_else(|| panic!("{sub} missing from --help:\n{top}"));
        assert!(line.split_whitespace().count() > 2, "{sub} has no description: {line}");
        let (ok, stdout, _) = protonet(&[sub, "--help"]);
        assert!(ok && stdout.contains(flag) && stdout.contains("--help"), "{sub} --help does not explain {flag}:\n{stdout}");
    }
}

/// `protonet eval --model` and the library's `evaluate` give the same report for a model
/// trained with `--rotate` (whose embeddings are averaged over 4 quarter turns), for both
/// of evaluation's roads: episode by episode (few episodes) and embed-once (many).
#[test]
fn library_and_eval_agree_on_a_rotate_model() {
    use protonet::data::{load_image_folder, FolderOptions};
    use protonet::eval::{evaluate_net, EvalConfig};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("glyphs");
    common::write_glyph_folder(&data, 6, 8, 16, 9);
    let model = dir.path().join("model");
    let (d, m) = (data.to_str().unwrap(), model.to_str().unwrap());
    let train = [
        "train",
        "--dataset",
        "folder",
        "--data",
        d,
        "--out",
        m,
        "--channels",
        "1",
        "--image-size",
        "16",
        "--hidden",
        "8",
        "--way",
        "4",
        "--shot",
        "1",
        "--query",
        "2",
        "--episodes",
        "5",
        "--rotate",
        "--quiet",
    ];
    let (ok, _, stderr) = protonet(&train);
    assert!(ok, "train failed: {stderr}");
    let loaded = protonet::Model::load(&model, &candle_core::Device::Cpu).unwrap();
    assert_eq!(loaded.config().rotations, 4, "--rotate models classify over 4 quarter turns");
    let set = load_image_folder(&data, &loaded.config().image, &FolderOptions::default()).unwrap();
    let spec = protonet::EpisodeSpec::new(3, 1, 2).unwrap();
    for episodes in [4, 200] {
        let e = episodes.to_string();
        let args =
            ["eval", "--model", m, "--dataset", "folder", "--data", d, "--way", "3", "--shot", "1", "--query", "2", "--episodes", &e, "--seed", "5", "--json"];
        let (ok, stdout, stderr) = protonet(&args);
        assert!(ok, "eval failed: {stderr}");
        let cli: protonet::EvalReport = serde_json::from_str(stdout.trim()).expect("one JSON report");
        let config = EvalConfig::new(spec, episodes, 5);
        let lib = protonet::evaluate(&loaded, &set, &config, &protonet::Silent).unwrap();
        assert_eq!((cli.accuracy, cli.ci95), (lib.accuracy, lib.ci95), "{episodes} episodes");
        let by_hand = evaluate_net(
            loaded.net(),
            &loaded.config().embedder(),
            &loaded.config().normalization,
            &set,
            &config,
            &candle_core::Device::Cpu,
            &protonet::Silent,
        );
        assert_eq!(by_hand.unwrap().accuracy, lib.accuracy);
    }
    // The test can tell: without the model's rotations the embeddings are others.
    let x = candle_core::Tensor::from_vec(set.image(0, 0).to_vec(), (1, 1, 16, 16), &candle_core::Device::Cpu).unwrap();
    let rotated = loaded.config().embedder().embed_tensor(loaded.net(), &x).unwrap();
    let plain = protonet::embed::Embedder::default().embed_tensor(loaded.net(), &x).unwrap();
    assert!((rotated - plain).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() > 1e-4);
}
