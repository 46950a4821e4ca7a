//! Model construction, names, input checks, initialisation, parameter groups, eval twins.

use candle_core::{DType, Device, ModuleT, Tensor};
use candle_nn::{VarBuilder, VarMap};
use cv_models::params::{self, Trainable};
use cv_models::{init, resnet18, simple_cnn, state, Architecture, Model, ModelError};

fn build(arch: Architecture, classes: usize, seed: u64) -> (VarMap, Model) {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let model = Model::new(arch, classes, vb).unwrap();
    init::initialise(&varmap, arch, seed).unwrap();
    (varmap, model)
}

fn zeros(shape: &[usize]) -> Tensor {
    Tensor::zeros(shape, DType::F32, &Device::Cpu).unwrap()
}

fn randn(shape: &[usize]) -> Tensor {
    Tensor::randn(0f32, 1.0, shape, &Device::Cpu).unwrap()
}

/// Standard-normal values from a fixed seed (Box-Muller over splitmix64), for tests whose
/// outcome must not depend on the draw.
fn seeded_randn(shape: &[usize], seed: u64) -> Tensor {
    let mut rng = cv_testkit::cifar::SplitMix(seed);
    let n: usize = shape.iter().product();
    let mut u = || (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
    let v: Vec<f32> = (0..n)
        .map(|_| {
            let (a, b) = (u().max(1e-12), u());
            ((-2.0 * a.ln()).sqrt() * (2.0 * std::f64::consts::PI * b).cos()) as f32
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

#[test]
fn resnet18_has_torchvision_keys() {
    let (varmap, _) = build(Architecture::ResNet18, 10, 0);
    let keys = state::keys(&varmap);
    assert_eq!(
        keys.len(),
        102 + 20,
        "102 torchvision tensors + 20 num_batches_tracked"
    );
    for k in [
        "conv1.weight",
        "bn1.running_mean",
        "bn1.num_batches_tracked",
        "layer1.0.conv1.weight",
        "layer2.0.downsample.0.weight",
        "layer2.0.downsample.1.weight",
        "layer4.1.bn2.running_var",
        "fc.weight",
        "fc.bias",
    ] {
        assert!(keys.contains(&k.to_string()), "{k} missing from {keys:?}");
    }
    assert!(!keys.iter().any(|k| k.starts_with("layer1.0.downsample")));
    // With fixtures present, the key set is exactly torchvision's.
    if let Some(dir) = cv_testkit::fixtures::parity_dir() {
        let file =
            candle_core::safetensors::load(dir.join("resnet18.safetensors"), &Device::Cpu).unwrap();
        let mut theirs: Vec<String> = file.keys().cloned().collect();
        theirs.sort();
        let ours: Vec<String> = keys
            .into_iter()
            .filter(|k| !k.ends_with("num_batches_tracked"))
            .collect();
        assert_eq!(ours, theirs);
    }
}

#[test]
fn simple_cnn_shapes_and_input_check() {
    let (_, model) = build(Architecture::SimpleCnn, 7, 0);
    assert_eq!(
        model
            .forward_t(&randn(&[3, 3, 32, 32]), true)
            .unwrap()
            .dims(),
        &[3, 7]
    );
    assert_eq!(
        model
            .features(&randn(&[2, 3, 32, 32]), false)
            .unwrap()
            .dims(),
        &[2, 84]
    );
    assert_eq!(model.feature_dim(), 84);
    for bad in [
        &[2, 3, 28, 28][..],
        &[2, 3, 64, 64],
        &[2, 1, 32, 32],
        &[3, 32, 32],
        &[0, 3, 32, 32],
    ] {
        match model.forward_t(&zeros(bad), false) {
            Err(ModelError::InputShape {
                model: "cnn",
                found,
                ..
            }) => assert_eq!(found, bad),
            other => panic!("{bad:?}: expected an input-shape error, got {other:?}"),
        }
    }
    // Through the candle trait the message survives.
    let Model::SimpleCnn(cnn) = &model else {
        unreachable!()
    };
    let err = ModuleT::forward_t(cnn, &zeros(&[1, 3, 28, 28]), false).unwrap_err();
    assert!(err.to_string().contains("[N, 3, 32, 32]"), "{err}");
}

#[test]
fn resnet18_accepts_sizes_from_32_and_refuses_smaller() {
    let (_, model) = build(Architecture::ResNet18, 5, 0);
    assert_eq!(
        model
            .forward_t(&randn(&[2, 3, 32, 32]), true)
            .unwrap()
            .dims(),
        &[2, 5]
    );
    assert_eq!(
        model
            .forward_t(&randn(&[1, 3, 40, 57]), false)
            .unwrap()
            .dims(),
        &[1, 5]
    );
    assert_eq!(
        model
            .features(&randn(&[2, 3, 32, 32]), false)
            .unwrap()
            .dims(),
        &[2, 512]
    );
    assert_eq!(model.head().weight().dims(), &[5, 512]);
    for bad in [&[1, 3, 31, 64][..], &[1, 3, 16, 16], &[1, 4, 32, 32]] {
        assert!(matches!(
            model.forward_t(&zeros(bad), false),
            Err(ModelError::InputShape {
                model: "resnet18",
                ..
            })
        ));
    }
    assert!(matches!(
        resnet18(
            0,
            VarBuilder::from_varmap(&VarMap::new(), DType::F32, &Device::Cpu)
        ),
        Err(ModelError::Config(_))
    ));
}

fn snapshot(varmap: &VarMap) -> Vec<(String, Vec<f32>)> {
    let mut s: Vec<(String, Vec<f32>)> = state::state_dict(varmap)
        .unwrap()
        .into_iter()
        .filter(|(k, _)| !k.ends_with("num_batches_tracked"))
        .map(|(k, t)| (k, t.flatten_all().unwrap().to_vec1::<f32>().unwrap()))
        .collect();
    s.sort_by(|a, b| a.0.cmp(&b.0));
    s
}

fn std_of(v: &[f32]) -> f64 {
    let n = v.len() as f64;
    let m = v.iter().map(|&x| x as f64).sum::<f64>() / n;
    (v.iter().map(|&x| (x as f64 - m).powi(2)).sum::<f64>() / n).sqrt()
}

#[test]
fn initialisation_is_seeded_and_follows_pytorch() {
    for arch in [Architecture::SimpleCnn, Architecture::ResNet18] {
        let a = snapshot(&build(arch, 10, 42).0);
        let b = snapshot(&build(arch, 10, 42).0);
        let c = snapshot(&build(arch, 10, 43).0);
        assert_eq!(a, b, "{arch}: same seed, same weights");
        assert_ne!(a, c, "{arch}: another seed, other weights");
    }
    let get = |s: &[(String, Vec<f32>)], k: &str| s.iter().find(|(n, _)| n == k).unwrap().1.clone();
    let r = snapshot(&build(Architecture::ResNet18, 10, 1).0);
    // kaiming-normal fan-out: std = sqrt(2 / (out * k * k)).
    let conv = get(&r, "layer3.0.conv1.weight");
    let want = (2.0f64 / (256.0 * 9.0)).sqrt();
    assert!(
        (std_of(&conv) / want - 1.0).abs() < 0.02,
        "{} vs {want}",
        std_of(&conv)
    );
    assert!(get(&r, "layer1.0.bn1.weight").iter().all(|&v| v == 1.0));
    assert!(get(&r, "layer1.0.bn1.bias").iter().all(|&v| v == 0.0));
    assert!(get(&r, "bn1.running_var").iter().all(|&v| v == 1.0));
    let bound = 1.0 / 512f32.sqrt();
    assert!(get(&r, "fc.bias").iter().all(|&v| v.abs() <= bound));
    let fcw = get(&r, "fc.weight");
    assert!(fcw.iter().all(|&v| v.abs() <= bound));
    // U(-b, b) has std b / sqrt(3).
    assert!((std_of(&fcw) / (bound as f64 / 3f64.sqrt()) - 1.0).abs() < 0.05);
    let n = snapshot(&build(Architecture::SimpleCnn, 10, 1).0);
    let b1 = 1.0 / 75f32.sqrt();
    assert!(get(&n, "conv1.weight").iter().all(|&v| v.abs() <= b1));
    assert!(get(&n, "conv1.bias").iter().all(|&v| v.abs() <= b1));
    assert!(std_of(&get(&n, "conv1.bias")) > 0.0);
}

#[test]
fn parameter_groups() {
    let (varmap, _) = build(Architecture::ResNet18, 10, 0);
    let names = |t| -> Vec<String> {
        params::trainable_vars(&varmap, Architecture::ResNet18, t)
            .into_iter()
            .map(|(n, _)| n)
            .collect()
    };
    assert_eq!(names(Trainable::Head), vec!["fc.bias", "fc.weight"]);
    let last = names(Trainable::LastStage);
    assert!(last
        .iter()
        .all(|n| n.starts_with("layer4.") || n.starts_with("fc.")));
    assert_eq!(
        last.len(),
        2 * 6 + 3 + 2,
        "layer4: 2 blocks x (2 convs + 2 BN x 2), downsample, fc"
    );
    let all = names(Trainable::All);
    assert_eq!(all.len(), 62);
    assert!(all.windows(2).all(|w| w[0] < w[1]), "sorted");
    assert!(!all.iter().any(|n| params::is_buffer(n)));
    let (cnn_map, _) = build(Architecture::SimpleCnn, 10, 0);
    let head: Vec<String> =
        params::trainable_vars(&cnn_map, Architecture::SimpleCnn, Trainable::Head)
            .into_iter()
            .map(|(n, _)| n)
            .collect();
    assert_eq!(head, vec!["fc3.bias", "fc3.weight"]);
    assert_eq!(
        params::trainable_vars(&cnn_map, Architecture::SimpleCnn, Trainable::LastStage).len(),
        6
    );
}

#[test]
fn train_mode_updates_buffers_without_gradients() {
    let (varmap, model) = build(Architecture::ResNet18, 10, 0);
    let x = (randn(&[4, 3, 32, 32]) * 2.0).unwrap();
    let loss = model
        .forward_t(&x, true)
        .unwrap()
        .sqr()
        .unwrap()
        .mean_all()
        .unwrap();
    let grads = loss.backward().unwrap();
    let data = varmap.data().lock().unwrap();
    for (name, var) in data.iter() {
        let has_grad = grads.get(var.as_tensor()).is_some();
        assert_eq!(
            has_grad,
            !params::is_buffer(name),
            "{name}: gradient {has_grad}"
        );
    }
    assert_eq!(
        data["bn1.num_batches_tracked"]
            .as_tensor()
            .to_scalar::<i64>()
            .unwrap(),
        1
    );
    let rv = data["bn1.running_var"]
        .as_tensor()
        .to_vec1::<f32>()
        .unwrap();
    assert!(
        rv.iter().any(|&v| (v - 1.0).abs() > 1e-3),
        "running_var moved"
    );
    drop(data);
    // Eval does not touch the buffers.
    let before = snapshot(&varmap);
    model.forward_t(&x, false).unwrap();
    assert_eq!(before, snapshot(&varmap));
}

#[test]
fn detached_twin_records_no_graph_and_follows_updates() {
    let (varmap, model) = build(Architecture::SimpleCnn, 10, 0);
    let twin = model.detached();
    let x = randn(&[2, 3, 32, 32]);
    let live = model.forward_t(&x, false).unwrap();
    let frozen = twin.forward_t(&x, false).unwrap();
    assert_eq!(
        live.to_vec2::<f32>().unwrap(),
        frozen.to_vec2::<f32>().unwrap()
    );
    let grads = frozen.sum_all().unwrap().backward().unwrap();
    for var in varmap.all_vars() {
        assert!(
            grads.get(var.as_tensor()).is_none(),
            "the twin recorded a graph"
        );
    }
    // An optimizer-style update of the Vars shows in the twin.
    init::initialise(&varmap, Architecture::SimpleCnn, 99).unwrap();
    let live = model.forward_t(&x, false).unwrap();
    let frozen2 = twin.forward_t(&x, false).unwrap();
    assert_eq!(
        live.to_vec2::<f32>().unwrap(),
        frozen2.to_vec2::<f32>().unwrap()
    );
    assert_ne!(
        frozen.to_vec2::<f32>().unwrap(),
        frozen2.to_vec2::<f32>().unwrap()
    );
}

#[test]
fn resnet_eval_twin_matches_live_model_and_live_eval_has_gradients() {
    // The twin runs the fused eval kernels, the live model (Vars) the composed ops.
    let (varmap, model) = build(Architecture::ResNet18, 10, 3);
    let twin = model.detached();
    let x = randn(&[2, 3, 32, 32]);
    let live = model.forward_t(&x, false).unwrap();
    let frozen = twin.forward_t(&x, false).unwrap();
    assert_eq!(
        live.to_vec2::<f32>().unwrap(),
        frozen.to_vec2::<f32>().unwrap()
    );
    // Eval mode of the live model still differentiates to its weights (not the buffers).
    let grads = live.sum_all().unwrap().backward().unwrap();
    let vars = params::trainable_vars(&varmap, Architecture::ResNet18, Trainable::All);
    assert_eq!(vars.len(), 62);
    for (name, var) in vars {
        assert!(
            grads.get(var.as_tensor()).is_some(),
            "no gradient for {name}"
        );
    }
}

#[test]
fn training_needs_var_buffers() {
    // A model over fixed tensors evaluates, but refuses train mode with a clear error.
    let (varmap, _) = build(Architecture::ResNet18, 10, 0);
    let tensors = state::state_dict(&varmap).unwrap();
    let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
    let fixed = resnet18(10, vb).unwrap();
    let x = randn(&[2, 3, 32, 32]);
    assert!(fixed.forward(&x, false).is_ok());
    let err = fixed.forward(&x, true).unwrap_err();
    assert!(err.to_string().contains("bn1"), "{err}");
}

#[test]
fn simple_cnn_direct_constructor() {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let net = simple_cnn(10, vb).unwrap();
    assert_eq!(net.fc().weight().dims(), &[10, 84]);
    assert_eq!(state::keys(&varmap).len(), 10);
}

#[test]
fn architecture_names() {
    assert_eq!(
        "cnn".parse::<Architecture>().unwrap(),
        Architecture::SimpleCnn
    );
    assert_eq!(
        "ResNet18".parse::<Architecture>().unwrap(),
        Architecture::ResNet18
    );
    assert!(matches!(
        "vgg".parse::<Architecture>(),
        Err(ModelError::UnknownArchitecture(_))
    ));
    assert_eq!(Architecture::ResNet18.to_string(), "resnet18");
    assert_eq!(
        serde_json::to_string(&Architecture::SimpleCnn).unwrap(),
        "\"cnn\""
    );
    let a: Architecture = serde_json::from_str("\"resnet18\"").unwrap();
    assert_eq!(a, Architecture::ResNet18);
}

/// Mixed precision (what `--precision bf16` does on CUDA): a half-precision input through f32
/// weights gives f32 logits close to the f32 forward, and gradients reach the f32 weights of
/// every kind of layer (conv, BatchNorm, head). Run on the CPU with f16, the same code path:
/// candle 0.11's CPU matmul has no bf16 (CUDA has both).
#[test]
fn half_precision_input_through_f32_weights_matches_f32_and_trains() {
    for arch in [Architecture::SimpleCnn, Architecture::ResNet18] {
        let (varmap, model) = build(arch, 10, 3);
        let x = randn(&[2, 3, 32, 32]);
        let half = x.to_dtype(DType::F16).unwrap();
        // Values in eval mode: train-mode BatchNorm over 2 images at layer4's 1x1 maps
        // normalises pairs of nearly equal values, which amplifies any rounding.
        let reference = model.forward_t(&x, false).unwrap();
        let mixed = model.forward_t(&half, false).unwrap();
        assert_eq!(mixed.dtype(), DType::F32, "{arch:?}: logits stay f32");
        let scale = reference.abs().unwrap().max_all().unwrap();
        let scale = scale.to_scalar::<f32>().unwrap();
        let diff = (&mixed - &reference).unwrap().abs().unwrap();
        let diff = diff.max_all().unwrap().to_scalar::<f32>().unwrap();
        // f16 keeps 11 bits of mantissa (~5e-4 relative per rounding); 2% allows for depth.
        assert!(
            diff <= 0.02 * scale,
            "{arch:?}: f16 logits off by {diff} (scale {scale})"
        );
        assert!(
            diff > 0.0,
            "{arch:?}: the f16 path must really compute in f16"
        );

        // Gradients through the train-mode pass (BatchNorm's batch statistics, cast to f32).
        // A fixed draw of 4 images at 64x64 keeps layer4's batch statistics (2x2 maps) away
        // from the near-zero variances that overflow f16 gradients on some random draws.
        let x_train = match arch {
            Architecture::SimpleCnn => seeded_randn(&[4, 3, 32, 32], 11),
            Architecture::ResNet18 => seeded_randn(&[4, 3, 64, 64], 11),
        };
        let train = model
            .forward_t(&x_train.to_dtype(DType::F16).unwrap(), true)
            .unwrap();
        assert_eq!(train.dtype(), DType::F32);
        let grads = train.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let vars = varmap.data().lock().unwrap();
        let keys = match arch {
            Architecture::SimpleCnn => ["conv1.weight", "conv2.bias", "fc3.weight"],
            Architecture::ResNet18 => ["conv1.weight", "layer4.1.bn2.weight", "fc.weight"],
        };
        for key in keys {
            let v = &vars[key];
            let g = grads
                .get(v)
                .unwrap_or_else(|| panic!("{arch:?}: no gradient for {key}"));
            assert_eq!(
                g.dtype(),
                DType::F32,
                "{key}: gradient of the f32 master weight"
            );
            let norm = g
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(
                norm.is_finite() && norm > 0.0,
                "{arch:?}: {key} gradient {norm}"
            );
        }
    }
}
