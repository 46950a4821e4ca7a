//! The output folder of a run, the one owner of its format. Written at the end of every epoch,
//! every file atomically ([`crate::atomic`]):
//!
//! - `model.safetensors`: torchvision key names, `num_batches_tracked` included, so
//!   `torchvision.models.resnet18(num_classes=N).load_state_dict(load_file(path))` is strict-clean;
//! - `config.json`: [`CheckpointConfig`], the [`ModelCard`] (flattened: architecture, classes,
//!   image size, eval transforms) plus the train transforms, the recipe, the run-time settings,
//!   the data source, the starting weights and the seed;
//! - `metrics.jsonl`, `curves.png` and `curves.svg` (one figure, two formats): see
//!   [`crate::report`];
//! - `model_best.safetensors` ([`MODEL_BEST_FILE`]): the best epoch's weights, same keys;
//! - `train_state.safetensors`: [`TrainState`], what a resume needs;
//! - `report.html` ([`REPORT_FILE`]), at the end of the run: [`crate::run_report`].
//!
//! Inference code reads a folder through [`ModelCard::read`] and [`MODEL_FILE`].

mod card;
mod state;

use std::path::{Path, PathBuf};

use candle_core::Device;
use cv_data::{DataSource, Pipeline};
use serde::{Deserialize, Serialize};

pub use card::{ModelCard, Quantization};
pub use state::{StateMeta, TrainState, STATE_VERSION};

use crate::atomic;
use crate::config::{RunSettings, TrainConfig};
use crate::error::{Result, TrainError};
use crate::report::{self, EpochRecord};

/// Weights file of a checkpoint folder.
pub const MODEL_FILE: &str = "model.safetensors";
/// The weights of the epoch with the best selection accuracy ([`crate::selection`]).
pub const MODEL_BEST_FILE: &str = "model_best.safetensors";
/// Config file of a checkpoint folder.
pub const CONFIG_FILE: &str = "config.json";
/// Per-epoch metrics.
pub const METRICS_FILE: &str = "metrics.jsonl";
/// Loss and accuracy plot.
pub const CURVES_FILE: &str = "curves.png";
/// The same plot as SVG.
pub const CURVES_SVG_FILE: &str = "curves.svg";
/// The run report ([`crate::run_report`]), written at the end of a run.
pub const REPORT_FILE: &str = "report.html";
/// Resume state.
pub const STATE_FILE: &str = "train_state.safetensors";

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
        /// The registry name or path the user gave, from which a replay finds the weights
        /// (absent in configs written before replay existed).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        source: Option<String>,
        /// What the weights are, in words.
        origin: String,
    },
}

/// `config.json` of a checkpoint folder: enough to use the weights ([`ModelCard`]) and to
/// replay the run (recipe, data source, starting weights).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointConfig {
    /// How to use the weights (flattened into the top level).
    #[serde(flatten)]
    pub card: ModelCard,
    /// The training augmentation pipeline.
    pub train_transforms: Pipeline,
    /// The recipe: every hyper-parameter of the run.
    #[serde(deserialize_with = "crate::config::deserialize_recipe")]
    pub train: TrainConfig,
    /// How the process ran it (absent in configs written before the split).
    #[serde(default)]
    pub runtime: RunSettings,
    /// The arithmetic it ran with ([`crate::autocast::compute_name`]: `f32`,
    /// `bf16/amx-bf16`, `bf16/avx512-bf16`, `bf16/cuda`); absent in older configs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compute: Option<String>,
    /// The data the run trained on, when it was opened from a path.
    #[serde(default)]
    pub data: Option<DataSource>,
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
    /// Reads `config.json` from a checkpoint folder, or the file itself when given one.
    pub fn read(dir_or_file: &Path) -> Result<Self> {
        let path = if dir_or_file.is_dir() {
            dir_or_file.join(CONFIG_FILE)
        } else {
            dir_or_file.to_path_buf()
        };
        let text = std::fs::read_to_string(&path).map_err(|e| TrainError::io(&path, e))?;
        serde_json::from_str(&text).map_err(|error| TrainError::Json { path, error })
    }

    /// Writes `config.json` into `dir` atomically.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let path = dir.join(CONFIG_FILE);
        let text = serde_json::to_string_pretty(self).map_err(|error| TrainError::Json {
            path: path.clone(),
            error,
        })?;
        atomic::write_bytes(&path, text.as_bytes())
    }
}

/// A run's output folder.
#[derive(Debug, Clone)]
pub struct CheckpointDir {
    path: PathBuf,
}

