//! Evaluation: mean accuracy over many episodes with a 95% confidence interval.
//!
//! [`evaluate`] measures a model as it classifies (its own rotations and normalization);
//! [`evaluate_net`] is the same measurement with the embedding settings given, which is
//! what `protonet eval` runs, so the library and the command line agree.

use std::sync::Arc;

use candle_core::{Device, Tensor, D};
use serde::{Deserialize, Serialize};

use crate::calibration::{Calibration, CALIBRATION_BINS};
use crate::classifier::PrototypeStore;

use crate::data::ImageSet;
use crate::embed::Embedder;
use crate::episode::{Episode, EpisodeSampler, EpisodeSpec};
use crate::error::{Error, Result};
use crate::method::{Method, MethodConfig};
use crate::model::Model;
use crate::net::FewShotNet;
use crate::observer::Observer;
use crate::protonet::FeatureNorm;

/// The result of [`evaluate`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// Classes per episode.
    pub way: usize,
    /// Support images per class.
    pub shot: usize,
    /// Query images per class.
    pub query: usize,
    /// Episodes evaluated.
    pub episodes: usize,
    /// Mean episode accuracy, a fraction in [0, 1].
    pub accuracy: f64,
    /// Half-width of the 95% confidence interval: `1.96 * std / sqrt(episodes)`.
    pub ci95: f64,
    /// Sample standard deviation of the episode accuracies.
    pub std: f64,
    /// The sampler's seed.
    pub seed: u64,
    /// `confusion[true][predicted]`: query counts over all episodes, by dataset class.
    #[serde(skip)]
    pub confusion: Vec<Vec<u64>>,
    /// With [`EvalConfig::confidences`]: how the confidences the classifier reports for
    /// these episodes' queries match how often its answers are right.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<Calibration>,
}

impl EvalReport {
    /// The confusion matrix as a text table: one row per true class, the share of its
    /// queries predicted as each class (in %), and its recall. Columns are as wide as the
    /// longest class name, so names are never cut.
    ///
    /// ```
    /// let mut r = protonet::EvalReport { way: 2, shot: 1, query: 1, episodes: 1, accuracy: 1.0, ci95: 0.0, std: 0.0, seed: 0, confusion: vec![vec![3, 1], vec![0, 4]], calibration: None };
    /// let table = r.confusion_table(&["test-1000-eur".into(), "b".into()]);
    /// assert!(table.contains("test-1000-eur") && table.contains("75.0"));
    /// ```
    pub fn confusion_table(&self, names: &[String]) -> String {
        let width = names.iter().map(|n| n.chars().count()).max().unwrap_or(0).max(6);
        let first = width.max(11);
        let mut out = format!("{:>first$} |", "true \\ pred");
        for n in names {
            out += &format!(" {n:>width$}");
        }
        out += " |   recall\n";
        for (i, row) in self.confusion.iter().enumerate() {
            let total: u64 = row.iter().sum();
            out += &format!("{:>first$} |", names.get(i).map(String::as_str).unwrap_or("?"));
            for &c in row {
                out += &format!(" {:>width$.1}", 100.0 * c as f64 / total.max(1) as f64);
            }
            out += &format!(" | {:>7.1}%\n", 100.0 * row.get(i).copied().unwrap_or(0) as f64 / total.max(1) as f64);
        }
        out
    }
}

impl std::fmt::Display for EvalReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}-way {}-shot ({} queries/class, {} episodes): {:.2}% ± {:.2}%",
            self.way,
            self.shot,
            self.query,
            self.episodes,
            100.0 * self.accuracy,
            100.0 * self.ci95
        )
    }
}

/// Mean and 95% confidence half-width (`1.96 * sample std / sqrt(n)`) of `values`.
///
/// ```
/// let (mean, ci) = protonet::eval::mean_ci95(&[1.0, 0.0, 1.0, 0.0]);
/// assert_eq!(mean, 0.5);
/// assert!((ci - 1.96 * (1.0f64 / 3.0).sqrt() / 2.0).abs() < 1e-12);
/// ```
pub fn mean_ci95(values: &[f64]) -> (f64, f64) {
    let (mean, std) = mean_std(values);
    (mean, 1.96 * std / (values.len().max(1) as f64).sqrt())
}

