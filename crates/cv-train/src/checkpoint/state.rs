//! `train_state.safetensors`: everything a resume needs in ONE file, so it is always
//! self-consistent: the model (`model.<key>`), the optimizer state (`optim.<key>`), the
//! weight average when the run keeps one (`ema.<key>`, [`crate::ema`]) and a JSON header (`meta.json`, stored as a u8 tensor: epoch, global step, seed, recipe, metrics so
//! far).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::STATE_FILE;
use crate::atomic;
use crate::config::TrainConfig;
use crate::error::{Result, TrainError};
use crate::report::EpochRecord;

const MODEL_PREFIX: &str = "model.";
const OPTIM_PREFIX: &str = "optim.";
const EMA_PREFIX: &str = "ema.";
const META_KEY: &str = "meta.json";
/// Version of the `train_state.safetensors` layout.
pub const STATE_VERSION: u32 = 1;

/// The small JSON header of the resume state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateMeta {
    /// Layout version ([`STATE_VERSION`]).
    pub version: u32,
    /// Epochs completed; training resumes at this 0-based epoch.
    pub epochs_completed: usize,
    /// Optimizer steps taken so far (the schedule's position).
    pub global_step: usize,
    /// Seed of the run (data order and augmentation are functions of (seed, epoch)).
    pub seed: u64,
    /// The recipe the run was started with.
    #[serde(deserialize_with = "crate::config::deserialize_recipe")]
    pub config: TrainConfig,
    /// Class names, to refuse resuming on other data.
    pub classes: Vec<String>,
    /// The metrics of the completed epochs (`metrics.jsonl` is rebuilt from them).
    pub records: Vec<EpochRecord>,
}

/// Everything needed to continue a run exactly.
#[derive(Debug, Clone)]
pub struct TrainState {
    /// Counters, config and metrics.
    pub meta: StateMeta,
    /// The model's state dict (torchvision keys).
    pub model: HashMap<String, Tensor>,
    /// The optimizer's named state tensors.
    pub optimizer: HashMap<String, Tensor>,
    /// The average of the weights (`ema_decay`), empty when the run keeps none.
    pub ema: HashMap<String, Tensor>,
}

impl TrainState {
    /// Writes `train_state.safetensors` atomically.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let path = dir.join(STATE_FILE);
        let mut tensors = HashMap::with_capacity(self.model.len() + self.optimizer.len() + 1);
        for (k, v) in &self.model {
            tensors.insert(format!("{MODEL_PREFIX}{k}"), v.to_device(&Device::Cpu)?);
        }
        for (k, v) in &self.optimizer {
            tensors.insert(format!("{OPTIM_PREFIX}{k}"), v.to_device(&Device::Cpu)?);
        }
        for (k, v) in &self.ema {
            tensors.insert(format!("{EMA_PREFIX}{k}"), v.to_device(&Device::Cpu)?);
        }
        let json = serde_json::to_vec(&self.meta).map_err(|error| TrainError::Json {
            path: path.clone(),
            error,
        })?;
        let n = json.len();
        tensors.insert(META_KEY.into(), Tensor::from_vec(json, n, &Device::Cpu)?);
        atomic::write_safetensors(&path, &tensors)
    }

    /// Reads `train_state.safetensors`, or `None` when the folder has none.
    pub fn read(dir: &Path, device: &Device) -> Result<Option<Self>> {
        let path = dir.join(STATE_FILE);
        if !path.exists() {
            return Ok(None);
        }
        let bad = |message: String| TrainError::State {
            path: path.clone(),
            message,
        };
        let tensors = candle_core::safetensors::load(&path, device)
            .map_err(|e| bad(format!("cannot read (truncated or not safetensors): {e}")))?;
        let mut model = HashMap::new();
        let mut optimizer = HashMap::new();
        let mut ema = HashMap::new();
        let mut meta = None;
        for (k, v) in tensors {
            if k == META_KEY {
                let bytes = v
                    .to_vec1::<u8>()
                    .map_err(|e| bad(format!("{META_KEY} is not a u8 vector: {e}")))?;
                let m: StateMeta = serde_json::from_slice(&bytes)
                    .map_err(|e| bad(format!("{META_KEY} is not valid: {e}")))?;
                meta = Some(m);
            } else if let Some(name) = k.strip_prefix(MODEL_PREFIX) {
                model.insert(name.to_string(), v);
            } else if let Some(name) = k.strip_prefix(OPTIM_PREFIX) {
                optimizer.insert(name.to_string(), v);
            } else if let Some(name) = k.strip_prefix(EMA_PREFIX) {
                ema.insert(name.to_string(), v);
            } else {
                return Err(bad(format!("unexpected tensor {k}")));
            }
        }
        let meta = meta.ok_or_else(|| bad(format!("no {META_KEY} entry")))?;
        if meta.version != STATE_VERSION {
            return Err(bad(format!(
                "layout version {} (this program reads {STATE_VERSION})",
                meta.version
            )));
        }
        if model.is_empty() {
            return Err(bad("holds no model tensors".into()));
        }
        Ok(Some(TrainState {
            meta,
            model,
            optimizer,
            ema,
        }))
    }

    /// The weights the run publishes as `model.safetensors`: the average when it keeps one.
    pub fn published(&self) -> &HashMap<String, Tensor> {
        if self.ema.is_empty() {
            &self.model
        } else {
            &self.ema
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trip_and_corruption_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        assert!(TrainState::read(dir.path(), &Device::Cpu)
            .unwrap()
            .is_none());
        let w = Tensor::new(&[1f32, 2.], &Device::Cpu).unwrap();
        let n = Tensor::new(3i64, &Device::Cpu).unwrap();
        let state = TrainState {
            meta: StateMeta {
                version: STATE_VERSION,
                epochs_completed: 1,
                global_step: 7,
                seed: 9,
                config: TrainConfig::default(),
                classes: vec!["a".into()],
                records: vec![],
            },
            model: [
                ("fc.weight".to_string(), w.clone()),
                ("bn1.num_batches_tracked".to_string(), n),
            ]
            .into(),
            optimizer: [("sgd.momentum_buffer.fc.weight".to_string(), w.clone())].into(),
            ema: [("fc.weight".to_string(), w.affine(0.5, 0.0).unwrap())].into(),
        };
        state.write(dir.path()).unwrap();
        let back = TrainState::read(dir.path(), &Device::Cpu).unwrap().unwrap();
        assert_eq!(back.meta, state.meta);
        assert_eq!(
            back.model["fc.weight"].to_vec1::<f32>().unwrap(),
            vec![1., 2.]
        );
        assert_eq!(
            back.model["bn1.num_batches_tracked"]
                .to_scalar::<i64>()
                .unwrap(),
            3
        );
        assert_eq!(back.optimizer.len(), 1);
        assert_eq!(
            back.published()["fc.weight"].to_vec1::<f32>().unwrap(),
            vec![0.5, 1.]
        );
        // Truncate: a clear error naming the file.
        let p = dir.path().join(STATE_FILE);
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
        let err = TrainState::read(dir.path(), &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(err.contains(STATE_FILE), "{err}");
    }
}
