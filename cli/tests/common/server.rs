//! A `protonet serve` process on a free loopback port, for the server's tests.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A running server, killed when dropped.
pub struct Server {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
}

impl Server {
    /// Starts `protonet serve` with the coin model on a free port, keeping its classes in
    /// `store`, with `extra` flags; waits for its address line.
    pub fn start(store: &Path, extra: &[&str]) -> Server {
        super::pretrained_weights("the serve tests (the coin model)");
        let mut child = Command::new(env!("CARGO_BIN_EXE_protonet"))
            .args(["serve", "--addr", "127.0.0.1:0", "--store"])
            .arg(store)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("protonet serve starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line).expect("reads the address line");
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap_or_else(|| panic!("no address in the server's first line: {line:?}"))
            .trim_end_matches('/')
            .to_string();
        Server { child, url }
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// True while the process runs.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().expect("waits").is_none()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

/// The coin photos of the euro set's denomination `folder` (for example `eur_1e`), sorted.
pub fn euro_photos(folder: &str) -> Vec<PathBuf> {
    let dir = super::require_data("coins/euro-coins-kaa", "the serve tests").join(folder);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir).expect("reads the photo folder").map(|e| e.expect("entry").path()).collect();
    files.sort();
    assert!(files.len() >= 6, "{} has {} photos, the tests need 6", dir.display(), files.len());
    files
}
