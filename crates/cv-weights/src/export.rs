//! Weights out of `cv`: the checked state dict of resolved weights, written as safetensors
//! with torchvision names, in f32, f16 or bf16 (half the file; torchvision loads it after
//! `.float()`), optionally with BatchNorm folded into the convolutions for inference-only
//! consumers; or as an ONNX model (the eval-mode network with BatchNorm folded, see
//! [`cv_models::onnx`]) that onnxruntime, `ort` or tract run without cv.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};

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
    crate::load::load_state_for(weights, "exporting")
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
    check_output(weights, out)?;
    let state = load_state(weights)?;
    let (state, folded) = if fold_bn {
        let bns = cv_models::fold::batch_norms(&state).len();
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
    report(out, converted.len(), folded)
}

/// Writes `weights` to `out` as an ONNX model (opset [`cv_models::onnx::OPSET`], BatchNorm
/// folded, dynamic batch) whose `metadata_props` hold the class names, the input size and the
/// normalisation. Written through a temporary file like [`export_safetensors`]; `tensors`
/// in the report counts the initializers.
pub fn export_onnx(weights: &ResolvedWeights, out: &Path) -> Result<ExportReport> {
    check_output(weights, out)?;
    let state = load_state(weights)?;
    let info = cv_models::onnx::OnnxInfo {
        classes: weights.classes.clone(),
        image_size: weights.image_size,
        mean: weights.eval_transforms.mean,
        std: weights.eval_transforms.std,
    };
    let model = cv_models::onnx::to_onnx(weights.architecture, &state, &info)?;
    cv_train::atomic::write_bytes(out, &model.bytes)?;
    report(out, model.initializers, model.folded)
}

/// Refuses `out` when it is the weights' own file or its folder does not exist, before any
/// work is done.
fn check_output(weights: &ResolvedWeights, out: &Path) -> Result<()> {
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
    Ok(())
}

/// The report for the file just written to `out`.
fn report(out: &Path, tensors: usize, folded: usize) -> Result<ExportReport> {
    let bytes = std::fs::metadata(out)
        .map_err(|e| WeightsError::io(out, e))?
        .len();
    Ok(ExportReport {
        path: out.to_path_buf(),
        tensors,
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
