//! Prototypical networks (Snell et al. 2017): a class is the mean of its support
//! embeddings; a query's logits are its negative squared distances to the class means.

use candle_core::Tensor;

use super::{check_counts, Fitted, Method, MethodConfig};
use crate::error::Result;
use crate::protonet::{class_means, squared_distances};

/// The prototypical network's scoring ([`MethodConfig::Protonet`]).
///
/// ```
/// use candle_core::{Device, Tensor};
/// use protonet::method::{Method, Prototypes};
/// let s = Tensor::new(&[[0f32, 0.], [0., 2.], [4., 0.]], &Device::Cpu)?;
/// let fitted = Prototypes.fit(&s, &[2, 1])?; // class means (0, 1) and (4, 0)
/// let q = Tensor::new(&[[1f32, 1.]], &Device::Cpu)?;
/// assert_eq!(Prototypes.logits(&fitted, &q)?.to_vec2::<f32>()?, vec![vec![-1.0, -10.0]]);
/// # Ok::<(), protonet::Error>(())
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct Prototypes;

impl Method for Prototypes {
    fn config(&self) -> MethodConfig {
        MethodConfig::Protonet
    }

    /// The class means, `"prototypes"` `(way, D)`.
    fn fit(&self, support: &Tensor, counts: &[usize]) -> Result<Fitted> {
        check_counts(support.dims2()?.0, counts)?;
        Ok(Fitted::one("prototypes", class_means(support, counts)?))
    }

    fn logits(&self, fitted: &Fitted, query: &Tensor) -> Result<Tensor> {
        Ok(squared_distances(query, fitted.get("prototypes")?)?.neg()?)
    }

    fn has_distances(&self) -> bool {
        true
    }

    fn distances(&self, fitted: &Fitted, query: &Tensor) -> Result<Tensor> {
        squared_distances(query, fitted.get("prototypes")?)
    }
}
