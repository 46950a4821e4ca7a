//! `cv train`, `cv finetune` and `cv eval`: flags -> `cv_train` job, then a summary.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use cv_models::Architecture;
use cv_train::config::{Augment, OptimizerKind, Precision, TrainConfig, TrainMode};
use cv_train::schedule::Schedule;
use cv_train::trainer::{run, Init, TrainJob};
use cv_weights::predict::Classifier;
use cv_weights::source::{resolve, ResolveOptions, WeightsSource};

use crate::args::{
    rgb, usage, AugmentArg, CommonTrainArgs, EvalArgs, FinetuneArgs, ModeArg, ModelArg,
    OptimizerArg, PrecisionArg, ScheduleArg, TrainArgs,
};

/// Training from scratch.
pub fn train(a: &TrainArgs) -> Result<()> {
    let arch = match a.model {
        ModelArg::Cnn => Architecture::SimpleCnn,
        ModelArg::Resnet18 => Architecture::ResNet18,
    };
    let mut config = cv_train::config::recipe_scratch(arch);
    apply_common(&mut config, &a.common)?;
    check_image_size(arch, &config)?;
    let splits = open_data(&a.data, &a.common)?;
    let init = Init::Scratch { seed: config.seed };
    let out = a
        .common
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("runs/train-{arch}")));
    finish_config(&mut config, &a.common, splits.train.len());
    execute(TrainJob {
        splits,
        architecture: arch,
        init,
        config,
        out_dir: out,
        resume: a.common.resume,
        device: device(&a.common.device)?,
    })
}

/// Fine-tuning pretrained weights.
pub fn finetune(a: &FinetuneArgs) -> Result<()> {
    let source = super::parse_weights(&a.weights)?;
    let mut config = cv_train::config::recipe_finetune();
    if let Some(m) = a.mode {
        config.mode = match m {
            ModeArg::Full => TrainMode::Full,
            ModeArg::Head => TrainMode::Head,
            ModeArg::Probe => TrainMode::Probe,
        };
    }
    if let Some(n) = a.unfreeze_after {
        config.unfreeze_after = Some(n);
        if a.mode.is_none() {
            config.mode = TrainMode::Full;
        }
    }
    if let Some(s) = a.backbone_lr_scale {
        config.backbone_lr_scale = s;
    }
    apply_common(&mut config, &a.common)?;
    let splits = open_data(&a.data, &a.common)?;
    let options = ResolveOptions {
        offline: a.offline,
        mean: rgb(&a.mean, "mean")?,
        std: rgb(&a.std, "std")?,
        progress: !a.common.quiet,
        hub: None,
    };
    let weights = resolve(&source, &options)?;
    if let Some(note) = &weights.note {
        log::info!("{note}");
    }
    check_image_size(weights.architecture, &config)?;
    let init = Init::from_resolved(&weights);
    let out = a
        .common
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs/finetune"));
    finish_config(&mut config, &a.common, splits.train.len());
    log::info!(
        "fine-tuning {} ({} mode) on {} classes",
        weights.origin,
        mode_name(config.mode),
        splits.classes.len()
    );
    execute(TrainJob {
        splits,
        architecture: weights.architecture,
        init,
        config,
        out_dir: out,
        resume: a.common.resume,
        device: device(&a.common.device)?,
    })
}

/// Evaluating a checkpoint on the test split.
pub fn eval(a: &EvalArgs) -> Result<()> {
    if !a.checkpoint.is_dir() {
        anyhow::bail!("--checkpoint {}: no such folder", a.checkpoint.display());
    }
    let weights = resolve(
        &WeightsSource::Folder(a.checkpoint.clone()),
        &ResolveOptions::default(),
    )?;
    let device = device(&a.device)?;
    let classifier = Classifier::load(&weights, &device)?;
    let splits = cv_data::open(
        &a.data,
        &cv_data::OpenOptions {
            skip_bad: a.skip_bad,
        },
    )?;
    report_skipped(&splits);
    if splits.classes != weights.classes {
        anyhow::bail!(
            "{} has classes {:?} but the checkpoint {} was trained on {:?}",
            a.data.display(),
            splits.classes,
            a.checkpoint.display(),
            weights.classes
        );
    }
    let loader = cv_data::Loader::new(
        Arc::new(splits.test),
        classifier.transforms().clone(),
        cv_data::LoaderConfig {
            batch_size: a.batch_size,
            shuffle: false,
            ..Default::default()
        },
        device,
    )?;
    let report = cv_train::metrics::evaluate(classifier.model(), &loader)?;
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    println!(
        "{} images: loss {:.4}, top-1 {:.2}%, top-5 {:.2}%",
        report.images,
        report.loss,
        report.accuracy * 100.0,
        report.top5 * 100.0
    );
    for c in &report.per_class {
        println!(
            "  {:<20} {:>6.2}%  ({} images)",
            c.class,
            c.accuracy * 100.0,
            c.count
        );
    }
    println!("confusion (rows: true class, columns: predicted):");
    for row in &report.confusion {
        println!(
            "  {}",
            row.iter().map(|n| format!("{n:>5}")).collect::<String>()
        );
    }
    Ok(())
}

