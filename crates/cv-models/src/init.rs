//! PyTorch's default initialisation, seeded, applied to a `VarMap` by parameter name.
//!
//! - ResNet-18 convs: kaiming-normal, fan-out, ReLU gain (`std = sqrt(2 / (out*k*k))`), as
//!   torchvision's `ResNet.__init__` does.
//! - The small CNN's convs and every `Linear` weight: PyTorch's default
//!   `kaiming_uniform(a = sqrt(5))`, i.e. `U(-1/sqrt(fan_in), 1/sqrt(fan_in))`; biases
//!   `U(-1/sqrt(fan_in), 1/sqrt(fan_in))` with the fan-in of their layer's weight.
//! - BatchNorm: weight 1, bias 0, running mean 0, running variance 1, `num_batches_tracked` 0.
//!
//! The same seed gives the same weights: parameters are drawn from one ChaCha8 stream in
//! sorted-name order. (The numbers differ from PyTorch's generator; only the distributions
//! match.)

use std::collections::HashMap;

use candle_core::{Tensor, Var};
use candle_nn::VarMap;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::arch::Architecture;
use crate::error::{ModelError, Result};
use crate::params::is_batch_norm_weight;

/// How one parameter is drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Dist {
    Const(f64),
    Normal(f64),
    Uniform(f64),
}

fn fan_in(shape: &[usize]) -> usize {
    shape.iter().skip(1).product::<usize>().max(1)
}

fn dist_for(
    name: &str,
    shape: &[usize],
    arch: Architecture,
    shapes: &HashMap<String, Vec<usize>>,
) -> Result<Dist> {
    let last = name.rsplit('.').next().unwrap_or(name);
    Ok(match last {
        "running_mean" | "num_batches_tracked" => Dist::Const(0.0),
        "running_var" => Dist::Const(1.0),
        "weight" if is_batch_norm_weight(name) => Dist::Const(1.0),
        "bias" => {
            let module = name.strip_suffix("bias").unwrap_or("");
            if is_batch_norm_weight(&format!("{module}weight")) {
                Dist::Const(0.0)
            } else {
                let w = shapes.get(&format!("{module}weight")).ok_or_else(|| {
                    ModelError::Config(format!("init: bias {name} has no matching weight"))
                })?;
                Dist::Uniform(1.0 / (fan_in(w) as f64).sqrt())
            }
        }
        "weight" if shape.len() == 4 && arch == Architecture::ResNet18 => {
            let fan_out = shape[0] * shape[2] * shape[3];
            Dist::Normal((2.0 / fan_out as f64).sqrt())
        }
        "weight" if shape.len() >= 2 => Dist::Uniform(1.0 / (fan_in(shape) as f64).sqrt()),
        _ => {
            return Err(ModelError::Config(format!(
                "init: no rule for parameter {name} of shape {shape:?}"
            )))
        }
    })
}

/// A standard normal draw (Box-Muller; `rand_distr` is not needed for one distribution).
fn standard_normal(rng: &mut ChaCha8Rng) -> f64 {
    let u1: f64 = 1.0 - rng.random::<f64>(); // (0, 1]
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// Fills every parameter and buffer of `varmap` (built for `arch`) with PyTorch's
/// initialisation, drawn from `seed`.
pub fn initialise(varmap: &VarMap, arch: Architecture, seed: u64) -> Result<()> {
    let data = varmap.data().lock().unwrap_or_else(|p| p.into_inner());
    let shapes: HashMap<String, Vec<usize>> = data
        .iter()
        .map(|(k, v)| (k.clone(), v.dims().to_vec()))
        .collect();
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for name in names {
        let var: &Var = &data[name];
        let shape = var.dims().to_vec();
        let n: usize = shape.iter().product();
        let values: Vec<f64> = match dist_for(name, &shape, arch, &shapes)? {
            Dist::Const(c) => vec![c; n],
            Dist::Normal(std) => (0..n).map(|_| std * standard_normal(&mut rng)).collect(),
            Dist::Uniform(b) => (0..n).map(|_| rng.random_range(-b..b)).collect(),
        };
        let t = Tensor::from_vec(values, shape.as_slice(), var.device())?.to_dtype(var.dtype())?;
        var.set(&t)?;
    }
    Ok(())
}
