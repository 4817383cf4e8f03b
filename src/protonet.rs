//! The metric maths of few-shot methods: prototypes, squared distances, cosine
//! similarities, feature normalization, loss and accuracy.

use candle_core::{DType, Tensor, D};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Class prototypes: the mean of each class's support embeddings.
///
/// `support` is `(way * shot, D)`, class-major (the `shot` rows of class 0 first);
/// the result is `(way, D)`.
///
/// ```
/// use candle_core::{Device, Tensor};
/// let s = Tensor::new(&[[0f32, 0.], [2., 2.], [4., 0.], [6., 2.]], &Device::Cpu)?;
/// let p = protonet::prototypes(&s, 2, 2)?;
/// assert_eq!(p.to_vec2::<f32>()?, vec![vec![1., 1.], vec![5., 1.]]);
/// # Ok::<(), protonet::Error>(())
/// ```
pub fn prototypes(support: &Tensor, way: usize, shot: usize) -> Result<Tensor> {
    let (n, d) = support.dims2()?;
    if n != way * shot {
        return Err(Error::param("support", format!("{n} support embeddings for {way}-way {shot}-shot (expected {})", way * shot)));
    }
    Ok(support.reshape((way, shot, d))?.mean(1)?)
}

/// Squared Euclidean distances `(Q, N)` from each query `(Q, D)` to each prototype `(N, D)`.
///
/// Computed as the sum of squared differences (not `|q|^2 + |p|^2 - 2 q.p`), which is exact
/// and never negative.
///
/// ```
/// use candle_core::{Device, Tensor};
/// let q = Tensor::new(&[[0f32, 0.]], &Device::Cpu)?;
/// let p = Tensor::new(&[[3f32, 4.], [1., 0.]], &Device::Cpu)?;
/// assert_eq!(protonet::squared_distances(&q, &p)?.to_vec2::<f32>()?, vec![vec![25., 1.]]);
/// # Ok::<(), protonet::Error>(())
/// ```
pub fn squared_distances(query: &Tensor, protos: &Tensor) -> Result<Tensor> {
    let (q, d) = query.dims2()?;
    let (n, d2) = protos.dims2()?;
    if d != d2 {
        return Err(Error::param("embeddings", format!("query dimension {d} differs from prototype dimension {d2}")));
    }
    let diff = query.reshape((q, 1, d))?.broadcast_sub(&protos.reshape((1, n, d))?)?;
    Ok(diff.sqr()?.sum(D::Minus1)?)
}

/// Logits `(Q, N)`: negative squared distances from query embeddings `(Q, D)` to the
/// prototypes of class-major support embeddings `(way * shot, D)`.
pub fn logits(support: &Tensor, query: &Tensor, way: usize, shot: usize) -> Result<Tensor> {
    let protos = prototypes(support, way, shot)?;
    Ok(squared_distances(query, &protos)?.neg()?)
}

/// Mean cross-entropy of `logits` `(Q, N)` against `labels` `(Q,)` (`u32`), through
/// log-softmax, as in the paper.
pub fn episode_loss(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    Ok(candle_nn::loss::cross_entropy(logits, labels)?)
}

/// Fraction of queries whose highest logit (nearest prototype) is their label.
pub fn accuracy(logits: &Tensor, labels: &Tensor) -> Result<f32> {
    let pred = logits.argmax(D::Minus1)?;
    let correct = pred.eq(labels)?.to_dtype(DType::F32)?.mean_all()?;
    Ok(correct.to_scalar::<f32>()?)
}

/// The mean of each class's rows of `embeddings` `(S, D)`, where the classes hold
/// `counts[k]` consecutive rows each: `(K, D)` prototypes for classes of any size.
///
/// ```
/// use candle_core::{Device, Tensor};
/// let e = Tensor::new(&[[0f32, 0.], [0., 2.], [5., 5.]], &Device::Cpu)?;
/// let p = protonet::protonet::class_means(&e, &[2, 1])?;
/// assert_eq!(p.to_vec2::<f32>()?, vec![vec![0.0, 1.0], vec![5.0, 5.0]]);
/// # Ok::<(), protonet::Error>(())
/// ```
pub fn class_means(embeddings: &Tensor, counts: &[usize]) -> Result<Tensor> {
    let (n, _) = embeddings.dims2()?;
    if counts.iter().sum::<usize>() != n || counts.contains(&0) {
        return Err(Error::param("support", format!("class sizes {counts:?} do not split {n} embeddings")));
    }
    let mut start = 0;
    let mut means = Vec::with_capacity(counts.len());
    for &k in counts {
        means.push(embeddings.narrow(0, start, k)?.mean_keepdim(0)?);
        start += k;
    }
    Ok(Tensor::cat(&means, 0)?)
}

/// Each row of `t` divided by its L2 norm (plus 1e-12, so a zero row stays zero).
pub(crate) fn l2_rows(t: &Tensor) -> Result<Tensor> {
    let norm = (t.sqr()?.sum_keepdim(D::Minus1)?.sqrt()? + 1e-12)?;
    Ok(t.broadcast_div(&norm)?)
}

/// Cosine similarities `(Q, N)` between the rows of `a` `(Q, D)` and of `b` `(N, D)`.
pub(crate) fn cosine_similarities(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    Ok(l2_rows(a)?.matmul(&l2_rows(b)?.t()?)?)
}

/// How embeddings are normalized before prototypes are formed (SimpleShot, Wang et al. 2019).
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
    /// Applies the normalization to support `(S, D)` and query `(Q, D)` embeddings.
    ///
    /// ```
    /// use candle_core::{Device, Tensor};
    /// use protonet::FeatureNorm;
    /// let s = Tensor::new(&[[1f32, 0.], [3., 2.]], &Device::Cpu)?;
    /// let q = Tensor::new(&[[2f32, 3.]], &Device::Cpu)?;
    /// let (s2, q2) = FeatureNorm::CenterSupportL2.apply(&s, &q)?;
    /// // Centred on the support mean (2, 1), then unit length.
    /// assert_eq!(q2.to_vec2::<f32>()?, vec![vec![0.0, 1.0]]);
    /// assert!((s2.sqr()?.sum(1)?.to_vec1::<f32>()?[0] - 1.0).abs() < 1e-6);
    /// # Ok::<(), protonet::Error>(())
    /// ```
    pub fn apply(&self, support: &Tensor, query: &Tensor) -> Result<(Tensor, Tensor)> {
        match self {
            FeatureNorm::None => Ok((support.clone(), query.clone())),
            FeatureNorm::L2 => Ok((l2_rows(support)?, l2_rows(query)?)),
            FeatureNorm::CenterSupportL2 => {
                let mean = support.mean_keepdim(0)?;
                Ok((l2_rows(&support.broadcast_sub(&mean)?)?, l2_rows(&query.broadcast_sub(&mean)?)?))
            }
            FeatureNorm::CenterL2(mean) => {
                let mean = Tensor::from_slice(mean, (1, mean.len()), support.device())?;
                Ok((l2_rows(&support.broadcast_sub(&mean)?)?, l2_rows(&query.broadcast_sub(&mean)?)?))
            }
        }
    }
}
