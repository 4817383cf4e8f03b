//! The command line never replaces a trained model or classifier by accident: `train`
//! into a directory that holds one fails with a message naming it and both flags, and
//! leaves every file as it was; `--overwrite` replaces it and `--resume` continues it;
//! `predict --save` refuses the model's own directory.

mod common;

use common::run_protonet;

#[test]
fn train_refuses_a_finished_model_without_resume_or_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    common::write_glyph_folder(&data, 4, 6, 28, 9);
    let out = dir.path().join("model");
    let (d, o) = (data.to_str().unwrap(), out.to_str().unwrap());
    let train = |episodes: &str, extra: &[&str]| {
        let mut args = vec!["train", "--dataset", "folder", "--data", d, "--val-data", d, "--out", o, "--channels", "1", "--image-size", "28"];
        args.extend([
            "--hidden",
            "8",
            "--way",
            "3",
            "--shot",
            "1",
            "--query",
            "1",
            "--val-way",
            "3",
            "--val-query",
            "2",
            "--val-episodes",
            "2",
            "--val-every",
            "2",
        ]);
        args.extend(["--episodes", episodes, "--quiet"]);
        args.extend(extra);
        run_protonet(&args)
    };
    let (ok, stdout, err) = train("4", &[]);
    assert!(ok, "{err}");
    assert!(stdout.contains("trained 4 episodes"), "{stdout}");
    let before = common::snapshot(&out);

    let (ok, _, err) = train("2", &[]);
    assert!(!ok, "training into a finished model must fail");
    assert!(err.contains(o) && err.contains("a model trained for") && err.contains("best validation"), "{err}");
    assert!(err.contains("--resume") && err.contains("--overwrite"), "{err}");
    assert_eq!(common::snapshot(&out), before, "every file byte-identical");

    let (ok, stdout, err) = train("6", &["--resume"]);
    assert!(ok && stdout.contains("trained 6 episodes"), "{stdout}{err}");
    let (ok, stdout, err) = train("2", &["--overwrite"]);
    assert!(ok && stdout.contains("trained 2 episodes"), "{stdout}{err}");
    let (ok, _, err) = train("2", &["--resume", "--overwrite"]);
    assert!(!ok && err.contains("cannot be used with"), "{err}");

    // predict --save refuses the model's own directory, and an existing classifier without --overwrite.
    let (ok, _, err) = run_protonet(&["predict", "--model", o, "--support", d, "--query", d, "--save", o]);
    assert!(!ok && err.contains("is the --model directory"), "{err}");
    let clf = dir.path().join("clf");
    let c = clf.to_str().unwrap();
    let (ok, _, err) = run_protonet(&["predict", "--model", o, "--support", d, "--query", d, "--save", c]);
    assert!(ok, "{err}");
    let (ok, _, err) = run_protonet(&["predict", "--model", o, "--support", d, "--query", d, "--save", c]);
    assert!(!ok && err.contains("a saved classifier") && err.contains("--overwrite"), "{err}");
    let (ok, _, err) = run_protonet(&["predict", "--model", o, "--support", d, "--query", d, "--save", c, "--overwrite"]);
    assert!(ok, "{err}");
}
