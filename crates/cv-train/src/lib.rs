//! Optimizers, learning-rate schedules, losses, the train/eval loop, metrics and crash-safe
//! checkpoints: the loop the PyTorch CIFAR-10 tutorial writes by hand, done properly.
//!
//! ```no_run
//! use cv_train::config::{RunSettings, TrainConfig};
//! use cv_train::trainer::{run, Init, TrainJob};
//!
//! let data = cv_data::DataSource::new("data/cifar-10-batches-bin");
//! let job = TrainJob {
//!     splits: data.open()?,
//!     architecture: cv_models::Architecture::SimpleCnn,
//!     init: Init::Scratch { seed: 0 },
//!     config: TrainConfig { epochs: 2, ..Default::default() },
//!     settings: RunSettings::default(),
//!     data: Some(data),
//!     out_dir: "runs/cnn".into(),
//!     resume: false,
//!     device: candle_core::Device::Cpu,
//! };
//! let summary = run(&job)?;
//! println!("test accuracy {:?}", summary.final_eval.map(|r| r.accuracy));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Modules, one idea each: [`autocast`] (what `--precision bf16` does on each device), [`trainer`] (the loop as named parts: the train step, the epoch
//! loop, the [`trainer::Hook`]s features plug in through, the fine-tuning modes), [`optim`]
//! (SGD with momentum and AdamW, PyTorch semantics, parameter groups, exportable state),
//! [`schedule`], [`loss`], [`mixing`] (MixUp, CutMix), [`ema`] (the weight average), [`selection`] (the best epoch's
//! weights, early stopping), [`metrics`] (top-k, per-class, confusion, the eval step,
//! `cv eval --json`), [`config`] (the recipe apart from the run-time settings),
//! [`checkpoint`] (the output folder: one owner of its file names, `config.json` and the
//! resume state), [`report`] (`metrics.jsonl`, `curves.png`/`.svg`, progress), [`run_report`]
//! (`report.html`: curves, confusion heatmap, per-class accuracy, most-confused pairs,
//! top losses with Grad-CAM, recipe), [`atomic`] (temp file +
//! fsync + rename, the one crash-safe writer).

pub mod atomic;
pub mod autocast;
pub mod checkpoint;
pub mod config;
pub mod distill;
pub mod ema;
mod error;
pub mod loss;
pub mod metrics;
pub mod mixing;
pub mod optim;
pub mod report;
pub mod run_report;
pub mod schedule;
pub mod selection;
pub mod trainer;

pub use error::{Result, TrainError};
