//! # protonet
//!
//! Few-shot image classification with prototypical networks (Snell, Swersky & Zemel,
//! 2017) on [candle](https://github.com/huggingface/candle).
//!
//! A backbone ([`backbone::Conv4`]) embeds support and query images; a class prototype
//! is the mean of its support embeddings ([`prototypes`]); a query gets the class of the
//! nearest prototype by squared Euclidean distance ([`squared_distances`]). Training is
//! episodic ([`train`]) on N-way K-shot episodes ([`EpisodeSpec`], [`EpisodeSampler`]);
//! evaluation reports mean accuracy with a 95% confidence interval ([`evaluate`]).
//!
//! ```
//! use candle_core::Device;
//! use protonet::backbone::{BackboneConfig, Conv4Config};
//! use protonet::data::{ImageConfig, ImageSet};
//! use protonet::{evaluate, train, EpisodeSpec, Model, ModelConfig, TrainConfig, TrainOptions};
//!
//! // A toy data set: 6 classes of 8x8 grey images, each class a different brightness.
//! let mut set = ImageSet::new(1, 8, 8);
//! for c in 0..6 {
//!     let images = (0..5).map(|i| vec![c as f32 / 6.0 + i as f32 * 0.01; 64]).collect();
//!     set.push_class(format!("class{c}"), images)?;
//! }
//! // A small Conv-4 (2 blocks of 8 filters) for 8x8 grey input.
//! let backbone = BackboneConfig::Conv4(Conv4Config { in_channels: 1, hidden: 8, depth: 2 });
//! let mut model = Model::new(ModelConfig::new(backbone, ImageConfig::grey(8)), 42, &Device::Cpu)?;
//!
//! // Train on 3-way 2-shot episodes, then save, load and evaluate.
//! let config = TrainConfig { way: 3, shot: 2, query: 2, episodes: 10, val_way: 3, val_every: 5, val_episodes: 5, ..Default::default() };
//! let dir = std::env::temp_dir().join(format!("protonet-lib-doc-{}", std::process::id()));
//! train(&mut model, &set, None, &config, &dir, &TrainOptions::default())?;
//! let loaded = Model::load(&dir, &Device::Cpu)?;
//! let report = evaluate(loaded.net(), &set, EpisodeSpec::new(3, 1, 2)?, 20, 0, &Device::Cpu, false)?;
//! println!("{report}");
//! assert!(report.accuracy >= 0.0 && report.accuracy <= 1.0);
//! # std::fs::remove_dir_all(&dir).ok();
//! # Ok::<(), protonet::Error>(())
//! ```
#![warn(missing_docs)]

pub mod alloc;
pub mod backbone;
pub mod bench;
pub mod checkpoint;
pub mod data;
pub mod episode;
mod error;
pub mod eval;
pub mod optim;
pub mod progress;
pub mod protonet;
pub mod train;

pub use checkpoint::{Model, ModelConfig};
pub use episode::{Episode, EpisodeSampler, EpisodeSpec};
pub use error::{Error, Result};
pub use eval::{evaluate, EvalReport};
pub use protonet::{accuracy, episode_loss, prototypes, squared_distances, EpisodeOutput, ProtoNet};
pub use train::{train, TrainConfig, TrainOptions, TrainReport};
