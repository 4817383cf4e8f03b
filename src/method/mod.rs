//! Few-shot methods: how a network turns the embeddings of a support set and of queries
//! into class scores. A method is a value ([`MethodConfig`], recorded in a model's
//! `config.json`) that builds a [`Method`]: fitted once per support set ([`Method::fit`]),
//! then scoring any number of queries ([`Method::logits`]), with its training loss and,
//! where it has them, distances for rejection and confidence.
//!
//! A network is a backbone and a method ([`crate::net::FewShotNet`]); episodic training,
//! evaluation, the deployable classifier and the benchmark all score through the method,
//! so a new method is one file here and one variant of [`MethodConfig`].
//!
//! | method | file | fitted to the support set | scores |
//! |---|---|---|---|
//! | [`MethodConfig::Protonet`] (Snell et al. 2017) | `prototypes.rs` | class means | negative squared distances |
//! | [`MethodConfig::Adapted`] | `adapted.rs` | a cosine classifier trained on the support embeddings ([`SupportAdaptation`]) | scaled cosine |
//! | [`MethodConfig::Matching`] (Vinyals et al. 2016) | `matching.rs` | unit support embeddings and one-hot labels | log of the attention-weighted labels |
//! | [`MethodConfig::Baseline`] (Chen et al. 2019) | `baseline.rs` | a linear (Baseline) or cosine (Baseline++) classifier trained by SGD on the support embeddings | its logits |
//! | [`MethodConfig::MetaBaseline`] (Chen et al. 2021) | `meta_baseline.rs` | unit class means | cosine times a learned temperature (`method.temperature`) |
//! | [`MethodConfig::Relation`] (Sung et al. 2018) | `relation.rs` | mean feature map of each class | a learned relation module on each (class, query) pair of maps (`method.*`) |

mod adapted;
mod baseline;
mod matching;
mod meta_baseline;
mod prototypes;
mod relation;

use std::collections::BTreeMap;
use std::sync::Arc;

use candle_core::Tensor;
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use crate::adapt::SupportAdaptation;
use crate::backbone::Conv4Layout;
use crate::error::{Error, Result};

pub use baseline::{Baseline, BaselineConfig, ClassifierKind};
pub use matching::{Matching, MatchingConfig};
pub use meta_baseline::{MetaBaseline, MetaBaselineConfig};
pub use prototypes::Prototypes;
pub use relation::{Relation, RelationConfig, SupportCombine, TestStatistics};

/// Which few-shot method a network uses to score queries, with its settings; stored in
/// a model's `config.json` under `method` (absent: [`MethodConfig::Protonet`], so models
/// saved before methods existed load as they were).
///
/// ```
/// use protonet::method::MethodConfig;
/// let m: MethodConfig = serde_json::from_str(r#"{"kind": "matching", "scale": 10.0}"#)?;
/// assert_eq!(m.name(), "matching");
/// assert_eq!(serde_json::to_string(&MethodConfig::default())?, r#"{"kind":"protonet"}"#);
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MethodConfig {
    /// Prototypical networks: the nearest class mean by squared Euclidean distance.
    #[default]
    Protonet,
    /// A cosine classifier started at the prototypes and trained on the support embeddings
    /// at test time ([`SupportAdaptation`]); not trained episodically.
    Adapted(SupportAdaptation),
    /// Matching networks: softmax attention of each query over the support embeddings by
    /// cosine similarity, summed per class.
    Matching(MatchingConfig),
    /// Baseline (linear) and Baseline++ (cosine classifier), Chen et al. 2019: a new
    /// classifier trained on the support embeddings at test time; the backbone is
    /// trained beforehand as a classifier of all base classes
    /// ([`crate::train::supervised`]).
    Baseline(BaselineConfig),
    /// Meta-Baseline (Chen et al. 2021): cosine similarity to the class means times a
    /// learned temperature; the backbone trained as a classifier of all base classes,
    /// then episodically through this scoring.
    MetaBaseline(MetaBaselineConfig),
    /// Relation Network (Sung et al. 2018): a learned relation module scores each (class,
    /// query) pair of feature maps, trained by mean squared error; it gives no distances,
    /// so it cannot reject by a distance threshold.
    Relation(RelationConfig),
}

