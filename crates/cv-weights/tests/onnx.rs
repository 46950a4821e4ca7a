//! `export_onnx` checked in tract-onnx, a pure-Rust ONNX runtime: the exported graph gives
//! the logits of cv's own eval forward (`Classifier::logits`) within 1e-4 of their maximum,
//! for generated weights (always run) and torchvision's ResNet-18 and the tutorial's CNN from
//! the parity fixtures (skipped with a notice when absent), batch 1 and 7.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use cv_data::transforms::Pipeline;
use cv_models::{init, state, Architecture, Model};
use cv_train::checkpoint::{ModelCard, MODEL_FILE};
use cv_weights::{export_onnx, resolve, Classifier, ResolveOptions, WeightsSource};
use tract_onnx::prelude::{tvec, DatumExt, Framework, InferenceModelExt, IntoRunnable};

/// Relative tolerance of the issue: max |tract - cv| <= 1e-4 * max |cv|.
const TOLERANCE: f32 = 1e-4;

/// Deterministic values in about [-2, 2] (no RNG, so a failure reproduces exactly).
fn pattern(dims: &[usize], phase: f32) -> Tensor {
    let n: usize = dims.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|i| 2.0 * ((i as f32) * 0.6180339 + phase).sin())
        .collect();
    Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
}

/// The ONNX model at `path` run by tract on `x` (NCHW f32).
fn tract_logits(path: &Path, x: &Tensor) -> Tensor {
    let dims = x.dims().to_vec();
    let plan = tract_onnx::onnx()
        .model_for_path(path)
        .unwrap()
        .with_input_fact(0, f32::fact(&dims).into())
        .unwrap()
        .into_optimized()
        .unwrap()
        .into_runnable()
        .unwrap();
    let values = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let input = tract_onnx::prelude::Tensor::from_shape(&dims, &values).unwrap();
    let out = plan.run(tvec!(input.into())).unwrap();
    let view = out[0].to_plain_array_view::<f32>().unwrap();
    let shape = view.shape().to_vec();
    Tensor::from_vec(view.iter().copied().collect(), shape, &Device::Cpu).unwrap()
}

/// Exports `source` to ONNX and checks tract against cv at each (side, batch).
fn check_against_cv(source: WeightsSource, sizes: &[(usize, usize)], dir: &Path) {
    let weights = resolve(&source, &ResolveOptions::default()).unwrap();
    let out = dir.join("model.onnx");
    let report = export_onnx(&weights, &out).unwrap();
    let classifier = Classifier::load(&weights, &Device::Cpu).unwrap();
    for (i, &(side, batch)) in sizes.iter().enumerate() {
        let x = pattern(&[batch, 3, side, side], i as f32);
        let ours = classifier.logits(&x).unwrap();
        let theirs = tract_logits(&out, &x);
        assert_eq!(theirs.dims(), ours.dims(), "{side}x{side}, batch {batch}");
        let diff = max_abs(&(&theirs - &ours).unwrap());
        let scale = max_abs(&ours);
        println!(
            "{} {side}x{side} batch {batch}: max diff {diff:.2e} of max |logit| {scale:.3} ({} BN folded)",
            weights.architecture, report.folded
        );
        assert!(
            diff <= TOLERANCE * scale,
            "{side}x{side} batch {batch}: tract differs by {diff} (max |logit| {scale})"
        );
    }
}

fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

