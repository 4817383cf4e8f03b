//! Labelled image sets held in memory, and the loaders that fill them.
//!
//! An [`ImageSet`] stores every image of every class as `f32` in one buffer, already
//! resized and normalized as its [`ImageConfig`] says, so episodes are assembled without
//! touching the disk. Loaders: [`load_image_folder`] (one sub-folder per class) and
//! [`load_omniglot`] (Omniglot with the Vinyals split). Made-up data for demonstrations and
//! tests: [`rendered_coins`] (coins of procedurally drawn currencies).

mod augment;
mod folder;
mod image_set;
mod locate;
mod omniglot;
pub mod rendered_coins;
mod transform;

pub use augment::{CoinAugment, Warp, RESIZED_CROP_ASPECT};
pub use folder::{list_image_folder, list_images, load_image_folder, load_image_folder_report, FolderOptions, SkippedImage};
pub use image_set::ImageSet;
pub use locate::{Circle, CoinCrop};
pub use omniglot::{load_omniglot, OmniglotSplit};
pub use transform::{decode_image, load_image, load_image_with_warning, rotate_square_ccw, validate_rotations, ImageConfig, MAX_IMAGE_SIDE, MIN_IMAGE_SIDE};
