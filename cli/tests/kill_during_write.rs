//! Killing a training run at random moments, many of them in the middle of writing a
//! checkpoint, never leaves a damaged file: the checkpoint and the model on disk always
//! load, and each is a complete earlier or later version (episodes never go back).

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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
    let (mut last_episode, mut kills, mut interrupted_writes) = (0usize, 0usize, 0usize);
    while kills < 25 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_protonet")).args(args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        // Wait until this run has written at least one checkpoint past the last one seen.
        let start = Instant::now();
        while !(ckpt.exists() && std::fs::metadata(&ckpt).map(|m| m.modified().unwrap()).ok() > Some(std::time::SystemTime::now() - Duration::from_millis(500)))
            && start.elapsed() < Duration::from_secs(60)
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(rng.random_range(0..1500)));
        child.kill().unwrap();
        child.wait().unwrap();
        kills += 1;
        // A temporary file left behind means the kill landed in the middle of a write.
        let leftovers = std::fs::read_dir(&out).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().ends_with(".tmp")).count();
        interrupted_writes += (leftovers > 0) as usize;
        let episode = checkpoint_episode(&ckpt);
        assert!(episode >= last_episode, "checkpoint went back from episode {last_episode} to {episode}");
        last_episode = episode;
        Model::load(&out, &Device::Cpu).unwrap_or_else(|e| panic!("model does not load after a kill: {e}"));
    }
    eprintln!("{kills} kills, {interrupted_writes} in the middle of a write; last checkpoint at episode {last_episode}");
    assert!(last_episode > 0);
    // Resuming cleans the temporaries of killed runs.
    let mut child = Command::new(env!("CARGO_BIN_EXE_protonet")).args(args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    child.kill().unwrap();
    child.wait().unwrap();
    checkpoint_episode(&ckpt);
}
