use candle_core::Tensor;
use candle_nn::{Init, VarBuilder};
use serde::{Deserialize, Serialize};

use super::{Backbone, BatchNormRelu};
use crate::error::{Error, Result};
use crate::ops::{conv2d, conv2d_bias_relu_pool, max_pool2x2_portable, Ops};

/// Hyper-parameters of [`Conv4`].
///
/// ```
/// use protonet::backbone::{Conv4Config, Conv4Layout};
/// let c = Conv4Config::default();
/// assert_eq!((c.in_channels, c.hidden, c.depth), (1, 64, 4));
/// assert_eq!(c.embedding_dim(28), 64);
/// assert_eq!(Conv4Config { in_channels: 3, ..c }.embedding_dim(84), 1600);
/// // The Relation Network's encoder: a 28x28 image gives a 64x5x5 map.
/// assert_eq!(Conv4Config { layout: Conv4Layout::Relation, ..c }.map_side(28), 5);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Conv4Config {
    /// Input channels (1 for grey, 3 for RGB).
    pub in_channels: usize,
    /// Filters in every block (64 in the paper).
    pub hidden: usize,
    /// Number of blocks (4 in the paper).
    pub depth: usize,
    /// Padding and pooling of the blocks (absent in `config.json`: [`Conv4Layout::Pooled`]).
    #[serde(default, skip_serializing_if = "Conv4Layout::is_pooled")]
    pub layout: Conv4Layout,
}

/// Where a [`Conv4`] pads and pools.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Conv4Layout {
    /// Every block pads by 1 and pools (Snell et al.; Matching Networks, Baseline): the
    /// side halves at each block, 28 px gives 1x1.
    #[default]
    Pooled,
    /// The Relation Network's encoder (Sung et al. 2018): the blocks but the last two pad
    /// by 0 and pool, the last two pad by 1 and do not pool, so that the output is a
    /// feature map (28 px gives 5x5) for the relation module.
    Relation,
}

impl Conv4Layout {
    /// Whether this is the default layout (kept out of `config.json`).
    pub fn is_pooled(&self) -> bool {
        *self == Conv4Layout::Pooled
    }
}

impl Default for Conv4Config {
    fn default() -> Self {
        Self { in_channels: 1, hidden: 64, depth: 4, layout: Conv4Layout::Pooled }
    }
}

impl Conv4Config {
    /// Padding and pooling of block `i`.
    fn block_shape(&self, i: usize) -> (usize, bool) {
        match self.layout {
            Conv4Layout::Pooled => (1, true),
            Conv4Layout::Relation if i + 2 < self.depth => (0, true),
            Conv4Layout::Relation => (1, false),
        }
    }

    /// The side of the output map for square inputs of `image_size` pixels (0 when the
    /// image is too small for the blocks).
    pub fn map_side(&self, image_size: usize) -> usize {
        (0..self.depth).fold(image_size, |side, i| {
            let (padding, pool) = self.block_shape(i);
            let side = (side + 2 * padding).saturating_sub(2);
            if pool {
                side / 2
            } else {
                side
            }
        })
    }

    /// The flattened output size for square inputs of `image_size` pixels: `hidden`
    /// channels of [`Conv4Config::map_side`] squared.
    pub fn embedding_dim(&self, image_size: usize) -> usize {
        let side = self.map_side(image_size);
        self.hidden * side * side
    }

    /// Checks the hyper-parameters.
    pub fn validate(&self) -> Result<()> {
        if self.in_channels == 0 {
            return Err(Error::param("channels", "must be at least 1"));
        }
        if self.hidden == 0 {
            return Err(Error::param("hidden", "must be at least 1"));
        }
        if !(1..=8).contains(&self.depth) {
            return Err(Error::param("depth", format!("must be in 1..=8, got {}", self.depth)));
        }
        Ok(())
    }
}

/// One block: 3x3 conv (padding 1, or 0) -> BatchNorm -> ReLU -> 2x2 max-pool (or none).
///
/// The convolution has no bias: BatchNorm subtracts the per-channel mean right after it,
/// which cancels any bias exactly, so the function class is the paper's.
#[derive(Debug, Clone)]
struct ConvBlock {
    weight: Tensor,
    bn: BatchNormRelu,
    ops: Ops,
    padding: usize,
    pool: bool,
}

