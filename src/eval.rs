//! Evaluation: mean accuracy over many episodes with a 95% confidence interval.

use candle_core::{Device, Tensor, D};
use serde::{Deserialize, Serialize};

use crate::data::ImageSet;
use crate::episode::{EpisodeSampler, EpisodeSpec};
use crate::protonet::ProtoNet;
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

/// Evaluates `net` on `episodes` episodes of shape `spec` drawn from `set` with `seed`
/// (BatchNorm in evaluation mode). Shows a progress bar when `progress` is true.
///
/// ```
/// use candle_core::{Device, Tensor, D};
/// use protonet::{backbone::{BackboneConfig, Conv4Config}, data::{ImageConfig, ImageSet}, EpisodeSpec, Model, ModelConfig};
/// let cfg = ModelConfig::new(BackboneConfig::Conv4(Conv4Config { hidden: 8, depth: 2, ..Default::default() }), ImageConfig::grey(8));
/// let model = Model::new(cfg, 1, &Device::Cpu)?;
/// let mut set = ImageSet::new(1, 8, 8);
/// for c in 0..3 {
///     set.push_class(format!("{c}"), (0..4).map(|i| vec![(c * 4 + i) as f32; 64]).collect())?;
/// }
/// let spec = EpisodeSpec::new(3, 1, 2)?;
/// let r = protonet::evaluate(model.net(), &set, spec, 5, 0, &Device::Cpu, false)?;
/// assert_eq!(r.episodes, 5);
/// # Ok::<(), protonet::Error>(())
/// ```
///
/// When the episodes would embed more images than the set holds, every image is embedded
/// once ([`embed_set`]) and the episodes are drawn from the embeddings
/// ([`evaluate_embedded`]): the same episodes and, BatchNorm being per-image in
/// evaluation mode, the same result, much faster.
pub fn evaluate(net: &ProtoNet, set: &ImageSet, spec: EpisodeSpec, episodes: usize, seed: u64, device: &Device, progress: bool) -> Result<EvalReport> {
    if episodes == 0 {
        return Err(crate::Error::param("episodes", "must be at least 1"));
    }
    spec.check_dataset(set)?;
    if episodes * (spec.num_support() + spec.num_query()) > set.num_images() {
        let embedded = embed_set(net, set, 256, device, progress)?;
        return evaluate_embedded(&embedded, spec, episodes, seed, &FeatureNorm::None, device, progress);
    }
    run_episodes(set, spec, episodes, seed, progress, |ep| {
        let (images, labels) = ep.tensors(set, device)?;
        Ok((net.forward_episode(&images.detach(), spec, &labels, false)?.logits, labels))
    })
}

/// Draws `episodes` episodes from `set`, gets each one's logits from `logits_of`, and
/// gathers accuracy, confidence interval and confusion into a report.
fn run_episodes(set: &ImageSet, spec: EpisodeSpec, episodes: usize, seed: u64, progress: bool, mut logits_of: impl FnMut(&crate::Episode) -> Result<(Tensor, Tensor)>) -> Result<EvalReport> {
    let mut sampler = EpisodeSampler::new(set, spec, seed)?;
    let bar = crate::progress::bar(episodes as u64, progress, "eval");
    let mut accs = Vec::with_capacity(episodes);
    let mut confusion = vec![vec![0u64; set.num_classes()]; set.num_classes()];
    for _ in 0..episodes {
        let ep = sampler.sample();
        let (logits, labels) = logits_of(&ep)?;
        accs.push(crate::protonet::accuracy(&logits, &labels)? as f64);
        count_predictions(&mut confusion, &ep, &logits)?;
        bar.inc(1);
        if accs.len() % 10 == 0 {
            let (m, ci) = mean_ci95(&accs);
            bar.set_message(format!("acc {:.2}% ± {:.2}", 100.0 * m, 100.0 * ci));
        }
    }
    bar.finish_and_clear();
    let (accuracy, std) = mean_std(&accs);
    Ok(EvalReport {
        way: spec.way,
        shot: spec.shot,
        query: spec.query,
        episodes,
        accuracy,
        ci95: 1.96 * std / (episodes as f64).sqrt(),
        std,
        seed,
        confusion,
    })
}

