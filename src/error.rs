//! The crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong in `protonet`, with enough context to act on.
///
/// Its `Debug` form is its message (as `anyhow`'s is), so that `fn main() -> Result<(),
/// protonet::Error>` prints `Error: dataset my_coins: ...` rather than the variant's fields.
///
/// ```
/// use protonet::Error;
/// let e = Error::InvalidParameter { name: "way".into(), reason: "must be at least 2, got 1".into() };
/// assert!(e.to_string().contains("way"));
/// assert_eq!(format!("{e:?}"), e.to_string());
/// ```
#[derive(thiserror::Error)]
pub enum Error {
    /// A file or folder could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// An image could not be decoded.
    #[error("{path}: cannot decode image: {reason}")]
    Image {
        /// The image file.
        path: PathBuf,
        /// What the decoder said.
        reason: String,
    },
    /// A dataset on disk does not have the expected layout.
    #[error("dataset {path}: {reason}")]
    Dataset {
        /// The dataset root or the offending file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A parameter is out of range.
    #[error("invalid parameter `{name}`: {reason}")]
    InvalidParameter {
        /// The parameter's name as the user knows it (for example `way`).
        name: String,
        /// Why it is invalid.
        reason: String,
    },
    /// An episode asks for more classes than the dataset has.
    #[error("{way}-way episodes need at least {way} classes, but the dataset has only {available}")]
    NotEnoughClasses {
        /// Classes asked for.
        way: usize,
        /// Classes available.
        available: usize,
    },
    /// A class has fewer images than an episode draws from it.
    #[error("class `{class}` has {have} images, but a {shot}-shot {query}-query episode needs {need} (shot + query)")]
    NotEnoughImages {
        /// The class's name.
        class: String,
        /// Images the class has.
        have: usize,
        /// Images needed (shot + query).
        need: usize,
        /// Support images per class.
        shot: usize,
        /// Query images per class.
        query: usize,
    },
    /// A model directory, classifier or run checkpoint is missing, damaged or inconsistent.
    #[error("{path}: {reason}")]
    Checkpoint {
        /// The file concerned.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The training loss became NaN or infinite.
    #[error("training loss became {value} at episode {episode}; nothing was saved from this episode. Lower the learning rate or resume from the last checkpoint with another seed")]
    NonFiniteLoss {
        /// The episode (1-based) whose loss was not finite.
        episode: usize,
        /// The loss value.
        value: f32,
    },
    /// A gradient became NaN or infinite although the loss was finite.
    #[error("the gradient of `{parameter}` became NaN or infinite at episode {episode}; nothing was saved from this episode. Lower the learning rate or resume from the last checkpoint with another seed")]
    NonFiniteGradient {
        /// The episode (1-based).
        episode: usize,
        /// The parameter whose gradient was not finite.
        parameter: String,
    },
    /// An output directory already holds a model, a classifier or a training run, and the
    /// caller did not say to resume or overwrite it. Nothing was written.
    #[error("{path} already holds {holds}; nothing was written. To replace it: `save_with(dir, OutputMode::Overwrite)` (a classifier or model), OutputMode::Overwrite, or --overwrite on the command line; to continue a training run there: OutputMode::Resume or --resume")]
    OutputExists {
        /// The directory.
        path: PathBuf,
        /// What it holds, in words.
        holds: String,
    },
    /// Pretrained weights that a model refers to are missing or are not the ones it was made with.
    #[error("pretrained weights {name}: {reason}")]
    PretrainedWeights {
        /// The file name (or the path of the file found).
        name: String,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// An error from candle (tensor shapes, devices, kernels).
    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),
}

/// Errors cross into candle's `Result` where this crate implements candle's traits
/// (`ModuleT`): candle's own errors pass unchanged, others are wrapped with their message.
impl From<Error> for candle_core::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Candle(c) => c,
            other => candle_core::Error::wrap(other),
        }
    }
}

impl std::fmt::Debug for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// Shorthand for `Result<T, protonet::Error>`.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An [`Error::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }

    /// An [`Error::Checkpoint`]: the model directory, classifier or checkpoint file at
    /// `path` is missing, damaged or does not match, for `reason`.
    pub fn checkpoint(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::Checkpoint { path: path.into(), reason: reason.into() }
    }

    /// An [`Error::InvalidParameter`].
    pub fn param(name: &str, reason: impl Into<String>) -> Self {
        Error::InvalidParameter { name: name.to_string(), reason: reason.into() }
    }
}
