//! Third-party pretrained weights: the one place where the library looks for them on disk.
//!
//! Models refer to published weights by file name and SHA-256 ([`PretrainedWeights`])
//! instead of copying them. [`PretrainedWeights::locate`] looks for the file in, in order:
//! the folder named by `$PROTONET_PRETRAINED`, `data/pretrained/` of the working
//! directory, and the per-user cache (`$XDG_CACHE_HOME/protonet`, else
//! `~/.cache/protonet`), and checks its SHA-256.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// A reference to third-party weights that a model uses but does not contain: the file
/// name and its SHA-256.
///
/// ```
/// let w = protonet::backbone::PretrainedWeights::efficientnet_lite0();
/// assert!(w.name.ends_with(".pth") && w.sha256.len() == 64);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PretrainedWeights {
    /// File name, for example `efficientnet-lite0-57934424.pth`.
    pub name: String,
    /// Lower-case hex SHA-256 of the file.
    pub sha256: String,
}

/// The folders searched for pretrained weights, in order (see the module documentation).
///
/// ```
/// let dirs = protonet::pretrained::search_dirs();
/// assert!(dirs.iter().any(|d| d.ends_with("data/pretrained")));
/// ```
pub fn search_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(d) = std::env::var_os("PROTONET_PRETRAINED").filter(|d| !d.is_empty()) {
        dirs.push(d.into());
    }
    dirs.push("data/pretrained".into());
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").filter(|d| !d.is_empty()).map(|h| PathBuf::from(h).join(".cache")));
    if let Some(c) = cache {
        dirs.push(c.join("protonet"));
    }
    dirs
}

impl PretrainedWeights {
    /// The ImageNet EfficientNet-Lite0 state dict that `scripts/fetch-pretrained.sh` fetches.
    pub fn efficientnet_lite0() -> Self {
        Self { name: "efficientnet-lite0-57934424.pth".into(), sha256: "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db".into() }
    }

    /// Checks that the reference is well formed: a plain file name and 64 hex digits.
    pub fn validate(&self) -> Result<()> {
        if self.name.is_empty() || self.name.contains('/') || self.name.contains('\\') || self.name.starts_with('.') {
            return Err(Error::param("weights", format!("`{}` is not a plain file name", self.name)));
        }
        if self.sha256.len() != 64 || !self.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::param("weights", format!("sha256 `{}` is not 64 hex digits", self.sha256)));
        }
        Ok(())
    }

    /// Finds the file in [`search_dirs`] and checks its SHA-256.
    pub fn locate(&self) -> Result<PathBuf> {
        self.locate_in(&search_dirs())
    }

    /// Finds the file in `dirs` (the first that has it) and checks its SHA-256; errors
    /// say where it looked and how to fetch it.
    pub fn locate_in(&self, dirs: &[PathBuf]) -> Result<PathBuf> {
        use sha2::Digest;
        self.validate()?;
        let path = dirs.iter().map(|d| d.join(&self.name)).find(|p| p.is_file()).ok_or_else(|| Error::PretrainedWeights {
            name: self.name.clone(),
            reason: format!(
                "not found in {}; fetch them with `bash scripts/fetch-pretrained.sh` (into data/pretrained) or set PROTONET_PRETRAINED to their folder",
                dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ")
            ),
        })?;
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let digest: String = sha2::Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
        if digest != self.sha256 {
            return Err(Error::PretrainedWeights {
                name: path.display().to_string(),
                reason: format!("sha256 is {digest}, but the model was made with {} (other weights under the same name)", self.sha256),
            });
        }
        Ok(path)
    }

    /// The file to load: the located, checked file, or the safetensors that
    /// `scripts/fetch-pretrained.sh` converted it into beside it (named `converted`), which
    /// candle reads without Python's pickle.
    pub fn loadable(&self, converted: &str) -> Result<PathBuf> {
        let path = self.locate()?;
        let conv = path.with_file_name(converted);
        Ok(if conv.is_file() { conv } else { path })
    }
}

/// A `VarBuilder` over a weights file: `.safetensors` (memory-mapped) or a zip-format
/// PyTorch `.pth` state dict. Errors name the file.
pub fn var_builder(path: &Path, device: &Device) -> Result<VarBuilder<'static>> {
    let bad = |reason: String| Error::PretrainedWeights { name: path.display().to_string(), reason };
    if !path.is_file() {
        return Err(bad("not found; fetch them with `bash scripts/fetch-pretrained.sh`".into()));
    }
    let vb = if path.extension().is_some_and(|e| e == "safetensors") {
        // SAFETY: the file is memory-mapped read-only; it must not change while loading.
        unsafe { VarBuilder::from_mmaped_safetensors(&[path], DType::F32, device) }
    } else {
        VarBuilder::from_pth(path, DType::F32, device)
    };
    vb.map_err(|e| bad(e.to_string()))
}
