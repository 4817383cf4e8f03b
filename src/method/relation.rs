//! Relation Network (Sung et al. 2018): a learned relation module scores each (class,
//! query) pair of feature maps. A class's map is the mean of its support maps; the pair
//! is the two maps stacked along the channels, then two conv blocks (3x3, BatchNorm,
//! ReLU, max-pool; the second pools adaptively to 1x1, so that any map size serves),
//! then `hidden -> fc -> 1` fully connected with a sigmoid: a relation score in (0, 1),
//! trained by mean squared error against the one-hot labels.
//!
//! The first convolution is linear in its input, so on the stacked pair it is the sum of
//! a convolution of the class map and one of the query map: computed once per class and
//! once per query rather than once per pair (the same values as on the stacked pairs,
//! which `relation_scores_stacked` computes as the reference).

use candle_core::{Tensor, D};
use candle_nn::{Init, Linear, Module, VarBuilder};
use serde::{Deserialize, Serialize};

use super::{check_counts, Fitted, Method, MethodConfig};
use crate::backbone::BatchNormRelu;
use crate::error::{Error, Result};
use crate::ops::{conv2d, max_pool2x2, Ops};
use crate::protonet::class_means;

/// How the support maps of a class become the class's map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SupportCombine {
    /// Their mean (CloserLook, easyfsl): the class map has the scale of one image's at
    /// every shot, so a model trained at one shot serves another.
    #[default]
    Mean,
    /// Their sum (the paper's code): the class map grows with the shot.
    Sum,
}

/// Which statistics the relation module's BatchNorm uses outside training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TestStatistics {
    /// The running statistics gathered in training: a query's scores do not depend on
    /// the other queries.
    #[default]
    Running,
    /// Each batch of pairs' own statistics, as the paper's code (never switched to
    /// evaluation mode): the scores of a query depend on the episode's other pairs.
    Batch,
}

/// Settings of [`Relation`]; stored in a model's `config.json` (the relation module's
/// weights are the model's `method.*`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RelationConfig {
    /// Channels of the backbone's feature maps (64 for Conv-4, 1280 for EfficientNet-Lite0).
    pub channels: usize,
    /// Channels of the relation module's two conv blocks (the paper's 64).
    pub hidden: usize,
    /// Width of its hidden fully connected layer (the paper's 8).
    pub fc: usize,
    /// How a class's support maps are combined.
    #[serde(default)]
    pub combine: SupportCombine,
    /// BatchNorm statistics outside training.
    #[serde(default)]
    pub test_statistics: TestStatistics,
}

impl RelationConfig {
    /// The paper's module on maps of `channels` channels: 64 conv channels, 8 hidden
    /// units, mean of the support maps, running statistics at test time.
    pub fn new(channels: usize) -> Self {
        Self { channels, hidden: 64, fc: 8, combine: SupportCombine::Mean, test_statistics: TestStatistics::Running }
    }

    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        for (name, v) in [("relation-channels", self.channels), ("relation-hidden", self.hidden), ("relation-fc", self.fc)] {
            if v == 0 {
                return Err(Error::param(name, "must be at least 1"));
            }
        }
        Ok(())
    }
}

/// The Relation Network's scoring ([`MethodConfig::Relation`]); it scores feature maps.
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use protonet::method::{Method, Relation, RelationConfig};
/// let vars = candle_nn::VarMap::new();
/// let m = Relation::new(RelationConfig::new(2), candle_nn::VarBuilder::from_varmap(&vars, DType::F32, &Device::Cpu))?;
/// let support = Tensor::randn(0f32, 1., (3, 2 * 5 * 5), &Device::Cpu)?; // 2x5x5 maps
/// let fitted = m.fit(&support, &[2, 1])?;
/// let scores = m.logits(&fitted, &Tensor::randn(0f32, 1., (4, 50), &Device::Cpu)?)?;
/// assert_eq!(scores.dims(), &[4, 2]);
/// assert!(scores.to_vec2::<f32>()?.iter().flatten().all(|s| *s > 0.0 && *s < 1.0));
/// # Ok::<(), protonet::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Relation {
    config: RelationConfig,
    conv1: Tensor,
    bn1: BatchNormRelu,
    conv2: Tensor,
    bn2: BatchNormRelu,
    fc1: Linear,
    fc2: Linear,
}

