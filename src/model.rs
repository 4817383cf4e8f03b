//! The model: a backbone with its configuration ([`ModelConfig`], `config.json`) and its
//! parameters, built through candle's `VarBuilder`; saved as a directory with
//! `model.safetensors` and `config.json` (through [`crate::io`]).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::adapt::SupportAdaptation;
use crate::backbone::BackboneConfig;
use crate::data::{validate_rotations, ImageConfig};
use crate::embed::Embedder;
use crate::error::{Error, Result};
use crate::io::{read_safetensors, write_atomic, write_safetensors};
use crate::method::MethodConfig;
use crate::net::FewShotNet;
use crate::output::{check, OutputMode, CONFIG_FILE, WEIGHTS_FILE};
use crate::pretrained::PretrainedWeights;
use crate::protonet::FeatureNorm;
use crate::record::{SupervisedRecord, TrainingRecord};
const FORMAT: &str = "protonet-model";
const VERSION: u32 = 1;

/// Everything needed to rebuild a model and prepare its input; `config.json`.
///
/// ```
/// use protonet::{backbone::{BackboneConfig, Conv4Config}, data::ImageConfig, ModelConfig};
/// let cfg = ModelConfig::new(BackboneConfig::Conv4(Conv4Config::default()), ImageConfig::omniglot());
/// cfg.validate().unwrap();
/// assert_eq!(cfg.embedding_dim(), 64);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "ModelConfigFile")]
pub struct ModelConfig {
    /// Always `protonet-model`.
    pub format: String,
    /// Format version (1).
    pub version: u32,
    /// The backbone and its hyper-parameters.
    pub backbone: BackboneConfig,
    /// How images are prepared.
    pub image: ImageConfig,
    /// A record of how the model was trained (settings, episodes, validation accuracy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training: Option<TrainingRecord>,
    /// A record of the supervised run over all base classes that trained the model, if
    /// one did (settings, epochs, losses, time): Baseline, Baseline++, Meta-Baseline's
    /// first stage, the coin trunk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supervised: Option<SupervisedRecord>,
    /// Free text about the model.
    #[serde(default)]
    pub description: String,
    /// Embeddings are averaged over this many quarter turns when the model classifies
    /// (1: none; 4 for subjects whose class does not depend on their angle, such as coins).
    #[serde(default = "one_rotation", skip_serializing_if = "is_one_rotation")]
    pub rotations: usize,
    /// How embeddings are normalized before prototypes are formed when the model classifies
    /// (none by default; support centring + L2 suits the frozen pretrained network).
    #[serde(default, skip_serializing_if = "is_no_normalization")]
    pub normalization: FeatureNorm,
    /// The few-shot method that scores queries against a support set ([`MethodConfig`];
    /// prototypes by default). Models saved before methods were recorded carry an
    /// `adaptation` instead, read as [`MethodConfig::Adapted`] when active.
    pub method: MethodConfig,
}

/// `config.json` as read: a [`ModelConfig`], or one written before methods were
/// recorded (with `adaptation` where `method` is now).
#[derive(Deserialize)]
struct ModelConfigFile {
    format: String,
    version: u32,
    backbone: BackboneConfig,
    image: ImageConfig,
    #[serde(default)]
    training: Option<TrainingRecord>,
    #[serde(default)]
    supervised: Option<SupervisedRecord>,
    #[serde(default)]
    description: String,
    #[serde(default = "one_rotation")]
    rotations: usize,
    #[serde(default)]
    normalization: FeatureNorm,
    #[serde(default)]
    method: Option<MethodConfig>,
    #[serde(default)]
    adaptation: Option<SupportAdaptation>,
}

impl From<ModelConfigFile> for ModelConfig {
    fn from(f: ModelConfigFile) -> Self {
        let method = f.method.unwrap_or_else(|| MethodConfig::from_adaptation(f.adaptation));
        let ModelConfigFile { format, version, backbone, image, training, supervised, description, rotations, normalization, .. } = f;
        Self { format, version, backbone, image, training, supervised, description, rotations, normalization, method }
    }
}

fn is_no_normalization(n: &FeatureNorm) -> bool {
    *n == FeatureNorm::None
}

fn one_rotation() -> usize {
    1
}

fn is_one_rotation(r: &usize) -> bool {
    *r == 1
}

impl ModelConfig {
    /// A configuration for `backbone` on images prepared as `image`.
    pub fn new(backbone: BackboneConfig, image: ImageConfig) -> Self {
        Self {
            format: FORMAT.into(),
            version: VERSION,
            backbone,
            image,
            training: None,
            supervised: None,
            description: String::new(),
            rotations: 1,
            normalization: FeatureNorm::None,
            method: MethodConfig::Protonet,
        }
    }

