//! Parameter groups by torchvision name: buffers, no-decay parameters, fine-tuning subsets.

use candle_core::Var;
use candle_nn::VarMap;

use crate::arch::Architecture;
use crate::error::{ModelError, Result};

/// Which parameters a fine-tuning run updates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trainable {
    /// Only the classifier (`fc` for ResNet-18, `fc3` for the small CNN).
    Head,
    /// The last stage and the head: `layer4.*` + `fc.*` for ResNet-18; the three fully
    /// connected layers `fc1..fc3` for the small CNN.
    LastStage,
    /// Every parameter.
    All,
}

impl std::str::FromStr for Trainable {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().replace('-', "_").as_str() {
            "head" => Ok(Trainable::Head),
            "last_stage" => Ok(Trainable::LastStage),
            "all" => Ok(Trainable::All),
            _ => Err(ModelError::Config(format!(
                "unknown trainable group {s:?} (expected head, last_stage or all)"
            ))),
        }
    }
}

/// BatchNorm running statistics and `num_batches_tracked`: saved, never optimised.
pub fn is_buffer(name: &str) -> bool {
    let last = name.rsplit('.').next().unwrap_or(name);
    matches!(last, "running_mean" | "running_var" | "num_batches_tracked")
}

/// True for a BatchNorm scale: `...bnK.weight` or a downsample's `downsample.1.weight`.
pub fn is_batch_norm_weight(name: &str) -> bool {
    let Some(module) = name.strip_suffix(".weight") else {
        return false;
    };
    let last = module.rsplit('.').next().unwrap_or(module);
    last.starts_with("bn") || module.ends_with("downsample.1")
}

/// Parameters weight decay must skip: all biases, BatchNorm weights (and buffers, which no
/// optimizer sees anyway).
pub fn is_no_decay(name: &str) -> bool {
    is_buffer(name) || name == "bias" || name.ends_with(".bias") || is_batch_norm_weight(name)
}

/// Whether the parameter `name` of `arch` belongs to the group `which` (buffers never do).
pub fn is_trainable(name: &str, arch: Architecture, which: Trainable) -> bool {
    if is_buffer(name) {
        return false;
    }
    let prefixes: &[&str] = match (arch, which) {
        (_, Trainable::All) => return true,
        (Architecture::ResNet18, Trainable::Head) => &["fc."],
        (Architecture::ResNet18, Trainable::LastStage) => &["layer4.", "fc."],
        (Architecture::SimpleCnn, Trainable::Head) => &["fc3."],
        (Architecture::SimpleCnn, Trainable::LastStage) => &["fc1.", "fc2.", "fc3."],
    };
    prefixes.iter().any(|p| name.starts_with(p))
}

/// The `Var`s of `which`, sorted by name, never buffers: what to hand the optimizer.
pub fn trainable_vars(varmap: &VarMap, arch: Architecture, which: Trainable) -> Vec<(String, Var)> {
    let data = varmap.data().lock().unwrap_or_else(|p| p.into_inner());
    let mut vars: Vec<(String, Var)> = data
        .iter()
        .filter(|(name, _)| is_trainable(name, arch, which))
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_names() {
        assert!(is_buffer("bn1.running_mean"));
        assert!(is_buffer("layer2.0.downsample.1.num_batches_tracked"));
        assert!(!is_buffer("bn1.weight"));
        assert!(is_no_decay("bn1.weight"));
        assert!(is_no_decay("layer3.1.bn2.bias"));
        assert!(is_no_decay("layer2.0.downsample.1.weight"));
        assert!(is_no_decay("fc.bias"));
        assert!(is_no_decay("conv1.bias"));
        assert!(!is_no_decay("layer2.0.downsample.0.weight"));
        assert!(!is_no_decay("conv1.weight"));
        assert!(!is_no_decay("fc.weight"));
        assert!(!is_no_decay("fc1.weight"));
        assert!("last-stage".parse::<Trainable>().unwrap() == Trainable::LastStage);
        assert!("everything".parse::<Trainable>().is_err());
    }
}
