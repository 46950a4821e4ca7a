//! Parity with torchvision / PyTorch on the fixtures in ../shared/fixtures/torchvision-parity.

mod common;

use std::collections::HashMap;

use candle_core::{DType, Device, ModuleT, Tensor};
use candle_nn::{VarBuilder, VarMap};
use common::*;
use cv_models::params::{self, Trainable};
use cv_models::state::load_state_dict;
use cv_models::{resnet18, simple_cnn, Architecture, ResNet, SimpleCnn};

fn resnet_from_fixture(weights: &HashMap<String, Tensor>) -> (VarMap, ResNet) {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let model = resnet18(1000, vb).unwrap();
    load_state_dict(&varmap, weights).unwrap();
    (varmap, model)
}

fn cnn_from_fixture(weights: &HashMap<String, Tensor>) -> (VarMap, SimpleCnn) {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let model = simple_cnn(10, vb).unwrap();
    load_state_dict(&varmap, weights).unwrap();
    (varmap, model)
}

fn net_sgd_json(dir: &std::path::Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("net_sgd.json")).unwrap()).unwrap()
}

fn losses(v: &serde_json::Value) -> Vec<f64> {
    v["losses_after_k_steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

#[test]
fn resnet18_eval_logits_and_stages() {
    let Some(dir) = fixtures() else { return };
    let (_vm, model) = resnet_from_fixture(&load(&dir, "resnet18.safetensors"));
    let io = load(&dir, "io.safetensors");
    // Eval on the detached twin: no graph, same numbers.
    let eval = model.detached();

    let logits = eval.forward_t(&io["input_224"], false).unwrap();
    assert_parity("logits_224", &logits, &io["logits_224"]);

    let s = eval.forward_stages(&io["input_64"], false).unwrap();
    assert_parity("stem_64", &s.stem, &io["stem_64"]);
    for (i, l) in s.layers.iter().enumerate() {
        let key = format!("layer{}_64", i + 1);
        assert_parity(&key, l, &io[&key]);
    }
    assert_parity("features_64", &s.features, &io["features_64"]);
    assert_parity("logits_64", &s.logits, &io["logits_64"]);
    // The trainable model gives the same logits as its detached twin.
    let direct = model.forward_t(&io["input_64"], false).unwrap();
    assert_eq!(rel_err(&direct, &s.logits), 0.0);
}

#[test]
fn resnet18_train_mode_logits_and_running_stats() {
    let Some(dir) = fixtures() else { return };
    let (varmap, model) = resnet_from_fixture(&load(&dir, "resnet18.safetensors"));
    let io = load(&dir, "io.safetensors");
    let logits = model.forward_t(&io["input_64"], true).unwrap();
    assert_parity("train_mode_logits_64", &logits, &io["train_mode_logits_64"]);
    let vars = varmap.data().lock().unwrap();
    for key in [
        "bn1.running_mean",
        "bn1.running_var",
        "layer4.1.bn2.running_mean",
        "layer4.1.bn2.running_var",
    ] {
        let want = &io[&format!("train_mode_after_{key}")];
        assert_parity(key, vars[key].as_tensor(), want);
    }
    let tracked = vars["layer3.0.downsample.1.num_batches_tracked"].as_tensor();
    assert_eq!(tracked.dtype(), DType::I64);
    assert_eq!(tracked.to_scalar::<i64>().unwrap(), 1);
}

#[test]
fn resnet18_train_mode_sgd_matches_pytorch() {
    let Some(dir) = fixtures() else { return };
    let (varmap, model) = resnet_from_fixture(&load(&dir, "resnet18.safetensors"));
    let io = load(&dir, "io.safetensors");
    let want = losses(&net_sgd_json(&dir)["resnet18_train_mode"]);
    let vars = params::trainable_vars(&varmap, Architecture::ResNet18, Trainable::All);
    assert_eq!(vars.len(), 62, "conv/bn/fc parameters, no buffers");
    let mut sgd = MomentumSgd::new(vars, 0.001, 0.9);
    let (x, y) = (&io["sgd_input_64"], &io["sgd_labels_64"]);
    let mut got = Vec::new();
    for step in 0..3 {
        let loss = cross_entropy(&model.forward_t(x, true).unwrap(), y);
        got.push(loss.to_scalar::<f32>().unwrap() as f64);
        if step < 2 {
            sgd.step(&loss);
        }
    }
    eprintln!("resnet losses {got:?} vs {want:?}");
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() <= 1e-5, "loss {g} vs {w}");
    }
    let data = varmap.data().lock().unwrap();
    for key in [
        "conv1.weight",
        "fc.bias",
        "layer4.1.bn2.weight",
        "bn1.running_mean",
        "bn1.running_var",
    ] {
        let r = &io[&format!("sgd2_after.{key}")];
        assert_parity(&format!("sgd2_after.{key}"), data[key].as_tensor(), r);
    }
}

