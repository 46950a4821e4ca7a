//! What `--precision bf16` does to a forward pass on a device, as PyTorch's `autocast`:
//! convolutions and matrix products in bf16 with f32 sums; BatchNorm, softmax, the loss, the
//! weights, the optimizer and checkpoints in f32.
//! - CPU: `cv_ops`'s autocast scope; the tensors stay f32 and each convolution and linear
//!   layer rounds its operands to bf16 on AMX or AVX512-BF16 kernels ([`cv_ops::Bf16Kernel`]),
//!   in both directions.
//! - CUDA: the input is cast to bf16 and each layer casts its f32 weights (candle's CUDA
//!   bf16 kernels); evaluation there stays f32.
//!
//! ```no_run
//! use cv_train::autocast::Autocast;
//! use cv_train::config::Precision;
//! let device = candle_core::Device::Cpu;
//! let cast = Autocast::enter(Precision::Bf16, &device)?; // errors if the CPU lacks bf16
//! # let model: cv_models::Model = todo!(); let images: candle_core::Tensor = todo!();
//! let logits = model.forward_t(&cast.input(&images)?, false)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use crate::config::Precision;
use crate::error::{Result, TrainError};
use candle_core::{DType, Device, Tensor};

/// The arithmetic `precision` runs with on `device`, as recorded in `config.json` and the
/// log: `f32`, `bf16/amx-bf16`, `bf16/avx512-bf16` or `bf16/cuda`; an error naming what is
/// missing where bf16 cannot run.
pub fn compute_name(precision: Precision, device: &Device) -> Result<String> {
    match (precision, device) {
        (Precision::F32, _) => Ok("f32".into()),
        (Precision::Bf16, Device::Cpu) => cv_ops::bf16_kernel()
            .map(|k| format!("bf16/{k}"))
            .map_err(|e| TrainError::Config(format!("--precision bf16: {e}"))),
        (Precision::Bf16, d) if d.is_cuda() => Ok("bf16/cuda".into()),
        (Precision::Bf16, d) => Err(TrainError::Config(format!(
            "--precision bf16 runs on the CPU (AMX-BF16 or AVX512-BF16) or on CUDA, not on \
             {d:?}; use --precision f32"
        ))),
    }
}

/// A precision entered on this thread for the forwards built while it lives.
#[must_use = "the precision ends when this drops"]
pub struct Autocast {
    _cpu: Option<cv_ops::AutocastGuard>,
    cast_input: bool,
}

impl Autocast {
    /// Enters `precision` for forwards on `device` (see the module doc), or says why it
    /// cannot run there.
    pub fn enter(precision: Precision, device: &Device) -> Result<Self> {
        compute_name(precision, device)?;
        let bf16 = precision == Precision::Bf16;
        let cpu = if bf16 && device.is_cpu() {
            Some(cv_ops::autocast_bf16().map_err(|e| TrainError::Config(e.to_string()))?)
        } else {
            None
        };
        Ok(Autocast {
            _cpu: cpu,
            cast_input: bf16 && device.is_cuda(),
        })
    }

    /// The network's input in the dtype this precision feeds it (bf16 on CUDA, else as is).
    pub fn input(&self, x: &Tensor) -> Result<Tensor> {
        Ok(if self.cast_input {
            x.to_dtype(DType::BF16)?
        } else {
            x.clone()
        })
    }
}