fn execute(job: TrainJob) -> Result<()> {
    let out = job.out_dir.clone();
    let summary = run(&job).with_context(|| format!("training into {}", out.display()))?;
    let acc = summary
        .final_eval
        .as_ref()
        .map(|r| format!("{:.2}%", r.accuracy * 100.0))
        .unwrap_or_else(|| "n/a".into());
    println!(
        "done: {} epochs, test accuracy {acc}; wrote {}/{{model.safetensors, config.json, metrics.jsonl, curves.png, curves.svg}}",
        summary.epochs_completed,
        out.display()
    );
    Ok(())
}

fn open_data(path: &std::path::Path, c: &CommonTrainArgs) -> Result<cv_data::Splits> {
    let mut splits = cv_data::open(
        path,
        &cv_data::OpenOptions {
            skip_bad: c.skip_bad,
        },
    )
    .map_err(|e| match e {
        cv_data::DataError::Missing { .. } => anyhow::Error::new(e).context(format!(
            "no dataset at {} (run `cargo xtask fetch-data` for CIFAR-10, or pass --data DIR)",
            path.display()
        )),
        other => other.into(),
    })?;
    report_skipped(&splits);
    let seed = c.seed.unwrap_or(0);
    if let Some(n) = c.limit_train {
        splits.train = splits.train.subset(n, seed);
    }
    if let Some(n) = c.limit_test {
        splits.test = splits.test.subset(n, seed);
    }
    Ok(splits)
}

fn report_skipped(splits: &cv_data::Splits) {
    if !splits.skipped.is_empty() {
        log::warn!(
            "skipped {} unreadable images (first: {})",
            splits.skipped.len(),
            splits.skipped[0].path.display()
        );
    }
}

fn device(name: &str) -> Result<candle_core::Device> {
    Ok(cv_models::device::select(name)?)
}

fn mode_name(m: TrainMode) -> &'static str {
    match m {
        TrainMode::Full => "full",
        TrainMode::Head => "head",
        TrainMode::Probe => "probe",
    }
}

/// The small CNN's fc1 is 400 wide: it only fits 32x32 inputs.
fn check_image_size(arch: Architecture, config: &TrainConfig) -> Result<()> {
    if arch == Architecture::SimpleCnn && config.image_size != 32 {
        return Err(usage(format!(
            "--image-size {}: the small CNN takes 32x32 images only (its fc1 expects 16x5x5 = 400 features); use --model resnet18 for other sizes",
            config.image_size
        )));
    }
    Ok(())
}

fn apply_common(config: &mut TrainConfig, c: &CommonTrainArgs) -> Result<()> {
    macro_rules! set {
        ($field:ident) => {
            if let Some(v) = c.$field {
                config.$field = v;
            }
        };
    }
    set!(epochs);
    set!(batch_size);
    set!(lr);
    set!(momentum);
    set!(weight_decay);
    set!(label_smoothing);
    set!(seed);
    if let Some(s) = c.image_size {
        config.image_size = s as usize;
    }
    if c.nesterov {
        config.nesterov = true;
    }
    if let Some(o) = c.optimizer {
        config.optimizer = match o {
            OptimizerArg::Sgd => OptimizerKind::Sgd,
            OptimizerArg::Adamw => OptimizerKind::AdamW,
        };
    }
    if let Some(a) = c.augment {
        config.augment = match a {
            AugmentArg::Cifar => Augment::Cifar,
            AugmentArg::Imagenet => Augment::Imagenet,
            AugmentArg::None => Augment::None,
        };
    }
    if let Some(p) = c.precision {
        config.precision = match p {
            PrecisionArg::F32 => Precision::F32,
            PrecisionArg::Bf16 => Precision::Bf16,
        };
    }
    config.quiet = c.quiet;
    config.device = c.device.clone();
    config.validate().map_err(|e| usage(e.to_string()))?;
    Ok(())
}

/// The schedule needs the number of steps, known once the data is open.
fn finish_config(config: &mut TrainConfig, c: &CommonTrainArgs, train_images: usize) {
    let steps_per_epoch = if config.drop_last {
        train_images / config.batch_size
    } else {
        train_images.div_ceil(config.batch_size)
    }
    .max(1);
    if let Some(s) = c.schedule {
        config.schedule = match s {
            ScheduleArg::Constant => Schedule::Constant,
            ScheduleArg::Step => Schedule::Step {
                step_size: steps_per_epoch * (config.epochs / 3).max(1),
                gamma: 0.1,
            },
            ScheduleArg::Cosine => Schedule::Cosine {
                warmup_steps: steps_per_epoch.min(500),
                min_lr: 0.0,
            },
            ScheduleArg::Onecycle => Schedule::one_cycle(None),
        };
    }
}