    /// The frozen ImageNet EfficientNet-Lite0 with the settings that suit photos: RGB at
    /// `image_size` pixels (224 is what it was trained at), support centring + L2
    /// normalization, embeddings averaged over 4 rotations (for subjects such as coins
    /// whose class does not depend on their angle; set `rotations` to 1 otherwise). The
    /// one place these defaults are written (`FewShotClassifier::efficientnet_lite0`,
    /// `protonet predict --backbone` and `protonet eval --backbone` use them).
    ///
    /// ```
    /// let c = protonet::ModelConfig::efficientnet_lite0(224);
    /// assert_eq!((c.rotations, c.normalization.clone()), (4, protonet::FeatureNorm::CenterSupportL2));
    /// assert_eq!(c.embedding_dim(), 1280);
    /// ```
    pub fn efficientnet_lite0(image_size: usize) -> Self {
        let backbone = BackboneConfig::EfficientNetLite0 { weights: PretrainedWeights::efficientnet_lite0(), head: None, trained_from_block: None };
        Self { rotations: 4, normalization: FeatureNorm::CenterSupportL2, ..Self::new(backbone, ImageConfig::rgb(image_size)) }
    }

    /// Reads and checks the `config.json` of the model directory `dir` (without building
    /// the model or touching its weights). Errors name the file.
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join(CONFIG_FILE);
        if !path.is_file() {
            return Err(Error::checkpoint(
                dir,
                format!("not a model directory (no {CONFIG_FILE}): a model directory holds {CONFIG_FILE} and {WEIGHTS_FILE}, as training writes them"),
            ));
        }
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let config: ModelConfig = serde_json::from_str(&text).map_err(|e| Error::checkpoint(&path, format!("invalid config: {e}")))?;
        config.validate().map_err(|e| Error::checkpoint(&path, e.to_string()))?;
        Ok(config)
    }

    /// How this model's images become embeddings when it classifies: averaged over its
    /// `rotations`.
    pub fn embedder(&self) -> Embedder {
        Embedder { rotations: self.rotations, ..Embedder::default() }
    }

    /// Checks that the backbone and the image settings fit together.
    pub fn validate(&self) -> Result<()> {
        if self.format != FORMAT {
            return Err(Error::param("format", format!("expected `{FORMAT}`, found `{}`", self.format)));
        }
        if self.version != VERSION {
            return Err(Error::param("version", format!("this build reads version {VERSION}, found {}", self.version)));
        }
        self.backbone.validate()?;
        validate_rotations(self.rotations)?;
        self.method.validate()?;
        self.method.check_rotations(self.rotations)?;
        if let FeatureNorm::CenterL2(centre) = &self.normalization {
            if centre.len() != self.embedding_dim() {
                return Err(Error::param("normalize", format!("the centre has {} values, embeddings have {}", centre.len(), self.embedding_dim())));
            }
        }
        if let BackboneConfig::EfficientNetLite0Head { .. } = self.backbone {
            // Its inputs are the trunk's feature maps, not images: only the shape matters.
            if !(1..=128).contains(&self.image.size) {
                return Err(Error::param("image-size", format!("trunk feature maps of side {} (expected 1..=128)", self.image.size)));
            }
        } else {
            self.image.validate()?;
        }
        if self.backbone.in_channels() != self.image.channels {
            return Err(Error::param(
                "channels",
                format!("the backbone takes {} channels but images have {}", self.backbone.in_channels(), self.image.channels),
            ));
        }
        if self.embedding_dim() == 0 {
            return Err(Error::param("image-size", format!("{} pixels is too small for this backbone", self.image.size)));
        }
        Ok(())
    }

    /// The size of the rows the method scores for this configuration's images (the
    /// flattened feature maps for a method that scores maps).
    pub fn embedding_dim(&self) -> usize {
        match &self.backbone {
            BackboneConfig::Conv4(c) => c.embedding_dim(self.image.size),
            BackboneConfig::EfficientNetLite0 { head: None, .. } if self.method.scores_maps() => {
                crate::backbone::EFFICIENTNET_LITE0_DIM * crate::backbone::trunk_side(self.image.size).pow(2)
            }
            BackboneConfig::EfficientNetLite0 { .. } | BackboneConfig::EfficientNetLite0Head { .. } => crate::backbone::EFFICIENTNET_LITE0_DIM,
        }
    }
}

