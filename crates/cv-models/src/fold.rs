//! BatchNorm folded into the convolution before it, for inference-only consumers (ONNX,
//! `cv export --fold-bn`): which convolution each BatchNorm of a state dict follows, and the
//! folded state. The arithmetic is `cv_ops::fold_batchnorm`'s, done here in f64.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};

use crate::error::{ModelError, Result};
use crate::Architecture;

/// The BatchNorm epsilon of every BatchNorm in these networks (torchvision's default).
pub const BN_EPS: f64 = 1e-5;

/// The convolution whose output the BatchNorm `bn` (a state-dict prefix) normalises:
/// `bn1` -> `conv1`, `layer1.0.bn2` -> `layer1.0.conv2`, `layer2.0.downsample.1` ->
/// `layer2.0.downsample.0`.
fn conv_of(bn: &str) -> Option<String> {
    if let Some(block) = bn.strip_suffix("downsample.1") {
        return Some(format!("{block}downsample.0"));
    }
    let (head, last) = bn.rsplit_once('.').map_or(("", bn), |(h, l)| (h, l));
    let k = last.strip_prefix("bn")?;
    let sep = if head.is_empty() { "" } else { "." };
    Some(format!("{head}{sep}conv{k}"))
}

/// The BatchNorms of `state` (torchvision keys), as their prefixes (`bn1`, `layer2.0.downsample.1`).
pub fn batch_norms(state: &HashMap<String, Tensor>) -> Vec<&str> {
    state
        .keys()
        .filter_map(|k| k.strip_suffix(".running_mean"))
        .collect()
}

/// `state` (torchvision keys, eval weights) with every BatchNorm folded into its convolution:
/// the BatchNorm keys are gone and each such convolution has a `bias`. Computed in f64, stored
/// as f32 on the CPU. The small CNN has no BatchNorm and comes back unchanged.
pub fn fold_batch_norm(
    arch: Architecture,
    state: &HashMap<String, Tensor>,
) -> Result<HashMap<String, Tensor>> {
    let mut out: HashMap<String, Tensor> = HashMap::new();
    let bns = batch_norms(state);
    let mut folded_keys = Vec::new();
    for bn in bns {
        let conv = conv_of(bn).ok_or_else(|| {
            ModelError::Config(format!(
                "{arch}: no convolution is known for BatchNorm {bn}"
            ))
        })?;
        let get = |key: String| {
            state.get(&key).ok_or_else(|| {
                ModelError::Config(format!("{arch}: cannot fold {bn}: the state has no {key}"))
            })
        };
        let f64 = |t: &Tensor| t.to_device(&Device::Cpu)?.to_dtype(DType::F64);
        let bias = state.get(&format!("{conv}.bias")).map(f64).transpose()?;
        let (w, b) = cv_ops::fold_batchnorm(
            &f64(get(format!("{conv}.weight"))?)?,
            bias.as_ref(),
            &f64(get(format!("{bn}.weight"))?)?,
            &f64(get(format!("{bn}.bias"))?)?,
            &f64(get(format!("{bn}.running_mean"))?)?,
            &f64(get(format!("{bn}.running_var"))?)?,
            BN_EPS,
        )
        .map_err(|e| ModelError::Config(format!("{arch}: cannot fold {bn} into {conv}: {e}")))?;
        out.insert(format!("{conv}.weight"), w.to_dtype(DType::F32)?);
        out.insert(format!("{conv}.bias"), b.to_dtype(DType::F32)?);
        folded_keys.push(conv);
        for field in [
            "weight",
            "bias",
            "running_mean",
            "running_var",
            "num_batches_tracked",
        ] {
            folded_keys.push(format!("{bn}.{field}"));
        }
    }
    for (k, t) in state {
        let taken = folded_keys.iter().any(|f| {
            k == f
                || k.strip_prefix(f.as_str())
                    .is_some_and(|r| r.starts_with('.'))
        });
        if !taken {
            out.insert(k.clone(), t.to_device(&Device::Cpu)?.to_dtype(DType::F32)?);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_nn::{VarBuilder, VarMap};

    #[test]
    fn every_batch_norm_has_its_convolution() {
        assert_eq!(conv_of("bn1").as_deref(), Some("conv1"));
        assert_eq!(conv_of("layer3.1.bn2").as_deref(), Some("layer3.1.conv2"));
        assert_eq!(
            conv_of("layer2.0.downsample.1").as_deref(),
            Some("layer2.0.downsample.0")
        );
        assert_eq!(conv_of("fc"), None);
    }

    #[test]
    fn folded_resnet_state_has_no_batch_norm_and_keeps_the_rest() -> Result<()> {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        crate::Model::new(Architecture::ResNet18, 5, vb)?;
        crate::init::initialise(&varmap, Architecture::ResNet18, 3)?;
        let state = crate::state::state_dict(&varmap)?;
        let folded = fold_batch_norm(Architecture::ResNet18, &state)?;
        assert!(folded
            .keys()
            .all(|k| !k.contains("bn") && !k.contains("downsample.1")));
        assert!(folded.contains_key("layer2.0.downsample.0.bias"));
        assert!(folded.contains_key("fc.weight") && folded.contains_key("conv1.bias"));
        // 20 convolutions: 20 weights + 20 new biases, plus fc's two.
        assert_eq!(folded.len(), 42);
        Ok(())
    }
}
