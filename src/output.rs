//! The layout of output directories and the rule that protects them: nothing trained is
//! replaced unless the caller says so.
//!
//! This module owns the five file names. A directory "holds something" when it has a
//! model ([`CONFIG_FILE`]), a classifier ([`CLASSIFIER_FILE`]) or a training run's state
//! ([`CHECKPOINT_FILE`]); writing into it needs [`OutputMode::Resume`] (continue the run)
//! or [`OutputMode::Overwrite`] (replace it). Only the presence of files is checked here;
//! the richer words of a refusal ("a model trained for 9500 episodes") come from
//! [`crate::train::describe`], which reads the configuration and the checkpoint's header.

use std::path::Path;

use crate::error::{Error, Result};

/// File name of the configuration inside a model directory.
pub const CONFIG_FILE: &str = "config.json";
/// File name of the weights inside a model directory.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// File name of the resumable training state inside an output directory.
pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";
/// File of a classifier directory holding class names, counts and the threshold.
pub const CLASSIFIER_FILE: &str = "classifier.json";
/// File of a classifier directory holding the support embeddings.
pub const EMBEDDINGS_FILE: &str = "prototypes.safetensors";

/// What to do with an output directory that already holds a model, a classifier or a run.
///
/// ```
/// assert_eq!(protonet::OutputMode::default(), protonet::OutputMode::New);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputMode {
    /// Refuse to write into a directory that holds one (the default: nothing is lost).
    #[default]
    New,
    /// Continue the training run saved there (or start one where there is none).
    Resume,
    /// Replace what is there.
    Overwrite,
}

/// The kinds of things `dir` holds, in words ("a model and a training run's state"), by
/// the files present; `None` when it holds no model, classifier or run state.
pub(crate) fn holdings(dir: &Path) -> Option<String> {
    let kinds: Vec<&str> = [(CLASSIFIER_FILE, "a saved classifier"), (CONFIG_FILE, "a model"), (CHECKPOINT_FILE, "a training run's state")]
        .into_iter()
        .filter(|(file, _)| dir.join(file).is_file())
        .map(|(_, kind)| kind)
        .collect();
    (!kinds.is_empty()).then(|| kinds.join(" and "))
}

/// Refuses (with [`Error::OutputExists`]) to write into `dir` with [`OutputMode::New`]
/// when it holds something; other modes pass. Looks only at which files are present.
pub(crate) fn check(dir: &Path, mode: OutputMode) -> Result<()> {
    match (mode, holdings(dir)) {
        (OutputMode::New, Some(holds)) => Err(Error::OutputExists { path: dir.to_path_buf(), holds }),
        _ => Ok(()),
    }
}

/// Applies `mode` to `dir` before a run or a classifier is written: with [`OutputMode::New`], refuses
/// (with [`Error::OutputExists`]) when `dir` holds something; with
/// [`OutputMode::Overwrite`], removes what it holds; with [`OutputMode::Resume`], leaves
/// it. A missing or empty directory is fine in every mode.
pub(crate) fn prepare(dir: &Path, mode: OutputMode) -> Result<()> {
    match mode {
        OutputMode::Resume => Ok(()),
        OutputMode::New => check(dir, mode),
        OutputMode::Overwrite => {
            for name in [CONFIG_FILE, WEIGHTS_FILE, CHECKPOINT_FILE, CLASSIFIER_FILE, EMBEDDINGS_FILE] {
                let path = dir.join(name);
                if path.is_file() {
                    std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
                }
            }
            Ok(())
        }
    }
}
