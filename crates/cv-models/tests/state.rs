//! Strict state-dict loading (every offending key listed) and torchvision-compatible export.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use cv_models::{init, state, Architecture, Model, ModelError};

fn build(arch: Architecture, classes: usize, seed: u64) -> VarMap {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    Model::new(arch, classes, vb).unwrap();
    init::initialise(&varmap, arch, seed).unwrap();
    varmap
}

fn values(varmap: &VarMap) -> HashMap<String, Vec<f64>> {
    state::state_dict(varmap)
        .unwrap()
        .into_iter()
        .map(|(k, t)| {
            (
                k,
                t.to_dtype(DType::F64)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap(),
            )
        })
        .collect()
}

#[test]
fn every_offending_key_is_listed_and_nothing_changes() {
    let source = build(Architecture::SimpleCnn, 10, 1);
    let target = build(Architecture::SimpleCnn, 10, 2);
    let before = values(&target);
    let mut tensors = state::state_dict(&source).unwrap();
    tensors.remove("conv2.bias");
    tensors.remove("fc1.weight");
    tensors.insert(
        "fc4.weight".into(),
        Tensor::zeros((3, 3), DType::F32, &Device::Cpu).unwrap(),
    );
    tensors.insert(
        "fc3.weight".into(),
        Tensor::zeros((5, 84), DType::F32, &Device::Cpu).unwrap(),
    );
    tensors.insert(
        "fc3.bias".into(),
        Tensor::zeros(5, DType::U8, &Device::Cpu).unwrap(),
    );
    tensors.insert(
        "conv1.bias".into(),
        Tensor::zeros(6, DType::U8, &Device::Cpu).unwrap(),
    );
    let err = state::load_state_dict(&target, &tensors).unwrap_err();
    let ModelError::StateDict(report) = &err else {
        panic!("{err}")
    };
    assert_eq!(report.missing, vec!["conv2.bias", "fc1.weight"]);
    assert_eq!(report.unexpected, vec!["fc4.weight"]);
    let shapes: Vec<(&str, &[usize], &[usize])> = report
        .mismatched
        .iter()
        .map(|m| (m.key.as_str(), m.expected.as_slice(), m.found.as_slice()))
        .collect();
    assert_eq!(
        shapes,
        vec![
            ("fc3.bias", &[10][..], &[5][..]),
            ("fc3.weight", &[10, 84][..], &[5, 84][..])
        ]
    );
    assert_eq!(report.bad_dtype.len(), 1);
    assert_eq!(report.bad_dtype[0].key, "conv1.bias");
    let msg = err.to_string();
    for needle in [
        "conv2.bias",
        "fc1.weight",
        "fc4.weight",
        "fc3.weight (expected [10, 84], found [5, 84])",
        "conv1.bias",
    ] {
        assert!(msg.contains(needle), "{needle:?} not in {msg}");
    }
    assert_eq!(before, values(&target), "a failed load changed the model");
}

#[test]
fn torchvision_head_mismatch_is_reported() {
    let Some(dir) = cv_testkit::fixtures::parity_dir() else {
        return;
    };
    let file =
        candle_core::safetensors::load(dir.join("resnet18.safetensors"), &Device::Cpu).unwrap();
    let target = build(Architecture::ResNet18, 10, 0);
    let err = state::load_state_dict(&target, &file)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("fc.weight (expected [10, 512], found [1000, 512])"),
        "{err}"
    );
    assert!(
        err.contains("fc.bias (expected [10], found [1000])"),
        "{err}"
    );
    assert!(
        !err.contains("missing"),
        "num_batches_tracked is optional: {err}"
    );
}

#[test]
fn half_and_double_precision_convert_and_counters_are_optional() {
    let source = build(Architecture::ResNet18, 4, 1);
    let target = build(Architecture::ResNet18, 4, 2);
    let want = values(&source);
    let mut tensors = HashMap::new();
    for (i, (k, t)) in state::state_dict(&source).unwrap().into_iter().enumerate() {
        if k.ends_with("num_batches_tracked") {
            continue; // torchvision exports often drop them
        }
        let dtype = [DType::F64, DType::F32][i % 2];
        tensors.insert(k, t.to_dtype(dtype).unwrap());
    }
    state::load_state_dict(&target, &tensors).unwrap();
    assert_eq!(want, values(&target));
    // f16 / bf16 round to their precision.
    for dtype in [DType::F16, DType::BF16] {
        let half: HashMap<String, Tensor> = tensors
            .iter()
            .map(|(k, t)| (k.clone(), t.to_dtype(dtype).unwrap()))
            .collect();
        state::load_state_dict(&target, &half).unwrap();
        let got = values(&target);
        let w = &got["layer1.0.conv1.weight"];
        let r = &want["layer1.0.conv1.weight"];
        let err = w
            .iter()
            .zip(r)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(err > 0.0 && err < 1e-2, "{dtype:?}: {err}");
    }
}

#[test]
fn state_dict_round_trips_with_counters() {
    let source = build(Architecture::ResNet18, 3, 5);
    // One train-mode step so the counters are not all zero.
    {
        let vb = VarBuilder::from_varmap(&source, DType::F32, &Device::Cpu);
        let model = Model::new(Architecture::ResNet18, 3, vb).unwrap();
        let x = Tensor::randn(0f32, 1.0, (2, 3, 32, 32), &Device::Cpu).unwrap();
        model.forward_t(&x, true).unwrap();
    }
    let sd = state::state_dict(&source).unwrap();
    let nbt = &sd["layer2.0.downsample.1.num_batches_tracked"];
    assert_eq!(nbt.dtype(), DType::I64);
    assert_eq!(nbt.dims(), &[] as &[usize]);
    assert_eq!(nbt.to_scalar::<i64>().unwrap(), 1);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    candle_core::safetensors::save(&sd, &path).unwrap();
    let read = state::read_safetensors(&path, &Device::Cpu).unwrap();
    let target = build(Architecture::ResNet18, 3, 6);
    state::load_state_dict(&target, &read).unwrap();
    assert_eq!(values(&source), values(&target));
    assert!(
        state::read_safetensors(&dir.path().join("absent.safetensors"), &Device::Cpu)
            .unwrap_err()
            .to_string()
            .contains("absent.safetensors")
    );
}
