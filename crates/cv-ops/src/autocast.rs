//! Which arithmetic the convolutions and matrix products use, and PyTorch's `autocast` as a
//! scope: inside [`autocast_bf16`]'s guard, [`crate::conv2d`], [`crate::conv_relu_pool2d`] and
//! [`crate::linear`] on f32 CPU tensors multiply in bf16 with f32 sums, and their backward
//! passes do too (each op keeps the precision it was built with). Everything else (BatchNorm,
//! ReLU, pooling, the loss, the optimizer) stays f32, as do the tensors and the weights.
//!
//! A thread-local scope, as `torch.autocast` is, so that every forward (training, eval, the
//! probe's feature pass, prediction) turns it on without a precision argument on each layer.

use crate::bf16::{bf16_kernel, Bf16Kernel};
use crate::error::OpsError;
use std::cell::Cell;
use std::marker::PhantomData;

/// How an op multiplies.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Precision {
    /// In the tensors' own dtype (f32 or f64).
    #[default]
    Full,
    /// f32 operands rounded to bf16, products summed in f32, on this kernel family.
    Bf16(Bf16Kernel),
}

thread_local! {
    static CURRENT: Cell<Precision> = const { Cell::new(Precision::Full) };
}

/// The precision ops built on this thread now get.
pub(crate) fn current_precision() -> Precision {
    CURRENT.with(Cell::get)
}

/// Turns bf16 arithmetic on for the ops built on this thread until the guard drops (which
/// restores what was before), or says what the CPU lacks for it.
pub fn autocast_bf16() -> Result<AutocastGuard, OpsError> {
    let kernel = bf16_kernel()?;
    let previous = CURRENT.with(|c| c.replace(Precision::Bf16(kernel)));
    Ok(AutocastGuard {
        previous,
        _thread: PhantomData,
    })
}

/// Restores the previous precision when dropped; tied to its thread.
#[must_use = "autocast ends when the guard drops"]
pub struct AutocastGuard {
    previous: Precision,
    _thread: PhantomData<*const ()>,
}

impl Drop for AutocastGuard {
    fn drop(&mut self) {
        CURRENT.with(|c| c.set(self.previous));
    }
}
