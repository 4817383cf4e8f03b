//! Evaluation: mean accuracy over many episodes with a 95% confidence interval.

use candle_core::Device;
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
/// use candle_core::Device;
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
pub fn evaluate(net: &ProtoNet, set: &ImageSet, spec: EpisodeSpec, episodes: usize, seed: u64, device: &Device, progress: bool) -> Result<EvalReport> {
    if episodes == 0 {
        return Err(crate::Error::param("episodes", "must be at least 1"));
    }
    let mut sampler = EpisodeSampler::new(set, spec, seed)?;
    let bar = crate::progress::bar(episodes as u64, progress, "eval");
    let mut accs = Vec::with_capacity(episodes);
    for _ in 0..episodes {
        let ep = sampler.sample();
        let (images, labels) = ep.tensors(set, device)?;
        let out = net.forward_episode(&images.detach(), spec, &labels, false)?;
        accs.push(out.accuracy as f64);
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
    })
}
