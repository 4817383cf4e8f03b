//! Files: atomic writes and safetensors, the persistence under model directories,
//! classifiers and run checkpoints.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use crate::error::{Error, Result};

/// Writes `bytes` to `path` through a temporary file in the same folder, synced and then
/// renamed, so that readers see either the old file or the new one, never a partial one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp: PathBuf = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        pause_inside_write();
        std::fs::rename(&tmp, path)?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

/// With the `test-hooks` feature only: sleeps between writing the temporary file and
/// renaming it, for `$PROTONET_TEST_PAUSE_IN_WRITE_MS` milliseconds, so that a test can
/// kill a process in the middle of a write for certain.
fn pause_inside_write() {
    #[cfg(feature = "test-hooks")]
    if let Some(ms) = std::env::var("PROTONET_TEST_PAUSE_IN_WRITE_MS").ok().and_then(|v| v.parse::<u64>().ok()) {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
}

/// Removes the temporary files that [`write_atomic`] leaves behind when a process is
/// killed in the middle of a write (`.NAME.PID.tmp` in `dir`); the files they were to
/// replace are intact. Returns how many were removed.
pub(crate) fn remove_stale_temporaries(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    let mine = format!(".{}.tmp", std::process::id());
    entries
        .flatten()
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.starts_with('.') && n.ends_with(".tmp") && !n.ends_with(&mine) && e.path().is_file()
        })
        .filter(|e| std::fs::remove_file(e.path()).is_ok())
        .count()
}

/// Writes named tensors (and optional string metadata) as safetensors, atomically.
pub fn write_safetensors(path: &Path, tensors: &BTreeMap<String, Tensor>, metadata: Option<HashMap<String, String>>) -> Result<()> {
    let bytes = safetensors::serialize(tensors.iter().map(|(k, v)| (k.as_str(), v)), metadata).map_err(|e| Error::checkpoint(path, e.to_string()))?;
    write_atomic(path, &bytes)
}

/// Reads a safetensors file: its tensors and its string metadata. A truncated or
/// damaged file is an [`Error::Checkpoint`] naming it.
pub fn read_safetensors(path: &Path, device: &Device) -> Result<(HashMap<String, Tensor>, HashMap<String, String>)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| Error::checkpoint(path, format!("damaged or truncated safetensors file: {e}")))?;
    let metadata =
        safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| Error::checkpoint(path, e.to_string()))?.1.metadata().clone().unwrap_or_default();
    drop(st);
    let tensors = candle_core::safetensors::load_buffer(&bytes, device).map_err(|e| Error::checkpoint(path, e.to_string()))?;
    Ok((tensors, metadata))
}

/// Reads only the string metadata of a safetensors file, from its header (the first 8
/// bytes give the header's length; the tensors are not read).
pub fn read_safetensors_metadata(path: &Path) -> Result<HashMap<String, String>> {
    use std::io::Read;
    /// safetensors' own limit on the header's size.
    const MAX_HEADER: u64 = 100_000_000;
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len).map_err(|e| Error::checkpoint(path, format!("damaged or truncated safetensors file: {e}")))?;
    let len = u64::from_le_bytes(len);
    if len > MAX_HEADER {
        return Err(Error::checkpoint(path, format!("damaged safetensors file: a header of {len} bytes")));
    }
    let mut header = vec![0u8; len as usize];
    file.read_exact(&mut header).map_err(|e| Error::checkpoint(path, format!("damaged or truncated safetensors header: {e}")))?;
    let header: serde_json::Value = serde_json::from_slice(&header).map_err(|e| Error::checkpoint(path, format!("damaged safetensors header: {e}")))?;
    let meta = header.get("__metadata__").and_then(|m| m.as_object());
    Ok(meta.map(|m| m.iter().filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string()))).collect()).unwrap_or_default())
}
