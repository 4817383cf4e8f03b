//! The few-shot network: a backbone that embeds images and a method that scores query
//! embeddings against a support set ([`crate::method`]).

use std::sync::Arc;

use candle_core::{DType, Tensor};

use crate::backbone::Backbone;
use crate::episode::EpisodeSpec;
use crate::error::{Error, Result};
use crate::method::{Method, Prototypes};
use crate::protonet::accuracy;

/// What one episode's forward pass yields.
#[derive(Debug, Clone)]
pub struct EpisodeOutput {
    /// The method's loss over the queries (a graph node, for backward).
    pub loss: Tensor,
    /// `(Q, N)` logits of the method (for prototypes: negative squared distances).
    pub logits: Tensor,
    /// The loss as a number.
    pub loss_value: f32,
    /// Fraction of queries classified correctly.
    pub accuracy: f32,
}

/// A backbone and a few-shot method.
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use candle_nn::{VarBuilder, VarMap};
/// use protonet::{backbone::{BackboneConfig, Conv4Config}, EpisodeSpec, FewShotNet};
/// let vm = VarMap::new();
/// let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
/// let net = FewShotNet::new(BackboneConfig::Conv4(Conv4Config::default()).build(vb)?);
/// let spec = EpisodeSpec::new(2, 1, 1)?;
/// let images = Tensor::randn(0f32, 1., (4, 1, 28, 28), &Device::Cpu)?;
/// let labels = Tensor::new(&[0u32, 1], &Device::Cpu)?;
/// let out = net.forward_episode(&images, spec, &labels, false)?;
/// assert_eq!(out.logits.dims(), &[2, 2]);
/// # Ok::<(), protonet::Error>(())
/// ```
pub struct FewShotNet {
    backbone: Box<dyn Backbone>,
    method: Arc<dyn Method>,
}

impl FewShotNet {
    /// A prototypical network on `backbone`.
    pub fn new(backbone: Box<dyn Backbone>) -> Self {
        Self::with_method(backbone, Arc::new(Prototypes))
    }

    /// `backbone` scored by `method`.
    pub fn with_method(backbone: Box<dyn Backbone>, method: Arc<dyn Method>) -> Self {
        Self { backbone, method }
    }

    /// The backbone.
    pub fn backbone(&self) -> &dyn Backbone {
        self.backbone.as_ref()
    }

    /// The method.
    pub fn method(&self) -> &Arc<dyn Method> {
        &self.method
    }

    /// Embeds `(N, C, H, W)` images into the rows the method scores: the backbone's
    /// embeddings, or its feature maps flattened for a method that scores maps.
    pub fn embed(&self, images: &Tensor, train: bool) -> Result<Tensor> {
        if self.method.scores_maps() {
            return Ok(self.backbone.feature_maps(images, train)?.flatten_from(1)?);
        }
        self.backbone.embed(images, train)
    }

    /// One episode: `images` holds the `way * shot` support images (class-major) followed
    /// by the `way * query` query images, embedded together in one batch as in the paper;
    /// `query_labels` are the episode labels of the queries. The method is fitted to the
    /// support embeddings and scores the queries.
    pub fn forward_episode(&self, images: &Tensor, spec: EpisodeSpec, query_labels: &Tensor, train: bool) -> Result<EpisodeOutput> {
        self.forward_episode_with(images, spec, query_labels, train, false)
    }

    /// [`FewShotNet::forward_episode`], with the backbone frozen when `frozen_backbone`:
    /// it embeds in evaluation mode and no gradient flows back into it (only the method's
    /// own parameters learn from the loss).
    pub fn forward_episode_with(&self, images: &Tensor, spec: EpisodeSpec, query_labels: &Tensor, train: bool, frozen_backbone: bool) -> Result<EpisodeOutput> {
        let n = images.dim(0)?;
        if n != spec.num_support() + spec.num_query() {
            return Err(Error::param("images", format!("{n} images for a {spec} episode (expected {})", spec.num_support() + spec.num_query())));
        }
        let emb = if frozen_backbone { self.embed(images, false)?.detach() } else { self.embed(images, train)? };
        let support = emb.narrow(0, 0, spec.num_support())?;
        let query = emb.narrow(0, spec.num_support(), spec.num_query())?;
        let fitted = self.method.fit(&support, &vec![spec.shot; spec.way])?;
        let logits = self.method.logits_t(&fitted, &query, train)?;
        let loss = self.method.loss(&logits, query_labels)?;
        let loss_value = loss.to_dtype(DType::F32)?.to_scalar::<f32>()?;
        let accuracy = accuracy(&logits, query_labels)?;
        Ok(EpisodeOutput { loss, logits, loss_value, accuracy })
    }
}
