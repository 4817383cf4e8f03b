//! `protonet train --method`: each method trains from the command line, and `eval`,
//! `predict` and `bench` need no flag to know which method a model holds.

mod common;

fn protonet(args: &[&str]) -> (bool, String, String) {
    common::run_protonet(args)
}

#[test]
fn each_method_trains_then_evaluates_and_predicts_without_a_method_flag() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("glyphs");
    common::write_glyph_folder(&data, 8, 6, 28, 5);
    let d = data.to_str().unwrap();
    for (method, length, done) in [
        ("matching", ["--episodes", "6"], "trained 6 episodes"),
        ("baseline", ["--epochs", "2"], "trained 2 epochs"),
        ("baseline-pp", ["--epochs", "2"], "trained 2 epochs"),
        ("relation", ["--episodes", "6"], "trained 6 episodes"),
    ] {
        let model = dir.path().join(method);
        let m = model.to_str().unwrap();
        let common = ["--dataset", "folder", "--data", d, "--out", m, "--channels", "1", "--image-size", "28", "--hidden", "16"];
        let episodes = ["--way", "4", "--shot", "1", "--query", "2", "--quiet", "--method", method];
        let args: Vec<&str> = ["train"].iter().chain(&common).chain(&episodes).chain(&length).copied().collect();
        let (ok, stdout, stderr) = protonet(&args);
        assert!(ok, "{method}: train failed: {stderr}");
        assert!(stdout.contains(done), "{method}: {stdout}");
        let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(model.join("config.json")).unwrap()).unwrap();
        let kind = config["method"]["kind"].as_str().unwrap();
        let expected = match method {
            "matching" | "relation" => method,
            _ => "baseline",
        };
        assert_eq!(kind, expected, "{method}");

        let (ok, stdout, stderr) =
            protonet(&["eval", "--model", m, "--dataset", "folder", "--data", d, "--way", "3", "--shot", "2", "--query", "2", "--episodes", "4", "--json"]);
        assert!(ok, "{method}: eval failed: {stderr}");
        let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
        assert!((0.0..=1.0).contains(&v["accuracy"].as_f64().unwrap()), "{method}: {v}");

        // predict: support = the first 4 classes' folders; queries from one of them.
        let support = dir.path().join(format!("support-{method}"));
        for c in 0..4 {
            let name = format!("glyph{c:03}");
            std::fs::create_dir_all(support.join(&name)).unwrap();
            for f in std::fs::read_dir(data.join(&name)).unwrap().take(3) {
                let f = f.unwrap().path();
                std::fs::copy(&f, support.join(&name).join(f.file_name().unwrap())).unwrap();
            }
        }
        let query = data.join("glyph001");
        let (ok, stdout, stderr) = protonet(&["predict", "--model", m, "--support", support.to_str().unwrap(), "--query", query.to_str().unwrap(), "--json"]);
        assert!(ok, "{method}: predict failed: {stderr}");
        let first: serde_json::Value = serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
        assert!(first["class"].as_str().unwrap().starts_with("glyph"), "{method}: {first}");
        assert!(first["distance"].is_null(), "{method} has no distances: {first}");
        // No distances: rejection is refused with the reason.
        let (ok, _, stderr) = protonet(&["predict", "--model", m, "--support", support.to_str().unwrap(), "--query", query.to_str().unwrap(), "--reject"]);
        assert!(!ok && stderr.contains("no distances"), "{method}: {stderr}");
    }
}

#[test]
fn bench_times_each_method() {
    for method in ["protonet", "matching", "meta-baseline", "relation"] {
        let (ok, stdout, stderr) =
            protonet(&["bench", "--way", "3", "--shot", "1", "--query", "2", "--iters", "2", "--warmup", "1", "--train", "--json", "--method", method]);
        assert!(ok, "{method}: {stderr}");
        let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
        assert!(v["median_ms"].as_f64().unwrap() > 0.0, "{v}");
    }
    let (ok, _, stderr) = protonet(&["bench", "--way", "3", "--shot", "1", "--query", "2", "--iters", "2", "--train", "--method", "baseline"]);
    assert!(!ok && stderr.contains("baseline"), "{stderr}");
}

