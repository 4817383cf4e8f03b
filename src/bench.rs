//! Timing N-way K-shot episodes: a training step, an inference episode, or a batch
//! embedding, on random images ([`Workload`], [`time_workload`]). `protonet bench` and the
//! criterion benchmarks (`cargo bench`) time these same workloads.

use std::time::Instant;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::backbone::{BackboneConfig, Conv4Config, EfficientNetLite0};
use crate::data::ImageConfig;
use crate::episode::EpisodeSpec;
use crate::error::{Error, Result};
use crate::method::MethodConfig;
use crate::model::{is_running_stat, Model, ModelConfig};
use crate::net::FewShotNet;
use crate::optim::Adam;

/// What one timed iteration does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WorkloadKind {
    /// Forward over support + query (BatchNorm in training mode), loss, backward, Adam step.
    TrainStep(EpisodeSpec),
    /// Forward in evaluation mode, prototypes, distances, accuracy.
    Inference(EpisodeSpec),
    /// Embedding of a batch of this many images in evaluation mode.
    Embed(usize),
}

/// A Conv-4 with a fixed batch of random images, ready to time.
///
/// ```
/// use protonet::bench::{Workload, WorkloadKind};
/// use protonet::EpisodeSpec;
/// let mut w = Workload::new(WorkloadKind::Inference(EpisodeSpec::new(2, 1, 1)?), 1, 28, &candle_core::Device::Cpu)?;
/// w.run_once()?;
/// # Ok::<(), protonet::Error>(())
/// ```
pub struct Workload {
    kind: WorkloadKind,
    model: Model,
    /// A network to time instead of the model's (the pretrained backbone).
    frozen: Option<FewShotNet>,
    images: Tensor,
    labels: Tensor,
    adam: Adam,
}

impl Workload {
    /// A workload of a Conv-4 prototypical network on `channels x image_size x
    /// image_size` random images.
    pub fn new(kind: WorkloadKind, channels: usize, image_size: usize, device: &Device) -> Result<Self> {
        Self::with_method(kind, channels, image_size, MethodConfig::Protonet, device)
    }

    /// A workload of a Conv-4 scored by `method` (see [`Workload::new`]).
    pub fn with_method(kind: WorkloadKind, channels: usize, image_size: usize, method: MethodConfig, device: &Device) -> Result<Self> {
        let image = if channels == 3 { ImageConfig::rgb(image_size) } else { ImageConfig { channels, ..ImageConfig::grey(image_size) } };
        let backbone = BackboneConfig::Conv4(Conv4Config { in_channels: channels, layout: method.conv4_layout(), ..Default::default() });
        let model = Model::new(ModelConfig { method, ..ModelConfig::new(backbone, image) }, 0, device)?;
        if let (WorkloadKind::TrainStep(_), false) = (kind, model.net().method().trains_episodically()) {
            return Err(Error::param("method", format!("the `{}` method has no episodic training step to time", method.name())));
        }
        let (n, labels) = match kind {
            WorkloadKind::TrainStep(s) | WorkloadKind::Inference(s) => {
                s.validate()?;
                let labels: Vec<u32> = (0..s.way as u32).flat_map(|c| std::iter::repeat_n(c, s.query)).collect();
                (s.num_support() + s.num_query(), labels)
            }
            WorkloadKind::Embed(b) if b > 0 => (b, vec![0]),
            WorkloadKind::Embed(_) => return Err(Error::param("batch", "must be at least 1")),
        };
        let images = Tensor::randn(0f32, 1.0, (n, channels, image_size, image_size), device)?;
        let labels = Tensor::new(labels, device)?;
        let adam = Adam::new(model.trainable_vars(), 1e-3);
        Ok(Self { kind, model, frozen: None, images, labels, adam })
    }

    /// A workload that embeds (or runs inference episodes) with `net`, a frozen backbone
    /// such as [`EfficientNetLite0`], on `3 x image_size x image_size`
    /// random images. Training steps are refused: the network is frozen.
    pub fn frozen(net: FewShotNet, kind: WorkloadKind, image_size: usize, device: &Device) -> Result<Self> {
        if let WorkloadKind::TrainStep(_) = kind {
            return Err(Error::param("train", "a frozen pretrained backbone has no training step to time"));
        }
        let mut w = Self::new(kind, 3, image_size, device)?;
        w.frozen = Some(net);
        Ok(w)
    }

