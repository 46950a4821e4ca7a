//! torchvision-compatible state dicts: strict, all-errors-at-once loading and export, and
//! pretrained loading with head replacement (transfer learning).

use std::collections::{HashMap, HashSet};
use std::path::Path;

use candle_core::{DType, Tensor};
use candle_nn::VarMap;

use crate::error::{DtypeMismatch, ModelError, Result, ShapeMismatch, StateDictMismatch};
use crate::Architecture;

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

/// Keys of `varmap`, sorted (handy for reports and tests).
pub fn keys(varmap: &VarMap) -> Vec<String> {
    let data = varmap.data().lock().unwrap_or_else(|p| p.into_inner());
    let set: HashSet<&String> = data.keys().collect();
    let mut v: Vec<String> = set.into_iter().cloned().collect();
    v.sort();
    v
}

/// What [`load_pretrained`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct PretrainedLoad {
    /// Tensors copied into the model.
    pub loaded: usize,
    /// Keys stored as f16, bf16 or f64 and converted to the model's f32.
    pub converted: Vec<String>,
    /// Outputs of the checkpoint's head (0 when it has none).
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

impl std::fmt::Display for HeadReplaced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "checkpoint head {m} has {} classes, the model {}: {m} replaced by a freshly \
             initialised one",
            self.from_classes,
            self.to_classes,
            m = self.module
        )
    }
}

/// Loads pretrained `tensors` into `varmap`, which holds the `arch` model built with
/// `num_classes` outputs. Strict like [`load_state_dict`], except that a head with another
/// number of outputs is not loaded and keeps its fresh initialisation (transfer learning).
pub fn load_pretrained(
    varmap: &VarMap,
    arch: Architecture,
    mut tensors: HashMap<String, Tensor>,
    num_classes: usize,
) -> Result<PretrainedLoad> {
    let mut converted: Vec<String> = tensors
        .iter()
        .filter(|(_, t)| matches!(t.dtype(), DType::F16 | DType::BF16 | DType::F64))
        .map(|(k, _)| k.clone())
        .collect();
    converted.sort();
    let head = arch.head_module();
    let (w_key, b_key) = (format!("{head}.weight"), format!("{head}.bias"));
    let checkpoint_classes = match tensors.get(&w_key) {
        Some(w) if w.rank() == 2 => w.dims()[0],
        Some(w) => {
            return Err(ModelError::Config(format!(
                "{w_key} has shape {:?}, expected [classes, features]",
                w.dims()
            )))
        }
        None => 0,
    };
    let mut head_replaced = None;
    if checkpoint_classes != 0 && checkpoint_classes != num_classes {
        // Load the model's own fresh head onto itself; everything else must still match.
        // (A copy: candle refuses to set a Var from a tensor sharing its storage.)
        let data = varmap.data().lock().unwrap_or_else(|p| p.into_inner());
        for key in [&w_key, &b_key] {
            match data.get(key.as_str()) {
                Some(var) => tensors.insert(key.clone(), var.as_tensor().detach().copy()?),
                None => tensors.remove(key.as_str()),
            };
        }
        head_replaced = Some(HeadReplaced {
            module: head.to_string(),
            from_classes: checkpoint_classes,
            to_classes: num_classes,
        });
    }
    let loaded = tensors.len() - if head_replaced.is_some() { 2 } else { 0 };
    load_state_dict(varmap, &tensors)?;
    Ok(PretrainedLoad {
        loaded,
        converted,
        checkpoint_classes,
        head_replaced,
    })
}
