//! The int8 network against a reference int8 computation: the same graph with every
//! quantized tensor dequantized and the arithmetic done in f64 by candle (fake quantization,
//! as PyTorch's QAT modules compute it), and against the f32 network it came from. Generated
//! weights always run; torchvision's ResNet-18 and the tutorial's CNN from the parity fixtures
//! are skipped with a notice when absent.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use cv_models::quant::{graph, Calibration, ConvSpec, Executor, Observer, QuantizedModel};
use cv_models::{fold, init, state, Architecture, Model};
use cv_ops::int8::QParams;

/// max |int8 - reference| <= REFERENCE_TOLERANCE * max |reference|: the two differ only where
/// f32 and f64 round a requantization to neighbouring codes.
const REFERENCE_TOLERANCE: f32 = 5e-2;

fn pattern(dims: &[usize], phase: f32) -> Tensor {
    let n: usize = dims.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|i| 1.5 * ((i as f32) * 0.6180339 + phase).sin() * ((i as f32) * 0.013 + phase).cos())
        .collect();
    Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
}

fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn fake_quantize(t: &Tensor, qp: QParams) -> Tensor {
    let (s, z) = (qp.scale as f64, qp.zero_point as f64);
    let q = ((t / s).unwrap().round().unwrap() + z)
        .unwrap()
        .clamp(0.0, 255.0)
        .unwrap();
    ((q - z).unwrap() * s).unwrap()
}

/// Dequantized int8 arithmetic in f64.
struct FakeQuant<'a> {
    model: &'a QuantizedModel,
}

impl Executor for FakeQuant<'_> {
    type Act = Tensor;

    fn input(&mut self, x: &Tensor) -> cv_models::Result<Tensor> {
        Ok(fake_quantize(
            &x.to_dtype(DType::F64)?,
            self.model.input_qparams(),
        ))
    }

    fn conv(
        &mut self,
        c: &ConvSpec,
        x: &Tensor,
        relu: bool,
        residual: Option<&Tensor>,
    ) -> cv_models::Result<Tensor> {
        let q = self.model.conv(&c.name).unwrap();
        let shape = q.conv.shape();
        let codes: Vec<f64> = q.conv.weight().iter().map(|&w| w as f64).collect();
        let scale: Vec<f64> = q.conv.scale().iter().map(|&s| s as f64).collect();
        let w = Tensor::from_vec(codes, shape.to_vec(), &Device::Cpu)?
            .broadcast_mul(&Tensor::from_vec(scale, (shape[0], 1, 1, 1), &Device::Cpu)?)?;
        let bias: Vec<f64> = q.conv.bias().iter().map(|&b| b as f64).collect();
        let mut y = x
            .conv2d(&w, c.padding, c.stride, 1, 1)?
            .broadcast_add(&Tensor::from_vec(bias, (1, shape[0], 1, 1), &Device::Cpu)?)?;
        if let Some(r) = residual {
            y = (y + r)?;
        }
        if relu {
            y = y.relu()?;
        }
        Ok(fake_quantize(&y, q.out))
    }

    fn max_pool(
        &mut self,
        x: &Tensor,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> cv_models::Result<Tensor> {
        Ok(cv_ops::max_pool2d(
            x,
            cv_ops::MaxPool2dConfig {
                kernel,
                stride,
                padding,
            },
        )?)
    }

    fn to_f32(&mut self, x: &Tensor) -> cv_models::Result<Tensor> {
        Ok(x.to_dtype(DType::F32)?)
    }

    fn pooled(&mut self, x: &Tensor) -> cv_models::Result<Tensor> {
        Ok(x.mean((2, 3))?.to_dtype(DType::F32)?)
    }
}

