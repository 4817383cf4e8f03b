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
    /// How the classifier adapts to its support set (absent: not at all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    adaptation: Option<SupportAdaptation>,
}

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
    // The adapted class weights, so that a loaded classifier answers exactly as this one.
    if let Some(w) = store.adapted_weights()? {
        let k = w.nrows();
        tensors.insert("adapted".to_string(), Tensor::from_vec(w.into_raw_vec_and_offset().0, (k, d), &Device::Cpu)?);
    }
    write_safetensors(&dir.join(EMBEDDINGS_FILE), &tensors, None)?;
    let file = ClassifierFile {
        format: FORMAT.into(),
        version: VERSION,
        classes: store.classes.iter().map(|c| ClassRecord { name: c.name.clone(), images: c.embeddings.len() }).collect(),
        threshold: store.threshold,
        rotations: clf.embedder.rotations,
        normalization: store.norm.clone(),
        adaptation: store.adaptation.is_active().then_some(store.adaptation),
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
    let (rows, adapted) = read_embeddings(dir, &file, model.config().embedding_dim())?;
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
    clf.set_threshold(file.threshold).map_err(|e| Error::checkpoint(&path, e.to_string()))?;
    clf.set_rotations(file.rotations).map_err(|e| Error::checkpoint(&path, e.to_string()))?;
    clf.store.set_normalization(file.normalization).map_err(|e| Error::checkpoint(&path, e.to_string()))?;
    clf.store.set_adaptation(file.adaptation.unwrap_or_else(SupportAdaptation::none)).map_err(|e| Error::checkpoint(&path, e.to_string()))?;
    if let Some(w) = adapted {
        clf.store.adapted.get_or_init(|| w);
    }
    Ok(clf)
}

/// The support embeddings, one row each, and the adapted class weights (flat) if saved.
type SavedEmbeddings = (Vec<Vec<f32>>, Option<Vec<f32>>);

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
    let adapted = match tensors.get("adapted") {
        None => None,
        Some(w) if w.dims() == [file.classes.len(), d] && w.dtype() == DType::F32 => Some(w.flatten_all()?.to_vec1::<f32>()?),
        Some(w) => return Err(Error::checkpoint(&emb_path, format!("adapted weights are {:?}, expected [{}, {d}] F32", w.dims(), file.classes.len()))),
    };
    Ok((emb.to_vec2::<f32>()?, adapted))
}
