//! The resumable state of a training run: `checkpoint.safetensors` holds the weights,
//! the optimiser's moments and, in its metadata, the [`RunState`] (settings, episode,
//! sampler, early stopping, history), so that a resumed run matches an uninterrupted one
//! bit for bit.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use super::{EarlyStopping, HistoryPoint, TrainConfig};
use crate::episode::EpisodeSampler;
use crate::io::{read_safetensors, write_safetensors};
use crate::model::{Model, ModelConfig};
use crate::optim::Adam;
use crate::{Error, Result};

/// File name of the resumable training state inside an output directory.
pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";

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
    pub loss_sum: f64,
    /// Training accuracy summed since the last validation.
    pub acc_sum: f64,
    /// Episodes since the last validation.
    pub since_last: usize,
}

impl RunState {
    /// The state at episode 0.
    pub fn new(config: TrainConfig, sampler: EpisodeSampler) -> Self {
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
pub fn save(model: &Model, adam: &Adam, state: &RunState, path: &Path) -> Result<()> {
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
pub fn load(model: &Model, adam: &mut Adam, path: &Path, config: &TrainConfig) -> Result<RunState> {
    let bad = |reason: String| Error::Checkpoint { path: path.to_path_buf(), reason };
    let (tensors, meta) = read_safetensors(path, model.device())?;
    let state: RunState = meta
        .get(STATE_KEY)
        .ok_or_else(|| bad("no training state in its metadata (not a protonet training checkpoint)".into()))
        .and_then(|s| serde_json::from_str(s).map_err(|e| bad(format!("training state: {e}"))))?;
    let saved_model: ModelConfig = meta
        .get(MODEL_KEY)
        .ok_or_else(|| bad("no model configuration in its metadata".into()))
        .and_then(|s| serde_json::from_str(s).map_err(|e| bad(format!("model configuration: {e}"))))?;
    if saved_model.backbone != model.config().backbone || saved_model.image != model.config().image {
        return Err(bad("it was made with another backbone or image setting than this run".into()));
    }
    let mut comparable = state.config.clone();
    comparable.episodes = config.episodes;
    comparable.patience = config.patience;
    if &comparable != config {
        return Err(bad(format!(
            "it was made with other training settings; resume with the same settings (only the number of episodes and the patience may change). Saved: {}",
            serde_json::to_string(&state.config).unwrap_or_default()
        )));
    }
    let weights: HashMap<String, Tensor> = tensors.iter().filter_map(|(k, v)| k.strip_prefix("model.").map(|n| (n.to_string(), v.clone()))).collect();
    model.set_tensors(&weights, path)?;
    adam.load_state(&tensors, state.adam_steps).map_err(|e| bad(e.to_string()))?;
    Ok(state)
}

/// Reads only the run state of the checkpoint at `path` (to describe a run without
/// loading it).
pub fn read_state(path: &Path) -> Result<RunState> {
    let bad = |reason: String| Error::Checkpoint { path: path.to_path_buf(), reason };
    let (_, meta) = read_safetensors(path, &candle_core::Device::Cpu)?;
    meta.get(STATE_KEY)
        .ok_or_else(|| bad("no training state in its metadata (not a protonet training checkpoint)".into()))
        .and_then(|s| serde_json::from_str(s).map_err(|e| bad(format!("training state: {e}"))))
}