impl ConvBlock {
    fn new(cin: usize, cout: usize, (padding, pool): (usize, bool), vb: VarBuilder, ops: Ops) -> Result<Self> {
        let init = Init::Kaiming {
            dist: candle_nn::init::NormalOrUniform::Uniform,
            fan: candle_nn::init::FanInOut::FanIn,
            non_linearity: candle_nn::init::NonLinearity::ReLU,
        };
        let weight = vb.pp("conv").get_with_hints((cout, cin, 3, 3), "weight", init)?;
        let bn = BatchNormRelu::new(cout, vb.pp("bn"), ops)?;
        Ok(Self { weight, bn, ops, padding, pool })
    }

    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let p = self.padding;
        if !self.pool {
            let x = match self.ops.on(x.device()) {
                Ops::Fast => conv2d(x, &self.weight, p)?,
                Ops::Portable | Ops::Plain => x.conv2d(&self.weight, p, 1, 1, 1)?,
            };
            return self.bn.forward(&x, train);
        }
        match self.ops.on(x.device()) {
            // Evaluation mode: BatchNorm folded into the convolution, pooled in the same pass.
            Ops::Fast if !train && x.dim(2)? >= 2 && x.dim(3)? >= 2 => {
                let (scale, shift) = self.bn.running_affine()?;
                let w = self.weight.broadcast_mul(&scale.reshape((scale.dim(0)?, 1, 1, 1))?)?;
                conv2d_bias_relu_pool(x, &w, &shift, p)
            }
            Ops::Fast if x.dim(2)? >= 2 && x.dim(3)? >= 2 => self.bn.conv_pool_train(x, &self.weight, p),
            Ops::Fast => {
                let x = conv2d(x, &self.weight, p)?;
                self.bn.forward_pool(&x, train)
            }
            Ops::Portable => {
                let x = x.conv2d(&self.weight, p, 1, 1, 1)?;
                max_pool2x2_portable(&self.bn.forward(&x, train)?)
            }
            Ops::Plain => {
                let x = x.conv2d(&self.weight, p, 1, 1, 1)?;
                Ok(self.bn.forward(&x, train)?.max_pool2d(2)?)
            }
        }
    }
}

/// The Conv-4 backbone of Snell et al. (2017): `depth` blocks of
/// \[3x3 conv, `hidden` filters, padding 1 -> BatchNorm -> ReLU -> 2x2 max-pool\], then
/// flatten. 28x28 grey gives 64-d embeddings, 84x84 RGB gives 1600-d.
///
/// Parameters are named `block{i}.conv.weight`, `block{i}.bn.{weight,bias,running_mean,running_var}`.
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use candle_nn::{VarBuilder, VarMap};
/// use protonet::backbone::{Backbone, Conv4, Conv4Config};
/// let vm = VarMap::new();
/// let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
/// let net = Conv4::new(&Conv4Config::default(), vb)?;
/// let x = Tensor::zeros((2, 1, 28, 28), DType::F32, &Device::Cpu)?;
/// assert_eq!(net.embed(&x, false)?.dims(), &[2, 64]);
/// # Ok::<(), protonet::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Conv4 {
    blocks: Vec<ConvBlock>,
}

impl Conv4 {
    /// Creates (or loads, depending on `vb`) a Conv-4 with the fast CPU operations.
    pub fn new(config: &Conv4Config, vb: VarBuilder) -> Result<Self> {
        Self::with_ops(config, vb, Ops::Fast)
    }

    /// Creates a Conv-4 with the given operations (see [`Ops`]).
    pub fn with_ops(config: &Conv4Config, vb: VarBuilder, ops: Ops) -> Result<Self> {
        config.validate()?;
        let blocks = (0..config.depth)
            .map(|i| {
                let cin = if i == 0 { config.in_channels } else { config.hidden };
                ConvBlock::new(cin, config.hidden, config.block_shape(i), vb.pp(format!("block{i}")), ops)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { blocks })
    }
}

impl candle_nn::ModuleT for Conv4 {
    fn forward_t(&self, images: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        self.feature_maps(images, train)?.flatten_from(1)
    }
}

impl Backbone for Conv4 {
    /// The last block's output `(N, hidden, side, side)`, of which the embedding is the
    /// flattening.
    fn feature_maps(&self, images: &Tensor, train: bool) -> Result<Tensor> {
        let mut x = images.clone();
        for b in &self.blocks {
            x = b.forward(&x, train)?;
        }
        Ok(x)
    }
}
