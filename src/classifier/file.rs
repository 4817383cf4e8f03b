//! The classifier's files: `classifier.json` (class names, image counts, threshold,
//! rotations, normalization) and `prototypes.safetensors` (the support embeddings), beside
//! the model's own two files.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use super::FewShotClassifier;
use crate::adapt::SupportAdaptation;
use crate::error::{Error, Result};
use crate::io::{read_safetensors, write_atomic, write_safetensors};
use crate::method::{Fitted, MethodConfig};
use crate::model::Model;
use crate::output::{prepare, OutputMode, CLASSIFIER_FILE, EMBEDDINGS_FILE};
use crate::protonet::FeatureNorm;

const FORMAT: &str = "protonet-classifier";
const VERSION: u32 = 1;

#[derive(Debug, Serialize, Deserialize)]
struct ClassifierFile {
    format: String,
    version: u32,
    /// Class names and their number of support images, in the order of the embeddings.
    classes: Vec<ClassRecord>,
    threshold: Option<f32>,
    /// Rotations embeddings are averaged over (1: none).
    #[serde(default = "one")]
    rotations: usize,
    /// How embeddings are normalized.
    #[serde(default)]
    normalization: FeatureNorm,
    /// The method that scores queries (absent in files written before methods were
    /// recorded: the support adaptation below, or prototypes).
    #[serde(default)]
    method: Option<MethodConfig>,
    /// Files written before methods were recorded: how the classifier adapted to its
    /// support set (absent: not at all).
    #[serde(default, skip_serializing)]
    adaptation: Option<SupportAdaptation>,
}

/// The prefix of the method's fit in `prototypes.safetensors`.
const FITTED: &str = "fitted.";

fn one() -> usize {
    1
}

#[derive(Debug, Serialize, Deserialize)]
struct ClassRecord {
    name: String,
    images: usize,
}

/// Writes `clf` into `dir` (see [`FewShotClassifier::save_with`]).
pub(super) fn save(clf: &FewShotClassifier, dir: &Path, mode: OutputMode) -> Result<()> {
    prepare(dir, if mode == OutputMode::New { mode } else { OutputMode::Overwrite })?;
    clf.model.save_with(dir, OutputMode::Overwrite)?;
    let store = &clf.store;
    let d = clf.model.config().embedding_dim();
    let flat: Vec<f32> = store.classes.iter().flat_map(|c| c.embeddings.iter().flatten().copied()).collect();
    let n = flat.len() / d.max(1);
    let mut tensors = BTreeMap::new();
    tensors.insert("embeddings".to_string(), Tensor::from_vec(flat, (n, d), &Device::Cpu)?);
    // The method's fit, so that a loaded classifier answers exactly as this one.
    if !store.classes.is_empty() {
        for (name, t) in store.fitted()?.tensors {
            tensors.insert(format!("{FITTED}{name}"), t);
        }
    }
    write_safetensors(&dir.join(EMBEDDINGS_FILE), &tensors, None)?;
    let file = ClassifierFile {
        format: FORMAT.into(),
        version: VERSION,
        classes: store.classes.iter().map(|c| ClassRecord { name: c.name.clone(), images: c.embeddings.len() }).collect(),
        threshold: store.threshold,
        rotations: clf.embedder.rotations,
        normalization: store.norm.clone(),
        method: Some(store.method.config()),
        adaptation: None,
    };
    write_atomic(&dir.join(CLASSIFIER_FILE), &serde_json::to_vec_pretty(&file).expect("serialises"))
}