    /// EfficientNet-Lite0 trained end to end on episodes of `3 x image_size x image_size`
    /// random images (workload E2): forward through trunk and head, loss, backward, and an
    /// Adam step over every weight, BatchNorm scales and shifts included. BatchNorm
    /// normalizes with its running statistics, as when a pretrained network is fine-tuned
    /// on small episodes. `weights`: the converted ImageNet weights (`.safetensors`).
    pub fn efficientnet_training(weights: &std::path::Path, spec: EpisodeSpec, image_size: usize, device: &Device) -> Result<Self> {
        let mut vm = candle_nn::VarMap::new();
        let net = EfficientNetLite0::new(candle_nn::VarBuilder::from_varmap(&vm, candle_core::DType::F32, device))?;
        vm.load(weights).map_err(|e| Error::PretrainedWeights { name: weights.display().to_string(), reason: e.to_string() })?;
        let vars: Vec<(String, candle_core::Var)> = {
            let data = vm.data().lock().map_err(|_| Error::param("weights", "the variable map is poisoned"))?;
            let mut v: Vec<_> = data.iter().filter(|(n, _)| !is_running_stat(n)).map(|(n, v)| (n.clone(), v.clone())).collect();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v
        };
        let mut w = Self::new(WorkloadKind::TrainStep(spec), 3, image_size, device)?;
        w.adam = Adam::new(vars, 1e-4);
        w.frozen = Some(FewShotNet::new(Box::new(net)));
        Ok(w)
    }

    fn net(&self) -> &FewShotNet {
        self.frozen.as_ref().unwrap_or(self.model.net())
    }

    /// Images processed per iteration.
    pub fn images_per_iter(&self) -> usize {
        self.images.dim(0).unwrap_or(0)
    }

    /// Runs one iteration.
    pub fn run_once(&mut self) -> Result<()> {
        match self.kind {
            WorkloadKind::TrainStep(spec) => {
                let out = self.net().forward_episode(&self.images, spec, &self.labels, true)?;
                let grads = out.loss.backward()?;
                self.adam.step(&grads)?;
                // On a GPU the step only queues work: wait for it.
                self.images.device().synchronize()?;
            }
            WorkloadKind::Inference(spec) => {
                let out = self.net().forward_episode(&self.images.detach(), spec, &self.labels, false)?;
                std::hint::black_box(out.accuracy);
            }
            WorkloadKind::Embed(_) => {
                let e = self.net().embed(&self.images.detach(), false)?;
                // Force the computation to finish.
                std::hint::black_box(e.sum_all()?.to_scalar::<f32>()?);
            }
        }
        Ok(())
    }
}

/// Timings of a workload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchReport {
    /// Median milliseconds per iteration.
    pub median_ms: f64,
    /// Fastest iteration.
    pub min_ms: f64,
    /// Slowest iteration.
    pub max_ms: f64,
    /// Iterations (episodes or batches) per second at the median.
    pub per_second: f64,
    /// Images per second at the median.
    pub images_per_second: f64,
    /// Timed iterations.
    pub iters: usize,
}

/// Times `iters` iterations after `warmup` untimed ones.
pub fn time_workload(w: &mut Workload, warmup: usize, iters: usize) -> Result<BenchReport> {
    if iters == 0 {
        return Err(Error::param("iters", "must be at least 1"));
    }
    for _ in 0..warmup {
        w.run_once()?;
    }
    let mut ms = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t = Instant::now();
        w.run_once()?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    ms.sort_by(|a, b| a.total_cmp(b));
    let median = if iters % 2 == 1 { ms[iters / 2] } else { 0.5 * (ms[iters / 2 - 1] + ms[iters / 2]) };
    Ok(BenchReport {
        median_ms: median,
        min_ms: ms[0],
        max_ms: ms[iters - 1],
        per_second: 1e3 / median,
        images_per_second: 1e3 / median * w.images_per_iter() as f64,
        iters,
    })
}
