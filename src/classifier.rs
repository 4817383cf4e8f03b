//! A few-shot classifier for deployment: a trained backbone plus a store of class
//! prototypes that grows without retraining.
//!
//! [`FewShotClassifier`] embeds the support images of each class once and keeps their
//! embeddings; a class's prototype is their mean. New images of a class update its
//! prototype (a running mean), classes can be removed and renamed, and the whole store
//! is saved to a directory from which a deployed program predicts without the support
//! images. An optional distance threshold answers "unknown" for queries far from every
//! prototype (open-set rejection).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::data::load_image;
use crate::eval::Embedder;
use crate::io::{read_safetensors, write_atomic, write_safetensors};
use crate::output::OutputMode;
use crate::protonet::{class_means, squared_distances, FeatureNorm};
use crate::{Error, Model, Result};

pub use crate::output::{CLASSIFIER_FILE, EMBEDDINGS_FILE};
const FORMAT: &str = "protonet-classifier";
const VERSION: u32 = 1;

/// One class's score for a query.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassScore {
    /// The class name.
    pub class: String,
    /// Squared Euclidean distance from the query's embedding to the class prototype.
    pub distance: f32,
    /// Softmax over all classes of `-beta * distance`, `beta` fitted on the support set
    /// (see [`PrototypeStore::confidence_scale`]).
    pub probability: f32,
}

/// The answer for one query.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    /// The predicted class, or `None` ("unknown") when rejection is on and the query is
    /// farther than the threshold from every prototype.
    pub class: Option<String>,
    /// The probability of the nearest class: the softmax over all classes of `-beta *`
    /// squared distance, with `beta` fitted on the support set by leave-one-out so that
    /// confidences match how often such answers are right
    /// ([`PrototypeStore::confidence_scale`]; the paper's plain softmax, `beta = 1`, when
    /// no class has 2 support images). It ranks answers (more confident, more often right);
    /// it is not a test of "known class or not": use the rejection threshold for that.
    pub confidence: f32,
    /// The squared distance to the nearest prototype.
    pub distance: f32,
    /// Every class, nearest first.
    pub ranked: Vec<ClassScore>,
}

#[derive(Debug, Clone)]
struct ClassEntry {
    name: String,
    /// Support embeddings, one `Vec` of `D` values per image, in the order added.
    embeddings: Vec<Vec<f32>>,
    /// The mean of `embeddings`, summed in f64 in the order added.
    prototype: Vec<f32>,
}

impl ClassEntry {
    fn update_prototype(&mut self) -> Result<()> {
        let n = self.embeddings.len();
        let d = self.embeddings.first().map_or(0, Vec::len);
        let e = Tensor::from_vec(self.embeddings.concat(), (n, d), &Device::Cpu)?;
        self.prototype = class_means(&e, &[n])?.flatten_all()?.to_vec1::<f32>()?;
        Ok(())
    }
}

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
    /// How embeddings are normalised.
    #[serde(default)]
    normalization: FeatureNorm,
}

fn one() -> usize {
    1
}

#[derive(Debug, Serialize, Deserialize)]
struct ClassRecord {
    name: String,
    images: usize,
}

/// Class prototypes built from embeddings: the part of [`FewShotClassifier`] that knows
/// nothing of networks. Each class keeps its support embeddings (in the order added) and
/// their mean, its prototype.
///
/// ```
/// use protonet::classifier::PrototypeStore;
/// let mut store = PrototypeStore::new(2);
/// store.add("a", vec![vec![0.0, 0.0], vec![0.0, 2.0]])?;
/// store.add("b", vec![vec![5.0, 5.0]])?;
/// assert_eq!(store.prototype("a"), Some(&[0.0, 1.0][..]));
/// let p = store.predict(&[vec![0.5, 1.0]])?;
/// assert_eq!(p[0].class.as_deref(), Some("a"));
/// assert!((p[0].distance - 0.25).abs() < 1e-6);
/// # Ok::<(), protonet::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct PrototypeStore {
    dim: usize,
    classes: Vec<ClassEntry>,
    threshold: Option<f32>,
    norm: FeatureNorm,
}

