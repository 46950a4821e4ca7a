//! Loading, resolving and classifying with real checkpoints: generated ones (fast, always
//! run) and the torchvision parity fixtures (skipped with a notice when absent).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use cv_data::transforms::Pipeline;
use cv_models::{init, state, Architecture, Model};
use cv_testkit::http::{Response, TestServer};
use cv_train::checkpoint::{ModelCard, MODEL_FILE};
use cv_weights::hub::HubConfig;
use cv_weights::source::read_header;
use cv_weights::{
    export_safetensors, find, load_into, resolve, Classifier, ExportDtype, ResolveOptions,
    WeightsError, WeightsSource,
};
use image::RgbImage;

const COMMIT: &str = "fedcba9876543210fedcba9876543210fedcba98";

fn model(arch: Architecture, classes: usize, seed: Option<u64>) -> (VarMap, Model) {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let model = Model::new(arch, classes, vb).unwrap();
    if let Some(seed) = seed {
        init::initialise(&varmap, arch, seed).unwrap();
    }
    (varmap, model)
}

/// A small-CNN checkpoint with `classes` outputs, written by the trainer's checkpoint writer.
fn cnn_checkpoint(dir: &Path, classes: usize, seed: u64) -> (PathBuf, VarMap) {
    let (varmap, _) = model(Architecture::SimpleCnn, classes, Some(seed));
    let path = dir.join(MODEL_FILE);
    cv_train::atomic::write_safetensors(&path, &state::state_dict(&varmap).unwrap()).unwrap();
    (path, varmap)
}

