//! Adaptation to the support set (inductive: queries are never used): a cosine classifier
//! whose class weights start at the prototypes and are trained on the support embeddings
//! alone for a few Adam steps, then classify the queries by cosine similarity.
//!
//! It runs once per support set (per episode in evaluation; once per change of the
//! support set in [`crate::FewShotClassifier`]), never per query. With zero steps there is
//! no adaptation: the weights are the prototypes.

use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::optim::Adam;
use crate::protonet::{class_means, cosine_similarities, l2_rows};

/// Settings of the support-set adaptation; stored in a model's `config.json`.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use protonet::adapt::SupportAdaptation;
/// // Two classes of 2 support embeddings each.
/// let s = Tensor::new(&[[1f32, 0.1], [0.9, -0.1], [0.1, 1.], [-0.1, 0.9]], &Device::Cpu)?;
/// let w = SupportAdaptation::default().fit(&s, &[2, 2])?;
/// let logits = SupportAdaptation::default().logits(&Tensor::new(&[[0.2f32, 1.]], &Device::Cpu)?, &w)?;
/// assert_eq!(logits.argmax(1)?.to_vec1::<u32>()?, vec![1]);
/// # Ok::<(), protonet::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SupportAdaptation {
    /// Adam steps on the support set (0: none, the weights are the prototypes).
    pub steps: usize,
    /// Adam's learning rate.
    pub learning_rate: f64,
    /// The scale of the cosine logits (the inverse temperature of the softmax).
    pub scale: f32,
}

impl Default for SupportAdaptation {
    /// 50 Adam steps at 0.01, cosine scale 10.
    fn default() -> Self {
        Self { steps: 50, learning_rate: 0.01, scale: 10.0 }
    }
}

impl SupportAdaptation {
    /// No adaptation (zero steps).
    pub fn none() -> Self {
        Self { steps: 0, ..Self::default() }
    }

    /// Whether it changes anything (at least one step).
    pub fn is_active(&self) -> bool {
        self.steps > 0
    }

    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        if self.steps > 10_000 {
            return Err(Error::param("adapt-steps", format!("at most 10000, got {}", self.steps)));
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return Err(Error::param("adapt-lr", format!("must be a positive number, got {}", self.learning_rate)));
        }
        if !(self.scale.is_finite() && self.scale > 0.0) {
            return Err(Error::param("adapt-scale", format!("must be a positive number, got {}", self.scale)));
        }
        Ok(())
    }

    /// The class weights `(way, D)` for support embeddings `(S, D)`, class-major with
    /// `counts[k]` rows of class `k`: the prototypes (class means) when inactive, else the
    /// cosine classifier started from them and trained by `steps` Adam steps of
    /// cross-entropy on the support set, as unit rows.
    pub fn fit(&self, support: &Tensor, counts: &[usize]) -> Result<Tensor> {
        self.validate()?;
        let (n, _) = support.dims2()?;
        if counts.iter().sum::<usize>() != n || counts.contains(&0) {
            return Err(Error::param("support", format!("{n} support embeddings for class counts {counts:?}")));
        }
        let protos = class_means(&support.detach(), counts)?;
        if !self.is_active() {
            return Ok(protos);
        }
        let labels: Vec<u32> = counts.iter().enumerate().flat_map(|(k, &c)| std::iter::repeat_n(k as u32, c)).collect();
        let labels = Tensor::new(labels, support.device())?;
        let x = l2_rows(&support.detach())?;
        let w = Var::from_tensor(&protos)?;
        let mut adam = Adam::new(vec![("w".into(), w.clone())], self.learning_rate);
        for _ in 0..self.steps {
            let logits = (cosine_similarities(&x, w.as_tensor())? * self.scale as f64)?;
            let loss = candle_nn::loss::cross_entropy(&logits, &labels)?;
            adam.step(&loss.backward()?)?;
        }
        l2_rows(&w.as_tensor().detach())
    }

    /// Logits `(Q, way)` of queries `(Q, D)` against the weights of [`SupportAdaptation::fit`]:
    /// `scale` times the cosine similarity when active, else the negative squared distance
    /// to the prototypes (the prototypical network).
    pub fn logits(&self, query: &Tensor, weights: &Tensor) -> Result<Tensor> {
        if !self.is_active() {
            return Ok(crate::protonet::squared_distances(query, weights)?.neg()?);
        }
        Ok((cosine_similarities(query, weights)? * self.scale as f64)?)
    }
}

#[cfg(test)]
mod tests {
    use super::SupportAdaptation;
    use candle_core::{Device, Tensor};
    use rand::{Rng, SeedableRng};

    fn random(rows: usize, d: usize, seed: u64) -> Tensor {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        Tensor::from_vec((0..rows * d).map(|_| rng.random_range(-1f32..1.0)).collect::<Vec<_>>(), (rows, d), &Device::Cpu).unwrap()
    }

    #[test]
    fn zero_steps_is_the_prototypical_network() {
        let (s, q) = (random(12, 16, 1), random(9, 16, 2));
        let a = SupportAdaptation::none();
        let w = a.fit(&s, &[4, 4, 4]).unwrap();
        let plain = crate::protonet::logits(&s, &q, 3, 4).unwrap();
        let got = a.logits(&q, &w).unwrap();
        let diff = (plain - got).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-5, "differs by {diff}");
    }

    #[test]
    fn reaches_every_support_image_of_a_separable_set() {
        // Three classes in angular sectors, of very different norms and spreads: class 2's
        // wide spread puts some of its points nearer class 1's mean than its own.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let (centres, spreads, norms) = ([0.0f32, 1.2, 2.2], [0.1f32, 0.1, 0.45], [1.0f32, 3.0, 0.5]);
        let mut rows = Vec::new();
        for k in 0..3 {
            for _ in 0..4 {
                let a = centres[k] + rng.random_range(-spreads[k]..spreads[k]);
                rows.extend([norms[k] * a.cos(), norms[k] * a.sin()]);
            }
        }
        let s = Tensor::from_vec(rows, (12, 2), &Device::Cpu).unwrap();
        let a = SupportAdaptation { steps: 100, ..Default::default() };
        let w = a.fit(&s, &[4, 4, 4]).unwrap();
        let pred = a.logits(&s, &w).unwrap().argmax(1).unwrap().to_vec1::<u32>().unwrap();
        assert_eq!(pred, vec![0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]);
        // The weights moved from the (normalized) prototypes.
        let start = crate::protonet::l2_rows(&crate::protonet::class_means(&s, &[4, 4, 4]).unwrap()).unwrap();
        let moved = (w - start).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(moved > 1e-3, "moved {moved}");
    }

    #[test]
    fn rejects_bad_settings_by_name() {
        let e = SupportAdaptation { learning_rate: -1.0, ..Default::default() }.validate().unwrap_err();
        assert!(e.to_string().contains("adapt-lr"), "{e}");
        let s = random(4, 3, 0);
        assert!(SupportAdaptation::default().fit(&s, &[2, 1]).is_err());
    }
}
