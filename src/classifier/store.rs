//! The store of class prototypes: support embeddings per class, their means, and the
//! nearest-prototype answers with confidences and rejection. It knows nothing of networks.

use std::sync::{Arc, OnceLock};

use candle_core::{Device, Tensor};
use ndarray::Array2;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::method::{Fitted, Method, Prototypes};
use crate::protonet::{class_means, FeatureNorm};

/// One class's score for a query.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassScore {
    /// The class name.
    pub class: String,
    /// The method's squared distance from the query to the class (for prototypes, the
    /// squared Euclidean distance to the class mean); `None` for a method that has no
    /// distances ([`Method::distances`]).
    pub distance: Option<f32>,
    /// With distances, the softmax over all classes of `-beta * distance`, `beta` fitted
    /// on the support set (see [`PrototypeStore::confidence_scale`]); without, the
    /// softmax of the method's logits.
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
    /// For "unknown" (`class` `None`): how sure the rejection is
    /// ([`PrototypeStore::unknown_confidence`]); for the class of a one-class store
    /// (where the softmax is always 1), one minus that: the share of the left-out support
    /// images at least as far from their class as the query.
    pub confidence: f32,
    /// The squared distance to the predicted class (`None` for a method without distances).
    pub distance: Option<f32>,
    /// Every class, nearest first.
    pub ranked: Vec<ClassScore>,
}

impl Prediction {
    /// The predicted class's name, or `unknown` when the query was rejected.
    ///
    /// ```
    /// let p = protonet::Prediction { class: None, confidence: 0.9, distance: Some(4.0), ranked: vec![] };
    /// assert_eq!(p.label(), "unknown");
    /// ```
    pub fn label(&self) -> &str {
        self.class.as_deref().unwrap_or("unknown")
    }
}

#[derive(Debug, Clone)]
pub(super) struct ClassEntry {
    pub(super) name: String,
    /// Support embeddings, one `Vec` of `D` values per image, in the order added.
    pub(super) embeddings: Vec<Vec<f32>>,
    /// The mean of `embeddings`, summed in f64 in the order added.
    pub(super) prototype: Vec<f32>,
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

/// Class prototypes built from embeddings: the part of [`FewShotClassifier`](super::FewShotClassifier) that knows
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
/// assert!((p[0].distance.unwrap() - 0.25).abs() < 1e-6);
/// # Ok::<(), protonet::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct PrototypeStore {
    pub(super) dim: usize,
    pub(super) classes: Vec<ClassEntry>,
    pub(super) threshold: Option<f32>,
    pub(super) norm: FeatureNorm,
    /// The confidence scale and the leave-one-out distances for the current support set,
    /// normalization and method, fitted on first use after a change
    /// ([`PrototypeStore::confidence_scale`]).
    pub(super) confidence: OnceLock<super::calibrate::ConfidenceFit>,
    /// The few-shot method that scores queries ([`Method`]; prototypes by default).
    pub(super) method: Arc<dyn Method>,
    /// The method's fit to the current support set and normalization, made on first use
    /// after a change (or read back from a save).
    pub(super) fitted: OnceLock<Fitted>,
}

impl PrototypeStore {
    /// An empty store for embeddings of `dim` values.
    pub fn new(dim: usize) -> Self {
        Self {
            dim,
            classes: Vec::new(),
            threshold: None,
            norm: FeatureNorm::None,
            confidence: OnceLock::new(),
            method: Arc::new(Prototypes),
            fitted: OnceLock::new(),
        }
    }

    /// Forgets what was fitted to the support set (after it or the normalization changed).
    fn changed(&mut self) {
        self.confidence = OnceLock::new();
        self.fitted = OnceLock::new();
    }

    /// Sets the method that scores queries (see [`crate::method`]): for example a
    /// [`crate::adapt::SupportAdaptation`], which classifies by a cosine classifier fitted
    /// to the support set (once per change of the support set) with distances between
    /// unit vectors (`2 - 2 cos`) to its class weights. A rejection threshold needs a
    /// method with distances.
    pub fn set_method(&mut self, method: Arc<dyn Method>) -> Result<()> {
        method.config().validate()?;
        if self.threshold.is_some() && !method.has_distances() {
            return Err(Error::param("reject", format!("the `{}` method gives no distances to reject by: turn rejection off first", method.config().name())));
        }
        self.method = method;
        // The fit and the confidences' leave-one-out both go through the method.
        self.changed();
        Ok(())
    }