fn tensor(varmap: &VarMap, key: &str) -> Tensor {
    varmap.data().lock().unwrap()[key].as_tensor().detach()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

fn max_abs(a: &Tensor) -> f32 {
    a.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

fn images(n: usize, w: u32, h: u32) -> Vec<RgbImage> {
    (0..n)
        .map(|k| {
            RgbImage::from_fn(w, h, |x, y| {
                image::Rgb([
                    (x * 5 + k as u32 * 40) as u8,
                    (y * 3) as u8,
                    ((x + y) * 2) as u8,
                ])
            })
        })
        .collect()
}

fn hub_route(server: &TestServer, repo: &str, body: Vec<u8>) {
    server.route(
        &format!("/{repo}/resolve/main/model.safetensors"),
        Response::ok(body)
            .header("ETag", "\"e1\"")
            .header("X-Repo-Commit", COMMIT),
    );
}

fn hub_options(server: &TestServer, home: &Path) -> ResolveOptions {
    ResolveOptions {
        hub: Some(HubConfig::new(server.url(), home.join("hub"))),
        ..Default::default()
    }
}

#[test]
fn load_into_fills_trainable_vars_and_checks_everything() {
    let dir = tempfile::tempdir().unwrap();
    let (path, source) = cnn_checkpoint(dir.path(), 10, 1);
    let (varmap, _model) = model(Architecture::SimpleCnn, 10, Some(2));
    let report = load_into(&varmap, Architecture::SimpleCnn, &path, 10, &Device::Cpu).unwrap();
    assert_eq!(report.loaded, 10);
    assert_eq!(report.checkpoint_classes, 10);
    assert!(report.head_replaced.is_none() && report.converted.is_empty());
    for key in state::keys(&source) {
        assert_eq!(
            max_abs_diff(&tensor(&varmap, &key), &tensor(&source, &key)),
            0.0,
            "{key}"
        );
    }
    // Loaded values live in the VarMap's Vars: a backward pass reaches them.
    let m = Model::new(
        Architecture::SimpleCnn,
        10,
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
    )
    .unwrap();
    let x = Tensor::ones((1, 3, 32, 32), DType::F32, &Device::Cpu).unwrap();
    let grads = m
        .forward_t(&x, true)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let conv1 = varmap.data().lock().unwrap()["conv1.weight"].clone();
    assert!(
        grads.get(conv1.as_tensor()).is_some(),
        "conv1.weight is trainable"
    );
}

#[test]
fn other_class_count_keeps_a_fresh_head() {
    let dir = tempfile::tempdir().unwrap();
    let (path, source) = cnn_checkpoint(dir.path(), 10, 1);
    let (varmap, _model) = model(Architecture::SimpleCnn, 4, Some(7));
    let fresh_w = tensor(&varmap, "fc3.weight").copy().unwrap();
    let report = load_into(&varmap, Architecture::SimpleCnn, &path, 4, &Device::Cpu).unwrap();
    let h = report.head_replaced.clone().unwrap();
    assert_eq!(
        (h.module.as_str(), h.from_classes, h.to_classes),
        ("fc3", 10, 4)
    );
    assert_eq!(report.loaded, 8);
    assert_eq!(tensor(&varmap, "fc3.weight").dims(), &[4, 84]);
    assert_eq!(
        max_abs_diff(&tensor(&varmap, "fc3.weight"), &fresh_w),
        0.0,
        "head keeps its init"
    );
    assert_eq!(
        max_abs_diff(
            &tensor(&varmap, "fc2.weight"),
            &tensor(&source, "fc2.weight")
        ),
        0.0
    );
}

#[test]
fn missing_key_and_wrong_shape_name_file_and_keys() {
    let dir = tempfile::tempdir().unwrap();
    let (_, source) = cnn_checkpoint(dir.path(), 10, 1);
    let mut tensors: HashMap<String, Tensor> = state::state_dict(&source).unwrap();
    tensors.remove("conv2.bias");
    let w = tensors["fc1.weight"].clone();
    tensors.insert("fc1.weight".into(), w.reshape((400, 120)).unwrap());
    tensors.insert(
        "fc9.weight".into(),
        Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap(),
    );
    let bad = dir.path().join("bad.safetensors");
    candle_core::safetensors::save(&tensors, &bad).unwrap();

    let (varmap, _m) = model(Architecture::SimpleCnn, 10, Some(3));
    let before = tensor(&varmap, "conv1.weight").copy().unwrap();
    let err = load_into(&varmap, Architecture::SimpleCnn, &bad, 10, &Device::Cpu).unwrap_err();
    assert!(matches!(err, WeightsError::Mismatch { .. }), "{err:?}");
    let msg = err.to_string();
    for part in [
        bad.display().to_string().as_str(),
        "missing",
        "conv2.bias",
        "fc1.weight",
        "[120, 400]",
        "[400, 120]",
        "fc9.weight",
    ] {
        assert!(msg.contains(part), "{part:?} not in {msg}");
    }
    assert_eq!(
        max_abs_diff(&tensor(&varmap, "conv1.weight"), &before),
        0.0,
        "nothing loaded on error"
    );
}

#[test]
fn half_precision_is_converted_to_f32() {
    let dir = tempfile::tempdir().unwrap();
    let (_, source) = cnn_checkpoint(dir.path(), 10, 1);
    for dtype in [DType::F16, DType::BF16] {
        let tensors: HashMap<String, Tensor> = state::state_dict(&source)
            .unwrap()
            .into_iter()
            .map(|(k, t)| (k, t.to_dtype(dtype).unwrap()))
            .collect();
        let path = dir.path().join(format!("{dtype:?}.safetensors"));
        candle_core::safetensors::save(&tensors, &path).unwrap();
        let (varmap, _m) = model(Architecture::SimpleCnn, 10, Some(3));
        let report = load_into(&varmap, Architecture::SimpleCnn, &path, 10, &Device::Cpu).unwrap();
        assert_eq!(report.converted.len(), 10, "{dtype:?}");
        let got = tensor(&varmap, "fc1.weight");
        assert_eq!(got.dtype(), DType::F32);
        let want = tensor(&source, "fc1.weight");
        assert!(
            max_abs_diff(&got, &want) <= 1e-2 * max_abs(&want),
            "{dtype:?}"
        );
    }
}

#[test]
fn truncated_or_garbage_files_are_corrupt_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = cnn_checkpoint(dir.path(), 10, 1);
    let bytes = std::fs::read(&path).unwrap();
    let cut = dir.path().join("cut.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let garbage = dir.path().join("garbage.safetensors");
    std::fs::write(&garbage, b"PK\x03\x04 this is a zip, not safetensors").unwrap();
    for p in [&cut, &garbage] {
        let (varmap, _m) = model(Architecture::SimpleCnn, 10, None);
        let err = load_into(&varmap, Architecture::SimpleCnn, p, 10, &Device::Cpu).unwrap_err();
        assert!(matches!(err, WeightsError::Corrupt { .. }), "{err:?}");
        assert!(err.to_string().contains(&p.display().to_string()), "{err}");
    }
    assert!(matches!(
        read_header(&garbage),
        Err(WeightsError::Corrupt { .. })
    ));
    let missing = dir.path().join("nope.safetensors");
    let (varmap, _m) = model(Architecture::SimpleCnn, 10, None);
    let err = load_into(&varmap, Architecture::SimpleCnn, &missing, 10, &Device::Cpu).unwrap_err();
    assert!(err.to_string().contains("nope.safetensors"), "{err}");
}

#[test]
fn parse_tells_names_files_and_folders_apart() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = cnn_checkpoint(dir.path(), 3, 1);
    assert!(
        matches!(WeightsSource::parse("resnet18.tv_in1k").unwrap(), WeightsSource::Registry(p) if p.name == "resnet18.tv_in1k")
    );
    assert_eq!(
        WeightsSource::parse(path.to_str().unwrap()).unwrap(),
        WeightsSource::File(path.clone())
    );
    assert_eq!(
        WeightsSource::parse(dir.path().to_str().unwrap()).unwrap(),
        WeightsSource::Folder(dir.path().to_path_buf())
    );
    let err = WeightsSource::parse("runs/none/model.safetensors")
        .unwrap_err()
        .to_string();
    assert!(err.contains("runs/none/model.safetensors"), "{err}");
    let err = WeightsSource::parse("resnet99").unwrap_err().to_string();
    assert!(
        err.contains("resnet99") && err.contains("resnet18.tv_in1k"),
        "{err}"
    );
}

#[test]
fn checkpoint_folder_with_card_classifies_with_its_classes() {
    let dir = tempfile::tempdir().unwrap();
    let (_, source) = cnn_checkpoint(dir.path(), 3, 5);
    let card = ModelCard {
        architecture: Architecture::SimpleCnn,
        classes: vec!["ant".into(), "bee".into(), "cat".into()],
        image_size: 32,
        eval_transforms: Pipeline::none([0.5; 3], [0.5; 3]),
        weights_from: None,
        quantization: None,
    };
    card.write(dir.path()).unwrap();
    let src = WeightsSource::parse(dir.path().to_str().unwrap()).unwrap();
    let w = resolve(&src, &ResolveOptions::default()).unwrap();
    assert_eq!(w.architecture, Architecture::SimpleCnn);
    assert_eq!(w.classes, card.classes);
    assert_eq!(w.eval_transforms, card.eval_transforms);
    assert!(w.note.is_none());

    let clf = Classifier::load(&w, &Device::Cpu).unwrap();
    let imgs = images(3, 32, 32);
    let top = clf.classify(&imgs, 5).unwrap();
    assert_eq!(top.len(), 3);
    let x = clf.preprocess(&imgs).unwrap();
    // The classifier's logits are the source weights' logits on the same normalised input.
    let direct = {
        let vm = VarMap::new();
        let m = Model::new(
            Architecture::SimpleCnn,
            3,
            VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu),
        )
        .unwrap();
        state::load_state_dict(&vm, &state::state_dict(&source).unwrap()).unwrap();
        m.forward_t(&x, false).unwrap()
    };
    assert_eq!(max_abs_diff(&clf.logits(&x).unwrap(), &direct), 0.0);
    let probs = candle_nn::ops::softmax(&direct, 1)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    for (row, preds) in probs.iter().zip(&top) {
        assert_eq!(preds.len(), 3, "top_k is clamped to the number of classes");
        assert!(preds.windows(2).all(|p| p[0].2 >= p[1].2));
        let sum: f32 = preds.iter().map(|p| p.2).sum();
        assert!((sum - 1.0).abs() < 1e-5);
        for (i, name, p) in preds {
            assert_eq!(name, &card.classes[*i]);
            assert!((row[*i] - p).abs() < 1e-6);
        }
    }
    // Images of another size are refused with the CNN's clear error, not a panic.
    assert!(clf.classify(&images(1, 40, 40), 1).is_err());
    assert!(clf.classify(&imgs, 0).is_err());

    // mean/std options override the card, with a note.
    let opts = ResolveOptions {
        mean: Some([0.1, 0.2, 0.3]),
        ..Default::default()
    };
    let w2 = resolve(&src, &opts).unwrap();
    assert_eq!(w2.eval_transforms.mean, [0.1, 0.2, 0.3]);
    assert!(w2.note.unwrap().contains("options"));
}

