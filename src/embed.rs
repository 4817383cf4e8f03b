//! Where images become embeddings: the [`Embedder`] runs a network in evaluation mode over
//! batches of images, optionally averaging each embedding over quarter turns. Evaluation,
//! the deployable classifier and the command line all embed through it.

use candle_core::{Device, Tensor};

use crate::data::{rotate_square_ccw, validate_rotations, ImageSet};
use crate::error::{Error, Result};
use crate::net::FewShotNet;
use crate::observer::Observer;

/// Embeds images in batches, in evaluation mode, optionally averaging each embedding over
/// rotations by multiples of 90 degrees (for subjects whose class does not depend on
/// their angle, such as coins). The one place where images become embeddings.
///
/// ```
/// use candle_core::Device;
/// use protonet::{backbone::{BackboneConfig, Conv4Config}, data::ImageConfig, embed::Embedder, Model, ModelConfig};
/// let cfg = ModelConfig::new(BackboneConfig::Conv4(Conv4Config { hidden: 8, depth: 2, ..Default::default() }), ImageConfig::grey(8));
/// let model = Model::new(cfg, 1, &Device::Cpu)?;
/// let embedder = Embedder { rotations: 4, ..Default::default() };
/// let e = embedder.embed_images(model.net(), &[vec![0.5; 64]], (1, 8, 8), &Device::Cpu)?;
/// assert_eq!((e.len(), e[0].len()), (1, 8 * 2 * 2));
/// # Ok::<(), protonet::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Embedder {
    /// Images per forward pass.
    pub batch: usize,
    /// Rotations averaged over: 1 (none) to 4 (0, 90, 180 and 270 degrees).
    pub rotations: usize,
}

impl Default for Embedder {
    fn default() -> Self {
        Self { batch: 64, rotations: 1 }
    }
}

impl Embedder {
    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        validate_rotations(self.rotations)?;
        if self.batch == 0 {
            return Err(Error::param("batch", "must be at least 1"));
        }
        Ok(())
    }

    /// Embeds `images` of shape `(c, h, w)` (flat, one `Vec` each) into one `Vec` each.
    pub fn embed_images(&self, net: &FewShotNet, images: &[Vec<f32>], (c, h, w): (usize, usize, usize), device: &Device) -> Result<Vec<Vec<f32>>> {
        self.validate()?;
        if let Some((i, im)) = images.iter().enumerate().find(|(_, im)| im.len() != c * h * w) {
            return Err(Error::param("image", format!("image {i} has {} values, the model takes {c}x{h}x{w} = {}", im.len(), c * h * w)));
        }
        let mut out: Vec<Vec<f32>> = Vec::with_capacity(images.len());
        for chunk in images.chunks(self.batch) {
            let flat: Vec<f32> = chunk.iter().flatten().copied().collect();
            let mut sum = self.embed_rotations(net, flat, (chunk.len(), c, h, w), device)?;
            out.append(&mut sum);
        }
        Ok(out)
    }

    /// Embeds every image of `set` into a set with the same classes whose samples are
    /// `(D, 1, 1)` embeddings, reporting progress to `observer`.
    pub fn embed_set(&self, net: &FewShotNet, set: &ImageSet, device: &Device, observer: &dyn Observer) -> Result<ImageSet> {
        self.validate()?;
        let (c, h, w) = set.image_dims();
        let items: Vec<(usize, usize)> = (0..set.num_classes()).flat_map(|k| (0..set.class_len(k)).map(move |i| (k, i))).collect();
        observer.start("embed", items.len() as u64);
        let mut values = Vec::new();
        let mut dim = 0;
        let mut done = 0;
        for chunk in items.chunks(self.batch) {
            let e = self.embed_rotations(net, set.gather(chunk), (chunk.len(), c, h, w), device)?;
            dim = e.first().map_or(dim, Vec::len);
            values.extend(e.into_iter().flatten());
            done += chunk.len();
            observer.progress(done as u64, "");
        }
        observer.finish();
        set.with_images(dim, 1, 1, values)
    }

    /// A batch of images `(n, c, h, w)` embedded into `(n, D)`, averaged over the
    /// rotations (all of them in one pass each, not in chunks of `batch`).
    pub fn embed_tensor(&self, net: &FewShotNet, images: &Tensor) -> Result<Tensor> {
        self.validate()?;
        if self.rotations == 1 {
            return Ok(net.embed(images, false)?.detach());
        }
        let (n, c, h, w) = images.dims4()?;
        let rows = self.embed_rotations(net, images.flatten_all()?.to_vec1::<f32>()?, (n, c, h, w), images.device())?;
        let dim = rows.first().map_or(0, Vec::len);
        Ok(Tensor::from_vec(rows.concat(), (n, dim), images.device())?)
    }

    /// One batch `(n, c, h, w)`, embedded at each rotation and averaged.
    fn embed_rotations(&self, net: &FewShotNet, flat: Vec<f32>, (n, c, h, w): (usize, usize, usize, usize), device: &Device) -> Result<Vec<Vec<f32>>> {
        net.method().config().check_rotations(self.rotations)?;
        if self.rotations > 1 && h != w {
            return Err(Error::param("rotations", format!("rotating needs square images, these are {h}x{w}")));
        }
        let embed = |data: Vec<f32>| -> Result<Vec<Vec<f32>>> {
            let x = Tensor::from_vec(data, (n, c, h, w), device)?;
            Ok(net.embed(&x, false)?.detach().to_vec2::<f32>()?)
        };
        let mut sum = embed(flat.clone())?;
        for turns in 1..self.rotations {
            let rotated: Vec<f32> = flat.chunks(c * h * w).flat_map(|im| rotate_square_ccw(im, c, w, turns)).collect();
            for (s, e) in sum.iter_mut().zip(embed(rotated)?) {
                s.iter_mut().zip(e).for_each(|(a, b)| *a += b);
            }
        }
        if self.rotations > 1 {
            let k = self.rotations as f32;
            sum.iter_mut().flatten().for_each(|a| *a /= k);
        }
        Ok(sum)
    }
}
