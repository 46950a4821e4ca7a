//! The crate's one error type.

use std::fmt;

/// A parameter whose shape in a checkpoint differs from the model's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeMismatch {
    /// The state-dict key (torchvision name).
    pub key: String,
    /// What the model holds.
    pub expected: Vec<usize>,
    /// What the checkpoint holds.
    pub found: Vec<usize>,
}

/// A parameter whose dtype in a checkpoint cannot be converted to the model's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DtypeMismatch {
    /// The state-dict key (torchvision name).
    pub key: String,
    /// What the model holds.
    pub expected: String,
    /// What the checkpoint holds.
    pub found: String,
}

/// Every problem found while matching a checkpoint against a model, collected before failing,
/// so one error lists all offending keys.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StateDictMismatch {
    /// Keys the model needs that the checkpoint lacks (sorted).
    pub missing: Vec<String>,
    /// Keys the checkpoint has that the model does not know (sorted).
    pub unexpected: Vec<String>,
    /// Keys present in both with different shapes (sorted by key).
    pub mismatched: Vec<ShapeMismatch>,
    /// Keys present in both whose dtype cannot be converted (sorted by key).
    pub bad_dtype: Vec<DtypeMismatch>,
}

impl StateDictMismatch {
    /// True when nothing is wrong.
    pub fn is_empty(&self) -> bool {
        self.missing.is_empty()
            && self.unexpected.is_empty()
            && self.mismatched.is_empty()
            && self.bad_dtype.is_empty()
    }
}

impl fmt::Display for StateDictMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if !self.missing.is_empty() {
            parts.push(format!(
                "missing keys ({}): {}",
                self.missing.len(),
                self.missing.join(", ")
            ));
        }
        if !self.unexpected.is_empty() {
            parts.push(format!(
                "unexpected keys ({}): {}",
                self.unexpected.len(),
                self.unexpected.join(", ")
            ));
        }
        if !self.mismatched.is_empty() {
            let list: Vec<String> = self
                .mismatched
                .iter()
                .map(|m| format!("{} (expected {:?}, found {:?})", m.key, m.expected, m.found))
                .collect();
            parts.push(format!(
                "mis-shaped keys ({}): {}",
                list.len(),
                list.join(", ")
            ));
        }
        if !self.bad_dtype.is_empty() {
            let list: Vec<String> = self
                .bad_dtype
                .iter()
                .map(|m| format!("{} (expected {}, found {})", m.key, m.expected, m.found))
                .collect();
            parts.push(format!(
                "unconvertible dtypes ({}): {}",
                list.len(),
                list.join(", ")
            ));
        }
        write!(f, "{}", parts.join("; "))
    }
}

/// Errors of `cv-models`.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The input tensor does not have a shape the model accepts.
    #[error("{model}: input of shape {found:?} refused: expected {expected}")]
    InputShape {
        /// Which model refused it.
        model: &'static str,
        /// What it accepts, in words.
        expected: String,
        /// The shape it was given.
        found: Vec<usize>,
    },
    /// An input side the architecture cannot take ([`crate::Architecture::check_image_size`]).
    #[error("image size {side}: {model} takes {expected}")]
    ImageSize {
        /// The network.
        model: crate::Architecture,
        /// The side asked for.
        side: usize,
        /// What it takes, in words.
        expected: String,
    },
    /// A checkpoint does not match the model.
    #[error("state dict does not match the model: {0}")]
    StateDict(StateDictMismatch),
    /// An architecture name that is neither `cnn` nor `resnet18`.
    #[error("unknown architecture {0:?} (expected \"cnn\" or \"resnet18\")")]
    UnknownArchitecture(String),
    /// A device name that is not `cpu`, `cuda`, `cuda:N` or `metal`.
    #[error("unknown device {0:?} (expected \"cpu\", \"cuda\", \"cuda:N\" or \"metal\")")]
    UnknownDevice(String),
    /// A model option out of range (e.g. zero classes).
    #[error("invalid model configuration: {0}")]
    Config(String),
    /// An int8 state that is not what the int8 network needs.
    #[error("int8 state: {0}")]
    Quantized(String),
    /// Training a BatchNorm whose running statistics are not `Var`s.
    #[error("batch norm {0}: running statistics are fixed tensors, build the model from a VarMap to train it")]
    FrozenBuffers(String),
    /// A layer name the network does not have (Grad-CAM's `--layer`).
    #[error("{model} has no layer {layer:?} (known: {known})")]
    UnknownLayer {
        /// The network.
        model: &'static str,
        /// The name asked for.
        layer: String,
        /// The names it has, comma-separated.
        known: String,
    },
    /// An error from candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result with [`ModelError`].
pub type Result<T> = std::result::Result<T, ModelError>;

impl ModelError {
    /// Turns this error into a candle error (for `ModuleT` impls), keeping its message.
    pub fn into_candle(self) -> candle_core::Error {
        match self {
            ModelError::Candle(e) => e,
            other => candle_core::Error::wrap(other),
        }
    }
}
