//! Optimizers, learning-rate schedules, losses, the train/eval loop, metrics and crash-safe
//! checkpoints: the loop the PyTorch CIFAR-10 tutorial writes by hand, done properly.
//!
//! ```no_run
//! use cv_train::{run, Init, TrainConfig, TrainJob};
//!
//! let splits = cv_data::open("data/cifar-10-batches-bin".as_ref(), &Default::default())?;
//! let job = TrainJob {
//!     splits,
//!     architecture: cv_models::Architecture::SimpleCnn,
//!     init: Init::Scratch { seed: 0 },
//!     config: TrainConfig { epochs: 2, ..Default::default() },
//!     out_dir: "runs/cnn".into(),
//!     resume: false,
//!     device: candle_core::Device::Cpu,
//! };
//! let summary = run(&job)?;
//! println!("test accuracy {:?}", summary.final_eval.map(|r| r.accuracy));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Modules, one idea each: [`optim`] (SGD with momentum and AdamW, PyTorch semantics,
//! parameter groups, exportable state), [`schedule`], [`loss`], [`metrics`] (top-k,
//! per-class, confusion, `cv eval --json`), [`config`], [`trainer`] (the loop and the
//! fine-tuning modes), [`checkpoint`] (the output folder and resume state), [`report`]
//! (`metrics.jsonl`, `curves.png`, progress), [`atomic`] (temp file + fsync + rename).

pub mod atomic;
pub mod checkpoint;
pub mod config;
pub mod error;
pub mod loss;
pub mod metrics;
pub mod optim;
pub mod report;
pub mod schedule;
pub mod trainer;

pub use config::{Augment, OptimizerKind, Precision, TrainConfig, TrainMode};
pub use error::{Result, TrainError};
pub use metrics::{evaluate, ClassAccuracy, EvalReport};
pub use optim::{AdamW, AdamWConfig, ParamGroup, Sgd, SgdConfig};
pub use schedule::Schedule;
pub use trainer::{run, run_with, Init, RunSummary, TrainJob};