/// Quantizes `state` with calibration batches and checks the int8 logits on `x` against
/// the reference and the f32 network; returns (reference error, f32 error, top-1 agreement),
/// errors relative to the max |logit|.
fn check(
    arch: Architecture,
    state: &HashMap<String, Tensor>,
    calibration: &[Tensor],
    x: &Tensor,
) -> (f32, f32, f32) {
    let folded = fold::fold_batch_norm(arch, state).unwrap();
    let mut cal = Calibration::new(Observer::MinMax).unwrap();
    for b in calibration {
        cal.observe(arch, &folded, b).unwrap();
    }
    let int8 = QuantizedModel::quantize(arch, &folded, &cal).unwrap();
    let ours = int8.forward(x).unwrap();
    let reference = graph::run(arch, &mut FakeQuant { model: &int8 }, int8.head(), x).unwrap();
    let ref_err = max_abs(&(&ours - &reference).unwrap()) / max_abs(&reference);

    let again = QuantizedModel::from_safetensors(&int8.to_safetensors().unwrap()).unwrap();
    let replay = again.forward(x).unwrap();
    assert_eq!(
        max_abs(&(&replay - &ours).unwrap()),
        0.0,
        "{arch}: the checkpoint round trip changed the logits"
    );

    let varmap = VarMap::new();
    let model = Model::new(
        arch,
        int8.num_classes(),
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
    )
    .unwrap();
    state::load_state_dict(&varmap, state).unwrap();
    let float = model.detached().forward_t(x, false).unwrap();
    let f32_err = max_abs(&(&ours - &float).unwrap()) / max_abs(&float);
    let top = |t: &Tensor| t.argmax(1).unwrap().to_vec1::<u32>().unwrap();
    let agree = top(&ours)
        .iter()
        .zip(top(&float))
        .filter(|(a, b)| **a == *b)
        .count() as f32
        / x.dim(0).unwrap() as f32;
    eprintln!("{arch} {:?}: int8 vs reference {ref_err:.2e}, vs f32 {f32_err:.3}, top-1 agreement {agree}", x.dims());
    assert!(
        ref_err <= REFERENCE_TOLERANCE,
        "{arch}: int8 is {ref_err} from the reference"
    );
    (ref_err, f32_err, agree)
}

fn generated(arch: Architecture, classes: usize) -> HashMap<String, Tensor> {
    let varmap = VarMap::new();
    Model::new(
        arch,
        classes,
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
    )
    .unwrap();
    init::initialise(&varmap, arch, 7).unwrap();
    state::state_dict(&varmap).unwrap()
}

#[test]
fn generated_networks_match_the_reference_and_stay_near_f32() {
    for (arch, side) in [
        (Architecture::ResNet18, 32),
        (Architecture::ResNet18, 40),
        (Architecture::SimpleCnn, 32),
    ] {
        let state = generated(arch, 10);
        let calibration: Vec<Tensor> = (0..3)
            .map(|i| pattern(&[4, 3, side, side], i as f32))
            .collect();
        let (_, f32_err, _) = check(
            arch,
            &state,
            &calibration,
            &pattern(&[5, 3, side, side], 9.0),
        );
        assert!(
            f32_err < 0.25,
            "{arch}: int8 is {f32_err} of max |logit| from f32"
        );
    }
}

#[test]
fn fixture_networks_match_the_reference_and_f32() {
    let Some(dir) = cv_testkit::fixtures::parity_dir() else {
        eprintln!("skipping: ../shared/fixtures/torchvision-parity not found");
        return;
    };
    let load = |f: &str| candle_core::safetensors::load(dir.join(f), &Device::Cpu).unwrap();
    let io = load("io.safetensors");
    let x = io["input_64"].clone();
    let calibration = vec![io["sgd_input_64"].clone(), x.clone()];
    let (_, f32_err, agree) = check(
        Architecture::ResNet18,
        &load("resnet18.safetensors"),
        &calibration,
        &x,
    );
    assert!(
        f32_err < 0.1 && agree >= 0.75,
        "resnet18: {f32_err} from f32, top-1 agreement {agree}"
    );
    let net_io = load("net_io.safetensors");
    let x = net_io["input"].clone();
    let (_, f32_err, agree) = check(
        Architecture::SimpleCnn,
        &load("net.safetensors"),
        std::slice::from_ref(&x),
        &x,
    );
    assert!(
        f32_err < 0.1 && agree >= 0.75,
        "cnn: {f32_err} from f32, top-1 agreement {agree}"
    );
}

