//! The real `Sgd` and `cross_entropy` reproduce PyTorch's SGD trajectories from the
//! torchvision parity fixtures (`net_sgd.json`): the small CNN's 5 steps and ResNet-18's 2
//! train-mode steps, losses within 1e-5, weights after the steps within 1e-4 relative.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::{Optimizer, VarBuilder, VarMap};
use cv_models::params::{trainable_vars, Trainable};
use cv_models::{Architecture, Model};
use cv_train::loss::cross_entropy;
use cv_train::optim::{ParamGroup, Sgd, SgdConfig};

fn load(dir: &Path, name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(dir.join(name), &Device::Cpu).unwrap()
}

fn losses(v: &serde_json::Value) -> Vec<f64> {
    v["losses_after_k_steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn model_from(
    arch: Architecture,
    classes: usize,
    weights: &HashMap<String, Tensor>,
) -> (VarMap, Model) {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let model = Model::new(arch, classes, vb).unwrap();
    cv_models::state::load_state_dict(&varmap, weights).unwrap();
    (varmap, model)
}

fn assert_close_rel(name: &str, got: &Tensor, want: &Tensor) {
    let diff = (got - want)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let scale = want
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(
        diff <= 1e-4 * scale.max(1e-6),
        "{name}: max diff {diff}, scale {scale}"
    );
}

/// Runs `steps` full-batch SGD steps and returns the losses before and after each.
fn trajectory(model: &Model, sgd: &mut Sgd, x: &Tensor, y: &Tensor, steps: usize) -> Vec<f64> {
    let mut got = Vec::new();
    for step in 0..=steps {
        let loss = cross_entropy(&model.forward_t(x, true).unwrap(), y, 0.0).unwrap();
        got.push(loss.to_scalar::<f32>().unwrap() as f64);
        if step < steps {
            sgd.backward_step(&loss).unwrap();
        }
    }
    got
}

fn sgd(lr: f64) -> SgdConfig {
    SgdConfig {
        lr,
        momentum: 0.9,
        dampening: 0.0,
        nesterov: false,
        weight_decay: 0.0,
    }
}

#[test]
fn small_cnn_five_sgd_steps_match_pytorch() {
    let Some(dir) = cv_testkit::fixtures::parity_dir() else {
        return;
    };
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("net_sgd.json")).unwrap()).unwrap();
    let (varmap, model) = model_from(Architecture::SimpleCnn, 10, &load(&dir, "net.safetensors"));
    let io = load(&dir, "net_io.safetensors");
    let vars = trainable_vars(&varmap, Architecture::SimpleCnn, Trainable::All);
    let mut opt = Sgd::with_groups(
        vec![ParamGroup {
            name: "all".into(),
            vars,
            lr_scale: 1.0,
            weight_decay: 0.0,
        }],
        sgd(0.01),
    )
    .unwrap();
    let got = trajectory(&model, &mut opt, &io["input"], &io["labels"], 5);
    let want = losses(&json);
    eprintln!("cnn losses {got:?}\n      want {want:?}");
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() <= 1e-5, "loss {g} vs {w}");
    }
    let data = varmap.data().lock().unwrap();
    for (key, var) in data.iter() {
        assert_close_rel(key, var.as_tensor(), &io[&format!("after_5_steps.{key}")]);
    }
}

#[test]
fn resnet18_two_train_mode_sgd_steps_match_pytorch() {
    let Some(dir) = cv_testkit::fixtures::parity_dir() else {
        return;
    };
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("net_sgd.json")).unwrap()).unwrap();
    let (varmap, model) = model_from(
        Architecture::ResNet18,
        1000,
        &load(&dir, "resnet18.safetensors"),
    );
    let io = load(&dir, "io.safetensors");
    // Through the candle_nn::Optimizer interface with named groups; buffers never included.
    let vars = trainable_vars(&varmap, Architecture::ResNet18, Trainable::All);
    let groups = ParamGroup::split_decay("all", vars, 1.0, 0.0);
    let mut opt = Sgd::with_groups(groups, sgd(0.001)).unwrap();
    assert_eq!(opt.param_names().len(), 62);
    assert_eq!(opt.learning_rate(), 0.001);
    let got = trajectory(
        &model,
        &mut opt,
        &io["sgd_input_64"],
        &io["sgd_labels_64"],
        2,
    );
    let want = losses(&json["resnet18_train_mode"]);
    eprintln!("resnet losses {got:?}\n         want {want:?}");
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
        assert_close_rel(
            key,
            data[key].as_tensor(),
            &io[&format!("sgd2_after.{key}")],
        );
    }
}