impl Relation {
    /// The relation module with its weights from `vb` (a model's variables under
    /// `method`, created with the paper's initialisation when missing: convolutions
    /// N(0, sqrt(2 / (9 hidden))), linear layers N(0, 0.01) with biases 1).
    pub fn new(config: RelationConfig, vb: VarBuilder) -> Result<Self> {
        config.validate()?;
        let (c, h) = (config.channels, config.hidden);
        let conv_init = Init::Randn { mean: 0.0, stdev: (2.0 / (9 * h) as f64).sqrt() };
        let conv1 = vb.pp("conv1").get_with_hints((h, 2 * c, 3, 3), "weight", conv_init)?;
        let conv2 = vb.pp("conv2").get_with_hints((h, h, 3, 3), "weight", conv_init)?;
        let linear = |i: usize, o: usize, vb: VarBuilder| -> Result<Linear> {
            let w = vb.get_with_hints((o, i), "weight", Init::Randn { mean: 0.0, stdev: 0.01 })?;
            let b = vb.get_with_hints(o, "bias", Init::Const(1.0))?;
            Ok(Linear::new(w, Some(b)))
        };
        Ok(Self {
            config,
            conv1,
            bn1: BatchNormRelu::new(h, vb.pp("bn1"), Ops::Fast)?,
            conv2,
            bn2: BatchNormRelu::new(h, vb.pp("bn2"), Ops::Fast)?,
            fc1: linear(h, config.fc, vb.pp("fc1"))?,
            fc2: linear(config.fc, 1, vb.pp("fc2"))?,
        })
    }

    /// The side of the square maps whose flattening has `dim` values.
    fn side(&self, dim: usize) -> Result<usize> {
        let c = self.config.channels;
        let side = ((dim / c.max(1)) as f64).sqrt().round() as usize;
        if side == 0 || c * side * side != dim {
            return Err(Error::param(
                "relation",
                format!("rows of {dim} values are not {c}-channel square feature maps (does the backbone give {c} channels?)"),
            ));
        }
        Ok(side)
    }

    fn batch_norm(&self, bn: &BatchNormRelu, x: &Tensor, train: bool) -> Result<Tensor> {
        match (train, self.config.test_statistics) {
            (true, _) => bn.forward(x, true),
            (false, TestStatistics::Running) => bn.forward(x, false),
            (false, TestStatistics::Batch) => bn.forward_batch_statistics(x),
        }
    }

    /// The module after its first convolution: `(P, hidden, s, s)` to `(P,)` scores.
    fn head(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut x = self.batch_norm(&self.bn1, x, train)?;
        if x.dim(2)? >= 2 {
            x = max_pool2x2(&x)?;
        }
        let x = self.batch_norm(&self.bn2, &conv2d(&x, &self.conv2, 1)?, train)?;
        let x = x.flatten_from(2)?.max(D::Minus1)?; // adaptive max-pool to 1x1
        let x = self.fc1.forward(&x)?.relu()?;
        Ok(candle_nn::ops::sigmoid(&self.fc2.forward(&x)?)?.squeeze(1)?)
    }

    /// Class maps `(way, C, s, s)` and query maps `(Q, C, s, s)` from their rows.
    fn maps(&self, fitted: &Fitted, query: &Tensor) -> Result<(Tensor, Tensor)> {
        let class = fitted.get("class_maps")?;
        let (way, d) = class.dims2()?;
        let (q, dq) = query.dims2()?;
        if d != dq {
            return Err(Error::param("query", format!("query rows have {dq} values, the class maps {d}")));
        }
        let (c, s) = (self.config.channels, self.side(d)?);
        Ok((class.reshape((way, c, s, s))?, query.reshape((q, c, s, s))?))
    }

