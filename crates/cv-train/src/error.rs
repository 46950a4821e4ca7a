//! The one error type of this crate; every variant names the file, key or step at fault.

use std::path::PathBuf;

/// Everything that can go wrong while training, evaluating or checkpointing.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A tensor operation failed (shape mismatch, device error, ...).
    #[error("tensor operation failed: {0}")]
    Candle(#[from] candle_core::Error),

    /// Reading or writing a file failed.
    // `error` is in the message and deliberately not a `#[source]`: a chained report
    // (`{:#}`) would print it twice.
    #[error("{}: {error}", path.display())]
    Io {
        /// The file or folder at fault.
        path: PathBuf,
        /// The underlying error.
        error: std::io::Error,
    },

    /// A JSON file could not be written or read.
    // `error` is in the message, not a `#[source]` (see `Io`).
    #[error("{}: invalid JSON: {error}", path.display())]
    Json {
        /// The file at fault.
        path: PathBuf,
        /// The underlying error.
        error: serde_json::Error,
    },

    /// The loss became NaN or infinite; training stopped and the last checkpoint was kept.
    #[error("loss is {value} at epoch {epoch}, batch {batch} (global step {step}); training stopped, the checkpoint of the last completed epoch is intact")]
    NonFiniteLoss {
        /// The offending value (NaN, inf or -inf).
        value: f32,
        /// 1-based epoch.
        epoch: usize,
        /// 0-based batch within the epoch.
        batch: usize,
        /// 0-based optimizer step over the whole run.
        step: usize,
    },

    /// A label is not a valid class index.
    #[error("label {label} at batch position {index} is out of range for {num_classes} classes")]
    LabelOutOfRange {
        /// The label value.
        label: u32,
        /// Its position in the batch.
        index: usize,
        /// The number of classes (logit columns).
        num_classes: usize,
    },

    /// Saved optimizer or training state does not match the current run.
    #[error("training state {path}: {message}")]
    State {
        /// The state file (or `<memory>` when importing tensors directly).
        path: PathBuf,
        /// What does not match.
        message: String,
    },

    /// A configuration value is invalid.
    #[error("invalid training configuration: {0}")]
    Config(String),

    /// The data crate reported an error.
    #[error(transparent)]
    Data(#[from] cv_data::DataError),

    /// The models crate reported an error.
    #[error(transparent)]
    Model(#[from] cv_models::ModelError),

    /// Pretrained weights that do not fit the model.
    #[error("pretrained weights {path}: {message}")]
    Pretrained {
        /// The weights file.
        path: PathBuf,
        /// What does not fit.
        message: String,
    },

    /// A checkpoint folder's `config.json` is not a usable model card.
    #[error("{path}: {reason}")]
    Card {
        /// The config file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// Drawing the curves failed.
    #[error("{path}: cannot draw the curves: {message}")]
    Plot {
        /// The image file.
        path: PathBuf,
        /// The plotting library's message.
        message: String,
    },

    /// The run report could not be drawn.
    #[error("{path}: cannot draw the report: {message}")]
    Report {
        /// The report file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
}

/// Result with [`TrainError`].
pub type Result<T, E = TrainError> = std::result::Result<T, E>;

impl TrainError {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        TrainError::Io {
            path: path.into(),
            error: source,
        }
    }
}
