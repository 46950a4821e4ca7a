//! torchvision-compatible state dicts: strict, all-errors-at-once loading and export.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use candle_core::{DType, Tensor};
use candle_nn::VarMap;

use crate::error::{DtypeMismatch, ModelError, Result, ShapeMismatch, StateDictMismatch};

fn is_float(d: DType) -> bool {
    matches!(d, DType::F16 | DType::BF16 | DType::F32 | DType::F64)
}

fn convertible(from: DType, to: DType) -> bool {
    if is_float(to) {
        is_float(from)
    } else {
        // Integer buffers (num_batches_tracked): any integer or float count converts.
        from.is_int() || is_float(from)
    }
}

/// Loads `tensors` (torchvision keys) into `varmap`, strictly: every model key must be
/// present (except `num_batches_tracked`, which torchvision exports often drop), no extra key
/// is allowed, shapes must match. On any problem nothing is changed and one
/// [`ModelError::StateDict`] lists every missing, unexpected, mis-shaped and unconvertible key.
/// f16/bf16/f64 tensors are converted to the model's dtype (f32).
pub fn load_state_dict(varmap: &VarMap, tensors: &HashMap<String, Tensor>) -> Result<()> {
    let data = varmap.data().lock().unwrap_or_else(|p| p.into_inner());
    let mut report = StateDictMismatch::default();
    for (key, var) in data.iter() {
        match tensors.get(key) {
            None => {
                if !key.ends_with("num_batches_tracked") {
                    report.missing.push(key.clone());
                }
            }
            Some(t) => {
                if t.dims() != var.dims() {
                    report.mismatched.push(ShapeMismatch {
                        key: key.clone(),
                        expected: var.dims().to_vec(),
                        found: t.dims().to_vec(),
                    });
                } else if !convertible(t.dtype(), var.dtype()) {
                    report.bad_dtype.push(DtypeMismatch {
                        key: key.clone(),
                        expected: format!("{:?}", var.dtype()),
                        found: format!("{:?}", t.dtype()),
                    });
                }
            }
        }
    }
    report.unexpected = tensors
        .keys()
        .filter(|k| !data.contains_key(*k))
        .cloned()
        .collect();
    report.missing.sort();
    report.unexpected.sort();
    report.mismatched.sort_by(|a, b| a.key.cmp(&b.key));
    report.bad_dtype.sort_by(|a, b| a.key.cmp(&b.key));
    if !report.is_empty() {
        return Err(ModelError::StateDict(report));
    }
    for (key, var) in data.iter() {
        if let Some(t) = tensors.get(key) {
            let t = t.to_device(var.device())?.to_dtype(var.dtype())?;
            var.set(&t)?;
        }
    }
    Ok(())
}

/// A copy of every parameter and buffer of `varmap` under its torchvision key, including
/// `num_batches_tracked` as 0-dim i64 tensors, so `torchvision.models.resnet18(num_classes=N)
/// .load_state_dict(...)` accepts it with `strict=True`. The copies do not change when
/// training continues.
pub fn state_dict(varmap: &VarMap) -> Result<HashMap<String, Tensor>> {
    let data = varmap.data().lock().unwrap_or_else(|p| p.into_inner());
    let mut out = HashMap::with_capacity(data.len());
    for (key, var) in data.iter() {
        out.insert(key.clone(), var.as_tensor().detach().copy()?);
    }
    Ok(out)
}

/// Reads a `.safetensors` file into tensors on `device`.
pub fn read_safetensors(
    path: &Path,
    device: &candle_core::Device,
) -> Result<HashMap<String, Tensor>> {
    candle_core::safetensors::load(path, device)
        .map_err(|e| ModelError::Config(format!("cannot read safetensors {}: {e}", path.display())))
}

/// Writes [`state_dict`] to `path` as safetensors, through a temporary file in the same
/// folder and a rename, so an existing good file is never left half-written.
pub fn save_safetensors(varmap: &VarMap, path: &Path) -> Result<()> {
    let tensors = state_dict(varmap)?;
    let file_name = path
        .file_name()
        .ok_or_else(|| ModelError::Config(format!("{} is not a file path", path.display())))?;
    let mut tmp_name = file_name.to_os_string();
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let io_err = |what: &str, e: &dyn std::fmt::Display| {
        ModelError::Config(format!("cannot {what} {}: {e}", path.display()))
    };
    if let Err(e) = candle_core::safetensors::save(&tensors, &tmp) {
        let _ = std::fs::remove_file(&tmp);
        return Err(io_err("write", &e));
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io_err("rename a temporary file onto", &e)
    })
}

/// Keys of `varmap`, sorted (handy for reports and tests).
pub fn keys(varmap: &VarMap) -> Vec<String> {
    let data = varmap.data().lock().unwrap_or_else(|p| p.into_inner());
    let set: HashSet<&String> = data.keys().collect();
    let mut v: Vec<String> = set.into_iter().cloned().collect();
    v.sort();
    v
}
