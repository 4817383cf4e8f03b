//! Evaluation: mean accuracy over many episodes with a 95% confidence interval.

use candle_core::{Device, Tensor, D};
use serde::{Deserialize, Serialize};

use crate::data::ImageSet;
use crate::episode::{EpisodeSampler, EpisodeSpec};
use crate::observer::Observer;
use crate::protonet::{FeatureNorm, ProtoNet};
use crate::Result;

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
}

impl EvalReport {
    /// The confusion matrix as a text table: one row per true class, the share of its
    /// queries predicted as each class (in %), and its recall.
    pub fn confusion_table(&self, names: &[String]) -> String {
        let short: Vec<String> = names.iter().map(|n| n.chars().take(10).collect()).collect();
        let mut out = format!("{:>12} |", "true \\ pred");
        for n in &short {
            out += &format!(" {n:>10}");
        }
        out += " |   recall\n";
        for (i, row) in self.confusion.iter().enumerate() {
            let total: u64 = row.iter().sum();
            out += &format!("{:>12} |", short.get(i).map(String::as_str).unwrap_or("?"));
            for &c in row {
                out += &format!(" {:>10.1}", 100.0 * c as f64 / total.max(1) as f64);
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvalConfig {
    /// The episode shape.
    pub spec: EpisodeSpec,
    /// Episodes to draw.
    pub episodes: usize,
    /// The sampler's seed.
    pub seed: u64,
}

impl EvalConfig {
    /// `episodes` episodes of shape `spec` drawn with `seed`.
    pub fn new(spec: EpisodeSpec, episodes: usize, seed: u64) -> Self {
        Self { spec, episodes, seed }
    }

    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        self.spec.validate()?;
        if self.episodes == 0 {
            return Err(crate::Error::param("episodes", "must be at least 1"));
        }
        Ok(())
    }
}

/// Evaluates `net` on the episodes `config` describes, drawn from `set` (BatchNorm in
/// evaluation mode), reporting progress to `observer`.
///
/// ```
/// use candle_core::{Device, Tensor, D};
/// use protonet::{backbone::{BackboneConfig, Conv4Config}, data::{ImageConfig, ImageSet}, eval::EvalConfig, observer::Silent, EpisodeSpec, Model, ModelConfig};
/// let cfg = ModelConfig::new(BackboneConfig::Conv4(Conv4Config { hidden: 8, depth: 2, ..Default::default() }), ImageConfig::grey(8));
/// let model = Model::new(cfg, 1, &Device::Cpu)?;
/// let mut set = ImageSet::new(1, 8, 8);
/// for c in 0..3 {
///     set.push_class(format!("{c}"), (0..4).map(|i| vec![(c * 4 + i) as f32; 64]).collect())?;
/// }
/// let config = EvalConfig::new(EpisodeSpec::new(3, 1, 2)?, 5, 0);
/// let r = protonet::evaluate(model.net(), &set, &config, &Device::Cpu, &Silent)?;
/// assert_eq!(r.episodes, 5);
/// # Ok::<(), protonet::Error>(())
/// ```
///
/// When the episodes would embed more images than the set holds, every image is embedded
/// once ([`Embedder::embed_set`]) and the episodes are drawn from the embeddings
/// ([`evaluate_embedded`]): the same episodes and, BatchNorm being per-image in
/// evaluation mode, the same result, much faster.
pub fn evaluate(net: &ProtoNet, set: &ImageSet, config: &EvalConfig, device: &Device, observer: &dyn Observer) -> Result<EvalReport> {
    config.validate()?;
    let spec = config.spec;
    spec.check_dataset(set)?;
    if config.episodes * (spec.num_support() + spec.num_query()) > set.num_images() {
        let embedded = Embedder::default().embed_set(net, set, device, observer)?;
        return evaluate_embedded(&embedded, config, &FeatureNorm::None, device, observer);
    }
    run_episodes(set, config, observer, |ep| {
        let (images, labels) = ep.tensors(set, device)?;
        Ok((net.forward_episode(&images.detach(), spec, &labels, false)?.logits, labels))
    })
}

/// Draws `episodes` episodes from `set`, gets each one's logits from `logits_of`, and
/// gathers accuracy, confidence interval and confusion into a report.
fn run_episodes(
    set: &ImageSet,
    config: &EvalConfig,
    observer: &dyn Observer,
    mut logits_of: impl FnMut(&crate::Episode) -> Result<(Tensor, Tensor)>,
) -> Result<EvalReport> {
    let EvalConfig { spec, episodes, seed } = *config;
    let mut sampler = EpisodeSampler::new(set, spec, seed)?;
    observer.start("eval", episodes as u64);
    let mut accs = Vec::with_capacity(episodes);
    let mut confusion = vec![vec![0u64; set.num_classes()]; set.num_classes()];
    for _ in 0..episodes {
        let ep = sampler.sample();
        let (logits, labels) = logits_of(&ep)?;
        accs.push(crate::protonet::accuracy(&logits, &labels)? as f64);
        count_predictions(&mut confusion, &ep, &logits)?;
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
    Ok(EvalReport { way: spec.way, shot: spec.shot, query: spec.query, episodes, accuracy, ci95: 1.96 * std / (episodes as f64).sqrt(), std, seed, confusion })
}

/// Adds an episode's predictions (argmax of `logits`) to `confusion`, by dataset class.
fn count_predictions(confusion: &mut [Vec<u64>], ep: &crate::Episode, logits: &Tensor) -> Result<()> {
    let pred = logits.argmax(D::Minus1)?.to_vec1::<u32>()?;
    for (q, p) in ep.query.iter().zip(pred) {
        confusion[q.0][ep.classes[p as usize]] += 1;
    }
    Ok(())
}

/// Embeds images in batches, in evaluation mode, optionally averaging each embedding over
/// rotations by multiples of 90 degrees (for subjects whose class does not depend on
/// their angle, such as coins). The one place where images become embeddings.
///
/// ```
/// use candle_core::Device;
/// use protonet::{backbone::{BackboneConfig, Conv4Config}, data::ImageConfig, eval::Embedder, Model, ModelConfig};
/// let cfg = ModelConfig::new(BackboneConfig::Conv4(Conv4Config { hidden: 8, depth: 2, ..Default::default() }), ImageConfig::grey(8));
/// let model = Model::new(cfg, 1, &Device::Cpu)?;
/// let embedder = Embedder { rotations: 4, ..Default::default() };
/// let e = embedder.embed_images(model.net(), &[vec![0.5; 64]], (1, 8, 8), &Device::Cpu)?;
/// assert_eq!((e.len(), e[0].len()), (1, 8 * 2 * 2));
/// # Ok::<(), protonet::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Embedder {
    /// Images per forward pass.
    pub batch: usize,
    /// Rotations averaged over: 1 (none) to 4 (0, 90, 180 and 270 degrees).
    pub rotations: usize,
}

impl Default for Embedder {
    fn default() -> Self {
        Self { batch: 64, rotations: 1 }
    }
}

impl Embedder {
    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        if !(1..=4).contains(&self.rotations) {
            return Err(crate::Error::param("rotations", format!("must be 1 to 4, got {}", self.rotations)));
        }
        if self.batch == 0 {
            return Err(crate::Error::param("batch", "must be at least 1"));
        }
        Ok(())
    }

    /// Embeds `images` of shape `(c, h, w)` (flat, one `Vec` each) into one `Vec` each.
    pub fn embed_images(&self, net: &ProtoNet, images: &[Vec<f32>], (c, h, w): (usize, usize, usize), device: &Device) -> Result<Vec<Vec<f32>>> {
        self.validate()?;
        if let Some((i, im)) = images.iter().enumerate().find(|(_, im)| im.len() != c * h * w) {
            return Err(crate::Error::param("image", format!("image {i} has {} values, the model takes {c}x{h}x{w} = {}", im.len(), c * h * w)));
        }
        let mut out: Vec<Vec<f32>> = Vec::with_capacity(images.len());
        for chunk in images.chunks(self.batch) {
            let flat: Vec<f32> = chunk.iter().flatten().copied().collect();
            let mut sum = self.embed_rotations(net, flat, (chunk.len(), c, h, w), device)?;
            out.append(&mut sum);
        }
        Ok(out)
    }

    /// Embeds every image of `set` into a set with the same classes whose samples are
    /// `(D, 1, 1)` embeddings, reporting progress to `observer`.
    pub fn embed_set(&self, net: &ProtoNet, set: &ImageSet, device: &Device, observer: &dyn Observer) -> Result<ImageSet> {
        self.validate()?;
        let (c, h, w) = set.image_dims();
        let items: Vec<(usize, usize)> = (0..set.num_classes()).flat_map(|k| (0..set.class_len(k)).map(move |i| (k, i))).collect();
        observer.start("embed", items.len() as u64);
        let mut values = Vec::new();
        let mut dim = 0;
        let mut done = 0;
        for chunk in items.chunks(self.batch) {
            let e = self.embed_rotations(net, set.gather(chunk), (chunk.len(), c, h, w), device)?;
            dim = e.first().map_or(dim, Vec::len);
            values.extend(e.into_iter().flatten());
            done += chunk.len();
            observer.progress(done as u64, "");
        }
        observer.finish();
        set.with_images(dim, 1, 1, values)
    }

    /// One batch `(n, c, h, w)`, embedded at each rotation and averaged.
    fn embed_rotations(&self, net: &ProtoNet, flat: Vec<f32>, (n, c, h, w): (usize, usize, usize, usize), device: &Device) -> Result<Vec<Vec<f32>>> {
        if self.rotations > 1 && h != w {
            return Err(crate::Error::param("rotations", format!("rotating needs square images, these are {h}x{w}")));
        }
        let embed = |data: Vec<f32>| -> Result<Vec<Vec<f32>>> {
            let x = Tensor::from_vec(data, (n, c, h, w), device)?;
            Ok(net.embed(&x, false)?.detach().to_vec2::<f32>()?)
        };
        let mut sum = embed(flat.clone())?;
        for turns in 1..self.rotations {
            let rotated: Vec<f32> = flat.chunks(c * h * w).flat_map(|im| crate::data::rotate_square_ccw(im, c, w, turns)).collect();
            for (s, e) in sum.iter_mut().zip(embed(rotated)?) {
                s.iter_mut().zip(e).for_each(|(a, b)| *a += b);
            }
        }
        if self.rotations > 1 {
            let k = self.rotations as f32;
            sum.iter_mut().flatten().for_each(|a| *a /= k);
        }
        Ok(sum)
    }
}

/// Evaluates nearest-prototype classification on a set of embeddings (as made by
/// [`Embedder::embed_set`]) on the episodes `config` describes, embeddings normalised as
/// `norm` says.
pub fn evaluate_embedded(embedded: &ImageSet, config: &EvalConfig, norm: &FeatureNorm, device: &Device, observer: &dyn Observer) -> Result<EvalReport> {
    config.validate()?;
    let spec = config.spec;
    let dim = embedded.image_len();
    run_episodes(embedded, config, observer, |ep| {
        let support = Tensor::from_vec(embedded.gather(&ep.support), (ep.support.len(), dim), device)?;
        let query = Tensor::from_vec(embedded.gather(&ep.query), (ep.query.len(), dim), device)?;
        let (support, query) = norm.apply(&support, &query)?;
        let labels = Tensor::new(ep.query_labels(), device)?;
        Ok((crate::protonet::logits(&support, &query, spec.way, spec.shot)?, labels))
    })
}