impl PrototypeStore {
    /// An empty store for embeddings of `dim` values.
    pub fn new(dim: usize) -> Self {
        Self { dim, classes: Vec::new(), threshold: None, norm: FeatureNorm::None }
    }

    /// The embedding size.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Adds embeddings to class `name`, creating it if new; the class's prototype becomes
    /// the mean of all its embeddings (summed in f64 in the order added, so adding them
    /// one at a time or all at once gives the same prototype).
    pub fn add(&mut self, name: &str, embeddings: Vec<Vec<f32>>) -> Result<()> {
        if name.is_empty() {
            return Err(Error::param("class", "a class name must not be empty"));
        }
        if embeddings.is_empty() {
            return Err(Error::param("images", format!("no images given for class `{name}`")));
        }
        let d = self.dim;
        if let Some(bad) = embeddings.iter().find(|e| e.len() != d) {
            return Err(Error::param("embeddings", format!("an embedding has {} values, the store's have {d}", bad.len())));
        }
        if embeddings.iter().flatten().any(|x| !x.is_finite()) {
            return Err(Error::param("images", format!("class `{name}`: an image embeds to non-finite values")));
        }
        match self.classes.iter_mut().find(|c| c.name == name) {
            Some(c) => {
                c.embeddings.extend(embeddings);
                c.update_prototype()?;
            }
            None => {
                let mut c = ClassEntry { name: name.to_string(), embeddings, prototype: Vec::new() };
                c.update_prototype()?;
                self.classes.push(c);
            }
        }
        Ok(())
    }

    /// Removes class `name`.
    pub fn remove(&mut self, name: &str) -> Result<()> {
        let i = self.index_of(name)?;
        self.classes.remove(i);
        Ok(())
    }

    /// Renames class `from` to `to` (which must not exist yet).
    pub fn rename(&mut self, from: &str, to: &str) -> Result<()> {
        if to.is_empty() {
            return Err(Error::param("class", "a class name must not be empty"));
        }
        if self.classes.iter().any(|c| c.name == to) {
            return Err(Error::param("class", format!("cannot rename `{from}` to `{to}`: `{to}` exists")));
        }
        let i = self.index_of(from)?;
        self.classes[i].name = to.to_string();
        Ok(())
    }

    fn index_of(&self, name: &str) -> Result<usize> {
        self.classes
            .iter()
            .position(|c| c.name == name)
            .ok_or_else(|| Error::param("class", format!("no class `{name}` (classes: {})", self.class_names().join(", "))))
    }

    /// The class names, in the order they were added.
    pub fn class_names(&self) -> Vec<String> {
        self.classes.iter().map(|c| c.name.clone()).collect()
    }

    /// The prototype of class `name` (the mean of its support embeddings).
    pub fn prototype(&self, name: &str) -> Option<&[f32]> {
        self.classes.iter().find(|c| c.name == name).map(|c| c.prototype.as_slice())
    }

    /// The support embeddings of class `name`, in the order added.
    pub fn embeddings(&self, name: &str) -> Option<&[Vec<f32>]> {
        self.classes.iter().find(|c| c.name == name).map(|c| c.embeddings.as_slice())
    }

    /// The rejection threshold on the squared distance to the nearest prototype, if set.
    pub fn threshold(&self) -> Option<f32> {
        self.threshold
    }

    /// Sets (or with `None` turns off) the rejection threshold: a query whose squared
    /// distance to the nearest prototype exceeds it is answered "unknown".
    pub fn set_threshold(&mut self, threshold: Option<f32>) -> Result<()> {
        if let Some(t) = threshold {
            if !(t.is_finite() && t > 0.0) {
                return Err(Error::param("threshold", format!("must be a positive number, got {t}")));
            }
        }
        self.threshold = threshold;
        Ok(())
    }

