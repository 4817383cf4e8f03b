//! Output directories and the rule that protects them: nothing trained is replaced unless
//! the caller says so. A directory "holds something" when it has a model
//! (`config.json`), a classifier (`classifier.json`) or a training run's state
//! (`checkpoint.safetensors`); writing into it needs [`OutputMode::Resume`] (continue the
//! run) or [`OutputMode::Overwrite`] (replace it).

use std::path::Path;

use crate::model::{ModelConfig, CONFIG_FILE, WEIGHTS_FILE};
use crate::train::CHECKPOINT_FILE;
use crate::{Error, Result};

/// File of a classifier directory holding class names, counts and the threshold.
pub const CLASSIFIER_FILE: &str = "classifier.json";
/// File of a classifier directory holding the support embeddings.
pub const EMBEDDINGS_FILE: &str = "prototypes.safetensors";

/// What to do with an output directory that already holds a model, a classifier or a run.
///
/// ```
/// assert_eq!(protonet::output::OutputMode::default(), protonet::output::OutputMode::New);
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

/// What `dir` holds, in words ("a model trained for 9500 episodes, best validation
/// 98.95%"), or `None` when it holds no model, classifier or run state.
///
/// ```
/// let dir = std::env::temp_dir().join(format!("protonet-describe-doc-{}", std::process::id()));
/// assert_eq!(protonet::output::describe(&dir), None);
/// ```
pub fn describe(dir: &Path) -> Option<String> {
    let mut parts = Vec::new();
    if dir.join(CLASSIFIER_FILE).is_file() {
        parts.push("a saved classifier".to_string());
    }
    if dir.join(CONFIG_FILE).is_file() {
        let model = std::fs::read_to_string(dir.join(CONFIG_FILE)).ok().and_then(|t| serde_json::from_str::<ModelConfig>(&t).ok());
        parts.push(match model.as_ref().and_then(|m| m.training.as_ref()) {
            Some(t) => format!(
                "a model trained for {} episodes{}",
                t.episode,
                t.val_accuracy.map(|v| format!(", best validation {:.2}%", 100.0 * v)).unwrap_or_default()
            ),
            None if model.is_some() => "a model".to_string(),
            None => format!("a {CONFIG_FILE} that is not a readable model configuration"),
        });
    }
    if dir.join(CHECKPOINT_FILE).is_file() {
        parts.push(match crate::train::state::read_state(&dir.join(CHECKPOINT_FILE)) {
            Ok(s) => format!("a training run's state at episode {} of {}", s.episode, s.config.episodes),
            Err(_) => "a training run's state".to_string(),
        });
    }
    (!parts.is_empty()).then(|| parts.join(" and "))
}

/// Refuses (with [`Error::OutputExists`]) to write into `dir` with [`OutputMode::New`]
/// when it holds something; other modes pass.
pub fn check(dir: &Path, mode: OutputMode) -> Result<()> {
    match (mode, describe(dir)) {
        (OutputMode::New, Some(holds)) => Err(Error::OutputExists { path: dir.to_path_buf(), holds }),
        _ => Ok(()),
    }
}

/// Applies `mode` to `dir` before a run or a classifier is written: with [`OutputMode::New`], refuses
/// (with [`Error::OutputExists`]) when `dir` holds something; with
/// [`OutputMode::Overwrite`], removes what it holds; with [`OutputMode::Resume`], leaves
/// it. A missing or empty directory is fine in every mode.
pub fn prepare(dir: &Path, mode: OutputMode) -> Result<()> {
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