impl CheckpointDir {
    /// Opens `path` for a run: creates it if needed and removes the temporary files a killed
    /// run left. A folder holding another run is refused unless `resume` is set; then its
    /// saved state is returned (`None`, with a warning, when there is nothing to resume).
    pub fn open(path: &Path, resume: bool, device: &Device) -> Result<(Self, Option<TrainState>)> {
        std::fs::create_dir_all(path).map_err(|e| TrainError::io(path, e))?;
        atomic::remove_stale_temps(path)?;
        let previous = TrainState::read(path, device)?;
        let shown = path.display();
        match (&previous, resume) {
            (Some(_), false) => {
                return Err(TrainError::Config(format!(
                    "{shown} already holds a run ({STATE_FILE}); resume it or choose another folder"
                )))
            }
            (None, false) if path.join(MODEL_FILE).exists() => {
                return Err(TrainError::Config(format!(
                    "{shown} already holds a checkpoint ({MODEL_FILE}); choose another folder"
                )))
            }
            (None, true) => {
                log::warn!("{shown}: nothing to resume (no {STATE_FILE}); starting a new run")
            }
            _ => {}
        }
        let dir = CheckpointDir {
            path: path.to_path_buf(),
        };
        Ok((dir, previous))
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes one epoch's files, each atomically; the resume state last, so it never points
    /// past what the other files hold.
    pub fn save_epoch(
        &self,
        config: &CheckpointConfig,
        state: &TrainState,
        records: &[EpochRecord],
    ) -> Result<()> {
        let dir = &self.path;
        atomic::write_safetensors(&dir.join(MODEL_FILE), state.published())?;
        config.write(dir)?;
        report::write_metrics(&dir.join(METRICS_FILE), records)?;
        report::write_curves(dir, records)?;
        state.write(dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn card() -> ModelCard {
        ModelCard {
            architecture: cv_models::Architecture::SimpleCnn,
            classes: vec!["a".into(), "b".into()],
            image_size: 32,
            eval_transforms: Pipeline::cifar_eval(),
            weights_from: None,
            quantization: None,
        }
    }

    fn config() -> CheckpointConfig {
        CheckpointConfig {
            card: card(),
            train_transforms: Pipeline::cifar_train(),
            train: TrainConfig::default(),
            runtime: RunSettings::default(),
            compute: Some("bf16/amx-bf16".into()),
            data: Some(DataSource::new("data/x")),
            init: InitRecord::Scratch { seed: 3 },
            seed: 3,
            epochs_completed: 2,
            test_accuracy: Some(0.5),
        }
    }

    #[test]
    fn config_json_is_a_model_card_too() {
        let dir = tempfile::tempdir().unwrap();
        let c = config();
        c.write(dir.path()).unwrap();
        assert_eq!(CheckpointConfig::read(dir.path()).unwrap(), c);
        assert_eq!(
            CheckpointConfig::read(&dir.path().join(CONFIG_FILE)).unwrap(),
            c
        );
        // Inference code reads the card part and ignores the rest.
        assert_eq!(ModelCard::read(dir.path()).unwrap(), card());
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join(CONFIG_FILE)).unwrap())
                .unwrap();
        assert_eq!(v["architecture"], "cnn");
        assert_eq!(v["train"]["epochs"], 10);
        assert_eq!(v["runtime"]["prefetch"], 2);
        assert!(
            v["train"].get("quiet").is_none(),
            "run-time settings stay out of the recipe"
        );
    }

    #[test]
    fn reads_configs_written_before_the_recipe_split() {
        let dir = tempfile::tempdir().unwrap();
        let mut v = serde_json::to_value(config()).unwrap();
        let fields = v.as_object_mut().unwrap();
        fields.remove("runtime");
        fields.remove("data");
        fields["train"]["quiet"] = true.into();
        fields["train"]["device"] = "cuda".into();
        fields["train"]["prefetch"] = 4.into();
        std::fs::write(dir.path().join(CONFIG_FILE), v.to_string()).unwrap();
        let read = CheckpointConfig::read(dir.path()).unwrap();
        assert_eq!(read.train, TrainConfig::default());
        assert_eq!(read.runtime, RunSettings::default());
        assert_eq!(read.data, None);
    }

    #[test]
    fn a_folder_holding_a_run_is_refused_unless_resuming() {
        let dir = tempfile::tempdir().unwrap();
        let (_, previous) = CheckpointDir::open(dir.path(), false, &Device::Cpu).unwrap();
        assert!(previous.is_none());
        std::fs::write(dir.path().join(MODEL_FILE), b"weights").unwrap();
        let err = CheckpointDir::open(dir.path(), false, &Device::Cpu).unwrap_err();
        assert!(err.to_string().contains(MODEL_FILE), "{err}");
        CheckpointDir::open(dir.path(), true, &Device::Cpu).unwrap();
    }
}