impl MethodConfig {
    /// The method's name, as `protonet train --method` takes it.
    pub fn name(&self) -> &'static str {
        match self {
            MethodConfig::Protonet => "protonet",
            MethodConfig::Adapted(_) => "adapted",
            MethodConfig::Matching(_) => "matching",
            MethodConfig::Baseline(BaselineConfig { classifier: ClassifierKind::Linear, .. }) => "baseline",
            MethodConfig::Baseline(BaselineConfig { classifier: ClassifierKind::Cosine, .. }) => "baseline-pp",
            MethodConfig::MetaBaseline(_) => "meta-baseline",
            MethodConfig::Relation(_) => "relation",
        }
    }

    /// Whether the method scores feature maps rather than pooled embeddings (the
    /// Relation Network).
    pub fn scores_maps(&self) -> bool {
        matches!(self, MethodConfig::Relation(_))
    }

    /// Refuses averaging over `rotations > 1` for a method that scores feature maps: the
    /// average of rotated maps mixes their positions (it applies to pooled vectors only).
    pub fn check_rotations(&self, rotations: usize) -> Result<()> {
        if self.scores_maps() && rotations > 1 {
            return Err(Error::param(
                "rotations",
                format!("the `{}` method scores feature maps, and averaging over {rotations} rotations applies to pooled embeddings only: use 1", self.name()),
            ));
        }
        Ok(())
    }

    /// The Conv-4 layout of the method's paper: the Relation Network's encoder keeps
    /// 5x5 maps of 28 px glyphs; the others pool every block.
    pub fn conv4_layout(&self) -> Conv4Layout {
        match self {
            MethodConfig::Relation(_) => Conv4Layout::Relation,
            _ => Conv4Layout::Pooled,
        }
    }

    /// Checks the settings; errors name the setting.
    pub fn validate(&self) -> Result<()> {
        match self {
            MethodConfig::Protonet => Ok(()),
            MethodConfig::Adapted(a) => a.validate(),
            MethodConfig::Matching(m) => m.validate(),
            MethodConfig::Baseline(b) => b.validate(),
            MethodConfig::MetaBaseline(m) => m.validate(),
            MethodConfig::Relation(r) => r.validate(),
        }
    }

    /// Builds the method; its learned parameters, if any, come from `vb` (the model's
    /// variables under the prefix `method`).
    pub fn build(&self, vb: VarBuilder) -> Result<Arc<dyn Method>> {
        self.validate()?;
        Ok(match self {
            MethodConfig::Protonet => Arc::new(Prototypes),
            MethodConfig::Adapted(a) => Arc::new(*a),
            MethodConfig::Matching(m) => Arc::new(Matching::new(*m)),
            MethodConfig::Baseline(b) => Arc::new(Baseline::new(*b)),
            MethodConfig::MetaBaseline(m) => Arc::new(MetaBaseline::new(*m, vb)?),
            MethodConfig::Relation(r) => Arc::new(Relation::new(*r, vb)?),
        })
    }

    /// Whether the method has learned parameters (kept with the model's weights).
    pub fn has_parameters(&self) -> bool {
        match self {
            MethodConfig::Protonet | MethodConfig::Adapted(_) | MethodConfig::Matching(_) | MethodConfig::Baseline(_) => false,
            MethodConfig::MetaBaseline(_) | MethodConfig::Relation(_) => true,
        }
    }

    /// Builds a method that has no learned parameters (to score with settings other than
    /// a model's own, as `protonet eval --adapt-steps` does); refuses one that has.
    pub fn build_without_parameters(&self) -> Result<Arc<dyn Method>> {
        if self.has_parameters() {
            return Err(Error::param("method", format!("the `{}` method has learned parameters: score with the model that holds them", self.name())));
        }
        self.build(VarBuilder::zeros(candle_core::DType::F32, &candle_core::Device::Cpu))
    }

    /// This method with the support adaptation's step count set to `steps` (the other
    /// settings this method's own when it adapts, else the defaults): `steps` 0 is plain
    /// prototypes. What `--adapt-steps` does.
    ///
    /// ```
    /// use protonet::{adapt::SupportAdaptation, MethodConfig};
    /// assert_eq!(MethodConfig::Protonet.with_adaptation_steps(7), MethodConfig::Adapted(SupportAdaptation { steps: 7, ..Default::default() }));
    /// assert_eq!(MethodConfig::Adapted(SupportAdaptation::default()).with_adaptation_steps(0), MethodConfig::Protonet);
    /// ```
    pub fn with_adaptation_steps(self, steps: usize) -> Self {
        let base = match self {
            MethodConfig::Adapted(a) => a,
            _ => SupportAdaptation::default(),
        };
        Self::from_adaptation(Some(SupportAdaptation { steps, ..base }))
    }

    /// The method of a model saved before methods were recorded: its support adaptation
    /// when it had an active one, else prototypes.
    pub fn from_adaptation(adaptation: Option<SupportAdaptation>) -> Self {
        match adaptation {
            Some(a) if a.is_active() => MethodConfig::Adapted(a),
            _ => MethodConfig::Protonet,
        }
    }
}