fn mean_std(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    if values.is_empty() {
        return (0.0, 0.0);
    }
    let mean = values.iter().sum::<f64>() / n;
    let var = if values.len() > 1 { values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
    (mean, var.sqrt())
}

/// What to evaluate: `episodes` episodes of shape `spec`, drawn with `seed`.
///
/// ```
/// use protonet::{eval::EvalConfig, EpisodeSpec};
/// let cfg = EvalConfig::new(EpisodeSpec::new(5, 1, 15)?, 1000, 0);
/// assert!(cfg.validate().is_ok());
/// # Ok::<(), protonet::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EvalConfig {
    /// The episode shape.
    pub spec: EpisodeSpec,
    /// Episodes to draw.
    pub episodes: usize,
    /// The sampler's seed.
    pub seed: u64,
    /// The method that scores each episode, in place of the network's own (`None`); only
    /// a method without learned parameters can stand in (see
    /// [`MethodConfig::build_without_parameters`]), for example another support adaptation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<MethodConfig>,
    /// Also measure the confidences as the deployable classifier reports them: each
    /// episode's support set in a [`PrototypeStore`] (its confidence scale fitted on the
    /// support set), each query classified by it ([`EvalReport::calibration`]).
    #[serde(default)]
    pub confidences: bool,
}

impl EvalConfig {
    /// `episodes` episodes of shape `spec` drawn with `seed`.
    pub fn new(spec: EpisodeSpec, episodes: usize, seed: u64) -> Self {
        Self { spec, episodes, seed, method: None, confidences: false }
    }

    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        self.spec.validate()?;
        if self.episodes == 0 {
            return Err(Error::param("episodes", "must be at least 1"));
        }
        self.method.map_or(Ok(()), |m| m.validate())
    }
}

/// Evaluates `model` on the episodes `config` describes, drawn from `set`, as the model
/// classifies: BatchNorm in evaluation mode, embeddings averaged over the model's
/// `rotations`, normalized as its `normalization` says and scored by its method unless
/// `config` names another (what `protonet eval --model` measures). Progress goes to
/// `observer`.
///
/// ```
/// use candle_core::Device;
/// use protonet::{backbone::{BackboneConfig, Conv4Config}, data::{ImageConfig, ImageSet}, eval::EvalConfig, observer::Silent, EpisodeSpec, Model, ModelConfig};
/// let cfg = ModelConfig::new(BackboneConfig::Conv4(Conv4Config { hidden: 8, depth: 2, ..Default::default() }), ImageConfig::grey(8));
/// let model = Model::new(cfg, 1, &Device::Cpu)?;
/// let mut set = ImageSet::new(1, 8, 8);
/// for c in 0..3 {
///     set.push_class(format!("{c}"), (0..4).map(|i| vec![(c * 4 + i) as f32; 64]).collect())?;
/// }
/// let config = EvalConfig::new(EpisodeSpec::new(3, 1, 2)?, 5, 0);
/// let r = protonet::evaluate(&model, &set, &config, &Silent)?;
/// assert_eq!(r.episodes, 5);
/// # Ok::<(), protonet::Error>(())
/// ```
pub fn evaluate(model: &Model, set: &ImageSet, config: &EvalConfig, observer: &dyn Observer) -> Result<EvalReport> {
    let c = model.config();
    evaluate_net(model.net(), &c.embedder(), &c.normalization, set, config, model.device(), observer)
}

/// Evaluates `net` on the episodes `config` describes, drawn from `set`, embedding
/// through `embedder`, normalizing as `norm` says (BatchNorm in evaluation mode) and
/// scoring by the network's method, or the one `config` names.
///
/// When the episodes would embed more images than the set holds, every image is embedded
/// once ([`Embedder::embed_set`]) and the episodes are drawn from the embeddings
/// ([`evaluate_embedded`]): the same episodes and, BatchNorm being per-image in
/// evaluation mode, the same result, much faster.
pub fn evaluate_net(
    net: &FewShotNet,
    embedder: &Embedder,
    norm: &FeatureNorm,
    set: &ImageSet,
    config: &EvalConfig,
    device: &Device,
    observer: &dyn Observer,
) -> Result<EvalReport> {
    config.validate()?;
    let spec = config.spec;
    spec.check_dataset(set)?;
    let method = match &config.method {
        Some(m) => m.build_without_parameters()?,
        None => net.method().clone(),
    };
    if config.episodes * (spec.num_support() + spec.num_query()) > set.num_images() {
        let embedded = embedder.embed_set(net, set, device, observer)?;
        return evaluate_embedded(&embedded, config, norm, &method, device, observer);
    }
    run_episodes(set, config, observer, |ep| {
        let (images, labels) = ep.tensors(set, device)?;
        let emb = embedder.embed_tensor(net, &images.detach())?;
        let support = emb.narrow(0, 0, spec.num_support())?;
        let query = emb.narrow(0, spec.num_support(), spec.num_query())?;
        score_episode(&method, &support, &query, labels, norm, config)
    })
}

/// What one episode gives the report: the method's logits for its queries, their
/// labels, and with [`EvalConfig::confidences`] the classifier's (confidence, right) per query.
struct EpisodeScores {
    logits: Tensor,
    labels: Tensor,
    answers: Vec<(f32, bool)>,
}