/// Reads the classifier saved in `dir` (see [`FewShotClassifier::load`]).
pub(super) fn load(dir: &Path, device: &Device) -> Result<FewShotClassifier> {
    let model = Model::load_for_images(dir, device)?;
    let path = dir.join(CLASSIFIER_FILE);
    if !path.exists() {
        return Ok(FewShotClassifier::new(model));
    }
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let file: ClassifierFile = serde_json::from_str(&text).map_err(|e| Error::checkpoint(&path, format!("invalid classifier file: {e}")))?;
    if file.format != FORMAT || file.version != VERSION {
        return Err(Error::checkpoint(&path, format!("expected format `{FORMAT}` version {VERSION}, found `{}` version {}", file.format, file.version)));
    }
    let (rows, fitted) = read_embeddings(dir, &file, model.config().embedding_dim())?;
    let mut clf = FewShotClassifier::new(model);
    let mut rows = rows.into_iter();
    let emb_path = dir.join(EMBEDDINGS_FILE);
    for c in &file.classes {
        if c.images == 0 {
            return Err(Error::checkpoint(&path, format!("class `{}` has no images", c.name)));
        }
        if clf.store.classes.iter().any(|e| e.name == c.name) {
            return Err(Error::checkpoint(&path, format!("class `{}` appears twice", c.name)));
        }
        clf.store.add(&c.name, rows.by_ref().take(c.images).collect()).map_err(|e| Error::checkpoint(&emb_path, e.to_string()))?;
    }
    clf.set_rotations(file.rotations).map_err(|e| Error::checkpoint(&path, e.to_string()))?;
    clf.store.set_normalization(file.normalization).map_err(|e| Error::checkpoint(&path, e.to_string()))?;
    let method = file.method.unwrap_or_else(|| MethodConfig::from_adaptation(file.adaptation));
    clf.set_method(&method).map_err(|e| Error::checkpoint(&path, e.to_string()))?;
    clf.set_threshold(file.threshold).map_err(|e| Error::checkpoint(&path, e.to_string()))?;
    if let Some(f) = fitted {
        check_fit(&clf, &f).map_err(|e| Error::checkpoint(dir.join(EMBEDDINGS_FILE), format!("the saved fit does not score: {e}")))?;
        clf.store.fitted.get_or_init(|| f);
    }
    Ok(clf)
}

/// Checks that a saved fit scores a query of the right size into one logit per class.
fn check_fit(clf: &FewShotClassifier, fitted: &Fitted) -> Result<()> {
    let store = &clf.store;
    let zero = Tensor::zeros((1, store.dim), DType::F32, &Device::Cpu)?;
    let logits = store.method.logits(fitted, &zero)?;
    if logits.dims() != [1, store.classes.len()] {
        return Err(Error::param("fitted", format!("it scores {:?} for {} classes", logits.dims(), store.classes.len())));
    }
    Ok(())
}

/// The support embeddings, one row each, and the method's fit if saved.
type SavedEmbeddings = (Vec<Vec<f32>>, Option<Fitted>);

/// The support embeddings of `prototypes.safetensors`, checked against the class counts
/// of `file` and the model's embedding size `d`, and the adapted class weights if saved.
fn read_embeddings(dir: &Path, file: &ClassifierFile, d: usize) -> Result<SavedEmbeddings> {
    let emb_path = dir.join(EMBEDDINGS_FILE);
    let (tensors, _): (HashMap<String, Tensor>, _) = read_safetensors(&emb_path, &Device::Cpu)?;
    let emb = tensors.get("embeddings").ok_or_else(|| Error::checkpoint(&emb_path, "tensor `embeddings` is missing"))?;
    let total: usize = file.classes.iter().map(|c| c.images).sum();
    if emb.dims() != [total, d] || emb.dtype() != DType::F32 {
        return Err(Error::checkpoint(
            &emb_path,
            format!("embeddings are {:?} {:?}, but {CLASSIFIER_FILE} and the model need [{total}, {d}] F32", emb.dims(), emb.dtype()),
        ));
    }
    let mut fitted = Fitted::default();
    for (name, t) in &tensors {
        if let Some(part) = name.strip_prefix(FITTED) {
            fitted.tensors.insert(part.to_string(), t.clone());
        }
    }
    // Files written before methods were recorded keep the adapted class weights alone.
    if let Some(w) = tensors.get("adapted") {
        fitted.tensors.insert("weights".to_string(), w.clone());
    }
    Ok((emb.to_vec2::<f32>()?, (!fitted.tensors.is_empty()).then_some(fitted)))
}