/// What a method keeps of one support set: named tensors (prototypes, fitted class
/// weights, support rows and labels), saved with a classifier so that a loaded one
/// answers exactly as the saved one.
#[derive(Debug, Clone, Default)]
pub struct Fitted {
    /// The tensors, by name.
    pub tensors: BTreeMap<String, Tensor>,
}

impl Fitted {
    /// A fit of one tensor.
    pub fn one(name: &str, t: Tensor) -> Self {
        Self { tensors: BTreeMap::from([(name.to_string(), t)]) }
    }

    /// Adds a tensor.
    pub fn with(mut self, name: &str, t: Tensor) -> Self {
        self.tensors.insert(name.to_string(), t);
        self
    }

    /// The tensor `name`; an error naming it when missing (a fit of another method).
    pub fn get(&self, name: &str) -> Result<&Tensor> {
        self.tensors.get(name).ok_or_else(|| Error::param("fitted", format!("no tensor `{name}` in the fit (a fit of another method?)")))
    }
}

/// The scoring part of a few-shot method. Support embeddings come class-major: the
/// `counts[0]` rows of class 0 first, then class 1's, and so on.
pub trait Method: std::fmt::Debug + Send + Sync {
    /// The settings it was built from (saved with models and classifiers).
    fn config(&self) -> MethodConfig;

    /// Fits the method to support embeddings `(S, D)` with `counts[k]` rows of class `k`;
    /// once per support set. Differentiable for methods trained episodically.
    fn fit(&self, support: &Tensor, counts: &[usize]) -> Result<Fitted>;

    /// Scores `(Q, way)` of query embeddings `(Q, D)`: the higher, the likelier; the
    /// training loss and the prediction (the argmax) read them.
    fn logits(&self, fitted: &Fitted, query: &Tensor) -> Result<Tensor>;

    /// [`Method::logits`] in training (`train`) or evaluation behaviour, for a method with
    /// layers that differ between the two (BatchNorm); the same as `logits` by default.
    fn logits_t(&self, fitted: &Fitted, query: &Tensor, train: bool) -> Result<Tensor> {
        let _ = train;
        self.logits(fitted, query)
    }

    /// Whether the method scores feature maps ([`crate::backbone::Backbone::feature_maps`],
    /// flattened to rows) rather than pooled embeddings. Averaging over rotations, which
    /// would mix the maps' positions, is refused for such a method.
    fn scores_maps(&self) -> bool {
        self.config().scores_maps()
    }

    /// The training loss of `logits` against the queries' `labels` (`u32`): cross-entropy
    /// through log-softmax by default.
    fn loss(&self, logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
        crate::protonet::episode_loss(logits, labels)
    }

    /// Class probabilities `(Q, way)` from the method's logits, for confidences: their
    /// softmax by default.
    fn probabilities(&self, logits: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::ops::softmax_last_dim(logits)?)
    }

    /// Whether the method gives distances ([`Method::distances`]); one that does not
    /// cannot reject queries by a distance threshold.
    fn has_distances(&self) -> bool {
        false
    }

    /// Squared distances `(Q, way)` from each query to each class, for rejection by a
    /// threshold and for calibrated confidences; an error for a method that has none.
    fn distances(&self, fitted: &Fitted, query: &Tensor) -> Result<Tensor> {
        let _ = (fitted, query);
        Err(Error::param("reject", format!("the `{}` method gives no distances", self.config().name())))
    }

    /// Whether episodic training can update the backbone through it (its fit is
    /// differentiable); `false` for methods fitted at test time only.
    fn trains_episodically(&self) -> bool {
        true
    }
}

/// Checks that `counts` splits `n` support rows into non-empty classes.
pub(crate) fn check_counts(n: usize, counts: &[usize]) -> Result<()> {
    if counts.iter().sum::<usize>() != n || counts.contains(&0) {
        return Err(Error::param("support", format!("class sizes {counts:?} do not split {n} support embeddings")));
    }
    Ok(())
}

/// The class of each support row for class sizes `counts`.
pub(crate) fn support_labels(counts: &[usize]) -> Vec<u32> {
    counts.iter().enumerate().flat_map(|(k, &c)| std::iter::repeat_n(k as u32, c)).collect()
}