#[test]
fn card_with_other_class_count_than_head_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    cnn_checkpoint(dir.path(), 3, 5);
    ModelCard {
        architecture: Architecture::SimpleCnn,
        classes: vec!["a".into(), "b".into()],
        image_size: 32,
        eval_transforms: Pipeline::none([0.5; 3], [0.5; 3]),
        weights_from: None,
        quantization: None,
    }
    .write(dir.path())
    .unwrap();
    let w = resolve(
        &WeightsSource::Folder(dir.path().to_path_buf()),
        &ResolveOptions::default(),
    )
    .unwrap();
    let err = Classifier::load(&w, &Device::Cpu).unwrap_err().to_string();
    assert!(
        err.contains("2 classes") && err.contains("3 outputs"),
        "{err}"
    );
}

#[test]
fn bare_file_infers_architecture_and_classes() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = cnn_checkpoint(dir.path(), 7, 1);
    let w = resolve(
        &WeightsSource::File(path.clone()),
        &ResolveOptions::default(),
    )
    .unwrap();
    assert_eq!(w.architecture, Architecture::SimpleCnn);
    assert_eq!(
        w.classes,
        (0..7).map(|i| format!("class_{i}")).collect::<Vec<_>>()
    );
    assert_eq!(w.eval_transforms.mean, cv_weights::registry::IMAGENET_MEAN);
    let note = w.note.clone().unwrap();
    assert!(
        note.contains("inferred") && note.contains("ImageNet"),
        "{note}"
    );
    let clf = Classifier::load(&w, &Device::Cpu).unwrap();
    assert_eq!(clf.classify(&images(2, 50, 40), 2).unwrap().len(), 2);

    let no_head = dir.path().join("nohead.safetensors");
    let t: HashMap<String, Tensor> = [(
        "conv1.weight".to_string(),
        Tensor::zeros((2, 2), DType::F32, &Device::Cpu).unwrap(),
    )]
    .into();
    candle_core::safetensors::save(&t, &no_head).unwrap();
    let err = resolve(&WeightsSource::File(no_head), &ResolveOptions::default()).unwrap_err();
    assert!(
        matches!(err, WeightsError::UnknownArchitecture { .. }),
        "{err:?}"
    );
}