    /// How embeddings are normalised before prototypes and distances (SimpleShot): none
    /// (the default, the paper), L2, centred on the mean of all support embeddings then
    /// L2, or centred on a given mean (for example of base-class embeddings) then L2.
    /// Thresholds are distances between normalised embeddings: set or calibrate them
    /// after choosing the normalisation.
    pub fn set_normalization(&mut self, norm: FeatureNorm) -> Result<()> {
        if let FeatureNorm::CenterL2(m) = &norm {
            if m.len() != self.dim {
                return Err(Error::param("normalize", format!("the centre has {} values, embeddings have {}", m.len(), self.dim)));
            }
        }
        self.norm = norm;
        Ok(())
    }

    /// The normalisation (see [`PrototypeStore::set_normalization`]).
    pub fn normalization(&self) -> &FeatureNorm {
        &self.norm
    }

    /// The support embeddings `(S, D)` and `queries` `(Q, D)` normalised as prediction
    /// sees them ([`FeatureNorm::apply`]), with each class's number of embeddings.
    fn normalised(&self, queries: &[Vec<f32>]) -> Result<(Tensor, Tensor, Vec<usize>)> {
        let counts: Vec<usize> = self.classes.iter().map(|c| c.embeddings.len()).collect();
        let all: Vec<f32> = self.classes.iter().flat_map(|c| c.embeddings.iter().flatten().copied()).collect();
        let support = Tensor::from_vec(all, (counts.iter().sum::<usize>(), self.dim), &Device::Cpu)?;
        let query = Tensor::from_vec(queries.concat(), (queries.len(), self.dim), &Device::Cpu)?;
        let (support, query) = self.norm.apply(&support, &query)?;
        Ok((support, query, counts))
    }

    /// Leave-one-out distances of the support set: for every support image of a class
    /// with at least 2 images, the squared distance from its embedding to the mean of
    /// the class's other `n - 1` embeddings, scaled by `(n+1)(n-1)/n²` so that it
    /// estimates the distance of a new image of the class to the full `n`-image
    /// prototype (for independent spread around the class mean, the expected squared
    /// distance to a mean of `m` images is proportional to `1 + 1/m`).
    /// Embeddings are normalised first (see [`PrototypeStore::set_normalization`]).
    pub fn leave_one_out_distances(&self) -> Result<Vec<f32>> {
        let (support, _, counts) = self.normalised(&[])?;
        let mut out = Vec::new();
        let mut start = 0;
        for n in counts {
            let e = support.narrow(0, start, n)?;
            start += n;
            if n < 2 {
                continue;
            }
            let nf = n as f64;
            // The mean of the other n - 1 embeddings, for each embedding.
            let others = ((e.sum_keepdim(0)?.broadcast_sub(&e)?) / (nf - 1.0))?;
            let d = (e - others)?.sqr()?.sum(1)?;
            let scale = (nf + 1.0) * (nf - 1.0) / (nf * nf);
            out.extend((d * scale)?.to_vec1::<f32>()?);
        }
        Ok(out)
    }