/// Meta-Baseline trains its two stages (the classifier of all base classes in
/// OUT/classifier-stage, then episodes), keeps the better on validation and says which in
/// config.json; it needs a validation set to choose.
#[test]
fn meta_baseline_trains_both_stages_and_records_the_stage_kept() {
    let dir = tempfile::tempdir().unwrap();
    let (data, val) = (dir.path().join("glyphs"), dir.path().join("val"));
    common::write_glyph_folder(&data, 8, 6, 28, 5);
    common::write_glyph_folder(&val, 4, 6, 28, 9);
    let model = dir.path().join("meta");
    let (d, v, m) = (data.to_str().unwrap(), val.to_str().unwrap(), model.to_str().unwrap());
    let shape =
        ["--channels", "1", "--image-size", "28", "--hidden", "16", "--way", "4", "--shot", "1", "--query", "2", "--quiet", "--method", "meta-baseline"];
    let run = ["--epochs", "2", "--episodes", "6", "--val-every", "3", "--val-episodes", "4", "--val-way", "3", "--val-query", "2"];
    let args: Vec<&str> = ["train", "--dataset", "folder", "--data", d, "--out", m].iter().chain(&shape).chain(&run).copied().collect();
    let (ok, _, stderr) = protonet(&[&args[..], &["--val-data", v]].concat());
    assert!(ok, "train failed: {stderr}");
    assert!(model.join("classifier-stage/config.json").is_file(), "no first stage");
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(model.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["method"]["kind"], "meta_baseline");
    let description = config["description"].as_str().unwrap();
    assert!(description.contains("model selection on validation") && description.contains("kept"), "{description}");
    let (ok, stdout, stderr) =
        protonet(&["eval", "--model", m, "--dataset", "folder", "--data", v, "--way", "3", "--shot", "1", "--query", "2", "--episodes", "4", "--json"]);
    assert!(ok && stdout.contains("accuracy"), "eval failed: {stderr}");
    // Without a validation set it cannot choose: refused, saying so.
    let other = dir.path().join("meta-noval");
    let args: Vec<&str> = ["train", "--dataset", "folder", "--data", d, "--out", other.to_str().unwrap()].iter().chain(&shape).chain(&run).copied().collect();
    let (ok, _, stderr) = protonet(&args);
    assert!(!ok && stderr.contains("validation"), "{stderr}");
}

/// The relation network scores feature maps: its Conv-4 keeps 5x5 maps of 28 px images,
/// and averaging over rotations is refused with the reason, in `train --rotate`'s model
/// (which keeps 1) and in `eval --rotations 4`.
#[test]
fn relation_refuses_rotations_and_keeps_maps() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("glyphs");
    common::write_glyph_folder(&data, 6, 4, 28, 3);
    let (d, model) = (data.to_str().unwrap(), dir.path().join("relation"));
    let m = model.to_str().unwrap();
    let (ok, _, stderr) = protonet(&[
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
        "8",
        "--way",
        "3",
        "--shot",
        "1",
        "--query",
        "1",
        "--episodes",
        "2",
        "--rotate",
        "--quiet",
        "--method",
        "relation",
    ]);
    assert!(ok, "{stderr}");
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(model.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["rotations"].as_u64().unwrap_or(1), 1, "{config}");
    assert_eq!(config["backbone"]["layout"], "relation", "{config}");
    assert_eq!(config["method"]["channels"], 8, "{config}");
    let (ok, _, stderr) = protonet(&[
        "eval",
        "--model",
        m,
        "--dataset",
        "folder",
        "--data",
        d,
        "--way",
        "3",
        "--shot",
        "1",
        "--query",
        "1",
        "--episodes",
        "2",
        "--rotations",
        "4",
    ]);
    assert!(!ok && stderr.contains("rotations") && stderr.contains("feature maps"), "{stderr}");
}
