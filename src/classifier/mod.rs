//! A few-shot classifier for deployment: a trained backbone plus a store of class
//! prototypes that grows without retraining.
//!
//! [`FewShotClassifier`] embeds the support images of each class once and keeps their
//! embeddings; a class's prototype is their mean. New images of a class update its
//! prototype (a running mean), classes can be removed and renamed, and the whole store
//! is saved to a directory from which a deployed program predicts without the support
//! images. An optional distance threshold answers "unknown" for queries far from every
//! prototype (open-set rejection).
//!
//! One concept a file: the classifier here, the [`PrototypeStore`] (`store.rs`), its
//! leave-one-out fits of the confidence scale and threshold (`calibrate.rs`), and the
//! classifier's files (`file.rs`).

mod calibrate;
mod file;
mod store;

use std::path::{Path, PathBuf};

use candle_core::Device;
use ndarray::Array2;

pub use store::{ClassScore, Prediction, PrototypeStore};

use crate::data::{list_image_folder, load_image, load_image_with_warning};
use crate::embed::Embedder;
use crate::error::{Error, Result};
use crate::method::MethodConfig;
use crate::model::{Model, ModelConfig};
use crate::output::OutputMode;
use crate::protonet::FeatureNorm;

/// The shipped coin model's directory, relative to the protonet checkout
/// ([`FewShotClassifier::coin_model`]).
pub const COIN_MODEL: &str = "data/coins-efficientnet-lite0";

/// Image files decoded at a time by [`FewShotClassifier::predict_files`].
const FILES_PER_BATCH: usize = 256;

/// The answer for one image file of [`FewShotClassifier::predict_files`].
#[derive(Debug)]
pub struct FilePrediction {
    /// The file.
    pub file: PathBuf,
    /// Its prediction, or why it could not be read (the other files are still answered).
    pub answer: Result<Prediction>,
    /// Something to tell the user although the file was classified: for example a JPEG
    /// that was cut off, whose missing part was decoded as grey.
    pub warning: Option<String>,
}

impl FilePrediction {
    /// The prediction, when the file could be read.
    pub fn prediction(&self) -> Option<&Prediction> {
        self.answer.as_ref().ok()
    }
}

/// What [`FewShotClassifier::add_support_folder`] added: each class and its number of
/// images, so that the caller can see a class with fewer photos than the others.
///
/// ```
/// let added = protonet::classifier::SupportAdded { classes: vec![("a".into(), 4), ("b".into(), 1)] };
/// assert!(added.imbalance().unwrap().contains("`b` has 1"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SupportAdded {
    /// (class, images added), in the folder's order.
    pub classes: Vec<(String, usize)>,
}

