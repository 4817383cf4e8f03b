//! The coin example's argument handling: clear errors, never a panic.

mod common;

use std::path::PathBuf;
use std::process::Command;

/// `target/<profile>/examples/coins`, built by `cargo test` along with the tests.
fn example() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap();
    profile_dir.join("examples").join(format!("coins{}", std::env::consts::EXE_SUFFIX))
}

fn run(args: &[&str]) -> (bool, String) {
    let out = Command::new(example()).args(args).output().unwrap_or_else(|e| panic!("cannot run {}: {e}", example().display()));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!err.contains("panicked"), "coins {args:?} panicked:\n{err}");
    (out.status.success(), err)
}

#[test]
fn bad_folders_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    let (ok, err) = run(&["--backbone", "conv4", "--data", missing.to_str().unwrap()]);
    assert!(!ok && err.contains("missing") && err.contains("does not exist"), "{err}");

    let one = dir.path().join("one");
    common::write_glyph_folder(&one, 1, 10, 16, 1);
    let (ok, err) = run(&["--backbone", "conv4", "--data", one.to_str().unwrap()]);
    assert!(!ok && err.contains("at least 2 denominations"), "{err}");

    let few = dir.path().join("few");
    common::write_glyph_folder(&few, 4, 5, 16, 2);
    let (ok, err) = run(&["--backbone", "conv4", "--data", few.to_str().unwrap()]);
    assert!(!ok && err.contains("glyph000") && err.contains("has 5 photos"), "{err}");
}

/// Training on your own photos with rendered denominations added, and saving the model:
/// its description says it is a coin model.
#[test]
fn rendered_denominations_can_be_added_to_training() {
    let dir = tempfile::tempdir().unwrap();
    let (train, test) = (dir.path().join("train"), dir.path().join("test"));
    common::write_glyph_folder(&train, 4, 12, 24, 1);
    common::write_glyph_folder(&test, 3, 12, 24, 2);
    let model = dir.path().join("model");
    let out = Command::new(example())
        .args(["--backbone", "conv4", "--train", train.to_str().unwrap(), "--test", test.to_str().unwrap(), "--add-rendered", "3"])
        .args(["--train-episodes", "2", "--episodes", "3", "--image-size", "16", "--save", model.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("Adding 3 rendered denominations (60 images)"), "{stdout}");
    assert!(stdout.contains("Training denominations: 7"), "{stdout}");
    assert!(stdout.contains("accuracy on unseen denominations"), "{stdout}");
    let config = std::fs::read_to_string(model.join("config.json")).unwrap();
    assert!(config.contains("coin photographs") && config.contains("plus 3 rendered"), "{config}");
}

/// A trunk model folder read back with flags that would train another trunk (here the
/// shipped coin model, trained from block 0 with drop-connect, read with the default
/// `--first-block 8` and no drop-connect) is refused, naming the settings that differ,
/// instead of being measured as the recipe the flags ask for.
#[test]
fn a_trunk_model_trained_otherwise_is_refused_needs_data() {
    common::pretrained_weights("a_trunk_model_trained_otherwise_is_refused_needs_data");
    let dir = tempfile::tempdir().unwrap();
    let (train, test) = (dir.path().join("train"), dir.path().join("test"));
    common::write_glyph_folder(&train, 3, 12, 24, 1);
    common::write_glyph_folder(&test, 3, 12, 24, 2);
    let shipped = common::repo_root().join("data/coins-efficientnet-lite0");
    let args = ["--backbone", "efficientnet-lite0-trunk", "--train", train.to_str().unwrap(), "--test", test.to_str().unwrap()];
    let (ok, err) = run(&[&args[..], &["--trunk-model", shipped.to_str().unwrap(), "--episodes", "2"]].concat());
    assert!(!ok && err.contains("trunk-model") && err.contains("trained_from_block: 0, the flags ask for 8"), "{err}");
    assert!(err.contains("drop_connect: 0.2") && !err.contains("seed"), "{err}");
}
