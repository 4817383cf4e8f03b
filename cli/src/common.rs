//! Arguments and helpers shared by the subcommands.

use std::path::PathBuf;

use candle_core::Device;
use clap::{Args, ValueEnum};
use protonet::backbone::EfficientNetLite0;
use protonet::data::{load_image_folder_report, load_omniglot, FolderOptions, ImageConfig, ImageSet, OmniglotSplit};
use protonet::pretrained::{PretrainedWeights, CONVERTED_WEIGHTS};
use protonet::{Error, FeatureNorm, OutputMode, Result};

use crate::support::default_data_root;

/// A pretrained backbone used frozen, instead of a trained model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PretrainedBackbone {
    /// EfficientNet-Lite0 with ImageNet weights (scripts/fetch-pretrained.sh), 1280-d
    /// embeddings; by default with support centring + L2 and 4 rotations, as
    /// `ModelConfig::efficientnet_lite0` (--normalize and --rotations change them).
    EfficientnetLite0,
}

/// How embeddings are normalized before prototypes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Normalize {
    /// Raw embeddings, as in the paper.
    None,
    /// L2-normalized embeddings.
    L2,
    /// Centred on the episode's support mean, then L2-normalized (SimpleShot).
    CenterL2,
}

impl Normalize {
    /// The library's normalization (centring on the support set's mean).
    pub fn feature_norm(self) -> FeatureNorm {
        match self {
            Normalize::None => FeatureNorm::None,
            Normalize::L2 => FeatureNorm::L2,
            Normalize::CenterL2 => FeatureNorm::CenterSupportL2,
        }
    }
}

/// Which kind of data set `--data` points to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DatasetKind {
    /// Omniglot in its standard layout with the Vinyals splits (28x28 grey).
    Omniglot,
    /// An image folder: one sub-folder of PNG/JPEG images per class.
    Folder,
}

/// Where the data is.
#[derive(Args, Debug, Clone)]
pub struct DataArgs {
    /// Kind of data set.
    #[arg(long, value_enum, default_value_t = DatasetKind::Omniglot)]
    pub dataset: DatasetKind,
    /// Data set root. Default for omniglot: $PROTONET_DATA/omniglot, else ../shared/data/omniglot.
    /// Required for folder.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// For --dataset folder: skip image files that cannot be used (corrupt, truncated, not
    /// an image, too large or small), with a warning for each and their count, instead of
    /// stopping at the first with an error.
    #[arg(long)]
    pub skip_bad_images: bool,
}

impl DataArgs {
    /// The data root, with the Omniglot default filled in.
    pub fn root(&self) -> Result<PathBuf> {
        match (&self.data, self.dataset) {
            (Some(p), _) => Ok(p.clone()),
            (None, DatasetKind::Omniglot) => Ok(default_data_root().join("omniglot")),
            (None, DatasetKind::Folder) => Err(Error::param("data", "--dataset folder needs --data DIR (one sub-folder per class)")),
        }
    }

    /// Loads an Omniglot split, or the folder itself (the split is then ignored).
    pub fn load(&self, split: &str, image: &ImageConfig, quiet: bool) -> Result<ImageSet> {
        let root = self.root()?;
        let t = std::time::Instant::now();
        let set = match self.dataset {
            DatasetKind::Omniglot => {
                if image != &ImageConfig::omniglot() {
                    return Err(Error::param("dataset", "this model was not trained on Omniglot-prepared images (28x28 grey); use --dataset folder"));
                }
                load_omniglot(&root, split.parse::<OmniglotSplit>()?)?
            }
            DatasetKind::Folder => load_folder(&root, image, self.skip_bad_images)?,
        };
        if !quiet {
            eprintln!(
                "loaded {} ({}): {} classes, {} images in {:.1}s",
                root.display(),
                if self.dataset == DatasetKind::Omniglot { split } else { "folder" },
                set.num_classes(),
                set.num_images(),
                t.elapsed().as_secs_f64()
            );
        }
        Ok(set)
    }
}

/// Loads an image folder, printing a warning for each skipped file (with
/// `--skip-bad-images`) and their count.
pub fn load_folder(root: &std::path::Path, image: &ImageConfig, skip_bad_images: bool) -> Result<ImageSet> {
    let (set, skipped) = load_image_folder_report(root, image, &FolderOptions { skip_bad_images })?;
    for s in &skipped {
        eprintln!("warning: skipping {}", s.error);
    }
    if !skipped.is_empty() {
        eprintln!("warning: skipped {} of {} image files in {}", skipped.len(), skipped.len() + set.num_images(), root.display());
    }
    Ok(set)
}

/// The pretrained EfficientNet-Lite0: from `--weights FILE` if given, else the published
/// weights found by [`PretrainedWeights::locate`] (and their converted safetensors).
pub fn efficientnet_lite0(weights: Option<&std::path::Path>, dev: &Device) -> Result<EfficientNetLite0> {
    EfficientNetLite0::load(&efficientnet_lite0_weights(weights)?, dev)
}