#[test]
fn simple_cnn_logits_and_sgd_trajectory() {
    let Some(dir) = fixtures() else { return };
    let (varmap, model) = cnn_from_fixture(&load(&dir, "net.safetensors"));
    let io = load(&dir, "net_io.safetensors");
    let (x, y) = (&io["input"], &io["labels"]);
    let logits = model.forward_t(x, false).unwrap();
    assert_parity("net logits", &logits, &io["logits"]);

    let want = losses(&net_sgd_json(&dir));
    let vars = params::trainable_vars(&varmap, Architecture::SimpleCnn, Trainable::All);
    assert_eq!(vars.len(), 10);
    let mut sgd = MomentumSgd::new(vars, 0.01, 0.9);
    let mut got = Vec::new();
    for step in 0..6 {
        let logits = model.forward_t(x, true).unwrap();
        let loss = cross_entropy(&logits, y);
        got.push(loss.to_scalar::<f32>().unwrap() as f64);
        if step < 5 {
            sgd.step(&loss);
        } else {
            assert_parity(
                "net logits_after_5_steps",
                &logits,
                &io["logits_after_5_steps"],
            );
        }
    }
    eprintln!("net losses {got:?} vs {want:?}");
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() <= 1e-5, "loss {g} vs {w}");
    }
    let data = varmap.data().lock().unwrap();
    for (key, var) in data.iter() {
        let r = &io[&format!("after_5_steps.{key}")];
        assert_parity(&format!("after_5_steps.{key}"), var.as_tensor(), r);
    }
}

/// bf16 autocast on the CPU against PyTorch's (`torch.autocast("cpu", torch.bfloat16)`, eval
/// mode; `scripts/make_autocast_fixture.py` wrote the logits from the shared fixtures): within
/// 2e-2 of the largest logit, for ResNet-18 at 224 and 64 and for the small CNN.
#[test]
fn bf16_logits_match_pytorch_autocast() {
    let Some(dir) = fixtures() else { return };
    let guard = match cv_ops::autocast_bf16() {
        Ok(g) => g,
        Err(e) => {
            eprintln!("notice: {e}; bf16 parity is not tested on this CPU");
            return;
        }
    };
    let want = candle_core::safetensors::load(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/autocast_bf16.safetensors"
        ),
        &Device::Cpu,
    )
    .unwrap();
    let (_vm, resnet) = resnet_from_fixture(&load(&dir, "resnet18.safetensors"));
    let io = load(&dir, "io.safetensors");
    let (_vn, net) = cnn_from_fixture(&load(&dir, "net.safetensors"));
    let net_io = load(&dir, "net_io.safetensors");
    let got = [
        (
            "resnet18_logits_224",
            resnet.forward_t(&io["input_224"], false).unwrap(),
        ),
        (
            "resnet18_logits_64",
            resnet.forward_t(&io["input_64"], false).unwrap(),
        ),
        ("net_logits", net.forward(&net_io["input"]).unwrap()),
    ];
    drop(guard);
    let f32_logits = [&io["logits_224"], &io["logits_64"], &net_io["logits"]];
    for ((key, logits), f32_ref) in got.iter().zip(f32_logits) {
        let e = rel_err(logits, &want[*key]);
        eprintln!(
            "{key}: bf16 vs PyTorch autocast {e:.3e}, vs f32 {:.3e}",
            rel_err(logits, f32_ref)
        );
        assert!(
            e <= 2e-2,
            "{key}: {e:.3e} of max|logit| from PyTorch's autocast"
        );
        // The run was in bf16: further from f32 than f32 runs are from each other.
        assert!(
            rel_err(logits, f32_ref) > 1e-4,
            "{key}: equals f32, bf16 not applied?"
        );
    }
}
