//! The support adaptation ([`SupportAdaptation`], `crate::adapt`) as a method: fitted at
//! test time, never trained episodically.

use candle_core::Tensor;

use super::{Fitted, Method, MethodConfig};
use crate::adapt::SupportAdaptation;
use crate::error::Result;
use crate::protonet::{l2_rows, squared_distances};

impl Method for SupportAdaptation {
    fn config(&self) -> MethodConfig {
        MethodConfig::Adapted(*self)
    }

    /// The class weights of [`SupportAdaptation::fit`], `"weights"` `(way, D)`.
    fn fit(&self, support: &Tensor, counts: &[usize]) -> Result<Fitted> {
        Ok(Fitted::one("weights", SupportAdaptation::fit(self, support, counts)?))
    }

    fn logits(&self, fitted: &Fitted, query: &Tensor) -> Result<Tensor> {
        SupportAdaptation::logits(self, query, fitted.get("weights")?)
    }

    /// Squared distances to the prototypes when inactive; else between the unit query and
    /// the unit class weights (`2 - 2 cos`).
    fn has_distances(&self) -> bool {
        true
    }

    fn distances(&self, fitted: &Fitted, query: &Tensor) -> Result<Tensor> {
        let w = fitted.get("weights")?;
        match self.is_active() {
            true => squared_distances(&l2_rows(query)?, w),
            false => squared_distances(query, w),
        }
    }

    fn trains_episodically(&self) -> bool {
        false
    }
}
