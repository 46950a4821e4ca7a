//! An exponential moving average of the weights (`ema_decay`), as timm's `ModelEmaV3` with
//! warm-up keeps it (torchvision's `ExponentialMovingAverage(use_buffers=True)` likewise
//! averages the buffers): after optimizer step `t` (from 0), `ema = d * ema + (1 - d) * w`
//! with `d = min(decay, (1 + t) / (10 + t))`, for every parameter and BatchNorm buffer
//! (integer buffers are copied), starting from the weights the run starts with. The warm-up
//! lets the average leave the starting weights (a fresh head) within the few hundred steps
//! of a small fine-tuning run; a decay of 0.999 is reached after 8,991 steps.
//!
//! The trainer evaluates the average every epoch and publishes it as `model.safetensors` (and
//! so `model_best.safetensors` and the report); the raw weights, which the optimizer goes on
//! from, stay in `train_state.safetensors` beside the average, so `--resume` continues both.

use std::collections::HashMap;

use candle_core::Tensor;
use candle_nn::VarMap;

use crate::error::{Result, TrainError};
use crate::trainer::{Hook, StepContext, StepOutput};

/// The average of a run's weights, updated as a [`Hook`] after every optimizer step.
#[derive(Debug)]
pub struct Ema {
    decay: f64,
    /// Updates so far (the run's optimizer steps).
    updates: u64,
    average: HashMap<String, Tensor>,
}

impl Ema {
    /// An average with `decay` in (0, 1) over the weights of `varmap`, starting from `saved`
    /// (a resumed run's, after its `updates` steps) or from a copy of the weights now.
    pub fn new(
        varmap: &VarMap,
        decay: f64,
        saved: Option<(HashMap<String, Tensor>, u64)>,
    ) -> Result<Self> {
        if !(decay > 0.0 && decay < 1.0) {
            return Err(TrainError::Config(format!(
                "ema_decay must be in (0, 1), got {decay}"
            )));
        }
        let now = cv_models::state::state_dict(varmap)?;
        let (average, updates) = match saved {
            None => (now, 0),
            Some((saved, updates)) => {
                let mut missing: Vec<&String> =
                    now.keys().filter(|k| !saved.contains_key(*k)).collect();
                missing.sort();
                if let Some(first) = missing.first() {
                    return Err(TrainError::Config(format!(
                        "the saved weight average lacks {} of the model's tensors, {first} first",
                        missing.len()
                    )));
                }
                (saved, updates)
            }
        };
        Ok(Ema {
            decay,
            updates,
            average,
        })
    }

    /// The decay of the next update: the warm-up's `(1 + t) / (10 + t)` until it reaches
    /// `decay`.
    pub fn current_decay(&self) -> f64 {
        let t = self.updates as f64;
        self.decay.min((1.0 + t) / (10.0 + t))
    }

    /// One step of the average towards the weights in `varmap`.
    pub fn update(&mut self, varmap: &VarMap) -> Result<()> {
        let d = self.current_decay();
        self.updates += 1;
        let data = varmap.data().lock().unwrap_or_else(|p| p.into_inner());
        for (key, var) in data.iter() {
            let w = var.as_tensor();
            let next = match self.average.get(key) {
                Some(a) if w.dtype().is_float() => (a.affine(d, 0.0)? + w.affine(1.0 - d, 0.0)?)?,
                _ => w.detach().copy()?,
            };
            self.average.insert(key.clone(), next);
        }
        Ok(())
    }

    /// The averaged weights (torchvision keys).
    pub fn weights(&self) -> &HashMap<String, Tensor> {
        &self.average
    }

    /// Loads the average into `varmap` and returns the raw weights it replaced.
    pub fn swap_in(&self, varmap: &VarMap) -> Result<HashMap<String, Tensor>> {
        let raw = cv_models::state::state_dict(varmap)?;
        cv_models::state::load_state_dict(varmap, &self.average)?;
        Ok(raw)
    }
}

impl Hook for Ema {
    fn after_step(&mut self, _out: &StepOutput, vars: &VarMap, _ctx: &StepContext) -> Result<()> {
        self.update(vars)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    fn varmap(w: f32) -> VarMap {
        let vm = VarMap::new();
        vm.get(
            (2,),
            "fc.weight",
            candle_nn::Init::Const(w as f64),
            DType::F32,
            &Device::Cpu,
        )
        .unwrap();
        vm
    }

    fn set(vm: &VarMap, w: f32) {
        let t = Tensor::new(&[w, w], &Device::Cpu).unwrap();
        cv_models::state::load_state_dict(vm, &[("fc.weight".to_string(), t)].into()).unwrap();
    }

    fn first(t: &Tensor) -> f32 {
        t.to_vec1::<f32>().unwrap()[0]
    }

    #[test]
    fn average_follows_the_recurrence_and_swaps() {
        let vm = varmap(1.0);
        let mut ema = Ema::new(&vm, 0.2, None).unwrap();
        let mut expect = 1.0f64;
        for (t, w) in [2.0f32, 5.0, -1.0].into_iter().enumerate() {
            set(&vm, w);
            ema.update(&vm).unwrap();
            // The warm-up's 0.1, then 2/11 (below 0.2), then 0.2.
            let d = [0.1, 2.0 / 11.0, 0.2][t];
            expect = d * expect + (1.0 - d) * w as f64;
        }
        let got = first(&ema.weights()["fc.weight"]);
        assert!((got as f64 - expect).abs() < 1e-6, "{got} vs {expect}");
        let raw = ema.swap_in(&vm).unwrap();
        assert_eq!(first(&raw["fc.weight"]), -1.0);
        let now = cv_models::state::state_dict(&vm).unwrap();
        assert_eq!(first(&now["fc.weight"]), got);
    }

    #[test]
    fn bad_decay_and_incomplete_saved_average_are_errors() {
        let vm = varmap(0.0);
        for d in [0.0, 1.0, f64::NAN] {
            assert!(Ema::new(&vm, d, None).is_err());
        }
        let err = Ema::new(&vm, 0.5, Some((HashMap::new(), 3)))
            .unwrap_err()
            .to_string();
        assert!(err.contains("fc.weight"), "{err}");
    }
}
