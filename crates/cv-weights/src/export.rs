//! Weights out of `cv`: the checked state dict of resolved weights, written as safetensors
//! with torchvision names, in f32, f16 or bf16 (half the file; torchvision loads it after
//! `.float()`), optionally with BatchNorm folded into the convolutions for inference-only
//! consumers.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use crate::error::{Result, WeightsError};
use crate::source::ResolvedWeights;

/// The float type of the written tensors (integer buffers such as `num_batches_tracked`
/// keep theirs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportDtype {
    /// 32-bit floats, as trained.
    F32,
    /// IEEE half precision.
    F16,
    /// bfloat16.
    Bf16,
}

impl ExportDtype {
    fn dtype(self) -> DType {
        match self {
            ExportDtype::F32 => DType::F32,
            ExportDtype::F16 => DType::F16,
            ExportDtype::Bf16 => DType::BF16,
        }
    }
}

/// What [`export_safetensors`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportReport {
    /// The file written.
    pub path: PathBuf,
    /// How many tensors it holds.
    pub tensors: usize,
    /// Its size in bytes.
    pub bytes: u64,
    /// How many BatchNorms were folded (0 without folding).
    pub folded: usize,
}

/// The weights' state dict (torchvision keys, f32, on the CPU) after the same checks as
/// [`crate::Classifier::load`]: every key and shape as the architecture expects, a head with
/// one output per class name.
pub fn load_state(weights: &ResolvedWeights) -> Result<HashMap<String, Tensor>> {
    let (varmap, _, _) = crate::load::load_named(weights, &Device::Cpu)?;
    Ok(cv_models::state::state_dict(&varmap)?)
}

/// Writes `weights` to `out` as safetensors in `dtype`, BatchNorm folded when `fold_bn`.
/// The file is written to a temporary name and renamed, so a failure leaves nothing behind
/// and an existing `out` untouched; `out` may not be the weights' own file.
pub fn export_safetensors(
    weights: &ResolvedWeights,
    dtype: ExportDtype,
    fold_bn: bool,
    out: &Path,
) -> Result<ExportReport> {
    if same_file(out, &weights.path) {
        return Err(WeightsError::io(
            out,
            std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "is the file being exported; write to another path",
            ),
        ));
    }
    let folder = out.parent().filter(|p| !p.as_os_str().is_empty());
    if folder.is_some_and(|f| !f.is_dir()) {
        return Err(WeightsError::io(
            out,
            std::io::Error::new(std::io::ErrorKind::NotFound, "its folder does not exist"),
        ));
    }
    let state = load_state(weights)?;
    let (state, folded) = if fold_bn {
        let bns = state
            .keys()
            .filter(|k| k.ends_with(".running_mean"))
            .count();
        let folded = cv_models::fold::fold_batch_norm(weights.architecture, &state)?;
        (folded, bns)
    } else {
        (state, 0)
    };
    let mut converted = HashMap::with_capacity(state.len());
    for (k, t) in state {
        let t = if t.dtype().is_float() {
            t.to_dtype(dtype.dtype())?
        } else {
            t
        };
        converted.insert(k, t);
    }
    write(out, &converted)?;
    let bytes = std::fs::metadata(out)
        .map_err(|e| WeightsError::io(out, e))?
        .len();
    Ok(ExportReport {
        path: out.to_path_buf(),
        tensors: converted.len(),
        bytes,
        folded,
    })
}

/// Writes `tensors` to `out` through a temporary file (nothing is left behind on failure).
fn write(out: &Path, tensors: &HashMap<String, Tensor>) -> Result<()> {
    cv_train::atomic::write_with(out, |tmp| {
        candle_core::safetensors::save(tensors, tmp)
            .map_err(|e| cv_train::TrainError::io(out, std::io::Error::other(e.to_string())))
    })?;
    Ok(())
}

/// Whether `a` and `b` name the same existing file.
fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}