#[test]
fn damaged_checkpoints_are_refused_with_the_reason() {
    let arch = Architecture::SimpleCnn;
    let folded = fold::fold_batch_norm(arch, &generated(arch, 4)).unwrap();
    let mut cal = Calibration::new(Observer::Percentile { percentile: 99.9 }).unwrap();
    cal.observe(arch, &folded, &pattern(&[2, 3, 32, 32], 1.0))
        .unwrap();
    let bytes = QuantizedModel::quantize(arch, &folded, &cal)
        .unwrap()
        .to_safetensors()
        .unwrap();
    let err = |b: &[u8]| QuantizedModel::from_safetensors(b).unwrap_err().to_string();
    assert!(err(&bytes[..bytes.len() / 2]).contains("safetensors"));
    // An f32 checkpoint is not an int8 one.
    let f32_bytes = {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.safetensors");
        candle_core::safetensors::save(&folded, &p).unwrap();
        std::fs::read(p).unwrap()
    };
    assert!(
        err(&f32_bytes).contains("not an int8 checkpoint"),
        "{}",
        err(&f32_bytes)
    );
    assert!(Calibration::new(Observer::Percentile { percentile: 30.0 }).is_err());
    let empty = Calibration::new(Observer::MinMax).unwrap();
    assert!(QuantizedModel::quantize(arch, &folded, &empty)
        .unwrap_err()
        .to_string()
        .contains("no calibration image"));
}

/// Grad-CAM and CAM of the int8 ResNet-18 at layer4 (dequantized activation, f32 head) against
/// the f32 network's: the same targets and maps that differ by quantization only; an earlier
/// layer is refused.
#[test]
fn int8_class_activation_maps_follow_the_f32_ones() {
    let arch = Architecture::ResNet18;
    let state = generated(arch, 10);
    let folded = fold::fold_batch_norm(arch, &state).unwrap();
    let mut cal = Calibration::new(Observer::MinMax).unwrap();
    for i in 0..3 {
        cal.observe(arch, &folded, &pattern(&[4, 3, 64, 64], i as f32))
            .unwrap();
    }
    let int8 = QuantizedModel::quantize(arch, &folded, &cal).unwrap();
    let varmap = VarMap::new();
    let model = Model::new(
        arch,
        10,
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
    )
    .unwrap();
    state::load_state_dict(&varmap, &state).unwrap();
    let x = pattern(&[3, 3, 64, 64], 4.0);
    let targets = [1, 4, 7];
    for method in [cv_models::CamMethod::GradCam, cv_models::CamMethod::Cam] {
        let f =
            cv_models::class_activation_maps(&model, &x, "layer4", method, Some(&targets)).unwrap();
        let q = cv_models::maps_of(&int8, &x, "layer4", method, Some(&targets)).unwrap();
        assert_eq!(q.targets, f.targets);
        for (a, b) in q.upsampled.iter().zip(&f.upsampled) {
            let diff = a
                .values
                .iter()
                .zip(&b.values)
                .map(|(x, y)| (x - y).abs())
                .sum::<f32>()
                / a.values.len() as f32;
            assert!(
                diff < 0.1,
                "{method}: mean |int8 - f32| of the scaled maps {diff}"
            );
        }
    }
    let err =
        cv_models::maps_of(&int8, &x, "layer3", cv_models::CamMethod::GradCam, None).unwrap_err();
    assert!(err.to_string().contains("layer4 only"), "{err}");
}