/// Adds an episode's predictions (argmax of `logits`) to `confusion`, by dataset class.
fn count_predictions(confusion: &mut [Vec<u64>], ep: &crate::Episode, logits: &Tensor) -> Result<()> {
    let pred = logits.argmax(D::Minus1)?.to_vec1::<u32>()?;
    for (q, p) in ep.query.iter().zip(pred) {
        confusion[q.0][ep.classes[p as usize]] += 1;
    }
    Ok(())
}

/// Embeds every image of `set` (evaluation mode, batches of `batch`) into a set with the
/// same classes whose "images" are `(D, 1, 1)` embeddings.
pub fn embed_set(net: &ProtoNet, set: &ImageSet, batch: usize, device: &Device, progress: bool) -> Result<ImageSet> {
    let (c, h, w) = set.image_dims();
    let items: Vec<(usize, usize)> = (0..set.num_classes()).flat_map(|k| (0..set.class_len(k)).map(move |i| (k, i))).collect();
    let bar = crate::progress::bar(items.len() as u64, progress, "embed");
    let mut values = Vec::new();
    let mut dim = 0;
    for chunk in items.chunks(batch.max(1)) {
        let x = Tensor::from_vec(set.gather(chunk), (chunk.len(), c, h, w), device)?;
        let e = net.embed(&x, false)?.detach();
        dim = e.dim(1)?;
        values.extend(e.flatten_all()?.to_vec1::<f32>()?);
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    set.with_images(dim, 1, 1, values)
}

/// Like [`embed_set`], averaging each image's embedding over `rotations` rotations by
/// multiples of 90 degrees (1: no averaging; 4: 0, 90, 180 and 270 degrees). For
/// subjects whose class does not depend on their angle, such as coins.
pub fn embed_set_rotations(net: &ProtoNet, set: &ImageSet, rotations: usize, batch: usize, device: &Device, progress: bool) -> Result<ImageSet> {
    if !(1..=4).contains(&rotations) {
        return Err(crate::Error::param("rotations", format!("must be 1 to 4, got {rotations}")));
    }
    let mut sum = embed_set(net, set, batch, device, progress)?;
    for turns in 1..rotations {
        let e = embed_set(net, &set.rotated(turns)?, batch, device, progress)?;
        for (a, b) in sum.images_mut().zip((0..e.num_classes()).flat_map(|c| (0..e.class_len(c)).map(move |i| (c, i)))) {
            for (x, y) in a.iter_mut().zip(e.image(b.0, b.1)) {
                *x += y;
            }
        }
    }
    let k = rotations as f32;
    for a in sum.images_mut() {
        a.iter_mut().for_each(|x| *x /= k);
    }
    Ok(sum)
}

/// How embeddings are normalised before prototypes are formed (SimpleShot, Wang et al. 2019).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeatureNorm {
    /// Raw embeddings (the paper).
    #[default]
    None,
    /// Each embedding divided by its L2 norm.
    L2,
    /// The episode's support mean subtracted, then L2.
    CenterSupportL2,
    /// A given mean (for example of the base classes' embeddings) subtracted, then L2.
    CenterL2(Vec<f32>),
}

impl FeatureNorm {
    /// The centre this normalisation subtracts, given all support embeddings: their mean
    /// for [`FeatureNorm::CenterSupportL2`], the given mean for [`FeatureNorm::CenterL2`].
    ///
    /// ```
    /// use protonet::eval::FeatureNorm;
    /// let s = [vec![1.0, 0.0], vec![3.0, 2.0]];
    /// assert_eq!(FeatureNorm::CenterSupportL2.centre(&s), Some(vec![2.0, 1.0]));
    /// assert_eq!(FeatureNorm::L2.centre(&s), None);
    /// ```
    pub fn centre(&self, support: &[Vec<f32>]) -> Option<Vec<f32>> {
        match self {
            FeatureNorm::None | FeatureNorm::L2 => None,
            FeatureNorm::CenterL2(m) => Some(m.clone()),
            FeatureNorm::CenterSupportL2 => {
                let d = support.first()?.len();
                let mut sum = vec![0f64; d];
                for e in support {
                    sum.iter_mut().zip(e).for_each(|(s, &x)| *s += x as f64);
                }
                Some(sum.iter().map(|s| (s / support.len() as f64) as f32).collect())
            }
        }
    }

