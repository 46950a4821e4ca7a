//! The one error type of this crate; it travels inside `candle_core::Error` because the ops run
//! behind candle's `CustomOp` traits, whose methods return candle's error.

/// Why a convolution could not run.
#[derive(Clone, Debug, thiserror::Error)]
pub enum OpsError {
    /// A tensor did not have the rank or shape the op needs.
    #[error("{op}: {what} has shape {shape:?}, expected {expected}")]
    Shape {
        /// The op that refused it.
        op: &'static str,
        /// Which argument.
        what: &'static str,
        /// Its shape.
        shape: Vec<usize>,
        /// What was expected instead.
        expected: String,
    },
    /// Input and weight disagree (channels, dtypes, devices).
    #[error("{op}: {message}")]
    Mismatch {
        /// The op that refused it.
        op: &'static str,
        /// What disagreed.
        message: String,
    },
    /// Arguments that are not all f32 or all f64, the dtypes the CPU kernels implement (the
    /// public functions fall back to candle instead).
    #[error("{op}: the CPU kernel takes all-f32 or all-f64 arguments, got {dtype}")]
    DType {
        /// The op that refused it.
        op: &'static str,
        /// Each argument's name and dtype.
        dtype: String,
    },
    /// The CPU lacks what a requested arithmetic needs.
    #[error("{what}: {reason}")]
    Unsupported {
        /// What was asked for.
        what: String,
        /// What the CPU lacks.
        reason: String,
    },
    /// A tensor's memory layout is not contiguous where the kernel needs it to be.
    #[error("{op}: {what} is not contiguous")]
    Layout {
        /// The op that refused it.
        op: &'static str,
        /// Which argument.
        what: &'static str,
    },
}

impl From<OpsError> for candle_core::Error {
    fn from(e: OpsError) -> Self {
        candle_core::Error::wrap(e)
    }
}
