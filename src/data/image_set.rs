use crate::error::{Error, Result};

/// Images grouped by class, stored contiguously as `f32` in CHW order.
///
/// ```
/// use protonet::data::ImageSet;
/// let mut set = ImageSet::new(1, 2, 2);
/// set.push_class("a", vec![vec![0.0; 4], vec![1.0; 4]]).unwrap();
/// assert_eq!(set.num_classes(), 1);
/// assert_eq!(set.class_len(0), 2);
/// assert_eq!(set.image(0, 1), &[1.0; 4]);
/// ```
#[derive(Debug, Clone)]
pub struct ImageSet {
    channels: usize,
    height: usize,
    width: usize,
    names: Vec<String>,
    /// `offsets[c]..offsets[c + 1]` are the image indices of class `c`.
    offsets: Vec<usize>,
    pixels: Vec<f32>,
}

impl ImageSet {
    /// An empty set of `channels x height x width` images.
    pub fn new(channels: usize, height: usize, width: usize) -> Self {
        Self { channels, height, width, names: Vec::new(), offsets: vec![0], pixels: Vec::new() }
    }

    /// Appends a class. Every image must hold `channels * height * width` values.
    pub fn push_class(&mut self, name: impl Into<String>, images: Vec<Vec<f32>>) -> Result<()> {
        let name = name.into();
        let len = self.image_len();
        if let Some(bad) = images.iter().find(|im| im.len() != len) {
            return Err(Error::param("images", format!("class `{name}`: an image has {} values, expected {len}", bad.len())));
        }
        for im in &images {
            self.pixels.extend_from_slice(im);
        }
        let last = *self.offsets.last().expect("offsets starts with 0");
        self.offsets.push(last + images.len());
        self.names.push(name);
        Ok(())
    }

    /// Appends every class of `other` (images of the same shape), for example rendered
    /// classes to real ones. Class names must not clash.
    ///
    /// ```
    /// use protonet::data::ImageSet;
    /// let mut a = ImageSet::new(1, 1, 2);
    /// a.push_class("x", vec![vec![0.0, 1.0]]).unwrap();
    /// let mut b = ImageSet::new(1, 1, 2);
    /// b.push_class("y", vec![vec![2.0, 3.0]]).unwrap();
    /// a.append_classes(&b).unwrap();
    /// assert_eq!(a.class_names(), ["x", "y"]);
    /// assert!(a.append_classes(&b).is_err());
    /// ```
    pub fn append_classes(&mut self, other: &ImageSet) -> Result<()> {
        if other.image_dims() != self.image_dims() {
            return Err(Error::param("images", format!("cannot merge images of shape {:?} into a set of {:?}", other.image_dims(), self.image_dims())));
        }
        if let Some(dup) = other.names.iter().find(|n| self.names.contains(n)) {
            return Err(Error::param("classes", format!("class `{dup}` is in both sets")));
        }
        for c in 0..other.num_classes() {
            self.push_class(other.class_name(c), (0..other.class_len(c)).map(|i| other.image(c, i).to_vec()).collect())?;
        }
        Ok(())
    }

    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self.names.len()
    }

    /// Total number of images.
    pub fn num_images(&self) -> usize {
        *self.offsets.last().expect("offsets starts with 0")
    }

    /// Number of images of class `class`.
    pub fn class_len(&self, class: usize) -> usize {
        self.offsets[class + 1] - self.offsets[class]
    }

    /// The name of class `class`.
    pub fn class_name(&self, class: usize) -> &str {
        &self.names[class]
    }

    /// All class names, in class-index order.
    pub fn class_names(&self) -> &[String] {
        &self.names
    }

    /// `(channels, height, width)` of every image.
    pub fn image_dims(&self) -> (usize, usize, usize) {
        (self.channels, self.height, self.width)
    }

    /// Values per image.
    pub fn image_len(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// Image `index` of class `class`, CHW.
    pub fn image(&self, class: usize, index: usize) -> &[f32] {
        assert!(index < self.class_len(class), "image index {index} out of range for class {class}");
        let i = self.offsets[class] + index;
        let len = self.image_len();
        &self.pixels[i * len..(i + 1) * len]
    }

    /// A new set holding only the given classes, in the given order.
    pub fn subset(&self, classes: &[usize]) -> ImageSet {
        let mut out = ImageSet::new(self.channels, self.height, self.width);
        for &c in classes {
            let images = (0..self.class_len(c)).map(|i| self.image(c, i).to_vec()).collect();
            out.push_class(self.names[c].clone(), images).expect("same image size");
        }
        out
    }

    /// Every image, mutably, in class order (for in-place transforms of stored values).
    pub fn images_mut(&mut self) -> impl Iterator<Item = &mut [f32]> {
        let len = self.image_len().max(1);
        self.pixels.chunks_mut(len)
    }

    /// A set with the same classes holding `values[i]` (of `channels x height x width`
    /// values each) as image `i`, in class order; used for embeddings.
    pub fn with_images(&self, channels: usize, height: usize, width: usize, values: Vec<f32>) -> Result<ImageSet> {
        let len = channels * height * width;
        if values.len() != len * self.num_images() {
            return Err(Error::param("values", format!("{} values for {} images of {len}", values.len(), self.num_images())));
        }
        Ok(ImageSet { channels, height, width, names: self.names.clone(), offsets: self.offsets.clone(), pixels: values })
    }

    /// A copy with every (square) image rotated counter-clockwise by `quarter_turns * 90`
    /// degrees; an error for non-square images.
    pub fn rotated(&self, quarter_turns: usize) -> Result<ImageSet> {
        if self.height != self.width {
            return Err(Error::param("rotations", format!("images are {}x{}, not square", self.height, self.width)));
        }
        let mut out = self.clone();
        for im in out.images_mut() {
            let r = super::rotate_square_ccw(im, self.channels, self.width, quarter_turns);
            im.copy_from_slice(&r);
        }
        Ok(out)
    }

    /// Copies the listed `(class, index)` images into one NCHW buffer.
    pub fn gather(&self, items: &[(usize, usize)]) -> Vec<f32> {
        let mut out = Vec::with_capacity(items.len() * self.image_len());
        for &(c, i) in items {
            out.extend_from_slice(self.image(c, i));
        }
        out
    }
}
