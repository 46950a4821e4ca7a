//! Checked loading of a `.safetensors` checkpoint into a model's `VarMap`: readable file,
//! every key and shape as the architecture expects, f16/bf16 converted to f32, and a fresh
//! head when the number of classes differs (transfer learning).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use cv_models::{state, Architecture, ModelError};

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

/// A head left freshly initialised instead of loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeadReplaced {
    /// The head module's name (`fc` or `fc3`).
    pub module: String,
    /// Outputs in the checkpoint.
    pub from_classes: usize,
    /// Outputs of the model.
    pub to_classes: usize,
}

/// The classifier head's state-dict prefix.
pub fn head_module(arch: Architecture) -> &'static str {
    match arch {
        Architecture::ResNet18 => "fc",
        Architecture::SimpleCnn => "fc3",
    }
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
    let mut tensors = read_checkpoint(path, device)?;
    let mut converted = Vec::new();
    for (key, t) in tensors.iter_mut() {
        if matches!(t.dtype(), DType::F16 | DType::BF16 | DType::F64) {
            *t = t.to_dtype(DType::F32)?;
            converted.push(key.clone());
        }
    }
    converted.sort();
    let head = head_module(arch);
    let (w_key, b_key) = (format!("{head}.weight"), format!("{head}.bias"));
    let checkpoint_classes = match tensors.get(&w_key) {
        Some(w) if w.rank() == 2 => w.dims()[0],
        Some(w) => {
            return Err(WeightsError::Mismatch {
                path: path.to_path_buf(),
                architecture: arch.to_string(),
                detail: format!(
                    "{w_key} has shape {:?}, expected [classes, features]",
                    w.dims()
                ),
            })
        }
        None => 0,
    };
    let mut head_replaced = None;
    if checkpoint_classes != 0 && checkpoint_classes != num_classes {
        // Transfer learning: keep the model's own (freshly initialised) head by loading it
        // onto itself; everything else must still match exactly.
        // (A copy: candle refuses to set a Var from a tensor sharing its storage.)
        let data = varmap.data().lock().unwrap_or_else(|p| p.into_inner());
        for key in [&w_key, &b_key] {
            match data.get(key.as_str()) {
                Some(var) => tensors.insert(key.clone(), var.as_tensor().detach().copy()?),
                None => tensors.remove(key.as_str()),
            };
        }
        drop(data);
        log::info!(
            "{}: checkpoint head {head} has {checkpoint_classes} classes, the model {num_classes}: \
             {head} replaced by a freshly initialised one",
            path.display()
        );
        head_replaced = Some(HeadReplaced {
            module: head.to_string(),
            from_classes: checkpoint_classes,
            to_classes: num_classes,
        });
    }
    let loaded = tensors.len() - if head_replaced.is_some() { 2 } else { 0 };
    state::load_state_dict(varmap, &tensors).map_err(|e| match e {
        ModelError::StateDict(m) => WeightsError::Mismatch {
            path: path.to_path_buf(),
            architecture: arch.to_string(),
            detail: m.to_string(),
        },
        other => WeightsError::Model(other),
    })?;
    log::info!(
        "{}: loaded {loaded} tensors into {arch}{}",
        path.display(),
        if converted.is_empty() {
            String::new()
        } else {
            format!(" ({} converted to f32)", converted.len())
        }
    );
    Ok(LoadReport {
        path: path.to_path_buf(),
        architecture: arch,
        loaded,
        converted,
        checkpoint_classes,
        head_replaced,
    })
}