/// A checkpoint folder (weights and `config.json`) of a freshly initialised `arch` whose
/// BatchNorms carry non-trivial statistics, so folding has something to fold.
fn generated_checkpoint(dir: &Path, arch: Architecture, classes: &[&str], size: usize) {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    Model::new(arch, classes.len(), vb).unwrap();
    init::initialise(&varmap, arch, 3).unwrap();
    let mut tensors = state::state_dict(&varmap).unwrap();
    for (k, t) in tensors.iter_mut() {
        let dims = t.dims().to_vec();
        let p = pattern(&dims, k.len() as f32);
        let stat = if k.ends_with(".running_mean") {
            Some((p * 0.2).unwrap())
        } else if k.ends_with(".running_var") {
            Some(((p.abs().unwrap() * 0.5).unwrap() + 0.3).unwrap())
        } else if k.contains("bn") && k.ends_with(".weight") {
            Some(((p * 0.25).unwrap() + 1.0).unwrap())
        } else {
            None
        };
        if let Some(s) = stat {
            *t = s;
        }
    }
    cv_train::atomic::write_safetensors(&dir.join(MODEL_FILE), &tensors).unwrap();
    let card = ModelCard {
        architecture: arch,
        classes: classes.iter().map(|c| c.to_string()).collect(),
        image_size: size,
        eval_transforms: Pipeline::none([0.5, 0.4, 0.3], [0.2, 0.25, 0.3]),
        weights_from: None,
        quantization: None,
    };
    card.write(dir).unwrap();
}

#[test]
fn generated_resnet18_and_cnn_run_in_tract_with_cvs_logits() {
    for (arch, size) in [(Architecture::ResNet18, 32), (Architecture::SimpleCnn, 32)] {
        let tmp = tempfile::tempdir().unwrap();
        let run = tmp.path().join("run");
        std::fs::create_dir(&run).unwrap();
        generated_checkpoint(&run, arch, &["cat", "dog", "ship"], size);
        check_against_cv(
            WeightsSource::Folder(run),
            &[(size, 1), (size, 7)],
            tmp.path(),
        );
    }
}

#[test]
fn metadata_says_how_to_feed_the_model() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    std::fs::create_dir(&run).unwrap();
    generated_checkpoint(&run, Architecture::ResNet18, &["cat", "dog", "ship"], 48);
    let weights = resolve(&WeightsSource::Folder(run), &ResolveOptions::default()).unwrap();
    let out = tmp.path().join("m.onnx");
    let report = export_onnx(&weights, &out).unwrap();
    assert_eq!(report.folded, 20);
    let proto = tract_onnx::onnx().proto_model_for_path(&out).unwrap();
    let meta: std::collections::HashMap<_, _> = proto
        .metadata_props
        .iter()
        .map(|e| (e.key.as_str(), e.value.as_str()))
        .collect();
    assert_eq!(meta["architecture"], "resnet18");
    assert_eq!(meta["classes"], r#"["cat","dog","ship"]"#);
    assert_eq!(meta["input_size"], "48");
    assert_eq!(meta["mean"], "[0.5,0.4,0.3]");
    assert_eq!(meta["std"], "[0.2,0.25,0.3]");
    assert_eq!(proto.opset_import[0].version, cv_models::onnx::OPSET);
    let graph = proto.graph.unwrap();
    assert!(graph.node.iter().all(|n| n.op_type != "BatchNormalization"));
    let input = &graph.input[0];
    let dims: Vec<String> = match input.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(tract_onnx::pb::type_proto::Value::TensorType(t)) => t
            .shape
            .as_ref()
            .unwrap()
            .dim
            .iter()
            .map(|d| format!("{:?}", d.value))
            .collect(),
        other => panic!("input type {other:?}"),
    };
    assert!(dims[0].contains("batch"), "{dims:?}");
    assert!(
        dims[2].contains("height") && dims[3].contains("width"),
        "{dims:?}"
    );
}

#[test]
fn parity_fixtures_run_in_tract_with_cvs_logits() {
    let Some(fixtures) = cv_testkit::fixtures::parity_dir() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let sizes: Vec<(usize, usize)> = [32, 64, 224]
        .iter()
        .flat_map(|&s| [(s, 1), (s, 7)])
        .collect();
    check_against_cv(
        WeightsSource::File(fixtures.join("resnet18.safetensors")),
        &sizes,
        tmp.path(),
    );
    check_against_cv(
        WeightsSource::File(fixtures.join("net.safetensors")),
        &[(32, 1), (32, 7)],
        tmp.path(),
    );
}