    /// The scores `(Q, way)` computed on the explicitly stacked pairs, query-major, as
    /// the paper's code does: the reference for [`Method::logits_t`]'s shortcut.
    pub fn relation_scores_stacked(&self, fitted: &Fitted, query: &Tensor, train: bool) -> Result<Tensor> {
        let (class, query) = self.maps(fitted, query)?;
        let (way, q) = (class.dim(0)?, query.dim(0)?);
        let (_, c, s, _) = class.dims4()?;
        let classes = class.unsqueeze(0)?.broadcast_as((q, way, c, s, s))?;
        let queries = query.unsqueeze(1)?.broadcast_as((q, way, c, s, s))?;
        let pairs = Tensor::cat(&[&classes, &queries], 2)?.reshape((q * way, 2 * c, s, s))?;
        let x = pairs.conv2d(&self.conv1, 1, 1, 1, 1)?;
        Ok(self.head(&x, train)?.reshape((q, way))?)
    }
}

impl Method for Relation {
    fn config(&self) -> MethodConfig {
        MethodConfig::Relation(self.config)
    }

    /// The class maps, `"class_maps"` `(way, C*s*s)`: the mean (or sum) of each class's
    /// support maps.
    fn fit(&self, support: &Tensor, counts: &[usize]) -> Result<Fitted> {
        let (n, d) = support.dims2()?;
        check_counts(n, counts)?;
        self.side(d)?;
        let means = class_means(support, counts)?;
        let class_maps = match self.config.combine {
            SupportCombine::Mean => means,
            SupportCombine::Sum => {
                let k: Vec<f32> = counts.iter().map(|&c| c as f32).collect();
                let k = Tensor::from_vec(k, (counts.len(), 1), support.device())?.to_dtype(support.dtype())?;
                means.broadcast_mul(&k)?
            }
        };
        Ok(Fitted::one("class_maps", class_maps))
    }

    fn logits(&self, fitted: &Fitted, query: &Tensor) -> Result<Tensor> {
        self.logits_t(fitted, query, false)
    }

    /// The relation scores in (0, 1).
    fn logits_t(&self, fitted: &Fitted, query: &Tensor, train: bool) -> Result<Tensor> {
        let (class, query) = self.maps(fitted, query)?;
        let (way, q) = (class.dim(0)?, query.dim(0)?);
        let c = self.config.channels;
        let from_class = conv2d(&class, &self.conv1.narrow(1, 0, c)?, 1)?;
        let from_query = conv2d(&query, &self.conv1.narrow(1, c, c)?, 1)?;
        let (_, h, s, _) = from_class.dims4()?;
        let x = from_query.unsqueeze(1)?.broadcast_add(&from_class.unsqueeze(0)?)?.reshape((q * way, h, s, s))?;
        Ok(self.head(&x, train)?.reshape((q, way))?)
    }

    /// The relation scores normalised to sum to 1 (a softmax of scores in (0, 1) would
    /// keep every class near `1 / way`).
    fn probabilities(&self, logits: &Tensor) -> Result<Tensor> {
        Ok(logits.broadcast_div(&logits.sum_keepdim(1)?)?)
    }