    /// The method (see [`PrototypeStore::set_method`]).
    pub fn method(&self) -> &Arc<dyn Method> {
        &self.method
    }

    /// The method's fit to the current support set (normalized): made once after each
    /// change of the support set, normalization or method, then kept.
    pub fn fitted(&self) -> Result<Fitted> {
        if let Some(f) = self.fitted.get() {
            return Ok(f.clone());
        }
        if self.classes.is_empty() {
            return Err(Error::param("classes", "add at least one class before predicting"));
        }
        let (support, _, counts) = self.normalized(&[])?;
        let f = self.method.fit(&support, &counts)?;
        Ok(self.fitted.get_or_init(|| f).clone())
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
        self.changed();
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
        self.changed();
        Ok(())
    }

    /// Removes the support embedding at `index` (in the order added) from class `name`,
    /// whose prototype becomes the mean of the others; removing a class's last embedding
    /// removes the class.
    ///
    /// ```
    /// let mut store = protonet::classifier::PrototypeStore::new(1);
    /// store.add("a", vec![vec![0.0], vec![2.0], vec![7.0]])?;
    /// store.remove_embedding("a", 2)?;
    /// assert_eq!(store.prototype("a"), Some(&[1.0][..]));
    /// assert!(store.remove_embedding("a", 5).unwrap_err().to_string().contains("has 2"));
    /// # Ok::<(), protonet::Error>(())
    /// ```
    pub fn remove_embedding(&mut self, name: &str, index: usize) -> Result<()> {
        let i = self.index_of(name)?;
        let n = self.classes[i].embeddings.len();
        if index >= n {
            return Err(Error::param("image", format!("class `{name}` has {n} support images, no image {index}")));
        }
        self.changed();
        if n == 1 {
            self.classes.remove(i);
            return Ok(());
        }
        self.classes[i].embeddings.remove(index);
        self.classes[i].update_prototype()
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

    /// The prototypes, one row per class in the order added (the means of the support
    /// embeddings, as [`PrototypeStore::prototype`]), for clustering, plotting or export.
    ///
    /// ```
    /// let mut store = protonet::PrototypeStore::new(2);
    /// store.add("a", vec![vec![0.0, 0.0], vec![0.0, 2.0]])?;
    /// store.add("b", vec![vec![5.0, 5.0]])?;
    /// assert_eq!(store.prototypes(), ndarray::array![[0.0, 1.0], [5.0, 5.0]]);
    /// # Ok::<(), protonet::Error>(())
    /// ```
    pub fn prototypes(&self) -> Array2<f32> {
        let flat: Vec<f32> = self.classes.iter().flat_map(|c| c.prototype.iter().copied()).collect();
        Array2::from_shape_vec((self.classes.len(), self.dim), flat).expect("every prototype has dim values")
    }

    /// Each class's name and number of support embeddings, in the order added.
    pub fn class_counts(&self) -> Vec<(String, usize)> {
        self.classes.iter().map(|c| (c.name.clone(), c.embeddings.len())).collect()
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
            if !self.method.has_distances() {
                return Err(Error::param("reject", format!("the `{}` method gives no distances to reject by", self.method.config().name())));
            }
        }
        self.threshold = threshold;
        Ok(())
    }

    /// How embeddings are normalized before prototypes and distances (SimpleShot): none
    /// (the default, the paper), L2, centred on the mean of all support embeddings then
    /// L2, or centred on a given mean (for example of base-class embeddings) then L2.
    /// Thresholds are distances between normalized embeddings: set or calibrate them
    /// after choosing the normalization.
    pub fn set_normalization(&mut self, norm: FeatureNorm) -> Result<()> {
        if let FeatureNorm::CenterL2(m) = &norm {
            if m.len() != self.dim {
                return Err(Error::param("normalize", format!("the centre has {} values, embeddings have {}", m.len(), self.dim)));
            }
        }
        self.norm = norm;
        self.changed();
        Ok(())
    }

    /// The normalization (see [`PrototypeStore::set_normalization`]).
    pub fn normalization(&self) -> &FeatureNorm {
        &self.norm
    }

