//! ResNet-18 eval throughput, f32 against int8 (the same generated weights, calibrated on
//! three batches of patterned input), as JSON lines: `cargo bench -p cv-models --bench int8`;
//! env `REPS` (default 3, best-of). Not a test: figures depend on the machine and its load.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use cv_models::quant::{Calibration, Observer, QuantizedModel};
use cv_models::{fold, init, state, Architecture, Model};

fn pattern(dims: &[usize], phase: f32) -> candle_core::Result<Tensor> {
    let n: usize = dims.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|i| 1.5 * ((i as f32) * 0.618 + phase).sin())
        .collect();
    Tensor::from_vec(v, dims, &Device::Cpu)
}

fn best(reps: usize, mut f: impl FnMut() -> cv_models::Result<()>) -> cv_models::Result<f64> {
    f()?;
    let mut best = f64::INFINITY;
    for _ in 0..reps {
        let t = Instant::now();
        f()?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(best)
}

fn main() -> cv_models::Result<()> {
    cv_ops::leave_threads_to_rayon();
    let reps = std::env::var("REPS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    let arch = Architecture::ResNet18;
    let varmap = VarMap::new();
    let model = Model::new(
        arch,
        10,
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
    )?;
    init::initialise(&varmap, arch, 1)?;
    let folded = fold::fold_batch_norm(arch, &state::state_dict(&varmap)?)?;
    let frozen = model.detached();
    for (batch, side) in [(16, 224), (64, 32)] {
        let mut cal = Calibration::new(Observer::MinMax)?;
        for i in 0..3 {
            cal.observe(arch, &folded, &pattern(&[8, 3, side, side], i as f32)?)?;
        }
        let int8 = QuantizedModel::quantize(arch, &folded, &cal)?;
        let x = pattern(&[batch, 3, side, side], 5.0)?;
        let f32_s = best(reps, || frozen.forward_t(&x, false).map(drop))?;
        let int8_s = best(reps, || int8.forward(&x).map(drop))?;
        println!(
            "{{\"workload\":\"resnet18_eval_b{batch}_{side}\",\"kernel\":\"{}\",\"f32_images_per_s\":{:.1},\"int8_images_per_s\":{:.1},\"int8_over_f32\":{:.2}}}",
            cv_models::quant::int8_kernel(),
            batch as f64 / f32_s,
            batch as f64 / int8_s,
            f32_s / int8_s
        );
    }
    Ok(())
}
