//! Custom candle ops with their backward passes, where candle 0.11's are wrong, missing or
//! not precise enough: max-pooling (wrong gradient, no kernel != stride) and train-mode
//! BatchNorm (f32 statistics and an autograd-composed backward lose ~1e-4 of a ResNet-18 SGD
//! loss after two steps; PyTorch accumulates in f64) — and eval-mode BatchNorm fused with
//! its residual add and ReLU (the composed candle ops are single-threaded passes that cost
//! more than the convs of an eval forward).

mod batch_norm;
mod batch_norm_eval;
mod max_pool;

pub use batch_norm::{batch_norm_train, batch_norm_train_composed, BatchStats};
pub use batch_norm_eval::{batch_norm_eval, batch_norm_eval_composed, BatchNormEvalParams};
pub use max_pool::{max_pool2d, max_pool2d_composed, MaxPool2dConfig};

use candle_core::{bail, Layout, Result};

/// The float types the CPU kernels cover.
pub(crate) trait Float:
    Copy + PartialOrd + Send + Sync + std::ops::AddAssign + 'static
{
    const ZERO: Self;
    fn is_nan_(self) -> bool;
    fn to_f64(self) -> f64;
    fn from_f64(v: f64) -> Self;
}

impl Float for f32 {
    const ZERO: Self = 0.0;
    fn is_nan_(self) -> bool {
        self.is_nan()
    }
    fn to_f64(self) -> f64 {
        self as f64
    }
    fn from_f64(v: f64) -> Self {
        v as f32
    }
}

impl Float for f64 {
    const ZERO: Self = 0.0;
    fn is_nan_(self) -> bool {
        self.is_nan()
    }
    fn to_f64(self) -> f64 {
        self
    }
    fn from_f64(v: f64) -> Self {
        v
    }
}

/// The contiguous part of `data` that `layout` describes.
pub(crate) fn contiguous_slice<'a, T>(
    data: &'a [T],
    layout: &Layout,
    what: &str,
) -> Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => bail!("{what} must be contiguous"),
    }
}