    /// The inverse temperature `beta` of the confidences: [`PrototypeStore::predict`]'s
    /// probabilities are the softmax of `-beta * distance`. It is fitted on the support
    /// set by leave-one-out: each support image of a class with at least 2 images is
    /// classified against its class's other images (distance scaled as in
    /// [`PrototypeStore::leave_one_out_distances`]) and the other classes' prototypes, and
    /// `beta` minimises the negative log-likelihood of the right classes (a convex
    /// function of `beta`, searched up to `50 / median distance`). 1 (the paper's softmax)
    /// when no class has 2 images or there is only one class.
    ///
    /// ```
    /// use protonet::classifier::PrototypeStore;
    /// let mut store = PrototypeStore::new(1);
    /// store.add("a", vec![vec![0.0], vec![1.0], vec![2.0]])?;
    /// store.add("b", vec![vec![3.0], vec![4.0], vec![5.0]])?;
    /// let beta = store.confidence_scale()?;
    /// assert!(beta > 0.0 && beta.is_finite());
    /// # Ok::<(), protonet::Error>(())
    /// ```
    pub fn confidence_scale(&self) -> Result<f32> {
        let items = self.leave_one_out_scores()?;
        if items.is_empty() {
            return Ok(1.0);
        }
        let mut all: Vec<f64> = items.iter().flat_map(|(_, d)| d.iter().copied()).filter(|d| d.is_finite()).collect();
        all.sort_by(f64::total_cmp);
        let median = all.get(all.len() / 2).copied().unwrap_or(1.0).max(1e-12);
        let nll = |beta: f64| -> f64 {
            items
                .iter()
                .map(|(right, d)| {
                    let min = d.iter().copied().fold(f64::INFINITY, f64::min);
                    let lse = d.iter().map(|x| (-beta * (x - min)).exp()).sum::<f64>().ln() - beta * min;
                    beta * d[*right] + lse
                })
                .sum()
        };
        // Golden-section search of the convex NLL on [0, 50 / median].
        let (mut lo, mut hi) = (0.0f64, 50.0 / median);
        let g = (5f64.sqrt() - 1.0) / 2.0;
        for _ in 0..100 {
            let (a, b) = (hi - g * (hi - lo), lo + g * (hi - lo));
            if nll(a) <= nll(b) {
                hi = b;
            } else {
                lo = a;
            }
        }
        Ok((0.5 * (lo + hi)).max(1e-12) as f32)
    }

    /// Leave-one-out items for [`PrototypeStore::confidence_scale`]: for each support
    /// image of a class with at least 2 images, its class index and its squared distances
    /// to every class (its own class: the scaled distance to the mean of the others).
    fn leave_one_out_scores(&self) -> Result<Vec<(usize, Vec<f64>)>> {
        if self.classes.len() < 2 {
            return Ok(Vec::new());
        }
        let (support, _, counts) = self.normalised(&[])?;
        let full = squared_distances(&support, &class_means(&support, &counts)?)?.to_dtype(DType::F64)?.to_vec2::<f64>()?;
        let own = self.leave_one_out_distances()?;
        let mut out = Vec::new();
        let (mut start, mut k) = (0, 0);
        for (class, &n) in counts.iter().enumerate() {
            if n >= 2 {
                for row in &full[start..start + n] {
                    let mut d = row.clone();
                    d[class] = own[k] as f64;
                    k += 1;
                    out.push((class, d));
                }
            }
            start += n;
        }
        Ok(out)
    }

    /// Calibrates the rejection threshold from the support set and turns rejection on:
    /// the threshold is the `quantile` (for example 0.95) of the leave-one-out distances
    /// ([`PrototypeStore::leave_one_out_distances`]), meant to accept about that share of
    /// new images of known classes. Needs a class with at least 2 images.
    pub fn calibrate_threshold(&mut self, quantile: f32) -> Result<f32> {
        if !(quantile > 0.0 && quantile <= 1.0) {
            return Err(Error::param("quantile", format!("must be in (0, 1], got {quantile}")));
        }
        let mut d = self.leave_one_out_distances()?;
        if d.is_empty() {
            return Err(Error::param("support", "calibrating a threshold needs a class with at least 2 images"));
        }
        d.sort_by(f32::total_cmp);
        let pos = quantile as f64 * (d.len() - 1) as f64;
        let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
        let t = (d[lo] + (d[hi] - d[lo]) * (pos - lo as f64) as f32).max(f32::MIN_POSITIVE);
        self.threshold = Some(t);
        Ok(t)
    }