    /// Normalises one embedding: minus `centre` (if any), then divided by its L2 norm
    /// (unless [`FeatureNorm::None`]).
    pub fn normalise(&self, v: &[f32], centre: Option<&[f32]>) -> Vec<f32> {
        if *self == FeatureNorm::None {
            return v.to_vec();
        }
        let mut out: Vec<f32> = match centre {
            Some(c) => v.iter().zip(c).map(|(a, b)| a - b).collect(),
            None => v.to_vec(),
        };
        let norm = out.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt() + 1e-12;
        out.iter_mut().for_each(|x| *x = (*x as f64 / norm) as f32);
        out
    }

    /// Applies the normalisation to support `(S, D)` and query `(Q, D)` embeddings.
    pub fn apply(&self, support: &Tensor, query: &Tensor) -> Result<(Tensor, Tensor)> {
        let l2 = |t: &Tensor| -> Result<Tensor> {
            let norm = (t.sqr()?.sum_keepdim(D::Minus1)?.sqrt()? + 1e-12)?;
            Ok(t.broadcast_div(&norm)?)
        };
        match self {
            FeatureNorm::None => Ok((support.clone(), query.clone())),
            FeatureNorm::L2 => Ok((l2(support)?, l2(query)?)),
            FeatureNorm::CenterSupportL2 => {
                let mean = support.mean_keepdim(0)?;
                Ok((l2(&support.broadcast_sub(&mean)?)?, l2(&query.broadcast_sub(&mean)?)?))
            }
            FeatureNorm::CenterL2(mean) => {
                let mean = Tensor::from_slice(mean, (1, mean.len()), support.device())?;
                Ok((l2(&support.broadcast_sub(&mean)?)?, l2(&query.broadcast_sub(&mean)?)?))
            }
        }
    }
}

/// Evaluates nearest-prototype classification on a set of embeddings (as made by
/// [`embed_set`]): `episodes` episodes of shape `spec` drawn with `seed`, embeddings
/// normalised as `norm` says.
pub fn evaluate_embedded(embedded: &ImageSet, spec: EpisodeSpec, episodes: usize, seed: u64, norm: &FeatureNorm, device: &Device, progress: bool) -> Result<EvalReport> {
    if episodes == 0 {
        return Err(crate::Error::param("episodes", "must be at least 1"));
    }
    let dim = embedded.image_len();
    run_episodes(embedded, spec, episodes, seed, progress, |ep| {
        let support = Tensor::from_vec(embedded.gather(&ep.support), (ep.support.len(), dim), device)?;
        let query = Tensor::from_vec(embedded.gather(&ep.query), (ep.query.len(), dim), device)?;
        let (support, query) = norm.apply(&support, &query)?;
        let labels = Tensor::new(ep.query_labels(), device)?;
        Ok((crate::protonet::logits(&support, &query, spec.way, spec.shot)?, labels))
    })
}

/// The result of [`evaluate_open_set`]: how well a calibrated rejection threshold keeps
/// known classes and turns away classes that were never added.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpenSetReport {
    /// Known classes per trial (added to the classifier).
    pub known_way: usize,
    /// Support images per known class.
    pub shot: usize,
    /// Unknown classes per trial (never added; all their images are queries).
    pub unknown_way: usize,
    /// Trials (independent draws of classes and support images).
    pub trials: usize,
    /// The calibration quantile of the leave-one-out support distances.
    pub quantile: f32,
    /// Share of queries of known classes that were accepted (not "unknown").
    pub known_accepted: f64,
    /// Share of queries of known classes that were accepted with the right class.
    pub known_correct: f64,
    /// Share of queries of known classes classified correctly with rejection off.
    pub known_accuracy_closed: f64,
    /// Share of queries of unknown classes answered "unknown".
    pub unknown_rejected: f64,
}

impl std::fmt::Display for OpenSetReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}-way {}-shot + {} unknown classes, quantile {:.2}, {} trials: known accepted {:.1}% (correct {:.1}%, {:.1}% without rejection), unknown rejected {:.1}%",
            self.known_way,
            self.shot,
            self.unknown_way,
            self.quantile,
            self.trials,
            100.0 * self.known_accepted,
            100.0 * self.known_correct,
            100.0 * self.known_accuracy_closed,
            100.0 * self.unknown_rejected
        )
    }
}