    /// Mean squared error of the scores against the one-hot labels (the paper's loss).
    fn loss(&self, logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
        let way = logits.dim(1)?;
        let classes = Tensor::arange(0u32, way as u32, logits.device())?.unsqueeze(0)?;
        let one_hot = labels.unsqueeze(1)?.broadcast_eq(&classes)?.to_dtype(logits.dtype())?;
        Ok((logits - one_hot)?.sqr()?.mean_all()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};
    use candle_nn::VarMap;

    fn module(vm: &VarMap, dtype: DType, config: RelationConfig) -> Relation {
        Relation::new(config, VarBuilder::from_varmap(vm, dtype, &Device::Cpu)).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
    }

    /// The per-class and per-query first convolution gives the scores of the stacked
    /// pairs, in both BatchNorm modes, on map sides 5, 7, 2 and 1.
    #[test]
    fn shortcut_matches_stacked_pairs() {
        for (side, way, q) in [(5, 3, 4), (7, 2, 3), (2, 4, 2), (1, 2, 5)] {
            for stats in [TestStatistics::Running, TestStatistics::Batch] {
                let vm = VarMap::new();
                let m = module(&vm, DType::F64, RelationConfig { test_statistics: stats, ..RelationConfig::new(3) });
                let d = 3 * side * side;
                let support = Tensor::randn(0f64, 1., (way * 2, d), &Device::Cpu).unwrap();
                let query = Tensor::randn(0f64, 1., (q, d), &Device::Cpu).unwrap();
                let fitted = m.fit(&support, &vec![2; way]).unwrap();
                for train in [false, true] {
                    let fast = m.logits_t(&fitted, &query, train).unwrap();
                    let plain = m.relation_scores_stacked(&fitted, &query, train).unwrap();
                    assert_eq!(fast.dims(), &[q, way]);
                    assert!(max_diff(&fast, &plain) < 1e-10, "side {side}, {stats:?}, train {train}");
                }
            }
        }
    }

    /// The gradient of the loss with respect to every weight of the module and to the
    /// support and query maps agrees with central finite differences (f64; seeded inputs
    /// and weights, so that no finite difference straddles a ReLU or max-pool kink by chance).
    #[test]
    fn gradient_matches_finite_differences() {
        let vm = VarMap::new();
        let m = module(&vm, DType::F64, RelationConfig { hidden: 4, fc: 3, ..RelationConfig::new(2) });
        let seeded =
            |shape: &[usize], seed: u64, scale: f64| crate::ops::testing::seeded_randn(shape, seed).to_dtype(DType::F64).unwrap().affine(scale, 0.0).unwrap();
        for (i, (name, var)) in vm.data().lock().unwrap().iter().enumerate() {
            if !name.contains("running") {
                var.set(&seeded(var.dims(), 100 + i as u64, 0.5)).unwrap();
            }
        }
        let support = Var::from_tensor(&seeded(&[4, 2 * 5 * 5], 1, 1.0)).unwrap();
        let query = Var::from_tensor(&seeded(&[3, 2 * 5 * 5], 2, 1.0)).unwrap();
        let labels = Tensor::new(&[0u32, 1, 1], &Device::Cpu).unwrap();
        let loss = |m: &Relation| -> f64 {
            let fitted = m.fit(support.as_tensor(), &[2, 2]).unwrap();
            let scores = m.logits_t(&fitted, query.as_tensor(), true).unwrap();
            m.loss(&scores, &labels).unwrap().to_scalar::<f64>().unwrap()
        };
        let fitted = m.fit(support.as_tensor(), &[2, 2]).unwrap();
        let scores = m.logits_t(&fitted, query.as_tensor(), true).unwrap();
        let grads = m.loss(&scores, &labels).unwrap().backward().unwrap();
        let mut vars: Vec<(String, Var)> =
            vm.data().lock().unwrap().iter().filter(|(k, _)| !k.contains("running")).map(|(k, v)| (k.clone(), v.clone())).collect();
        vars.push(("support".into(), support.clone()));
        vars.push(("query".into(), query.clone()));
        let eps = 1e-5;
        for (name, var) in vars {
            let g = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("no gradient for {name}")).flatten_all().unwrap().to_vec1::<f64>().unwrap();
            let base = var.as_tensor().flatten_all().unwrap().to_vec1::<f64>().unwrap();
            for i in (0..base.len()).step_by((base.len() / 7).max(1)) {
                let at = |delta: f64| {
                    let mut v = base.clone();
                    v[i] += delta;
                    var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap()).unwrap();
                    let l = loss(&m);
                    var.set(&Tensor::from_vec(base.clone(), var.shape(), &Device::Cpu).unwrap()).unwrap();
                    l
                };
                let numeric = (at(eps) - at(-eps)) / (2.0 * eps);
                assert!((numeric - g[i]).abs() < 1e-6 + 1e-4 * numeric.abs(), "{name}[{i}]: analytic {} numeric {numeric}", g[i]);
            }
        }
    }
}
