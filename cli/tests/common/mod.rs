//! Helpers shared by the CLI's integration tests: the library tests' helpers, and a
//! runner for the `protonet` binary.
#![allow(dead_code)]

#[path = "../../../tests/common/mod.rs"]
mod shared;
pub use shared::*;

/// Runs the `protonet` binary with `args`: (success, stdout, stderr). Fails the test if
/// it panicked: every error must be a message.
pub fn run_protonet(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_protonet")).args(args).output().expect("runs");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    assert!(!stderr.contains("panicked") && !stdout.contains("panicked"), "protonet {args:?} panicked:\n{stderr}");
    (out.status.success(), stdout, stderr)
}