/// A few-shot network (backbone and method) with its parameters and configuration.
///
/// ```
/// use candle_core::Device;
/// use protonet::{backbone::{BackboneConfig, Conv4Config}, data::ImageConfig, Model, ModelConfig};
/// let cfg = ModelConfig::new(BackboneConfig::Conv4(Conv4Config::default()), ImageConfig::omniglot());
/// let model = Model::new(cfg, 42, &Device::Cpu)?;
/// let dir = std::env::temp_dir().join(format!("protonet-doc-{}", std::process::id()));
/// model.save(&dir)?;
/// let again = Model::load(&dir, &Device::Cpu)?;
/// assert_eq!(again.config(), model.config());
/// # std::fs::remove_dir_all(&dir).ok();
/// # Ok::<(), protonet::Error>(())
/// ```
pub struct Model {
    config: ModelConfig,
    varmap: VarMap,
    net: FewShotNet,
    device: Device,
}

/// Is this parameter a BatchNorm running statistic (kept out of the optimiser)?
pub(crate) fn is_running_stat(name: &str) -> bool {
    name.ends_with("running_mean") || name.ends_with("running_var")
}

impl Model {
    fn build(config: ModelConfig, device: &Device) -> Result<Self> {
        config.validate()?;
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, device);
        let method = config.method.build(vb.pp("method"))?;
        let net = FewShotNet::with_method(config.backbone.build(vb)?, method);
        Ok(Self { config, varmap, net, device: device.clone() })
    }

    /// A freshly initialised model. Weights (`*weight` of rank >= 2) are drawn from
    /// U(-1/sqrt(fan_in), 1/sqrt(fan_in)), PyTorch's default for convolutions, with a
    /// generator seeded by `seed`; BatchNorm starts at weight 1, bias 0.
    pub fn new(config: ModelConfig, seed: u64, device: &Device) -> Result<Self> {
        let model = Self::build(config, device)?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        for (name, var) in model.named_vars() {
            let dims = var.dims().to_vec();
            if name.ends_with("weight") && dims.len() >= 2 {
                let fan_in: usize = dims[1..].iter().product();
                let bound = 1.0 / (fan_in as f32).sqrt();
                let values: Vec<f32> = (0..var.elem_count()).map(|_| rng.random_range(-bound..bound)).collect();
                var.set(&Tensor::from_vec(values, dims, device)?)?;
            }
        }
        Ok(model)
    }

    /// Loads a model directory written by [`Model::save`]. Errors name the file and say
    /// what does not match (missing or extra tensors, shapes, a damaged file).
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let model = Self::build(ModelConfig::read(dir)?, device)?;
        let weights = dir.join(WEIGHTS_FILE);
        let (tensors, _) = read_safetensors(&weights, device)?;
        model.set_tensors(&tensors, &weights)?;
        Ok(model)
    }

    /// Like [`Model::load`], for a model that embeds images, found by [`locate_model`]
    /// (so a shipped model, `data/coins-efficientnet-lite0`, loads from any project);
    /// refuses the head-only models that fine-tuning trains on cached features
    /// (`head-training/`), naming the folder.
    pub fn load_for_images(dir: &Path, device: &Device) -> Result<Self> {
        let dir = &locate_model(dir)?;
        let model = Self::load(dir, device)?;
        if let BackboneConfig::EfficientNetLite0Head { .. } = model.config.backbone {
            return Err(Error::checkpoint(
                dir,
                "holds an EfficientNet-Lite0 head trained on cached trunk features, not a model for images; use the model directory above it",
            ));
        }
        Ok(model)
    }

    /// Saves `model.safetensors` and `config.json` into `dir` (created if needed), each
    /// written to a temporary file and renamed into place. Refuses a directory that
    /// already holds a model, classifier or training run ([`OutputMode::New`]); see
    /// [`Model::save_with`].
    pub fn save(&self, dir: &Path) -> Result<()> {
        self.save_with(dir, OutputMode::New)
    }

    /// Like [`Model::save`], with what to do when `dir` already holds something:
    /// [`OutputMode::Resume`] and [`OutputMode::Overwrite`] replace the model's two files
    /// and leave the rest of the directory (a training run's state) as it is.
    pub fn save_with(&self, dir: &Path, mode: OutputMode) -> Result<()> {
        check(dir, mode)?;
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        write_safetensors(&dir.join(WEIGHTS_FILE), &self.tensors(), None)?;
        let json = serde_json::to_vec_pretty(&self.config).expect("config serialises");
        write_atomic(&dir.join(CONFIG_FILE), &json)
    }

    /// The configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Records how the model was trained (stored in `config.json` on the next save).
    pub fn set_training_record(&mut self, record: TrainingRecord) {
        self.config.training = Some(record);
    }

    /// Records the supervised run that trained the model (stored in `config.json` on the
    /// next save).
    pub fn set_supervised_record(&mut self, record: SupervisedRecord) {
        self.config.supervised = Some(record);
    }

    /// The network.
    pub fn net(&self) -> &FewShotNet {
        &self.net
    }

    /// Builds `config`'s method for this model, its learned parameters (if any) from the
    /// model's variables under `method`: to score with other settings of a method, as
    /// `FewShotClassifier::set_method` does.
    pub fn build_method(&self, config: &MethodConfig) -> Result<std::sync::Arc<dyn crate::method::Method>> {
        config.build(VarBuilder::from_varmap(&self.varmap, DType::F32, &self.device).pp("method"))
    }

    /// The network, giving up the rest (configuration and parameter names).
    pub fn into_net(self) -> FewShotNet {
        self.net
    }

    /// The device the parameters live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// All parameters (running statistics included), sorted by name.
    pub fn named_vars(&self) -> Vec<(String, Var)> {
        let data = self.varmap.data().lock().expect("varmap lock");
        let mut v: Vec<(String, Var)> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// The parameters the optimiser updates (everything but running statistics), sorted.
    pub fn trainable_vars(&self) -> Vec<(String, Var)> {
        self.named_vars().into_iter().filter(|(n, _)| !is_running_stat(n)).collect()
    }

    /// A copy of every parameter, by name.
    pub fn tensors(&self) -> BTreeMap<String, Tensor> {
        self.named_vars().into_iter().map(|(n, v)| (n, v.as_tensor().copy().expect("copy"))).collect()
    }

    /// Sets every parameter from `tensors`, which must hold exactly this model's names
    /// and shapes; `source` names the file in errors.
    pub fn set_tensors(&self, tensors: &HashMap<String, Tensor>, source: &Path) -> Result<()> {
        let vars = self.named_vars();
        for (name, var) in &vars {
            let t = tensors
                .get(name)
                .ok_or_else(|| Error::checkpoint(source, format!("tensor `{name}` is missing (weights from another backbone or configuration?)")))?;
            if t.dims() != var.dims() {
                return Err(Error::checkpoint(source, format!("tensor `{name}` has shape {:?}, the configuration needs {:?}", t.dims(), var.dims())));
            }
            if t.dtype() != DType::F32 {
                return Err(Error::checkpoint(source, format!("tensor `{name}` is {:?}, expected F32", t.dtype())));
            }
        }
        if let Some(extra) = tensors.keys().find(|k| !vars.iter().any(|(n, _)| n == *k)) {
            return Err(Error::checkpoint(source, format!("unexpected tensor `{extra}` (weights from another backbone or configuration?)")));
        }
        for (name, var) in &vars {
            var.set(&tensors[name].to_device(&self.device)?)?;
        }
        Ok(())
    }
}