/// Measures open-set rejection on a set of embeddings (as made by [`embed_set`]): each
/// trial draws `known_way` known and `unknown_way` unknown classes, builds a
/// [`crate::PrototypeStore`] from `shot` random images of each known class, calibrates
/// its threshold at `quantile`, and classifies the other images of the known classes
/// and every image of the unknown ones.
///
/// ```
/// use protonet::data::ImageSet;
/// let mut set = ImageSet::new(2, 1, 1);
/// for c in 0..6 {
///     let centre = [10.0 * c as f32, 0.0];
///     set.push_class(format!("{c}"), (0..6).map(|i| vec![centre[0] + 0.1 * i as f32, centre[1] - 0.1 * i as f32]).collect())?;
/// }
/// let r = protonet::eval::evaluate_open_set(&set, 3, 3, 3, 5, 1.0, 0)?;
/// assert!(r.unknown_rejected > 0.9);
/// # Ok::<(), protonet::Error>(())
/// ```
pub fn evaluate_open_set(embedded: &ImageSet, known_way: usize, shot: usize, unknown_way: usize, trials: usize, quantile: f32, seed: u64) -> Result<OpenSetReport> {
    use rand::seq::{IndexedRandom, SliceRandom};
    use rand::SeedableRng;
    if known_way == 0 || shot < 2 || unknown_way == 0 || trials == 0 {
        return Err(crate::Error::param("open-set", "needs known_way >= 1, shot >= 2 (for calibration), unknown_way >= 1 and trials >= 1"));
    }
    if known_way + unknown_way > embedded.num_classes() {
        return Err(crate::Error::NotEnoughClasses { way: known_way + unknown_way, available: embedded.num_classes() });
    }
    if let Some(c) = (0..embedded.num_classes()).find(|&c| embedded.class_len(c) <= shot) {
        return Err(crate::Error::NotEnoughImages { class: embedded.class_name(c).into(), have: embedded.class_len(c), shot, query: 1, need: shot + 1 });
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let all: Vec<usize> = (0..embedded.num_classes()).collect();
    let (mut known_n, mut accepted, mut correct, mut closed, mut unknown_n, mut rejected) = (0usize, 0usize, 0usize, 0usize, 0usize, 0usize);
    for _ in 0..trials {
        let classes: Vec<usize> = all.choose_multiple(&mut rng, known_way + unknown_way).copied().collect();
        let mut store = crate::PrototypeStore::new(embedded.image_len());
        let mut queries = Vec::new();
        for &c in &classes[..known_way] {
            let mut idx: Vec<usize> = (0..embedded.class_len(c)).collect();
            idx.shuffle(&mut rng);
            store.add(embedded.class_name(c), idx[..shot].iter().map(|&i| embedded.image(c, i).to_vec()).collect())?;
            queries.extend(idx[shot..].iter().map(|&i| (c, i)));
        }
        store.calibrate_threshold(quantile)?;
        let known: Vec<Vec<f32>> = queries.iter().map(|&(c, i)| embedded.image(c, i).to_vec()).collect();
        for ((c, _), p) in queries.iter().zip(store.predict(&known)?) {
            known_n += 1;
            let right = p.ranked[0].class == embedded.class_name(*c);
            closed += right as usize;
            if p.class.is_some() {
                accepted += 1;
                correct += right as usize;
            }
        }
        let unknown: Vec<Vec<f32>> =
            classes[known_way..].iter().flat_map(|&c| (0..embedded.class_len(c)).map(move |i| embedded.image(c, i).to_vec())).collect();
        for p in store.predict(&unknown)? {
            unknown_n += 1;
            rejected += p.class.is_none() as usize;
        }
    }
    let share = |a: usize, n: usize| a as f64 / n.max(1) as f64;
    Ok(OpenSetReport {
        known_way,
        shot,
        unknown_way,
        trials,
        quantile,
        known_accepted: share(accepted, known_n),
        known_correct: share(correct, known_n),
        known_accuracy_closed: share(closed, known_n),
        unknown_rejected: share(rejected, unknown_n),
    })
}
