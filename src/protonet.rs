//! The prototypical network: prototypes, distances, loss and accuracy.

use candle_core::{DType, Tensor, D};

use crate::backbone::Backbone;
use crate::episode::EpisodeSpec;
use crate::{Error, Result};

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

/// What one episode's forward pass yields.
#[derive(Debug, Clone)]
pub struct EpisodeOutput {
    /// Mean cross-entropy over the queries (a graph node, for backward).
    pub loss: Tensor,
    /// `(Q, N)` logits: negative squared distances to the prototypes.
    pub logits: Tensor,
    /// The loss as a number.
    pub loss_value: f32,
    /// Fraction of queries classified correctly.
    pub accuracy: f32,
}

/// A prototypical network over any [`Backbone`].
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use candle_nn::{VarBuilder, VarMap};
/// use protonet::{backbone::{BackboneConfig, Conv4Config}, EpisodeSpec, ProtoNet};
/// let vm = VarMap::new();
/// let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
/// let net = ProtoNet::new(BackboneConfig::Conv4(Conv4Config::default()).build(vb)?);
/// let spec = EpisodeSpec::new(2, 1, 1)?;
/// let images = Tensor::randn(0f32, 1., (4, 1, 28, 28), &Device::Cpu)?;
/// let labels = Tensor::new(&[0u32, 1], &Device::Cpu)?;
/// let out = net.forward_episode(&images, spec, &labels, false)?;
/// assert_eq!(out.logits.dims(), &[2, 2]);
/// # Ok::<(), protonet::Error>(())
/// ```
pub struct ProtoNet {
    backbone: Box<dyn Backbone>,
}

impl ProtoNet {
    /// Wraps a backbone.
    pub fn new(backbone: Box<dyn Backbone>) -> Self {
        Self { backbone }
    }

    /// The backbone.
    pub fn backbone(&self) -> &dyn Backbone {
        self.backbone.as_ref()
    }

    /// Embeds `(N, C, H, W)` images.
    pub fn embed(&self, images: &Tensor, train: bool) -> Result<Tensor> {
        self.backbone.embed(images, train)
    }

    /// Logits `(Q, N)` of query embeddings against the prototypes of support embeddings.
    pub fn logits(&self, support_emb: &Tensor, query_emb: &Tensor, way: usize, shot: usize) -> Result<Tensor> {
        logits(support_emb, query_emb, way, shot)
    }

    /// One episode: `images` holds the `way * shot` support images (class-major) followed
    /// by the `way * query` query images, embedded together in one batch as in the paper;
    /// `query_labels` are the episode labels of the queries.
    pub fn forward_episode(&self, images: &Tensor, spec: EpisodeSpec, query_labels: &Tensor, train: bool) -> Result<EpisodeOutput> {
        let n = images.dim(0)?;
        if n != spec.num_support() + spec.num_query() {
            return Err(Error::param("images", format!("{n} images for a {spec} episode (expected {})", spec.num_support() + spec.num_query())));
        }
        let emb = self.embed(images, train)?;
        let support = emb.narrow(0, 0, spec.num_support())?;
        let query = emb.narrow(0, spec.num_support(), spec.num_query())?;
        let logits = self.logits(&support, &query, spec.way, spec.shot)?;
        let loss = episode_loss(&logits, query_labels)?;
        let loss_value = loss.to_dtype(DType::F32)?.to_scalar::<f32>()?;
        let accuracy = accuracy(&logits, query_labels)?;
        Ok(EpisodeOutput { loss, logits, loss_value, accuracy })
    }
}
