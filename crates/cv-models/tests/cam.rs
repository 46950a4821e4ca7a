//! Class activation maps against pytorch-grad-cam on the shared parity fixtures
//! (`scripts/make_cam_fixture.py` wrote `tests/data/cam.safetensors`).

mod common;

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use common::*;
use cv_models::state::load_state_dict;
use cv_models::{class_activation_maps, Architecture, CamMethod, Heatmap, Model};

fn reference() -> HashMap<String, Tensor> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/cam.safetensors");
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

fn model(arch: Architecture, classes: usize, weights: &HashMap<String, Tensor>) -> Model {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let m = Model::new(arch, classes, vb).unwrap();
    load_state_dict(&varmap, weights).unwrap();
    m.detached()
}

fn stack(maps: &[Heatmap]) -> Tensor {
    let (h, w) = (maps[0].height, maps[0].width);
    let v: Vec<f32> = maps.iter().flat_map(|m| m.values.clone()).collect();
    Tensor::from_vec(v, (maps.len(), h, w), &Device::Cpu).unwrap()
}

/// Checks one case: raw maps within 1e-4 of their maximum, overlay maps within 1e-3.
fn check(
    case: &str,
    model: &Model,
    x: &Tensor,
    layer: &str,
    method: CamMethod,
    r: &HashMap<String, Tensor>,
) {
    let expected_targets: Vec<i64> = r[&format!("{case}.targets")].to_vec1().unwrap();
    let expected_targets: Vec<usize> = expected_targets.iter().map(|&t| t as usize).collect();
    // The fixture's targets are either the top-1 classes or given ones: give them only when
    // they differ from the top-1, so both paths are exercised.
    let top1 = class_activation_maps(model, x, layer, method, None).unwrap();
    let maps = if top1.targets == expected_targets {
        top1
    } else {
        class_activation_maps(model, x, layer, method, Some(&expected_targets)).unwrap()
    };
    assert_eq!(maps.targets, expected_targets, "{case}: targets");
    let raw = stack(&maps.raw);
    let e = rel_err(&raw, &r[&format!("{case}.raw")]);
    eprintln!("{case}: raw max|T-R|/max|R| = {e:.3e}");
    assert!(e <= 1e-4, "{case}: raw relative error {e:.3e}");
    if let Some(expected) = r.get(&format!("{case}.map")) {
        let up = stack(&maps.upsampled);
        let d = (up - expected).unwrap().abs().unwrap().max_all().unwrap();
        let d = d.to_scalar::<f32>().unwrap();
        eprintln!("{case}: map max|T-R| = {d:.3e}");
        assert!(d <= 1e-3, "{case}: upsampled map differs by {d:.3e}");
    }
}

#[test]
fn resnet18_maps_match_pytorch_grad_cam() {
    let Some(dir) = fixtures() else { return };
    let r = reference();
    let m = model(
        Architecture::ResNet18,
        1000,
        &load(&dir, "resnet18.safetensors"),
    );
    let io = load(&dir, "io.safetensors");
    let (x224, x64) = (&io["input_224"], &io["input_64"]);
    use CamMethod::*;
    check(
        "resnet18_gradcam_layer4_224",
        &m,
        x224,
        "layer4",
        GradCam,
        &r,
    );
    check(
        "resnet18_gradcampp_layer4_224",
        &m,
        x224,
        "layer4",
        GradCamPlusPlus,
        &r,
    );
    check("resnet18_cam_layer4_224", &m, x224, "layer4", Cam, &r);
    check(
        "resnet18_gradcam_layer3_224",
        &m,
        x224,
        "layer3",
        GradCam,
        &r,
    );
    check(
        "resnet18_gradcampp_layer4_64",
        &m,
        x64,
        "layer4",
        GradCamPlusPlus,
        &r,
    );
    check("resnet18_cam_layer4_64", &m, x64, "layer4.1", Cam, &r);
    check("resnet18_gradcam_layer2_64", &m, x64, "layer2", GradCam, &r);
    check(
        "resnet18_gradcam_layer4.0_64",
        &m,
        x64,
        "layer4.0",
        GradCam,
        &r,
    );
}

#[test]
fn small_cnn_maps_match_pytorch_grad_cam() {
    let Some(dir) = fixtures() else { return };
    let r = reference();
    let m = model(Architecture::SimpleCnn, 10, &load(&dir, "net.safetensors"));
    let x = &load(&dir, "net_io.safetensors")["input"];
    check("net_gradcam_conv2", &m, x, "conv2", CamMethod::GradCam, &r);
    check(
        "net_gradcampp_conv1",
        &m,
        x,
        "conv1",
        CamMethod::GradCamPlusPlus,
        &r,
    );
}

#[test]
fn every_layer_resumes_the_forward_pass_exactly() {
    for arch in [Architecture::SimpleCnn, Architecture::ResNet18] {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let m = Model::new(arch, 5, vb).unwrap();
        cv_models::init::initialise(&varmap, arch, 1).unwrap();
        let m = m.detached();
        let x = Tensor::randn(0f32, 1.0, (2, 3, 32, 32), &Device::Cpu).unwrap();
        let logits = m.forward_t(&x, false).unwrap();
        for layer in m.layers() {
            let a = m.activation(&x, layer).unwrap();
            let resumed = m.logits_from(&a, layer).unwrap();
            let e = rel_err(&resumed, &logits);
            assert!(e <= 1e-5, "{arch} {layer}: {e:.3e}");
        }
    }
}

#[test]
fn bad_requests_are_errors() {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let m = Model::new(Architecture::SimpleCnn, 3, vb).unwrap();
    let x = Tensor::zeros((2, 3, 32, 32), DType::F32, &Device::Cpu).unwrap();
    let err = class_activation_maps(&m, &x, "layer4", CamMethod::GradCam, None).unwrap_err();
    assert!(err.to_string().contains("conv1, conv2"), "{err}");
    let err = class_activation_maps(&m, &x, "conv2", CamMethod::Cam, None).unwrap_err();
    assert!(err.to_string().contains("use gradcam"), "{err}");
    let err =
        class_activation_maps(&m, &x, "conv2", CamMethod::GradCam, Some(&[0, 3])).unwrap_err();
    assert!(err.to_string().contains("out of range"), "{err}");
    let err = class_activation_maps(&m, &x, "conv2", CamMethod::GradCam, Some(&[0])).unwrap_err();
    assert!(
        err.to_string().contains("1 target classes for 2 images"),
        "{err}"
    );
}

#[test]
fn jet_matches_opencv_within_one_level() {
    let lut: Vec<u8> = reference()["jet"].flatten_all().unwrap().to_vec1().unwrap();
    for level in 0..=255u8 {
        let ours = cv_models::cam::jet(level);
        for c in 0..3 {
            let theirs = lut[3 * level as usize + c];
            assert!(
                ours[c].abs_diff(theirs) <= 1,
                "level {level}: {ours:?} vs opencv {theirs} in channel {c}"
            );
        }
    }
}
