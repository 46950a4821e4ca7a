//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};

/// The parity fixtures folder, or None (with a skip notice) when absent.
pub fn fixtures() -> Option<PathBuf> {
    cv_testkit::fixtures::parity_dir()
}

pub fn load(dir: &Path, file: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(dir.join(file), &Device::Cpu).unwrap()
}

/// `max|T - R| / max|R|`.
pub fn rel_err(t: &Tensor, r: &Tensor) -> f64 {
    assert_eq!(t.dims(), r.dims(), "shape");
    let t = t.to_dtype(DType::F64).unwrap();
    let r = r.to_dtype(DType::F64).unwrap();
    let diff = (t - &r).unwrap().abs().unwrap().max_all().unwrap();
    let scale = r.abs().unwrap().max_all().unwrap();
    diff.to_scalar::<f64>().unwrap() / scale.to_scalar::<f64>().unwrap().max(1e-30)
}

/// Asserts the fixtures' bound: `max|T - R| <= 1e-4 * max|R|`.
pub fn assert_parity(what: &str, t: &Tensor, r: &Tensor) {
    let e = rel_err(t, r);
    eprintln!("{what}: max|T-R|/max|R| = {e:.3e}");
    assert!(e <= 1e-4, "{what}: relative error {e:.3e} > 1e-4");
}

/// Mean cross-entropy, the loss the fixtures use.
pub fn cross_entropy(logits: &Tensor, labels: &Tensor) -> Tensor {
    let labels = labels.to_dtype(DType::U32).unwrap();
    candle_nn::loss::cross_entropy(logits, &labels).unwrap()
}

/// PyTorch's SGD with momentum (dampening 0): `buf = g` on the first step, then
/// `buf = m * buf + g`; `p -= lr * buf`.
pub struct MomentumSgd {
    pub vars: Vec<(String, Var)>,
    pub bufs: Vec<Option<Tensor>>,
    pub lr: f64,
    pub momentum: f64,
}

impl MomentumSgd {
    pub fn new(vars: Vec<(String, Var)>, lr: f64, momentum: f64) -> Self {
        let n = vars.len();
        Self {
            vars,
            bufs: vec![None; n],
            lr,
            momentum,
        }
    }

    pub fn step(&mut self, loss: &Tensor) {
        let grads = loss.backward().unwrap();
        for ((name, var), buf) in self.vars.iter().zip(self.bufs.iter_mut()) {
            let g = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("no gradient for {name}"));
            let b = match buf.take() {
                None => g.clone(),
                Some(b) => ((b * self.momentum).unwrap() + g).unwrap(),
            };
            let p = (var.as_tensor() - (&b * self.lr).unwrap()).unwrap();
            var.set(&p).unwrap();
            *buf = Some(b);
        }
    }
}