#[test]
fn registry_name_through_hub_with_wrong_weights_is_a_clear_mismatch() {
    let home = tempfile::tempdir().unwrap();
    let server = TestServer::start();
    let (path, _) = cnn_checkpoint(home.path(), 10, 1);
    hub_route(
        &server,
        "timm/resnet18.a1_in1k",
        std::fs::read(path).unwrap(),
    );
    let src = WeightsSource::Registry(find("resnet18.a1_in1k").unwrap());
    let w = resolve(&src, &hub_options(&server, home.path())).unwrap();
    assert!(w.path.starts_with(
        home.path()
            .join("hub/models--timm--resnet18.a1_in1k/snapshots")
    ));
    let err = Classifier::load(&w, &Device::Cpu).unwrap_err().to_string();
    assert!(
        err.contains("missing keys")
            && err.contains("layer1.0.conv1.weight")
            && err.contains("resnet18"),
        "{err}"
    );
}

/// The parity checkpoint served as `resnet18.tv_in1k`: fetched into a temporary HF cache,
/// then served offline from it, and its logits are PyTorch's.
#[test]
fn parity_fixture_through_hub_resolve_and_classifier() {
    let Some(fixtures) = cv_testkit::fixtures::parity_dir() else {
        return;
    };
    let home = tempfile::tempdir().unwrap();
    let mut server = TestServer::start();
    hub_route(
        &server,
        "timm/resnet18.tv_in1k",
        std::fs::read(fixtures.join("resnet18.safetensors")).unwrap(),
    );
    let src = WeightsSource::parse("resnet18.tv_in1k").unwrap();
    let mut opts = hub_options(&server, home.path());
    let w = resolve(&src, &opts).unwrap();
    assert_eq!(w.classes[281], "tabby");
    assert!(w.origin.contains("timm/resnet18.tv_in1k"));
    server.stop();
    opts.offline = true;
    let w2 = resolve(&src, &opts).unwrap();
    assert_eq!(w2.path, w.path);

    let clf = Classifier::load(&w2, &Device::Cpu).unwrap();
    let io = candle_core::safetensors::load(fixtures.join("io.safetensors"), &Device::Cpu).unwrap();
    let got = clf.logits(&io["input_64"]).unwrap();
    let want = &io["logits_64"];
    let (diff, scale) = (max_abs_diff(&got, want), max_abs(want));
    eprintln!("resnet18 logits_64: max|T-R| = {diff:e}, max|R| = {scale}");
    assert!(diff <= 1e-4 * scale, "max|T-R| = {diff} > 1e-4 * {scale}");

    let top = clf.classify(&images(2, 300, 260), 5).unwrap();
    assert_eq!(top[0].len(), 5);
    assert!(top[0]
        .iter()
        .all(|(i, name, _)| name == cv_weights::imagenet::CLASSES[*i]));
}

