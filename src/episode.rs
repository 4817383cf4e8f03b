//! Episode shapes (N-way K-shot Q-query) and the seeded episode sampler.

use candle_core::{Device, Tensor};
use rand::seq::index::sample;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::data::ImageSet;
use crate::error::{Error, Result};

/// The shape of an episode: `way` classes, `shot` support and `query` query images each.
///
/// ```
/// use protonet::EpisodeSpec;
/// let spec = EpisodeSpec::new(5, 1, 15).unwrap();
/// assert_eq!(spec.num_support(), 5);
/// assert_eq!(spec.num_query(), 75);
/// assert!(EpisodeSpec::new(1, 1, 1).is_err());
/// assert!(EpisodeSpec::new(5, 0, 1).is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpisodeSpec {
    /// Classes per episode (N), at least 2.
    pub way: usize,
    /// Support images per class (K), at least 1.
    pub shot: usize,
    /// Query images per class (Q), at least 1.
    pub query: usize,
}

impl EpisodeSpec {
    /// A validated episode shape.
    pub fn new(way: usize, shot: usize, query: usize) -> Result<Self> {
        let spec = Self { way, shot, query };
        spec.validate()?;
        Ok(spec)
    }

    /// Checks `way >= 2`, `shot >= 1`, `query >= 1`.
    pub fn validate(&self) -> Result<()> {
        if self.way < 2 {
            return Err(Error::param("way", format!("must be at least 2, got {}", self.way)));
        }
        if self.shot < 1 {
            return Err(Error::param("shot", format!("must be at least 1, got {}", self.shot)));
        }
        if self.query < 1 {
            return Err(Error::param("query", format!("must be at least 1, got {}", self.query)));
        }
        Ok(())
    }

    /// Support images per episode (`way * shot`).
    pub fn num_support(&self) -> usize {
        self.way * self.shot
    }

    /// Query images per episode (`way * query`).
    pub fn num_query(&self) -> usize {
        self.way * self.query
    }

    /// Checks that every episode of this shape can be drawn from `set`: at least `way`
    /// classes, and every class with at least `shot + query` images. The error names the
    /// first class that falls short.
    pub fn check_dataset(&self, set: &ImageSet) -> Result<()> {
        self.validate()?;
        if set.num_classes() < self.way {
            return Err(Error::NotEnoughClasses { way: self.way, available: set.num_classes() });
        }
        let need = self.shot + self.query;
        for c in 0..set.num_classes() {
            if set.class_len(c) < need {
                return Err(Error::NotEnoughImages { class: set.class_name(c).to_string(), have: set.class_len(c), need, shot: self.shot, query: self.query });
            }
        }
        Ok(())
    }
}

impl std::fmt::Display for EpisodeSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-way {}-shot {}-query", self.way, self.shot, self.query)
    }
}

/// One sampled episode: which classes, and which images of each as support and query.
///
/// Both lists are class-major: the `shot` support images of episode class 0 first, then
/// those of class 1, and so on; the same for the queries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Episode {
    /// The episode's shape.
    pub spec: EpisodeSpec,
    /// Dataset class indices; episode label `i` is dataset class `classes[i]`.
    pub classes: Vec<usize>,
    /// `(dataset class, image index)` of each support image.
    pub support: Vec<(usize, usize)>,
    /// `(dataset class, image index)` of each query image.
    pub query: Vec<(usize, usize)>,
}

impl Episode {
    /// Episode labels (0..way) of the queries, class-major.
    pub fn query_labels(&self) -> Vec<u32> {
        (0..self.spec.way as u32).flat_map(|c| std::iter::repeat_n(c, self.spec.query)).collect()
    }

    /// The episode's images as one `(support + query, C, H, W)` tensor (support first),
    /// and the query labels as a `u32` tensor.
    pub fn tensors(&self, set: &ImageSet, device: &Device) -> Result<(Tensor, Tensor)> {
        let (c, h, w) = set.image_dims();
        let mut items = self.support.clone();
        items.extend_from_slice(&self.query);
        let images = Tensor::from_vec(set.gather(&items), (items.len(), c, h, w), device)?;
        let labels = Tensor::new(self.query_labels(), device)?;
        Ok((images, labels))
    }
}

/// Draws episodes from an [`ImageSet`], reproducibly from a seed.
///
/// Classes are drawn without replacement; within each class, support and query images
/// are drawn together without replacement, so they are disjoint.
///
/// ```
/// use protonet::{data::ImageSet, EpisodeSampler, EpisodeSpec};
/// let mut set = ImageSet::new(1, 1, 1);
/// for c in 0..4 {
///     set.push_class(format!("c{c}"), vec![vec![c as f32]; 6]).unwrap();
/// }
/// let spec = EpisodeSpec::new(3, 2, 1).unwrap();
/// let mut sampler = EpisodeSampler::new(&set, spec, 7).unwrap();
/// let ep = sampler.sample();
/// assert_eq!((ep.support.len(), ep.query.len()), (6, 3));
/// ```
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EpisodeSampler {
    spec: EpisodeSpec,
    class_sizes: Vec<usize>,
    rng: ChaCha8Rng,
}

impl EpisodeSampler {
    /// A sampler for `spec` episodes from `set`, seeded with `seed`. Fails, naming the
    /// class, when `set` cannot supply such episodes (see [`EpisodeSpec::check_dataset`]).
    pub fn new(set: &ImageSet, spec: EpisodeSpec, seed: u64) -> Result<Self> {
        spec.check_dataset(set)?;
        let class_sizes = (0..set.num_classes()).map(|c| set.class_len(c)).collect();
        Ok(Self { spec, class_sizes, rng: ChaCha8Rng::seed_from_u64(seed) })
    }

    /// Checks that this sampler (for example one restored from a checkpoint) draws `spec`
    /// episodes from a set with the class sizes of `set`, so that [`EpisodeSampler::sample`]
    /// only yields valid indices.
    pub fn check_compatible(&self, set: &ImageSet, spec: EpisodeSpec) -> Result<()> {
        if self.spec != spec {
            return Err(Error::param("sampler", format!("it draws {:?} episodes, not {:?}", self.spec, spec)));
        }
        let sizes: Vec<usize> = (0..set.num_classes()).map(|c| set.class_len(c)).collect();
        if self.class_sizes != sizes {
            return Err(Error::param("sampler", "it was made for a data set with other classes or class sizes"));
        }
        Ok(())
    }

    /// The episode shape.
    pub fn spec(&self) -> EpisodeSpec {
        self.spec
    }

    /// Draws the next episode.
    pub fn sample(&mut self) -> Episode {
        let spec = self.spec;
        let classes = sample(&mut self.rng, self.class_sizes.len(), spec.way).into_vec();
        let mut support = Vec::with_capacity(spec.num_support());
        let mut query = Vec::with_capacity(spec.num_query());
        for &c in &classes {
            let picks = sample(&mut self.rng, self.class_sizes[c], spec.shot + spec.query).into_vec();
            support.extend(picks[..spec.shot].iter().map(|&i| (c, i)));
            query.extend(picks[spec.shot..].iter().map(|&i| (c, i)));
        }
        Episode { spec, classes, support, query }
    }
}
