//! The crate's one error type: every variant names the file, repository or key at fault.

use std::path::PathBuf;

/// Errors of `cv-weights`.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    /// A name that is neither a registry entry nor an existing path.
    #[error("unknown weights {name:?}: not a registry name ({known}) and no such file or folder")]
    UnknownName {
        /// What the user asked for.
        name: String,
        /// The registry names, comma separated.
        known: String,
    },
    /// Offline (HF_HUB_OFFLINE=1 or `offline`), and the file is not in the cache.
    #[error(
        "offline and {repo}/{file} is not in the Hugging Face cache at {}: run `cv weights fetch {name}` \
         (or `huggingface-cli download {repo} {file}`) while online, or unset HF_HUB_OFFLINE",
        cache_dir.display()
    )]
    NotCached {
        /// Hub repository, e.g. `timm/resnet18.tv_in1k`.
        repo: String,
        /// File inside the repository.
        file: String,
        /// The hub cache folder that was searched.
        cache_dir: PathBuf,
        /// The name to pass to `cv weights fetch`.
        name: String,
    },
    /// The hub answered with an error status.
    #[error("{url}: the hub answered HTTP {status}: {hint}")]
    HttpStatus {
        /// The URL asked for.
        url: String,
        /// The HTTP status.
        status: u16,
        /// What it probably means.
        hint: String,
    },
    /// The hub's answer lacked what a download needs, or the connection failed.
    #[error("{url}: download failed: {reason}")]
    Download {
        /// The URL asked for.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The body ended before the announced size; nothing was put in the cache.
    #[error(
        "{url}: download broke off after {received} of {expected} bytes; nothing was added to the cache \
         (a partial .part file in {} is resumed by the next fetch)",
        cache_dir.display()
    )]
    Truncated {
        /// The URL asked for.
        url: String,
        /// The size the hub announced.
        expected: u64,
        /// What arrived.
        received: u64,
        /// The repository's cache folder.
        cache_dir: PathBuf,
    },
    /// A file or folder could not be read or written.
    // `error` is in the message and deliberately not a `#[source]`: a chained report
    // (`{:#}`) would print it twice.
    #[error("{}: {error}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        error: std::io::Error,
    },
    /// A weights file that is not a complete, valid safetensors file.
    #[error("{}: not a valid safetensors file ({reason}); delete it and fetch it again", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        reason: String,
    },
    /// An int8 checkpoint given where f32 weights are needed.
    #[error("{}: is an int8 checkpoint (made by cv quantize); {needs} needs f32 weights: pass the checkpoint it was quantized from", path.display())]
    NeedsFloat {
        /// The checkpoint file.
        path: PathBuf,
        /// What needs f32 weights.
        needs: String,
    },
    /// A checkpoint whose keys or shapes do not fit the model.
    #[error("{}: does not fit {architecture}: {detail}", path.display())]
    Mismatch {
        /// The checkpoint file.
        path: PathBuf,
        /// The architecture it was loaded into.
        architecture: String,
        /// Missing, unexpected and mis-shaped keys.
        detail: String,
    },
    /// The architecture of a bare `.safetensors` file could not be told from its keys.
    #[error("{}: cannot tell the architecture from its keys ({reason}); put a config.json beside it", path.display())]
    UnknownArchitecture {
        /// The checkpoint file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A checkpoint folder that cannot be read (its `config.json`, say).
    #[error(transparent)]
    Checkpoint(#[from] cv_train::TrainError),
    /// Classification inputs or options that do not fit the model.
    #[error("invalid input: {0}")]
    Input(String),
    /// An error from `cv-models`.
    #[error(transparent)]
    Model(#[from] cv_models::ModelError),
    /// An error from `cv-data` (eval transforms).
    #[error(transparent)]
    Data(#[from] cv_data::DataError),
    /// An error from candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result with [`WeightsError`].
pub type Result<T> = std::result::Result<T, WeightsError>;

impl WeightsError {
    /// An I/O error on `path`.
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        WeightsError::Io {
            path: path.into(),
            error: source,
        }
    }
}