    /// Checks that the store can answer queries: 2 classes, or 1 with a threshold
    /// (open-set rejection: "this class or not"). One class without a threshold would give
    /// every query that class with confidence 1.
    pub fn check_ready(&self) -> Result<()> {
        match (self.classes.len(), self.threshold) {
            (0, _) => Err(Error::param("classes", "add at least one class before predicting")),
            (1, None) => Err(Error::param(
                "classes",
                format!(
                    "only one class (`{}`): every query would get it with confidence 1. Add a second class, or set a rejection threshold to ask \"this class or unknown\"",
                    self.classes[0].name
                ),
            )),
            _ => Ok(()),
        }
    }

    /// Classifies embeddings: squared Euclidean distance to every prototype, softmax over
    /// the negative distances scaled by [`PrototypeStore::confidence_scale`], nearest first; "unknown" past the threshold, if one is set.
    /// Needs what [`PrototypeStore::check_ready`] checks.
    pub fn predict(&self, embeddings: &[Vec<f32>]) -> Result<Vec<Prediction>> {
        self.check_ready()?;
        if let Some(bad) = embeddings.iter().find(|e| e.len() != self.dim) {
            return Err(Error::param("embeddings", format!("an embedding has {} values, the store's have {}", bad.len(), self.dim)));
        }
        if embeddings.is_empty() {
            return Ok(Vec::new());
        }
        let beta = self.confidence_scale()? as f64;
        let (support, query, counts) = self.normalised(embeddings)?;
        let distances = squared_distances(&query, &class_means(&support, &counts)?)?.to_vec2::<f32>()?;
        Ok(distances
            .into_iter()
            .map(|dist| {
                let min = dist.iter().copied().fold(f32::INFINITY, f32::min) as f64;
                let w: Vec<f64> = dist.iter().map(|&d| (beta * (min - d as f64)).exp()).collect();
                let total: f64 = w.iter().sum();
                let mut ranked: Vec<ClassScore> = self
                    .classes
                    .iter()
                    .zip(dist.iter().zip(&w))
                    .map(|(c, (&distance, &w))| ClassScore { class: c.name.clone(), distance, probability: (w / total) as f32 })
                    .collect();
                ranked.sort_by(|a, b| a.distance.total_cmp(&b.distance));
                let best = &ranked[0];
                // NaN distances are rejected too.
                let rejected =
                    self.threshold.is_some_and(|t| !matches!(best.distance.partial_cmp(&t), Some(std::cmp::Ordering::Less | std::cmp::Ordering::Equal)));
                Prediction { class: if rejected { None } else { Some(best.class.clone()) }, confidence: best.probability, distance: best.distance, ranked }
            })
            .collect())
    }
}

/// A trained backbone with a persistent store of class prototypes ([`PrototypeStore`]).
///
/// ```
/// use candle_core::Device;
/// use protonet::{backbone::{BackboneConfig, Conv4Config}, data::ImageConfig, FewShotClassifier, Model, ModelConfig};
/// let cfg = ModelConfig::new(BackboneConfig::Conv4(Conv4Config { hidden: 8, depth: 2, ..Default::default() }), ImageConfig::grey(8));
/// let mut clf = FewShotClassifier::new(Model::new(cfg, 7, &Device::Cpu)?);
/// let dark: Vec<Vec<f32>> = (0..3).map(|i| vec![0.1 * i as f32; 64]).collect();
/// let light: Vec<Vec<f32>> = (0..3).map(|i| vec![0.9 - 0.1 * i as f32; 64]).collect();
/// clf.add_class("dark", &dark)?;
/// clf.add_class("light", &light)?;
/// let p = clf.predict(&vec![0.95; 64])?;
/// assert_eq!(p.class.as_deref(), Some("light"));
/// assert_eq!(p.ranked.len(), 2);
/// # Ok::<(), protonet::Error>(())
/// ```
pub struct FewShotClassifier {
    model: Model,
    store: PrototypeStore,
    embedder: Embedder,
}