/// An episode's scores from its support and query embeddings (before normalization):
/// `method` fitted to the normalized support embeddings, scoring the queries.
fn score_episode(method: &Arc<dyn Method>, support: &Tensor, query: &Tensor, labels: Tensor, norm: &FeatureNorm, config: &EvalConfig) -> Result<EpisodeScores> {
    let spec = config.spec;
    let answers = if config.confidences { classifier_answers(method, support, query, &labels, norm, spec)? } else { Vec::new() };
    let (support, query) = norm.apply(support, query)?;
    let logits = method.logits(&method.fit(&support, &vec![spec.shot; spec.way])?, &query)?;
    Ok(EpisodeScores { logits, labels, answers })
}

/// The deployable classifier's answers for an episode's queries: its support set in a
/// [`PrototypeStore`] (classes named by their episode labels), each query's confidence
/// and whether its answer is right.
fn classifier_answers(
    method: &Arc<dyn Method>,
    support: &Tensor,
    query: &Tensor,
    labels: &Tensor,
    norm: &FeatureNorm,
    spec: EpisodeSpec,
) -> Result<Vec<(f32, bool)>> {
    let mut store = PrototypeStore::new(support.dim(1)?);
    store.set_method(method.clone())?;
    store.set_normalization(norm.clone())?;
    for (k, rows) in support.to_vec2::<f32>()?.chunks(spec.shot).enumerate() {
        store.add(&k.to_string(), rows.to_vec())?;
    }
    let predictions = store.predict(&query.to_vec2::<f32>()?)?;
    let labels = labels.to_vec1::<u32>()?;
    Ok(predictions.iter().zip(labels).map(|(p, l)| (p.confidence, p.class.as_deref() == Some(l.to_string().as_str()))).collect())
}

/// Draws `episodes` episodes from `set`, gets each one's logits from `logits_of`, and
/// gathers accuracy, confidence interval and confusion into a report.
fn run_episodes(
    set: &ImageSet,
    config: &EvalConfig,
    observer: &dyn Observer,
    mut scores_of: impl FnMut(&Episode) -> Result<EpisodeScores>,
) -> Result<EvalReport> {
    let EvalConfig { spec, episodes, seed, .. } = *config;
    let mut sampler = EpisodeSampler::new(set, spec, seed)?;
    observer.start("eval", episodes as u64);
    let mut accs = Vec::with_capacity(episodes);
    let mut confusion = vec![vec![0u64; set.num_classes()]; set.num_classes()];
    let mut answers = Vec::new();
    for _ in 0..episodes {
        let ep = sampler.sample();
        let scores = scores_of(&ep)?;
        accs.push(crate::protonet::accuracy(&scores.logits, &scores.labels)? as f64);
        count_predictions(&mut confusion, &ep, &scores.logits)?;
        answers.extend(scores.answers);
        let status = if accs.len() % 10 == 0 {
            let (m, ci) = mean_ci95(&accs);
            format!("acc {:.2}% ± {:.2}", 100.0 * m, 100.0 * ci)
        } else {
            String::new()
        };
        observer.progress(accs.len() as u64, &status);
    }
    observer.finish();
    let (accuracy, std) = mean_std(&accs);
    let calibration = config.confidences.then(|| Calibration::from_answers(&answers, CALIBRATION_BINS));
    let ci95 = 1.96 * std / (episodes as f64).sqrt();
    Ok(EvalReport { way: spec.way, shot: spec.shot, query: spec.query, episodes, accuracy, ci95, std, seed, confusion, calibration })
}

/// Adds an episode's predictions (argmax of `logits`) to `confusion`, by dataset class.
fn count_predictions(confusion: &mut [Vec<u64>], ep: &Episode, logits: &Tensor) -> Result<()> {
    let pred = logits.argmax(D::Minus1)?.to_vec1::<u32>()?;
    for (q, p) in ep.query.iter().zip(pred) {
        confusion[q.0][ep.classes[p as usize]] += 1;
    }
    Ok(())
}

/// Evaluates `method` on a set of embeddings (as made by [`Embedder::embed_set`]) on the
/// episodes `config` describes, embeddings normalized as `norm` says (`config.method`
/// is not read: `method` scores).
pub fn evaluate_embedded(
    embedded: &ImageSet,
    config: &EvalConfig,
    norm: &FeatureNorm,
    method: &Arc<dyn Method>,
    device: &Device,
    observer: &dyn Observer,
) -> Result<EvalReport> {
    config.validate()?;
    let dim = embedded.image_len();
    run_episodes(embedded, config, observer, |ep| {
        let support = Tensor::from_vec(embedded.gather(&ep.support), (ep.support.len(), dim), device)?;
        let query = Tensor::from_vec(embedded.gather(&ep.query), (ep.query.len(), dim), device)?;
        let labels = Tensor::new(ep.query_labels(), device)?;
        score_episode(method, &support, &query, labels, norm, config)
    })
}