/// A bare torchvision state dict (no config.json): architecture and ImageNet names inferred,
/// then `load_into` a fresh VarMap gives PyTorch's logits too.
#[test]
fn parity_fixture_as_bare_file_and_net() {
    let Some(fixtures) = cv_testkit::fixtures::parity_dir() else {
        return;
    };
    let file = fixtures.join("resnet18.safetensors");
    let w = resolve(
        &WeightsSource::File(file.clone()),
        &ResolveOptions::default(),
    )
    .unwrap();
    assert_eq!(w.architecture, Architecture::ResNet18);
    assert_eq!(w.classes[207], "golden retriever");
    assert_eq!(w.eval_transforms, Pipeline::eval(256, 224));
    let (varmap, m) = model(Architecture::ResNet18, 1000, None);
    let report = load_into(&varmap, Architecture::ResNet18, &file, 1000, &Device::Cpu).unwrap();
    assert_eq!(report.loaded, 102);
    let io = candle_core::safetensors::load(fixtures.join("io.safetensors"), &Device::Cpu).unwrap();
    let got = m.detached().forward_t(&io["input_64"], false).unwrap();
    assert!(max_abs_diff(&got, &io["logits_64"]) <= 1e-4 * max_abs(&io["logits_64"]));

    // The tutorial's Net: fc3 [10, 84] tells the small CNN.
    let net = fixtures.join("net.safetensors");
    let w = resolve(&WeightsSource::File(net), &ResolveOptions::default()).unwrap();
    assert_eq!(
        (w.architecture, w.classes.len()),
        (Architecture::SimpleCnn, 10)
    );
    let clf = Classifier::load(&w, &Device::Cpu).unwrap();
    let nio =
        candle_core::safetensors::load(fixtures.join("net_io.safetensors"), &Device::Cpu).unwrap();
    let got = clf.logits(&nio["input"]).unwrap();
    assert!(max_abs_diff(&got, &nio["logits"]) <= 1e-4 * max_abs(&nio["logits"]));
}

/// The index of the largest logit of each row.
fn top1(logits: &Tensor) -> Vec<u32> {
    logits.argmax(1).unwrap().to_vec1().unwrap()
}