impl FewShotClassifier {
    /// A classifier with no classes yet around a trained `model`, averaging embeddings over
    /// the model's rotations (`ModelConfig::rotations`).
    pub fn new(model: Model) -> Self {
        let dim = model.config().embedding_dim();
        let embedder = Embedder { rotations: model.config().rotations, ..Embedder::default() };
        let mut store = PrototypeStore::new(dim);
        // A centre of the wrong size is refused when the configuration is validated.
        store.norm = model.config().normalization.clone();
        Self { model, store, embedder }
    }

    /// A classifier around the model saved in `dir` (as by `protonet train`), no classes.
    pub fn from_model_dir(dir: impl AsRef<Path>, device: &Device) -> Result<Self> {
        Ok(Self::new(Model::load_for_images(dir.as_ref(), device)?))
    }

    /// A classifier on the frozen ImageNet EfficientNet-Lite0 for photos, with the settings
    /// that suit it: RGB at `image_size` pixels (224 is what it was trained at), support
    /// centring + L2 normalisation, embeddings averaged over 4 rotations (for subjects
    /// such as coins whose class does not depend on their angle; call
    /// [`FewShotClassifier::set_rotations`] with 1 otherwise). Its weights are found by
    /// [`crate::pretrained::PretrainedWeights::locate`].
    ///
    /// ```no_run
    /// use protonet::{Device, FewShotClassifier};
    /// let mut coins = FewShotClassifier::efficientnet_lite0(224, &Device::Cpu)?;
    /// coins.add_support_folder("my_coins")?; // one sub-folder of photos per denomination
    /// let answers = coins.predict_files(&protonet::data::list_images(&["new_photos".into()])?)?;
    /// # Ok::<(), protonet::Error>(())
    /// ```
    pub fn efficientnet_lite0(image_size: usize, device: &Device) -> Result<Self> {
        let backbone = crate::backbone::BackboneConfig::EfficientNetLite0 { weights: crate::pretrained::PretrainedWeights::efficientnet_lite0(), head: None };
        let model = Model::new(crate::ModelConfig::new(backbone, crate::data::ImageConfig::rgb(image_size)), 0, device)?;
        let mut clf = Self::new(model);
        clf.store.set_normalization(FeatureNorm::CenterSupportL2)?;
        clf.set_rotations(4)?;
        Ok(clf)
    }

    /// Adds every class of an image folder: one sub-folder per class, named as the class,
    /// PNG and JPEG files inside (as `protonet predict --support` reads it).
    pub fn add_support_folder(&mut self, dir: impl AsRef<Path>) -> Result<()> {
        for (name, files) in crate::data::list_image_folder(dir.as_ref())? {
            self.add_class_files(&name, &files)?;
        }
        Ok(())
    }

    /// The model.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The classes and their prototypes.
    pub fn store(&self) -> &PrototypeStore {
        &self.store
    }

    /// The classes and their prototypes, to change (remove, rename, set the threshold).
    pub fn store_mut(&mut self) -> &mut PrototypeStore {
        &mut self.store
    }

    /// Test-time rotation averaging: every image (support and query) is embedded at this
    /// many rotations by 90 degrees (1 to 4) and the embeddings averaged. For subjects
    /// whose class does not depend on their angle, such as coins. Default 1 (off).
    pub fn set_rotations(&mut self, rotations: usize) -> Result<()> {
        let embedder = Embedder { rotations, ..self.embedder };
        embedder.validate()?;
        self.embedder = embedder;
        Ok(())
    }

    /// The number of rotations embeddings are averaged over (see [`FewShotClassifier::set_rotations`]).
    pub fn rotations(&self) -> usize {
        self.embedder.rotations
    }

