//! The README's library quick start, as a new user runs it: a throwaway crate outside the
//! checkout that depends on protonet by path, whose `main` is the README's snippet itself,
//! run twice (the second run replaces the classifier the first saved) on Egyptian pound
//! photos (`../shared/data/coins`), a currency the coin model never saw.
//!
//! Builds the crate in `target/quickstart` (its own target folder: cargo keeps this one
//! locked while the tests run), about 5 minutes the first time on 2 cores.

mod common;

use std::path::Path;
use std::process::Command;

/// The README's ```rust block under "Quick start: the library", as a `main`.
fn quick_start_main() -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme.split("## Quick start: the library").nth(1).expect("the README has a library quick start");
    let code = section.split("```rust").nth(1).and_then(|s| s.split_once('\n')).map(|(_, rest)| rest).expect("a rust block");
    let code = code.split("```").next().unwrap();
    let body: Vec<&str> = code.lines().filter(|l| !l.trim_start().starts_with("# ")).collect();
    format!("fn main() -> Result<(), protonet::Error> {{\n{}\n    Ok(())\n}}\n", body.join("\n"))
}

fn link_photos(from: &Path, to: &Path, take: std::ops::Range<usize>) {
    std::fs::create_dir_all(to).unwrap();
    let mut files: Vec<_> = std::fs::read_dir(from).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    for f in &files[take] {
        std::fs::copy(f, to.join(f.file_name().unwrap())).unwrap();
    }
}

#[test]
fn the_readme_library_quick_start_runs_twice_from_another_crate_needs_data() {
    common::pretrained_weights("the quick-start test");
    let pound = common::require_data("coins/egyptian-pound-mouhamedhisham", "the quick-start test");
    let dir = tempfile::tempdir().unwrap();
    let krate = dir.path().join("my-coins");
    std::fs::create_dir_all(krate.join("src")).unwrap();
    let checkout = env!("CARGO_MANIFEST_DIR");
    std::fs::write(
        krate.join("Cargo.toml"),
        format!(
            "[package]\nname = \"my-coins\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[dependencies]\nprotonet = {{ path = {checkout:?} }}\n\n[workspace]\n"
        ),
    )
    .unwrap();
    // The checkout's versions of every dependency (and no registry access needed).
    std::fs::copy(Path::new(checkout).join("Cargo.lock"), krate.join("Cargo.lock")).unwrap();
    std::fs::write(krate.join("src/main.rs"), quick_start_main()).unwrap();
    for d in ["egp_1pound", "egp_25piastres", "egp_50piastres"] {
        link_photos(&pound.join(d), &krate.join("my_coins").join(d), 0..4);
        link_photos(&pound.join(d), &krate.join("new_photos").join(d), 10..12);
    }
    let run = || {
        let out = Command::new(env!("CARGO"))
            .args(["run", "--release", "--quiet", "--offline"])
            .current_dir(&krate)
            .env("CARGO_TARGET_DIR", Path::new(checkout).join("target/quickstart"))
            .output()
            .unwrap();
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
        assert!(out.status.success(), "the quick start failed:\n{stderr}\n{stdout}");
        stdout
    };
    for attempt in ["first", "second"] {
        let stdout = run();
        println!("{attempt} run:\n{stdout}");
        let answered: Vec<&str> = stdout.lines().filter(|l| l.contains("new_photos")).collect();
        assert_eq!(answered.len(), 6, "{attempt} run: one line per query photo:\n{stdout}");
        assert!(krate.join("my_classifier/classifier.json").is_file(), "{attempt} run saved no classifier");
    }
}