/// The weights file of the pretrained EfficientNet-Lite0: `weights` when given, else the
/// published weights found as every command finds them.
pub fn efficientnet_lite0_weights(weights: Option<&std::path::Path>) -> Result<std::path::PathBuf> {
    match weights {
        Some(path) => Ok(path.to_path_buf()),
        None => PretrainedWeights::efficientnet_lite0().loadable(CONVERTED_WEIGHTS),
    }
}

/// The output mode from `--resume` and `--overwrite` (neither: refuse to replace anything).
pub fn output_mode(resume: bool, overwrite: bool) -> OutputMode {
    match (resume, overwrite) {
        (true, _) => OutputMode::Resume,
        (false, true) => OutputMode::Overwrite,
        (false, false) => OutputMode::New,
    }
}

/// The compute device from `--device`.
pub fn device(name: &str) -> Result<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        "cuda" => Ok(Device::new_cuda(0)?),
        "metal" => Ok(Device::new_metal(0)?),
        other => Err(Error::param("device", format!("`{other}` is not one of cpu, cuda, metal"))),
    }
}

/// Prints one line on stdout; a closed pipe (`protonet predict ... | head`) ends the
/// program quietly instead of panicking.
pub fn emit(line: impl std::fmt::Display) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{line}") {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: cannot write to standard output: {e}");
        std::process::exit(1);
    }
}

/// The few-shot methods trained episodically, by name (`--method`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum MethodName {
    /// Prototypical networks (Snell et al. 2017).
    Protonet,
    /// Matching networks (Vinyals et al. 2016), without full-context embeddings.
    Matching,
    /// Baseline (Chen et al. 2019): a linear classifier of all base classes trained with
    /// the backbone; at test time a new linear classifier trained on the support set.
    Baseline,
    /// Baseline++ (Chen et al. 2019): the same with cosine classifiers.
    #[value(name = "baseline-pp")]
    BaselinePp,
    /// Meta-Baseline (Chen et al. 2021): a linear classifier of all base classes trained
    /// with the backbone, then episodes scored by cosine similarity to the class means
    /// times a learned temperature; the better stage on validation is kept.
    #[value(name = "meta-baseline")]
    MetaBaseline,
    /// Relation Network (Sung et al. 2018): a learned relation module scores each
    /// (class, query) pair of feature maps; the Conv-4 keeps 5x5 maps (no pooling in its
    /// last two blocks). It gives no distances, so it cannot reject by distance.
    Relation,
}

impl MethodName {
    /// The method with its settings (`matching_scale` for matching networks,
    /// `map_channels` the backbone's feature-map channels for the relation module).
    pub fn config(self, matching_scale: f32, map_channels: usize) -> protonet::MethodConfig {
        match self {
            MethodName::Protonet => protonet::MethodConfig::Protonet,
            MethodName::Matching => protonet::MethodConfig::Matching(protonet::method::MatchingConfig { scale: matching_scale }),
            MethodName::Baseline => protonet::MethodConfig::Baseline(protonet::method::BaselineConfig::new(protonet::method::ClassifierKind::Linear)),
            MethodName::BaselinePp => protonet::MethodConfig::Baseline(protonet::method::BaselineConfig::new(protonet::method::ClassifierKind::Cosine)),
            MethodName::MetaBaseline => protonet::MethodConfig::MetaBaseline(Default::default()),
            MethodName::Relation => protonet::MethodConfig::Relation(protonet::method::RelationConfig::new(map_channels)),
        }
    }
}

/// How a model classifies, as flags shared by `eval` and `predict`; each one absent keeps
/// the model's (or the saved classifier's) own setting, written in its config.json.
#[derive(clap::Args, Debug, Clone, Copy)]
pub struct ClassifyArgs {
    /// Embedding normalization before the method scores (center-l2: centred on the mean
    /// of the support embeddings, then L2; SimpleShot). Default: the model's own (for
    /// --backbone: center-l2).
    #[arg(long, value_enum)]
    pub normalize: Option<Normalize>,
    /// Average each image's embedding over this many rotations by 90 degrees (1 to 4; for
    /// subjects such as coins whose class does not depend on the angle). Default: the
    /// model's own (for --backbone: 4).
    #[arg(long)]
    pub rotations: Option<usize>,
    /// Adapt to the support set with this many Adam steps of a cosine classifier started
    /// from the prototypes, once per support set (0: plain prototypes); replaces the
    /// model's method. Default: the model's own method.
    #[arg(long)]
    pub adapt_steps: Option<usize>,
}

impl ClassifyArgs {
    /// The flags applied to a model's configuration (what `eval` measures with).
    pub fn apply(&self, config: &mut protonet::ModelConfig) {
        if let Some(r) = self.rotations {
            config.rotations = r;
        }
        if let Some(n) = self.normalize {
            config.normalization = n.feature_norm();
        }
        if let Some(steps) = self.adapt_steps {
            config.method = config.method.with_adaptation_steps(steps);
        }
    }
}
