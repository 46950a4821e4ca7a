//! Checked loading of a `.safetensors` checkpoint into a model's `VarMap`: readable file,
//! every key and shape as the architecture expects, f16/bf16 converted to f32, and a fresh
//! head when the number of classes differs (transfer learning).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use cv_models::state::{self, HeadReplaced};
use cv_models::{Architecture, ModelError};

use crate::error::{Result, WeightsError};

/// What [`load_into`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadReport {
    /// The checkpoint file.
    pub path: PathBuf,
    /// The architecture it was loaded into.
    pub architecture: Architecture,
    /// Tensors copied from the file into the model.
    pub loaded: usize,
    /// Keys stored as f16, bf16 or f64 in the file and converted to f32.
    pub converted: Vec<String>,
    /// Number of classes of the checkpoint's head.
    pub checkpoint_classes: usize,
    /// Set when the head was not loaded because the model has another number of classes:
    /// it keeps the initialisation it got when the model was built.
    pub head_replaced: Option<HeadReplaced>,
}

/// Reads every tensor of a safetensors file, with an error naming the file when it is
/// missing, truncated or not safetensors at all.
pub fn read_checkpoint(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    let meta = std::fs::metadata(path).map_err(|e| WeightsError::io(path, e))?;
    if !meta.is_file() {
        return Err(WeightsError::io(
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file"),
        ));
    }
    candle_core::safetensors::load(path, device).map_err(|e| WeightsError::Corrupt {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Loads the checkpoint at `path` into `varmap`, which must hold the `arch` model built
/// with `num_classes` outputs (`Model::new(arch, num_classes, VarBuilder::from_varmap(..))`).
///
/// Every key and shape is checked and all problems are reported at once. When the
/// checkpoint's head has another number of outputs than `num_classes`, the head is not
/// loaded and keeps its fresh initialisation (logged, and in [`LoadReport::head_replaced`]).
/// Values are copied into the `VarMap`'s variables, so all of them stay trainable; BatchNorm
/// statistics stay buffers.
pub fn load_into(
    varmap: &VarMap,
    arch: Architecture,
    path: &Path,
    num_classes: usize,
    device: &Device,
) -> Result<LoadReport> {
    let tensors = read_checkpoint(path, device)?;
    let load = state::load_pretrained(varmap, arch, tensors, num_classes).map_err(|e| {
        let detail = match e {
            ModelError::StateDict(m) => m.to_string(),
            ModelError::Config(m) => m,
            other => return WeightsError::Model(other),
        };
        WeightsError::Mismatch {
            path: path.to_path_buf(),
            architecture: arch.to_string(),
            detail,
        }
    })?;
    if let Some(h) = &load.head_replaced {
        log::info!("{}: {h}", path.display());
    }
    log::info!(
        "{}: loaded {} tensors into {arch}{}",
        path.display(),
        load.loaded,
        if load.converted.is_empty() {
            String::new()
        } else {
            format!(" ({} converted to f32)", load.converted.len())
        }
    );
    Ok(LoadReport {
        path: path.to_path_buf(),
        architecture: arch,
        loaded: load.loaded,
        converted: load.converted,
        checkpoint_classes: load.checkpoint_classes,
        head_replaced: load.head_replaced,
    })
}

/// Builds `weights.architecture` with one output per class name and loads `weights` into it
/// (checked as [`load_into`]); a head with another number of outputs is an error here, since
/// the class names would not match the logits, and so is an int8 checkpoint (`needs` names
/// what wanted f32 weights).
pub(crate) fn load_named(
    weights: &crate::source::ResolvedWeights,
    device: &Device,
    needs: &str,
) -> Result<(VarMap, cv_models::Model, LoadReport)> {
    if weights.int8 {
        return Err(WeightsError::NeedsFloat {
            path: weights.path.clone(),
            needs: needs.into(),
        });
    }
    let num_classes = weights.classes.len();
    let varmap = VarMap::new();
    let vb = candle_nn::VarBuilder::from_varmap(&varmap, candle_core::DType::F32, device);
    let model = cv_models::Model::new(weights.architecture, num_classes, vb)?;
    let report = load_into(
        &varmap,
        weights.architecture,
        &weights.path,
        num_classes,
        device,
    )?;
    if let Some(h) = &report.head_replaced {
        return Err(WeightsError::Mismatch {
            path: weights.path.clone(),
            architecture: weights.architecture.to_string(),
            detail: format!(
                "{} classes are named ({}) but the head {} has {} outputs",
                h.to_classes, weights.origin, h.module, h.from_classes
            ),
        });
    }
    Ok((varmap, model, report))
}

/// The checked state dict of `weights` (f32, CPU) for `needs`, which wants f32 weights.
pub(crate) fn load_state_for(
    weights: &crate::source::ResolvedWeights,
    needs: &str,
) -> Result<HashMap<String, Tensor>> {
    let (varmap, _, _) = load_named(weights, &Device::Cpu, needs)?;
    Ok(state::state_dict(&varmap)?)
}
