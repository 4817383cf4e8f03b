//! # protonet
//!
//! Few-shot image classification with prototypical networks (Snell, Swersky & Zemel,
//! 2017) on [candle](https://github.com/huggingface/candle).
//!
//! A backbone ([`backbone::Conv4`]) embeds support and query images; a class prototype
//! is the mean of its support embeddings ([`prototypes`]); a query gets the class of the
//! nearest prototype by squared Euclidean distance ([`squared_distances`]). Training is
//! episodic ([`train()`]) on N-way K-shot episodes ([`EpisodeSpec`], [`EpisodeSampler`]);
//! evaluation reports mean accuracy with a 95% confidence interval ([`evaluate`]).
//!
//! ## Classify your photos
//!
//! ```toml
//! [dependencies]
//! protonet = { path = "path/to/protonet" }   # the library only: no CLI dependencies
//! ```
//!
//! A support folder holds one sub-folder of photos per class (4 photos each is enough to
//! start); the classifier answers for new photos and can be saved and loaded back. For real
//! photos use the pretrained backbone, `FewShotClassifier::efficientnet_lite0(224,
//! &Device::Cpu)?` (its weights: `bash scripts/fetch-pretrained.sh` in the protonet
//! checkout, found from any project that uses the crate by path; or, with the crate's
//! `fetch` feature, [`pretrained::fetch_efficientnet_lite0`]); this example uses a small
//! untrained Conv-4 so that it runs anywhere.
//!
//! ```
//! use protonet::backbone::{BackboneConfig, Conv4Config};
//! use protonet::data::{list_images, ImageConfig};
//! use protonet::{Device, FewShotClassifier, Model, ModelConfig};
//!
//! // Photos: a red and a blue class, 4 photos each, and 2 new photos.
//! let dir = std::env::temp_dir().join(format!("protonet-photos-doc-{}", std::process::id()));
//! for (class, rgb) in [("red", [200u8, 30, 30]), ("blue", [30, 30, 200])] {
//!     std::fs::create_dir_all(dir.join("support").join(class))?;
//!     for i in 0..5u8 {
//!         let photo = image::RgbImage::from_fn(32, 32, |x, y| image::Rgb(rgb.map(|c| c.saturating_add(((x + y) as u8 + 9 * i) % 24))));
//!         let to = if i < 4 { dir.join("support").join(class).join(format!("{i}.png")) } else { dir.join("new").join(format!("{class}.png")) };
//!         std::fs::create_dir_all(to.parent().unwrap())?;
//!         photo.save(&to).unwrap();
//!     }
//! }
//!
//! let model = Model::new(ModelConfig::new(BackboneConfig::Conv4(Conv4Config { in_channels: 3, hidden: 8, depth: 2, ..Default::default() }), ImageConfig::rgb(32)), 1, &Device::Cpu)?;
//! let mut clf = FewShotClassifier::new(model);
//! clf.add_support_folder(dir.join("support"))?;
//! let photos = list_images(&[dir.join("new")])?;
//! let answers = clf.predict_files(&photos)?;
//! for (photo, answer) in photos.iter().zip(&answers) {
//!     let answer = answer.answer.as_ref().map_err(|e| e.to_string())?;
//!     println!("{}: {} ({:.2})", photo.display(), answer.label(), answer.confidence);
//! }
//!
//! clf.save(dir.join("my-classifier"))?;
//! let loaded = FewShotClassifier::load(dir.join("my-classifier"), &Device::Cpu)?;
//! let again = loaded.predict_files(&photos)?;
//! assert!(again.iter().zip(&answers).all(|(a, b)| a.answer.as_ref().ok() == b.answer.as_ref().ok()));
//! # std::fs::remove_dir_all(&dir).ok();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## A complete example: train, save, load, add classes, predict
//!
//! ```
//! use candle_core::Device;
//! use protonet::backbone::{BackboneConfig, Conv4Config};
//! use protonet::data::{ImageConfig, ImageSet};
//! use protonet::{evaluate, train, EpisodeSpec, EvalConfig, FewShotClassifier, Model, ModelConfig, Silent, TrainConfig, TrainOptions};
//!
//! // A toy data set: 6 classes of 8x8 grey images, each class a different brightness.
//! let image = |c: usize, i: usize| vec![c as f32 / 6.0 + i as f32 * 0.01; 64];
//! let mut set = ImageSet::new(1, 8, 8);
//! for c in 0..6 {
//!     set.push_class(format!("class{c}"), (0..5).map(|i| image(c, i)).collect())?;
//! }
//! // A small Conv-4 (2 blocks of 8 filters) for 8x8 grey input.
//! let backbone = BackboneConfig::Conv4(Conv4Config { in_channels: 1, hidden: 8, depth: 2, ..Default::default() });
//! let mut model = Model::new(ModelConfig::new(backbone, ImageConfig::grey(8)), 42, &Device::Cpu)?;
//!
//! // Train on 3-way 2-shot episodes; the best model is saved in `dir`.
//! let config = TrainConfig { way: 3, shot: 2, query: 2, episodes: 10, val_way: 3, val_every: 5, val_episodes: 5, ..Default::default() };
//! let dir = std::env::temp_dir().join(format!("protonet-lib-doc-{}", std::process::id()));
//! train(&mut model, &set, None, &config, &dir, &TrainOptions::default())?;
//!
//! // Load it and measure 3-way 1-shot accuracy with a 95% confidence interval.
//! let loaded = Model::load(&dir, &Device::Cpu)?;
//! let report = evaluate(&loaded, &set, &EvalConfig::new(EpisodeSpec::new(3, 1, 2)?, 20, 0), &Silent)?;
//! println!("{report}");
//!
//! // Deploy: a classifier with a few examples per class, then predictions.
//! let mut classifier = FewShotClassifier::new(loaded);
//! classifier.add_class("dark", &[image(0, 0), image(0, 1)])?;
//! classifier.add_class("light", &[image(5, 0), image(5, 1)])?;
//! classifier.add_class("dark", &[image(0, 2)])?; // more examples: the prototype is updated
//! let prediction = classifier.predict(&image(5, 3))?;
//! println!("{} with confidence {:.2}", prediction.label(), prediction.confidence);
//! assert_eq!(prediction.ranked.len(), 2);
//!
//! // Save the classifier (model + prototypes) and predict again without the examples.
//! let store = dir.join("classifier");
//! classifier.save(&store)?;
//! let deployed = FewShotClassifier::load(&store, &Device::Cpu)?;
//! assert_eq!(deployed.predict(&image(5, 3))?, prediction);
//! # std::fs::remove_dir_all(&dir).ok();
//! # Ok::<(), protonet::Error>(())
//! ```
//!
//! Further: [`FewShotClassifier::calibrate_threshold`] for open-set rejection ("unknown"),
//! [`train::Trainer`] to drive training episode by episode, and [`observer::Observer`] to
//! show progress (the library itself prints and draws nothing). The `protonet` command
//! line (package `protonet-cli`) adds progress bars, pictures and benchmarks.
//!
//! ## Speed: the allocator
//!
//! Training and embedding allocate and free large buffers all the time; with the system
//! allocator a program is about 2x slower than with mimalloc told to keep freed memory
//! (EfficientNet-Lite0 on 156 coin photos: 87 s against 40 s, 2 cores; see the
//! `classify_folder` example). Two lines in your program, and two variables when it runs:
//!
//! ```text
//! #[global_allocator]
//! static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
//! ```
//! `MIMALLOC_PURGE_DELAY=-1 MIMALLOC_ARENA_EAGER_COMMIT=1` (the `protonet` binary sets
//! these options itself).
//!
//! ## Errors
//!
//! Every fallible call returns [`Result`], whose [`Error`] names the file or parameter
//! concerned. Its `Debug` form is its message, so `fn main() -> Result<(), protonet::Error>`
//! prints a readable line; `eprintln!("error: {e}")` does the same.
//!
//! ## Layout
//!
//! From the bottom up (each module uses only those above it in this list):
//! - [`ops`]: the CPU kernels; [`backbone`]: Conv-4 and EfficientNet-Lite0 (layers);
//!   [`pretrained`]: the one door to third-party weights.
//! - [`data`]: labelled sets in memory, their loaders, rendered coins; [`episode`]: seeded
//!   episode sampling; [`io`]: atomic writes and safetensors; [`output`]: the layout of
//!   output directories.
//! - [`protonet`]: prototypes, distances, loss, accuracy and [`FeatureNorm`], on tensors;
//!   [`embed`]: images to embeddings ([`embed::Embedder`]).
//! - [`record`]: what `config.json` records of training; [`model`]: [`ModelConfig`] and
//!   [`Model`], built through candle's `VarBuilder`; [`observer`]: progress.
//! - [`eval`]: accuracy over episodes; [`openset`]: rejection, measured; [`mod@bench`]: timing
//!   N-way K-shot episodes.
//! - [`mod@train`]: the episodic [`train::Trainer`], early stopping and the resumable run state;
//!   [`finetune`]: fine-tuning the pretrained head on cached features.
//! - [`classifier`]: the deployable [`FewShotClassifier`].
#![warn(missing_docs)]

pub mod adapt;
pub mod backbone;
pub mod bench;
pub mod calibration;
pub mod classifier;
pub mod data;
pub mod embed;
pub mod episode;
mod error;
pub mod eval;
pub mod finetune;
pub mod io;
pub mod method;
pub mod model;
pub mod net;
pub mod observer;
pub mod openset;
pub mod ops;
pub mod optim;
pub mod output;
pub mod pretrained;
pub mod protonet;
pub mod record;
pub mod train;

pub use candle_core::Device;
pub use classifier::{ClassScore, FewShotClassifier, FilePrediction, Prediction, PrototypeStore};
pub use episode::{Episode, EpisodeSampler, EpisodeSpec};
pub use error::{Error, Result};
pub use eval::{evaluate, EvalConfig, EvalReport};
pub use method::{Method, MethodConfig};
pub use model::{checkout_dir, locate_model, Model, ModelConfig};
pub use net::{EpisodeOutput, FewShotNet};
pub use observer::{Observer, Silent};
pub use output::OutputMode;
pub use protonet::{accuracy, episode_loss, prototypes, squared_distances, FeatureNorm};
pub use record::TrainConfig;
pub use train::{train, TrainOptions, TrainReport, Trainer};