impl SupportAdded {
    /// A sentence naming the classes with fewer images than the median class, or `None`
    /// when none has fewer.
    pub fn imbalance(&self) -> Option<String> {
        let mut counts: Vec<usize> = self.classes.iter().map(|c| c.1).collect();
        counts.sort_unstable();
        let typical = *counts.get(counts.len() / 2)?;
        let fewer: Vec<String> = self.classes.iter().filter(|c| c.1 < typical).map(|(n, k)| format!("`{n}` has {k}")).collect();
        (!fewer.is_empty()).then(|| format!("{} (the median class has {typical} support images): their prototypes are less reliable", fewer.join(", ")))
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
/// assert_eq!(p.label(), "light");
/// assert_eq!(p.ranked.len(), 2);
/// # Ok::<(), protonet::Error>(())
/// ```
pub struct FewShotClassifier {
    model: Model,
    store: PrototypeStore,
    embedder: Embedder,
}

impl FewShotClassifier {
    /// A classifier with no classes yet around a trained `model`, embedding as the model
    /// says (its `rotations` and `normalization`).
    pub fn new(model: Model) -> Self {
        let config = model.config();
        let embedder = config.embedder();
        let mut store = PrototypeStore::new(config.embedding_dim());
        // A centre of the wrong size is refused when the configuration is validated.
        store.norm = config.normalization.clone();
        store.method = model.net().method().clone();
        Self { model, store, embedder }
    }

    /// A classifier around the model saved in `dir` (as by `protonet train`), no classes.
    /// A relative `dir` missing here is looked for in the protonet checkout, where the
    /// shipped models are ([`crate::locate_model`]).
    pub fn from_model_dir(dir: impl AsRef<Path>, device: &Device) -> Result<Self> {
        Ok(Self::new(Model::load_for_images(dir.as_ref(), device)?))
    }

    /// The coin model the crate ships ([`COIN_MODEL`]: EfficientNet-Lite0 with its last
    /// blocks trained on coin photos; it crops each photo to its coin and adapts to the
    /// support set), from any project; its ImageNet weights are found as
    /// [`FewShotClassifier::efficientnet_lite0`]'s.
    ///
    /// ```no_run
    /// let mut coins = protonet::FewShotClassifier::coin_model(&protonet::Device::Cpu)?;
    /// coins.add_support_folder("my_coins")?;
    /// # Ok::<(), protonet::Error>(())
    /// ```
    pub fn coin_model(device: &Device) -> Result<Self> {
        Self::from_model_dir(COIN_MODEL, device)
    }

    /// A classifier on the frozen ImageNet EfficientNet-Lite0 for photos, with the settings
    /// of [`ModelConfig::efficientnet_lite0`]: RGB at `image_size` pixels, support
    /// centring + L2 normalization, embeddings averaged over 4 rotations (call
    /// [`FewShotClassifier::set_rotations`] with 1 for subjects whose class depends on
    /// their angle). Its weights are found by [`crate::pretrained::PretrainedWeights::locate`].
    ///
    /// ```no_run
    /// use protonet::{Device, FewShotClassifier};
    /// let mut coins = FewShotClassifier::efficientnet_lite0(224, &Device::Cpu)?;
    /// coins.add_support_folder("my_coins")?; // one sub-folder of photos per denomination
    /// let photos = protonet::data::list_images(&["new_photos".into()])?;
    /// for p in coins.predict_files(&photos)? {
    ///     println!("{}: {}", p.file.display(), p.answer.map(|a| a.label().to_string()).unwrap_or_else(|e| e.to_string()));
    /// }
    /// # Ok::<(), protonet::Error>(())
    /// ```
    pub fn efficientnet_lite0(image_size: usize, device: &Device) -> Result<Self> {
        Ok(Self::new(Model::new(ModelConfig::efficientnet_lite0(image_size), 0, device)?))
    }

    /// Adds every class of an image folder: one sub-folder per class, named as the class,
    /// PNG and JPEG files inside (as `protonet predict --support` reads it). Returns each
    /// class's image count ([`SupportAdded::imbalance`] names classes with fewer images).
    pub fn add_support_folder(&mut self, dir: impl AsRef<Path>) -> Result<SupportAdded> {
        let mut classes = Vec::new();
        for (name, files) in list_image_folder(dir.as_ref())? {
            self.add_class_files(&name, &files)?;
            classes.push((name, files.len()));
        }
        Ok(SupportAdded { classes })
    }

    /// The model.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The classes and their prototypes (to change them, use the classifier's own methods).
    pub fn store(&self) -> &PrototypeStore {
        &self.store
    }

    /// Test-time rotation averaging: every image (support and query) is embedded at this
    /// many rotations by 90 degrees (1 to 4) and the embeddings averaged. For subjects
    /// whose class does not depend on their angle, such as coins. Default: the model's.
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

    /// Sets how embeddings are normalized before prototypes and distances (see
    /// [`PrototypeStore::set_normalization`]).
    pub fn set_normalization(&mut self, norm: FeatureNorm) -> Result<()> {
        self.store.set_normalization(norm)
    }

    /// Sets the method that scores queries (see [`PrototypeStore::set_method`]), built for
    /// this model ([`Model::build_method`]); default: the model's own `method`. For
    /// example `MethodConfig::Adapted(SupportAdaptation::default())` fits a cosine
    /// classifier to the support set, once after each change of it, not per query.
    pub fn set_method(&mut self, method: &MethodConfig) -> Result<()> {
        let m = self.model.build_method(method)?;
        self.store.set_method(m)
    }

    /// Embeds prepared images (each `C*H*W` values as the model's
    /// [`crate::data::ImageConfig`] prepares them) in evaluation mode, averaged over the
    /// rotations set by [`FewShotClassifier::set_rotations`].
    pub fn embed(&self, images: &[Vec<f32>]) -> Result<Vec<Vec<f32>>> {
        let cfg = &self.model.config().image;
        self.embedder.embed_images(self.model.net(), images, (cfg.channels, cfg.size, cfg.size), self.model.device())
    }

    /// [`FewShotClassifier::embed`] as an `(images, D)` array, the form linfa and the rest
    /// of Rust's numeric crates take (to cluster, plot or export embeddings).
    pub fn embed_array(&self, images: &[Vec<f32>]) -> Result<Array2<f32>> {
        let rows = self.embed(images)?;
        let dim = self.model.config().embedding_dim();
        Array2::from_shape_vec((rows.len(), dim), rows.concat()).map_err(|e| Error::param("images", e.to_string()))
    }

    /// The prototypes, one row per class in the order added (see [`PrototypeStore::prototypes`]).
    pub fn prototypes(&self) -> Array2<f32> {
        self.store.prototypes()
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

    /// Adds support embeddings made by [`FewShotClassifier::embed`] to class `name`
    /// (creating it if it is new): the two halves of [`FewShotClassifier::add_class`], so
    /// that a program can embed while others still predict, then add.
    pub fn add_embeddings(&mut self, name: &str, embeddings: Vec<Vec<f32>>) -> Result<()> {
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

    /// Removes support image `index` (in the order added) of class `name`; the class goes
    /// when its last image does (see [`PrototypeStore::remove_embedding`]).
    pub fn remove_support(&mut self, name: &str, index: usize) -> Result<()> {
        self.store.remove_embedding(name, index)
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

    /// Classifies image files, one [`FilePrediction`] each, in order: decoded a few hundred
    /// at a time, so a large folder never sits in memory at once; a file that cannot be
    /// read gets its error and the others are still answered; a file that decodes but
    /// looks damaged gets a warning. Errors (before any file is read) when the store cannot
    /// answer ([`PrototypeStore::check_ready`]).
    pub fn predict_files(&self, files: &[PathBuf]) -> Result<Vec<FilePrediction>> {
        self.store.check_ready()?;
        let mut out = Vec::with_capacity(files.len());
        for chunk in files.chunks(FILES_PER_BATCH) {
            let mut images = Vec::with_capacity(chunk.len());
            // Per file: its warning once decoded, or why it could not be.
            let decoded: Vec<Result<Option<String>>> = chunk
                .iter()
                .map(|f| {
                    load_image_with_warning(f, &self.model.config().image).map(|(image, warning)| {
                        images.push(image);
                        warning
                    })
                })
                .collect();
            let mut answers = self.predict_batch(&images)?.into_iter();
            for (file, d) in chunk.iter().zip(decoded) {
                let (answer, warning) = match d {
                    Ok(warning) => (Ok(answers.next().expect("one answer per decoded image")), warning),
                    Err(e) => (Err(e), None),
                };
                out.push(FilePrediction { file: file.clone(), answer, warning });
            }
        }
        Ok(out)
    }

    /// Saves the classifier to `dir`: the model (`config.json`, `model.safetensors`), the
    /// support embeddings (`prototypes.safetensors`) and `classifier.json` (class names,
    /// image counts, threshold, rotations), each written to a temporary file and renamed.
    /// Refuses a directory that already holds a model, classifier or training run
    /// ([`OutputMode::New`]); see [`FewShotClassifier::save_with`].
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<()> {
        self.save_with(dir, OutputMode::New)
    }

    /// Like [`FewShotClassifier::save`], with what to do when `dir` already holds something:
    /// `save_with(dir, OutputMode::Overwrite)` replaces it ([`OutputMode::Resume`] acts as
    /// [`OutputMode::Overwrite`]: a classifier has no run).
    pub fn save_with(&self, dir: impl AsRef<Path>, mode: OutputMode) -> Result<()> {
        file::save(self, dir.as_ref(), mode)
    }

    /// Loads a classifier saved by [`FewShotClassifier::save`]. A model directory without
    /// a class store loads as a classifier with no classes.
    pub fn load(dir: impl AsRef<Path>, device: &Device) -> Result<Self> {
        file::load(dir.as_ref(), device)
    }
}