    /// The support embeddings `(S, D)` and `queries` `(Q, D)` normalized as prediction
    /// sees them ([`FeatureNorm::apply`]), with each class's number of embeddings.
    pub(super) fn normalized(&self, queries: &[Vec<f32>]) -> Result<(Tensor, Tensor, Vec<usize>)> {
        let counts: Vec<usize> = self.classes.iter().map(|c| c.embeddings.len()).collect();
        let all: Vec<f32> = self.classes.iter().flat_map(|c| c.embeddings.iter().flatten().copied()).collect();
        let support = Tensor::from_vec(all, (counts.iter().sum::<usize>(), self.dim), &Device::Cpu)?;
        let query = Tensor::from_vec(queries.concat(), (queries.len(), self.dim), &Device::Cpu)?;
        let (support, query) = self.norm.apply(&support, &query)?;
        Ok((support, query, counts))
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

    /// Classifies embeddings by the method fitted to the support set
    /// ([`PrototypeStore::fitted`]). With a method that has distances (prototypes: the
    /// squared Euclidean distance to every prototype), the softmax over the negative
    /// distances scaled by [`PrototypeStore::confidence_scale`], nearest first, and
    /// "unknown" past the threshold, if one is set; without, the method's probabilities
    /// from its logits ([`Method::probabilities`]), likeliest first. Needs what [`PrototypeStore::check_ready`] checks.
    pub fn predict(&self, embeddings: &[Vec<f32>]) -> Result<Vec<Prediction>> {
        self.check_ready()?;
        if let Some(bad) = embeddings.iter().find(|e| e.len() != self.dim) {
            return Err(Error::param("embeddings", format!("an embedding has {} values, the store's have {}", bad.len(), self.dim)));
        }
        if embeddings.is_empty() {
            return Ok(Vec::new());
        }
        let fitted = self.fitted()?;
        let (_, query, _) = self.normalized(embeddings)?;
        if self.method.has_distances() {
            let beta = self.confidence_scale()? as f64;
            let d = self.method.distances(&fitted, &query)?.to_vec2::<f32>()?;
            return d.into_iter().map(|dist| self.answer(&dist, beta)).collect();
        }
        let logits = self.method.logits(&fitted, &query)?;
        let p = self.method.probabilities(&logits)?.to_vec2::<f32>()?;
        Ok(p.into_iter().map(|p| self.answer_by_probabilities(&p)).collect())
    }

    /// The answer for one query from its class probabilities, for a method without
    /// distances.
    fn answer_by_probabilities(&self, p: &[f32]) -> Prediction {
        let mut ranked: Vec<ClassScore> =
            self.classes.iter().zip(p).map(|(c, &p)| ClassScore { class: c.name.clone(), distance: None, probability: p }).collect();
        ranked.sort_by(|a, b| b.probability.total_cmp(&a.probability));
        let best = &ranked[0];
        Prediction { class: Some(best.class.clone()), confidence: best.probability, distance: None, ranked }
    }

    /// The answer for one query from its squared distances to every class.
    fn answer(&self, dist: &[f32], beta: f64) -> Result<Prediction> {
        let min = dist.iter().copied().fold(f32::INFINITY, f32::min) as f64;
        let w: Vec<f64> = dist.iter().map(|&d| (beta * (min - d as f64)).exp()).collect();
        let total: f64 = w.iter().sum();
        let mut ranked: Vec<ClassScore> = self
            .classes
            .iter()
            .zip(dist.iter().zip(&w))
            .map(|(c, (&distance, &w))| ClassScore { class: c.name.clone(), distance: Some(distance), probability: (w / total) as f32 })
            .collect();
        ranked.sort_by(|a, b| a.distance.unwrap_or(f32::NAN).total_cmp(&b.distance.unwrap_or(f32::NAN)));
        let best = &ranked[0];
        let d = best.distance.unwrap_or(f32::NAN);
        // NaN distances are rejected too.
        let rejected = self.threshold.is_some_and(|t| !matches!(d.partial_cmp(&t), Some(std::cmp::Ordering::Less | std::cmp::Ordering::Equal)));
        if rejected {
            let confidence = if d.is_nan() { 1.0 } else { self.unknown_confidence(d)? };
            return Ok(Prediction { class: None, confidence, distance: best.distance, ranked });
        }
        // One class: the softmax is always 1; say instead how typical the distance is.
        let confidence = if self.classes.len() == 1 { 1.0 - self.unknown_confidence(d)? } else { best.probability };
        Ok(Prediction { class: Some(best.class.clone()), confidence, distance: best.distance, ranked })
    }
}