    /// Embeds prepared images (each `C*H*W` values as the model's
    /// [`crate::data::ImageConfig`] prepares them) in evaluation mode, averaged over the
    /// rotations set by [`FewShotClassifier::set_rotations`].
    pub fn embed(&self, images: &[Vec<f32>]) -> Result<Vec<Vec<f32>>> {
        let cfg = &self.model.config().image;
        self.embedder.embed_images(self.model.net(), images, (cfg.channels, cfg.size, cfg.size), self.model.device())
    }

    /// Decodes and prepares image files as the model expects them.
    pub fn load_images(&self, files: &[PathBuf]) -> Result<Vec<Vec<f32>>> {
        files.iter().map(|f| load_image(f, &self.model.config().image)).collect()
    }

    /// Adds prepared `images` to class `name`, creating it if it is new; an existing
    /// class's prototype becomes the mean over all its images, old and new.
    pub fn add_class(&mut self, name: &str, images: &[Vec<f32>]) -> Result<()> {
        if images.is_empty() {
            return Err(Error::param("images", format!("no images given for class `{name}`")));
        }
        let embeddings = self.embed(images)?;
        self.store.add(name, embeddings)
    }

    /// Adds image files to class `name` (see [`FewShotClassifier::add_class`]).
    pub fn add_class_files(&mut self, name: &str, files: &[PathBuf]) -> Result<()> {
        let images = self.load_images(files)?;
        self.add_class(name, &images)
    }

    /// Removes class `name`.
    pub fn remove_class(&mut self, name: &str) -> Result<()> {
        self.store.remove(name)
    }

    /// Renames class `from` to `to`.
    pub fn rename_class(&mut self, from: &str, to: &str) -> Result<()> {
        self.store.rename(from, to)
    }

    /// The class names, in the order they were added.
    pub fn class_names(&self) -> Vec<String> {
        self.store.class_names()
    }

    /// The prototype of class `name`.
    pub fn prototype(&self, name: &str) -> Option<&[f32]> {
        self.store.prototype(name)
    }

    /// The rejection threshold, if set (see [`PrototypeStore::set_threshold`]).
    pub fn threshold(&self) -> Option<f32> {
        self.store.threshold()
    }

    /// Sets or clears the rejection threshold (see [`PrototypeStore::set_threshold`]).
    pub fn set_threshold(&mut self, threshold: Option<f32>) -> Result<()> {
        self.store.set_threshold(threshold)
    }

    /// Calibrates the rejection threshold (see [`PrototypeStore::calibrate_threshold`]).
    pub fn calibrate_threshold(&mut self, quantile: f32) -> Result<f32> {
        self.store.calibrate_threshold(quantile)
    }

    /// Classifies one prepared image.
    pub fn predict(&self, image: &[f32]) -> Result<Prediction> {
        Ok(self.predict_batch(&[image.to_vec()])?.remove(0))
    }

    /// Classifies prepared images, one [`Prediction`] each.
    pub fn predict_batch(&self, images: &[Vec<f32>]) -> Result<Vec<Prediction>> {
        // The class count and threshold are checked before any image is embedded.
        self.store.check_ready()?;
        self.store.predict(&self.embed(images)?)
    }

    /// Classifies image files, one [`Prediction`] each.
    pub fn predict_files(&self, files: &[PathBuf]) -> Result<Vec<Prediction>> {
        let images = self.load_images(files)?;
        self.predict_batch(&images)
    }

    /// Saves the classifier to `dir`: the model (`config.json`, `model.safetensors`), the
    /// support embeddings (`prototypes.safetensors`) and `classifier.json` (class names,
    /// image counts, threshold, rotations), each written to a temporary file and renamed.
    /// Refuses a directory that already holds a model, classifier or training run
    /// ([`OutputMode::New`]); see [`FewShotClassifier::save_with`].
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<()> {
        self.save_with(dir, OutputMode::New)
    }

