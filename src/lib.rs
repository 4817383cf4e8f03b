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
//! ## A complete example: train, save, load, add classes, predict
//!
//! ```
//! use candle_core::Device;
//! use protonet::backbone::{BackboneConfig, Conv4Config};
//! use protonet::data::{ImageConfig, ImageSet};
//! use protonet::{evaluate, train, EpisodeSpec, FewShotClassifier, Model, ModelConfig, TrainConfig, TrainOptions};
//!
//! // A toy data set: 6 classes of 8x8 grey images, each class a different brightness.
//! let image = |c: usize, i: usize| vec![c as f32 / 6.0 + i as f32 * 0.01; 64];
//! let mut set = ImageSet::new(1, 8, 8);
//! for c in 0..6 {
//!     set.push_class(format!("class{c}"), (0..5).map(|i| image(c, i)).collect())?;
//! }
//! // A small Conv-4 (2 blocks of 8 filters) for 8x8 grey input.
//! let backbone = BackboneConfig::Conv4(Conv4Config { in_channels: 1, hidden: 8, depth: 2 });
//! let mut model = Model::new(ModelConfig::new(backbone, ImageConfig::grey(8)), 42, &Device::Cpu)?;
//!
//! // Train on 3-way 2-shot episodes; the best model is saved in `dir`.
//! let config = TrainConfig { way: 3, shot: 2, query: 2, episodes: 10, val_way: 3, val_every: 5, val_episodes: 5, ..Default::default() };
//! let dir = std::env::temp_dir().join(format!("protonet-lib-doc-{}", std::process::id()));
//! train(&mut model, &set, None, &config, &dir, &TrainOptions::default())?;
//!
//! // Load it and measure 3-way 1-shot accuracy with a 95% confidence interval.
//! let loaded = Model::load(&dir, &Device::Cpu)?;
//! let report = evaluate(loaded.net(), &set, EpisodeSpec::new(3, 1, 2)?, 20, 0, &Device::Cpu, false)?;
//! println!("{report}");
//!
//! // Deploy: a classifier with a few examples per class, then predictions.
//! let mut classifier = FewShotClassifier::new(loaded);
//! classifier.add_class("dark", &[image(0, 0), image(0, 1)])?;
//! classifier.add_class("light", &[image(5, 0), image(5, 1)])?;
//! classifier.add_class("dark", &[image(0, 2)])?; // more examples: the prototype is updated
//! let prediction = classifier.predict(&image(5, 3))?;
//! println!("{:?} with confidence {:.2}", prediction.class, prediction.confidence);
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
//! [`plot`] for training curves, confusion matrices and embedding projections, and the
//! `protonet` command line (`train`, `eval`, `predict`, `embed`, `plot-embeddings`, `bench`).
#![warn(missing_docs)]

pub mod alloc;
pub mod backbone;
pub mod bench;
pub mod checkpoint;
pub mod classifier;
pub mod data;
pub mod episode;
mod error;
pub mod eval;
pub mod finetune;
pub mod optim;
pub mod plot;
pub mod progress;
pub mod protonet;
pub mod train;

pub use checkpoint::{Model, ModelConfig};
pub use classifier::{ClassScore, FewShotClassifier, Prediction, PrototypeStore};
pub use episode::{Episode, EpisodeSampler, EpisodeSpec};
pub use error::{Error, Result};
pub use eval::{evaluate, EvalReport};
pub use protonet::{accuracy, episode_loss, prototypes, squared_distances, EpisodeOutput, ProtoNet};
pub use train::{train, TrainConfig, TrainOptions, TrainReport};
