//! The output folder of a run, written at the end of every epoch, every file atomically:
//!
//! - `model.safetensors`: torchvision key names, `num_batches_tracked` included, so
//!   `torchvision.models.resnet18(num_classes=N).load_state_dict(load_file(path))` is strict-clean;
//! - `config.json`: the [`ModelCard`] (flattened: architecture, classes, image size, eval
//!   transforms) plus the train transforms, every hyper-parameter, the starting weights, seed;
//! - `metrics.jsonl`, `curves.png` and `curves.svg` (one figure, two formats): see
//!   [`crate::report`];
//! - `train_state.safetensors`: everything a resume needs in ONE file, so it is always
//!   self-consistent: the model (`model.<key>`), the optimizer state (`optim.<key>`) and a
//!   JSON header (`meta.json`, stored as a u8 tensor: epoch, global step, seed, config,
//!   metrics so far).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use cv_data::Pipeline;
use cv_weights::ModelCard;
use serde::{Deserialize, Serialize};

use crate::atomic;
use crate::config::TrainConfig;
use crate::error::{Result, TrainError};
use crate::report::EpochRecord;

/// Weights file of a checkpoint folder.
pub const MODEL_FILE: &str = "model.safetensors";
/// Config file of a checkpoint folder.
pub const CONFIG_FILE: &str = "config.json";
/// Per-epoch metrics.
pub const METRICS_FILE: &str = "metrics.jsonl";
/// Loss and accuracy plot.
pub const CURVES_FILE: &str = "curves.png";
/// The same plot as SVG.
pub const CURVES_SVG_FILE: &str = "curves.svg";
/// Resume state.
pub const STATE_FILE: &str = "train_state.safetensors";

const MODEL_PREFIX: &str = "model.";
const OPTIM_PREFIX: &str = "optim.";
const META_KEY: &str = "meta.json";
/// Version of the `train_state.safetensors` layout.
pub const STATE_VERSION: u32 = 1;

/// Where the starting weights came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum InitRecord {
    /// PyTorch's default initialisation with this seed.
    Scratch {
        /// Seed of the initialisation.
        seed: u64,
    },
    /// Pretrained weights (the head replaced when the class count differs).
    Pretrained {
        /// The safetensors file read.
        path: PathBuf,
        /// Registry name or path the user gave.
        origin: String,
    },
}

/// `config.json` of a checkpoint folder. `cv_weights::ModelCard::read` reads the card part.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointConfig {
    /// How to use the weights (flattened into the top level).
    #[serde(flatten)]
    pub card: ModelCard,
    /// The training augmentation pipeline.
    pub train_transforms: Pipeline,
    /// Every hyper-parameter of the run.
    pub train: TrainConfig,
    /// The weights the run started from.
    pub init: InitRecord,
    /// Seed of initialisation, data order and augmentation.
    pub seed: u64,
    /// Epochs completed when these weights were saved.
    pub epochs_completed: usize,
    /// Test accuracy of these weights (last evaluation), if evaluated.
    pub test_accuracy: Option<f64>,
}

impl CheckpointConfig {
    /// Reads `config.json` from a checkpoint folder.
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| TrainError::io(&path, e))?;
        serde_json::from_str(&text).map_err(|source| TrainError::Json { path, source })
    }

    /// Writes `config.json` atomically.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let path = dir.join(CONFIG_FILE);
        let text = serde_json::to_string_pretty(self).map_err(|source| TrainError::Json {
            path: path.clone(),
            source,
        })?;
        atomic::write_bytes(&path, text.as_bytes())
    }
}

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
    /// The configuration the run was started with.
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
        let json = serde_json::to_vec(&self.meta).map_err(|source| TrainError::Json {
            path: path.clone(),
            source,
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
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TrainConfig;

    fn card() -> ModelCard {
        ModelCard {
            architecture: cv_models::Architecture::SimpleCnn,
            classes: vec!["a".into(), "b".into()],
            image_size: 32,
            eval_transforms: Pipeline::cifar_eval(),
            weights_from: None,
        }
    }

    #[test]
    fn config_json_is_a_model_card_too() {
        let dir = tempfile::tempdir().unwrap();
        let c = CheckpointConfig {
            card: card(),
            train_transforms: Pipeline::cifar_train(),
            train: TrainConfig::default(),
            init: InitRecord::Scratch { seed: 3 },
            seed: 3,
            epochs_completed: 2,
            test_accuracy: Some(0.5),
        };
        c.write(dir.path()).unwrap();
        assert_eq!(CheckpointConfig::read(dir.path()).unwrap(), c);
        // The weights crate reads the card part and ignores the rest.
        assert_eq!(ModelCard::read(dir.path()).unwrap(), card());
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join(CONFIG_FILE)).unwrap())
                .unwrap();
        assert_eq!(v["architecture"], "cnn");
        assert_eq!(v["train"]["epochs"], 10);
    }

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
            optimizer: [("sgd.momentum_buffer.fc.weight".to_string(), w)].into(),
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