/// The torchvision ResNet-18 written in f16 and bf16 keeps PyTorch's top-1 on the fixture
/// inputs (the file is half the size), and with BatchNorm folded gives PyTorch's logits.
#[test]
fn exported_half_and_folded_weights_keep_pytorchs_predictions() {
    let Some(fixtures) = cv_testkit::fixtures::parity_dir() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let source = fixtures.join("resnet18.safetensors");
    let w = resolve(
        &WeightsSource::File(source.clone()),
        &ResolveOptions::default(),
    )
    .unwrap();
    let io = candle_core::safetensors::load(fixtures.join("io.safetensors"), &Device::Cpu).unwrap();
    let f32_bytes = std::fs::metadata(&source).unwrap().len();
    for (dtype, stored) in [
        (ExportDtype::F16, DType::F16),
        (ExportDtype::Bf16, DType::BF16),
    ] {
        let out = tmp.path().join(format!("{dtype:?}.safetensors"));
        let report = export_safetensors(&w, dtype, false, &out).unwrap();
        assert_eq!((report.tensors, report.folded), (122, 0));
        assert!(
            report.bytes < f32_bytes * 11 / 20,
            "{} of {f32_bytes} bytes",
            report.bytes
        );
        let file = candle_core::safetensors::load(&out, &Device::Cpu).unwrap();
        assert_eq!(file["layer3.0.conv1.weight"].dtype(), stored);
        assert_eq!(file["layer3.0.bn1.num_batches_tracked"].dtype(), DType::I64);
        let half = resolve(&WeightsSource::File(out), &ResolveOptions::default()).unwrap();
        let clf = Classifier::load(&half, &Device::Cpu).unwrap();
        for size in [64, 224] {
            let want = &io[&format!("logits_{size}")];
            let got = clf.logits(&io[&format!("input_{size}")]).unwrap();
            eprintln!(
                "{dtype:?} at {size}: max|T-R| = {:e}",
                max_abs_diff(&got, want)
            );
            assert_eq!(top1(&got), top1(want), "{dtype:?} at {size}");
        }
    }

    // Folded: each convolution's new bias goes into an identity BatchNorm (scale 1, mean 0,
    // variance 1 - eps) after it, so the unchanged network computes exactly the folded one.
    let out = tmp.path().join("folded.safetensors");
    let report = export_safetensors(&w, ExportDtype::F32, true, &out).unwrap();
    assert_eq!((report.tensors, report.folded), (42, 20));
    let folded = candle_core::safetensors::load(&out, &Device::Cpu).unwrap();
    assert!(folded
        .keys()
        .all(|k| !k.contains("bn") && !k.contains("downsample.1")));
    let mut tensors = HashMap::new();
    for (k, t) in &folded {
        let Some(conv) = k.strip_suffix(".bias").filter(|c| !c.starts_with("fc")) else {
            tensors.insert(k.clone(), t.clone());
            continue;
        };
        let bn = match conv.strip_suffix("downsample.0") {
            Some(block) => format!("{block}downsample.1"),
            None => conv.replacen("conv", "bn", 1),
        };
        let n = t.dims()[0];
        let ones = Tensor::ones(n, DType::F32, &Device::Cpu).unwrap();
        tensors.insert(format!("{bn}.weight"), ones.clone());
        tensors.insert(format!("{bn}.bias"), t.clone());
        tensors.insert(format!("{bn}.running_mean"), ones.zeros_like().unwrap());
        tensors.insert(format!("{bn}.running_var"), (ones * (1.0 - 1e-5)).unwrap());
    }
    let (varmap, m) = model(Architecture::ResNet18, 1000, None);
    state::load_state_dict(&varmap, &tensors).unwrap();
    let got = m.detached().forward_t(&io["input_224"], false).unwrap();
    let (diff, scale) = (
        max_abs_diff(&got, &io["logits_224"]),
        max_abs(&io["logits_224"]),
    );
    eprintln!("folded at 224: max|T-R| = {diff:e}, max|R| = {scale}");
    assert!(diff <= 1e-4 * scale, "max|T-R| = {diff} > 1e-4 * {scale}");
}

/// Export never replaces the file it reads, and a failed write leaves nothing behind.
#[test]
fn export_refuses_its_own_source_and_leaves_no_partial_file() {
    let tmp = tempfile::tempdir().unwrap();
    let (path, _) = cnn_checkpoint(tmp.path(), 10, 4);
    let before = std::fs::read(&path).unwrap();
    let w = resolve(
        &WeightsSource::File(path.clone()),
        &ResolveOptions::default(),
    )
    .unwrap();
    let err = export_safetensors(&w, ExportDtype::F16, false, &path)
        .unwrap_err()
        .to_string();
    assert!(err.contains("is the file being exported"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), before);

    let missing = tmp.path().join("no-such-dir/out.safetensors");
    let err = export_safetensors(&w, ExportDtype::F32, false, &missing)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no-such-dir"), "{err}");
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        left.iter().all(|n| !n.to_string_lossy().contains(".tmp-")),
        "{left:?}"
    );

    // The small CNN has no BatchNorm: folding leaves every tensor as it is.
    let out = tmp.path().join("cnn-folded.safetensors");
    let report = export_safetensors(&w, ExportDtype::F32, true, &out).unwrap();
    assert_eq!(report.folded, 0);
    let a = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    let b = candle_core::safetensors::load(&out, &Device::Cpu).unwrap();
    assert_eq!(a.len(), b.len());
    for (k, t) in &a {
        assert_eq!(max_abs_diff(t, &b[k]), 0.0, "{k}");
    }
}
