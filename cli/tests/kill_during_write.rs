//! Killing a training run at random moments, and certainly in the middle of writing a
//! checkpoint (a test hook pauses inside the write), never leaves a damaged file: the
//! checkpoint and the model on disk always load, and each is a complete earlier or later
//! version (episodes never go back); resuming removes the temporary files left behind.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use candle_core::Device;
use protonet::io::read_safetensors;
use protonet::Model;
use rand::{Rng, SeedableRng};

fn checkpoint_episode(path: &std::path::Path) -> usize {
    let (tensors, meta) = read_safetensors(path, &Device::Cpu).unwrap_or_else(|e| panic!("checkpoint does not load after a kill: {e}"));
    assert!(!tensors.is_empty());
    let state: serde_json::Value = serde_json::from_str(&meta["protonet.run_state"]).expect("run state is JSON");
    state["episode"].as_u64().unwrap() as usize
}

#[test]
fn a_run_killed_at_random_moments_always_leaves_loadable_files() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("glyphs");
    common::write_glyph_folder(&data, 6, 4, 28, 3);
    let out = dir.path().join("run");
    // A wide network (checkpoints of ~20 MB, written and synced every episode) on tiny
    // episodes, so that much of the run's time is spent writing.
    let args = [
        "train",
        "--dataset",
        "folder",
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--channels",
        "1",
        "--image-size",
        "28",
        "--hidden",
        "224",
        "--way",
        "2",
        "--shot",
        "1",
        "--query",
        "1",
        "--episodes",
        "1000000",
        "--checkpoint-every",
        "1",
        "--val-every",
        "1",
        "--resume",
        "--quiet",
    ];
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let ckpt = out.join("checkpoint.safetensors");
    let spawn = |pause_ms: Option<u64>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_protonet"));
        cmd.args(args).stdout(Stdio::null()).stderr(Stdio::null());
        if let Some(ms) = pause_ms {
            cmd.env("PROTONET_TEST_PAUSE_IN_WRITE_MS", ms.to_string());
        }
        cmd.spawn().unwrap()
    };
    let temporaries = || -> Vec<String> {
        std::fs::read_dir(&out)
            .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| n.ends_with(".tmp")).collect())
            .unwrap_or_default()
    };
    let (mut last_episode, mut had_model) = (0usize, false);
    let mut check_after_kill = |what: &str| {
        let episode = checkpoint_episode(&ckpt);
        assert!(episode >= last_episode, "{what}: checkpoint went back from episode {last_episode} to {episode}");
        last_episode = episode;
        // A run killed before its first validation has no model yet; once there is one, it always loads.
        had_model |= out.join("config.json").exists();
        if had_model {
            Model::load(&out, &Device::Cpu).unwrap_or_else(|e| panic!("{what}: model does not load after a kill: {e}"));
        }
    };

    // Kills at random moments, each once the run has written a checkpoint of its own.
    for _ in 0..15 {
        let started = SystemTime::now();
        let mut child = spawn(None);
        wait_for(|| std::fs::metadata(&ckpt).and_then(|m| m.modified()).is_ok_and(|t| t > started));
        std::thread::sleep(Duration::from_millis(rng.random_range(0..800)));
        child.kill().unwrap();
        child.wait().unwrap();
        check_after_kill("random kill");
    }

    // Kills that certainly land inside a write: the test hook pauses between writing the
    // temporary file and renaming it; the kill comes while the temporary file is there.
    let mut stale = Vec::new();
    for _ in 0..3 {
        let mut child = spawn(Some(3000));
        let mine = format!(".{}.tmp", child.id());
        wait_for(|| temporaries().iter().any(|n| n.ends_with(&mine)));
        std::thread::sleep(Duration::from_millis(200));
        child.kill().unwrap();
        child.wait().unwrap();
        let left: Vec<String> = temporaries().into_iter().filter(|n| n.ends_with(&mine)).collect();
        assert!(!left.is_empty(), "the kill was to land inside a write, leaving its temporary file");
        check_after_kill("kill inside a write");
        stale.extend(left);
    }

    // Resuming removes the temporaries that the killed runs left, and goes on.
    let started = SystemTime::now();
    let mut child = spawn(None);
    wait_for(|| std::fs::metadata(&ckpt).and_then(|m| m.modified()).is_ok_and(|t| t > started));
    child.kill().unwrap();
    child.wait().unwrap();
    let now = temporaries();
    assert!(stale.iter().all(|s| !now.contains(s)), "stale temporaries {stale:?} remain: {now:?}");
    check_after_kill("after resuming");
    assert!(checkpoint_episode(&ckpt) > 0);
}

/// Waits until `done` holds, polling the files; a generous limit only guards against a
/// hung child (it is not what the test measures).
fn wait_for(mut done: impl FnMut() -> bool) {
    let limit = Instant::now() + Duration::from_secs(600);
    while !done() {
        assert!(Instant::now() < limit, "the training run never got there");
        std::thread::sleep(Duration::from_millis(10));
    }
}
