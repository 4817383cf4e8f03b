//! Labelled image sets held in memory, and the loaders that fill them.
//!
//! An [`ImageSet`] stores every image of every class as `f32` in one buffer, already
//! resized and normalised as its [`ImageConfig`] says, so episodes are assembled without
//! touching the disk. Loaders: [`load_image_folder`] (one sub-folder per class) and
//! [`load_omniglot`] (Omniglot with the Vinyals split).

pub mod coins;
mod folder;
mod image_set;
mod omniglot;
mod transform;

pub use folder::{list_image_folder, list_images, load_image_folder, load_image_folder_report, FolderOptions, SkippedImage};
pub use image_set::ImageSet;
pub use omniglot::{load_omniglot, OmniglotSplit};
pub use transform::{load_image, rotate_square_ccw, ImageConfig, MAX_IMAGE_SIDE, MIN_IMAGE_SIDE};

/// The default root of the shared data sets: `$PROTONET_DATA`, else `../shared/data`.
///
/// ```
/// let root = protonet::data::default_data_root();
/// assert!(root.ends_with("data"));
/// ```
pub fn default_data_root() -> std::path::PathBuf {
    std::env::var_os("PROTONET_DATA")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from("../shared/data"))
}