    /// Like [`FewShotClassifier::save`], with what to do when `dir` already holds something
    /// ([`OutputMode::Resume`] acts as [`OutputMode::Overwrite`]: a classifier has no run).
    pub fn save_with(&self, dir: impl AsRef<Path>, mode: OutputMode) -> Result<()> {
        let dir = dir.as_ref();
        crate::output::prepare(dir, if mode == OutputMode::New { mode } else { OutputMode::Overwrite })?;
        self.model.save_with(dir, OutputMode::Overwrite)?;
        let d = self.model.config().embedding_dim();
        let flat: Vec<f32> = self.store.classes.iter().flat_map(|c| c.embeddings.iter().flatten().copied()).collect();
        let n = flat.len() / d.max(1);
        let mut tensors = std::collections::BTreeMap::new();
        tensors.insert("embeddings".to_string(), Tensor::from_vec(flat, (n, d), &Device::Cpu)?);
        write_safetensors(&dir.join(EMBEDDINGS_FILE), &tensors, None)?;
        let file = ClassifierFile {
            format: FORMAT.into(),
            version: VERSION,
            classes: self.store.classes.iter().map(|c| ClassRecord { name: c.name.clone(), images: c.embeddings.len() }).collect(),
            threshold: self.store.threshold,
            rotations: self.embedder.rotations,
            normalization: self.store.norm.clone(),
        };
        write_atomic(&dir.join(CLASSIFIER_FILE), &serde_json::to_vec_pretty(&file).expect("serialises"))
    }

    /// Loads a classifier saved by [`FewShotClassifier::save`]. A model directory without
    /// a class store loads as a classifier with no classes.
    pub fn load(dir: impl AsRef<Path>, device: &Device) -> Result<Self> {
        let dir = dir.as_ref();
        let model = Model::load_for_images(dir, device)?;
        let path = dir.join(CLASSIFIER_FILE);
        if !path.exists() {
            return Ok(Self::new(model));
        }
        let bad = |path: &Path, reason: String| Error::Checkpoint { path: path.to_path_buf(), reason };
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let file: ClassifierFile = serde_json::from_str(&text).map_err(|e| bad(&path, format!("invalid classifier file: {e}")))?;
        if file.format != FORMAT || file.version != VERSION {
            return Err(bad(&path, format!("expected format `{FORMAT}` version {VERSION}, found `{}` version {}", file.format, file.version)));
        }
        let emb_path = dir.join(EMBEDDINGS_FILE);
        let (tensors, _): (HashMap<String, Tensor>, _) = read_safetensors(&emb_path, &Device::Cpu)?;
        let emb = tensors.get("embeddings").ok_or_else(|| bad(&emb_path, "tensor `embeddings` is missing".into()))?;
        let d = model.config().embedding_dim();
        let total: usize = file.classes.iter().map(|c| c.images).sum();
        if emb.dims() != [total, d] || emb.dtype() != DType::F32 {
            return Err(bad(
                &emb_path,
                format!("embeddings are {:?} {:?}, but {CLASSIFIER_FILE} and the model need [{total}, {d}] F32", emb.dims(), emb.dtype()),
            ));
        }
        let rows = emb.to_vec2::<f32>()?;
        let mut clf = Self::new(model);
        let mut rows = rows.into_iter();
        for c in &file.classes {
            if c.images == 0 {
                return Err(bad(&path, format!("class `{}` has no images", c.name)));
            }
            if clf.store.classes.iter().any(|e| e.name == c.name) {
                return Err(bad(&path, format!("class `{}` appears twice", c.name)));
            }
            clf.store.add(&c.name, rows.by_ref().take(c.images).collect()).map_err(|e| bad(&emb_path, e.to_string()))?;
        }
        clf.set_threshold(file.threshold).map_err(|e| bad(&path, e.to_string()))?;
        clf.set_rotations(file.rotations).map_err(|e| bad(&path, e.to_string()))?;
        clf.store.set_normalization(file.normalization).map_err(|e| bad(&path, e.to_string()))?;
        Ok(clf)
    }
}