/// The protonet checkout this library was built from, where the models it ships live
/// (`data/<name>`).
pub fn checkout_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The model directory `dir` names: `dir` itself when it holds a `config.json`; else, for
/// a relative path, the same path inside the protonet checkout ([`checkout_dir`]), where
/// the shipped models are (`data/coins-efficientnet-lite0` then loads from any project
/// that uses protonet by path). The error for neither says both places.
///
/// ```
/// let found = protonet::locate_model("data/coins-efficientnet-lite0".as_ref())?;
/// assert!(found.join("config.json").is_file());
/// let err = protonet::locate_model("no/such/model".as_ref()).unwrap_err().to_string();
/// assert!(err.contains("no/such/model") && err.contains("looked for"));
/// # Ok::<(), protonet::Error>(())
/// ```
pub fn locate_model(dir: &Path) -> Result<PathBuf> {
    if dir.join(CONFIG_FILE).is_file() {
        return Ok(dir.to_path_buf());
    }
    let shipped = checkout_dir().join(dir);
    if dir.is_relative() && shipped.join(CONFIG_FILE).is_file() {
        return Ok(shipped);
    }
    let places = if dir.is_relative() { format!("{} and {}", dir.display(), shipped.display()) } else { dir.display().to_string() };
    Err(Error::checkpoint(
        dir,
        format!("not a model directory (no {CONFIG_FILE}; looked for in {places}): a model directory holds {CONFIG_FILE} and {WEIGHTS_FILE}, as training writes them"),
    ))
}
