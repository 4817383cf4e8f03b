//! The resumable state of a training run: `checkpoint.safetensors` holds the weights,
//! the optimiser's moments and, in its metadata, the [`RunState`] (settings, episode,
//! sampler, early stopping, history), so that a resumed run matches an uninterrupted one
//! bit for bit.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use super::EarlyStopping;
use crate::episode::EpisodeSampler;
use crate::error::{Error, Result};
use crate::io::{read_safetensors, read_safetensors_metadata, write_safetensors};
use crate::model::{Model, ModelConfig};
use crate::optim::Adam;
use crate::output::{CHECKPOINT_FILE, CLASSIFIER_FILE, CONFIG_FILE};
use crate::record::{HistoryPoint, TrainConfig};

const STATE_KEY: &str = "protonet.run_state";
const MODEL_KEY: &str = "protonet.model_config";

/// The state of a run besides its tensors, saved in the checkpoint's metadata.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunState {
    /// The run's settings.
    pub config: TrainConfig,
    /// Episodes done.
    pub episode: usize,
    /// Optimiser steps done.
    pub adam_steps: usize,
    /// The episode sampler, with its generator's state.
    pub sampler: EpisodeSampler,
    /// Best validation so far and the patience count.
    #[serde(flatten)]
    pub stopping: EarlyStopping,
    /// One point per validation.
    pub history: Vec<HistoryPoint>,
    /// Seconds of training (across resumes).
    pub seconds: f64,
    /// Training loss summed since the last validation.
    pub(crate) loss_sum: f64,
    /// Training accuracy summed since the last validation.
    pub(crate) acc_sum: f64,
    /// Episodes since the last validation.
    pub(crate) since_last: usize,
}

impl RunState {
    /// The state at episode 0.
    pub(crate) fn new(config: TrainConfig, sampler: EpisodeSampler) -> Self {
        Self {
            config,
            episode: 0,
            adam_steps: 0,
            sampler,
            stopping: EarlyStopping::default(),
            history: Vec::new(),
            seconds: 0.0,
            loss_sum: 0.0,
            acc_sum: 0.0,
            since_last: 0,
        }
    }
}

/// Writes the model's weights (as `model.NAME`), the optimiser's moments and `state` to
/// `path`, atomically.
pub(crate) fn save(model: &Model, adam: &Adam, state: &RunState, path: &Path) -> Result<()> {
    let mut tensors: BTreeMap<String, Tensor> = model.tensors().into_iter().map(|(k, v)| (format!("model.{k}"), v)).collect();
    tensors.extend(adam.state_tensors());
    let mut meta = HashMap::new();
    meta.insert(STATE_KEY.to_string(), serde_json::to_string(state).expect("state serialises"));
    meta.insert(MODEL_KEY.to_string(), serde_json::to_string(model.config()).expect("config serialises"));
    write_safetensors(path, &tensors, Some(meta))
}

/// Reads the checkpoint at `path` into `model` and `adam` and returns its state. Errors
/// if it was made with another backbone, image setting or training settings (only
/// `episodes` and `patience` may change).
pub(crate) fn load(model: &Model, adam: &mut Adam, path: &Path, config: &TrainConfig) -> Result<RunState> {
    let (tensors, meta) = read_safetensors(path, model.device())?;
    let state = state_in(&meta, path)?;
    let saved_model: ModelConfig = meta
        .get(MODEL_KEY)
        .ok_or_else(|| Error::checkpoint(path, "no model configuration in its metadata"))
        .and_then(|s| serde_json::from_str(s).map_err(|e| Error::checkpoint(path, format!("model configuration: {e}"))))?;
    if saved_model.backbone != model.config().backbone || saved_model.image != model.config().image {
        return Err(Error::checkpoint(path, "it was made with another backbone or image setting than this run"));
    }
    if saved_model.method != model.config().method {
        return Err(Error::checkpoint(
            path,
            format!("it was made with the `{}` method ({:?}), this run uses {:?}", saved_model.method.name(), saved_model.method, model.config().method),
        ));
    }
    let mut comparable = state.config.clone();
    comparable.episodes = config.episodes;
    comparable.patience = config.patience;
    if &comparable != config {
        return Err(Error::checkpoint(
            path,
            format!(
                "it was made with other training settings; resume with the same settings (only the number of episodes and the patience may change). Saved: {}",
                serde_json::to_string(&state.config).unwrap_or_default()
            ),
        ));
    }
    let weights: HashMap<String, Tensor> = tensors.iter().filter_map(|(k, v)| k.strip_prefix("model.").map(|n| (n.to_string(), v.clone()))).collect();
    model.set_tensors(&weights, path)?;
    adam.load_state(&tensors, state.adam_steps).map_err(|e| Error::checkpoint(path, e.to_string()))?;
    Ok(state)
}

/// The run state in a checkpoint's metadata.
fn state_in(meta: &HashMap<String, String>, path: &Path) -> Result<RunState> {
    meta.get(STATE_KEY)
        .ok_or_else(|| Error::checkpoint(path, "no training state in its metadata (not a protonet training checkpoint)"))
        .and_then(|s| serde_json::from_str(s).map_err(|e| Error::checkpoint(path, format!("training state: {e}"))))
}

/// What the output directory `dir` holds, in words ("a model trained for 9500 episodes,
/// best validation 98.95% and a training run's state at episode 9500 of 20000"), or `None`
/// when it holds no model, classifier or run. Reads `config.json` and the checkpoint's
/// header only (not its tensors): for refusals and hints, not for every save.
///
/// ```
/// let dir = std::env::temp_dir().join(format!("protonet-describe-doc-{}", std::process::id()));
/// assert_eq!(protonet::train::describe(&dir), None);
/// ```
pub fn describe(dir: &Path) -> Option<String> {
    let mut parts = Vec::new();
    if dir.join(CLASSIFIER_FILE).is_file() {
        parts.push("a saved classifier".to_string());
    }
    if dir.join(CONFIG_FILE).is_file() {
        parts.push(match ModelConfig::read(dir) {
            Ok(ModelConfig { training: Some(t), .. }) => format!(
                "a model trained for {} episodes{}",
                t.episode,
                t.val_accuracy.map(|v| format!(", best validation {:.2}%", 100.0 * v)).unwrap_or_default()
            ),
            Ok(_) => "a model".to_string(),
            Err(_) => format!("a {CONFIG_FILE} that is not a readable model configuration"),
        });
    }
    let ckpt = dir.join(CHECKPOINT_FILE);
    if ckpt.is_file() {
        parts.push(match read_safetensors_metadata(&ckpt).and_then(|m| state_in(&m, &ckpt)) {
            Ok(s) => format!("a training run's state at episode {} of {}", s.episode, s.config.episodes),
            Err(_) => "a training run's state".to_string(),
        });
    }
    (!parts.is_empty()).then(|| parts.join(" and "))
}
