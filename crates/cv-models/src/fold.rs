//! BatchNorm folded into the convolution before it, for inference-only consumers (ONNX,
//! `cv export --fold-bn`): eval-mode `bn(conv(x))` equals `conv'(x)` with
//! `w' = w * g / sqrt(v + eps)` per output channel and `b' = beta + (b - mean) * g / sqrt(v + eps)`.

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

/// `state` (torchvision keys, eval weights) with every BatchNorm folded into its convolution:
/// the BatchNorm keys are gone and each such convolution has a `bias`. Computed in f64, stored
/// as f32 on the CPU. The small CNN has no BatchNorm and comes back unchanged.
pub fn fold_batch_norm(
    arch: Architecture,
    state: &HashMap<String, Tensor>,
) -> Result<HashMap<String, Tensor>> {
    let mut out: HashMap<String, Tensor> = HashMap::new();
    let bns: Vec<&str> = state
        .keys()
        .filter_map(|k| k.strip_suffix(".running_mean"))
        .collect();
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
        let f64s = |t: &Tensor| -> Result<Vec<f64>> {
            Ok(t.to_device(&Device::Cpu)?
                .to_dtype(DType::F64)?
                .flatten_all()?
                .to_vec1()?)
        };
        let gamma = f64s(get(format!("{bn}.weight"))?)?;
        let beta = f64s(get(format!("{bn}.bias"))?)?;
        let mean = f64s(get(format!("{bn}.running_mean"))?)?;
        let var = f64s(get(format!("{bn}.running_var"))?)?;
        let weight = get(format!("{conv}.weight"))?;
        let dims = weight.dims().to_vec();
        let w = f64s(weight)?;
        let bias = match state.get(&format!("{conv}.bias")) {
            Some(b) => f64s(b)?,
            None => vec![0.0; dims[0]],
        };
        let channels = dims[0];
        if [gamma.len(), beta.len(), mean.len(), var.len(), bias.len()] != [channels; 5] {
            return Err(ModelError::Config(format!(
                "{arch}: {bn} does not have one value per output channel of {conv} ({channels})"
            )));
        }
        let per = w.len() / channels;
        let scale: Vec<f64> = (0..channels)
            .map(|o| gamma[o] / (var[o] + BN_EPS).sqrt())
            .collect();
        let w: Vec<f32> = w
            .iter()
            .enumerate()
            .map(|(i, v)| (v * scale[i / per]) as f32)
            .collect();
        let b: Vec<f32> = (0..channels)
            .map(|o| (beta[o] + (bias[o] - mean[o]) * scale[o]) as f32)
            .collect();
        out.insert(
            format!("{conv}.weight"),
            Tensor::from_vec(w, dims, &Device::Cpu)?,
        );
        out.insert(
            format!("{conv}.bias"),
            Tensor::from_vec(b, channels, &Device::Cpu)?,
        );
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
