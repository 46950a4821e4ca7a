//! `cv train`, `cv distill`, `cv finetune` and `cv eval`: flags (over a replayed run's `config.json` when
//! `--config` names one) -> `cv_train` job, then a summary.

use std::path::PathBuf;

use anyhow::{Context, Result};
use cv_data::DataSource;
use cv_models::Architecture;
use cv_train::checkpoint::{CheckpointConfig, InitRecord};
use cv_train::config::{
    Augment, AutoAugmentKind, Distill, OptimizerKind, RunSettings, TrainConfig, TrainMode,
};
use cv_train::schedule::Schedule;
use cv_train::trainer::{run, Init, TrainJob};
use cv_weights::source::{resolve, ResolveOptions};

use crate::args::{
    rgb, usage, AugmentArg, AutoAugmentArg, CommonTrainArgs, DistillArgs, EvalArgs, FinetuneArgs,
    ModeArg, ModelArg, OptimizerArg, ScheduleArg, TrainArgs, DEFAULT_DATA, DEFAULT_WEIGHTS,
};

/// Training from scratch, or replaying a run that did (`--config`).
pub fn train(a: &TrainArgs) -> Result<()> {
    execute(scratch_job(a.model, &a.common, "train", |_| {})?)
}

/// Training a student from scratch with a teacher's softened outputs: `cv train` with the
/// recipe's `distill` set (so `config.json` records it and a replay distils again).
pub fn distill(a: &DistillArgs) -> Result<()> {
    let settings = Distill {
        teacher: a.teacher.clone(),
        temperature: a.temperature,
        alpha: a.alpha,
    };
    execute(scratch_job(a.student, &a.common, "distill", |c| {
        c.distill = Some(settings)
    })?)
}

/// The job of `cv train` (or `cv distill`, whose `recipe` sets its field): the model from
/// `model`, the replayed run's or the CNN; its recipe with the flags applied; the output
/// folder `runs/{command}-{arch}` unless `--out` says otherwise.
fn scratch_job(
    model: Option<ModelArg>,
    common: &CommonTrainArgs,
    command: &str,
    recipe: impl FnOnce(&mut TrainConfig),
) -> Result<TrainJob> {
    let replay = read_replay(common)?;
    if let Some(InitRecord::Pretrained { .. }) = replay.as_ref().map(|r| &r.init) {
        return Err(usage(
            "--config: that run fine-tuned pretrained weights: replay it with `cv finetune --config`",
        ));
    }
    let arch = match (model, &replay) {
        (Some(ModelArg::Cnn), _) => Architecture::SimpleCnn,
        (Some(ModelArg::Resnet18), _) => Architecture::ResNet18,
        (None, Some(r)) => r.card.architecture,
        (None, None) => Architecture::SimpleCnn,
    };
    let mut config = match &replay {
        Some(r) => r.train.clone(),
        None => cv_train::config::recipe_scratch(arch),
    };
    apply_common(&mut config, common)?;
    recipe(&mut config);
    check_image_size(arch, &config)?;
    let data = data_source(common, replay.as_ref(), &config);
    let splits = open_data(&data)?;
    let out = out_dir(common, format!("runs/{command}-{arch}"));
    finish_config(&mut config, common, splits.train.len());
    Ok(TrainJob {
        splits,
        architecture: arch,
        init: Init::Scratch { seed: config.seed },
        config,
        settings: run_settings(common),
        data: Some(data),
        out_dir: out,
        resume: common.resume,
        device: device(&common.device)?,
    })
}

/// Fine-tuning pretrained weights, or replaying a run that did (`--config`).
pub fn finetune(a: &FinetuneArgs) -> Result<()> {
    let replay = read_replay(&a.common)?;
    let replayed_source = match replay.as_ref().map(|r| &r.init) {
        Some(InitRecord::Scratch { .. }) => {
            return Err(usage(
                "--config: that run trained from scratch: replay it with `cv train --config`",
            ))
        }
        Some(InitRecord::Pretrained { source, .. }) => source.clone(),
        None => None,
    };
    let weights_arg = match (&a.weights, &replay, replayed_source) {
        (Some(w), _, _) => w.clone(),
        (None, Some(_), Some(recorded)) => recorded,
        (None, Some(_), None) => {
            return Err(usage(
                "--config: that config.json does not record where its weights came from \
                 (written before replay existed): pass --weights",
            ))
        }
        (None, None, _) => DEFAULT_WEIGHTS.to_string(),
    };
    let source = super::parse_weights(&weights_arg)?;
    let mut config = match &replay {
        Some(r) => r.train.clone(),
        None => cv_train::config::recipe_finetune(),
    };
    apply_finetune(&mut config, a);
    if replay.is_none() {
        // The recipe's rate for the mode the flags chose; --lr (below) overrides it.
        config.lr = cv_train::config::finetune_lr(config.mode);
    }
    apply_common(&mut config, &a.common)?;
    let data = data_source(&a.common, replay.as_ref(), &config);
    let splits = open_data(&data)?;
    // A replay keeps the normalisation the run used unless flags say otherwise.
    let recorded = replay.as_ref().map(|r| &r.card.eval_transforms);
    let options = ResolveOptions {
        offline: a.offline,
        mean: rgb(&a.mean, "mean")?.or(recorded.map(|p| p.mean)),
        std: rgb(&a.std, "std")?.or(recorded.map(|p| p.std)),
        progress: !a.common.quiet,
        hub: None,
    };
    let weights = resolve(&source, &options)?;
    if weights.int8 {
        return Err(cv_weights::WeightsError::NeedsFloat {
            path: weights.path.clone(),
            needs: "fine-tuning".into(),
        }
        .into());
    }
    if let Some(note) = &weights.note {
        log::info!("{note}");
    }
    check_image_size(weights.architecture, &config)?;
    let init = Init::Pretrained {
        path: weights.path.clone(),
        source: weights_arg,
        origin: weights.origin.clone(),
        mean: weights.eval_transforms.mean,
        std: weights.eval_transforms.std,
    };
    let out = out_dir(&a.common, "runs/finetune".into());
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
        settings: run_settings(&a.common),
        data: Some(data),
        out_dir: out,
        resume: a.common.resume,
        device: device(&a.common.device)?,
    })
}

/// The fine-tuning flags over the recipe.
fn apply_finetune(config: &mut TrainConfig, a: &FinetuneArgs) {
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
    if let (None, TrainMode::Probe, Some(flag)) = (a.mode, config.mode, image_flag(&a.common)) {
        log::info!(
            "{flag}: mode full (a probe trains on cached features of the eval transforms, which              {flag} cannot change; --mode head trains the head on augmented images)"
        );
        config.mode = TrainMode::Full;
    }
}

/// The first flag given that changes training images or batches, which a probe never sees.
fn image_flag(c: &CommonTrainArgs) -> Option<&'static str> {
    [
        ("--mixup", c.mixup.is_some()),
        ("--cutmix", c.cutmix.is_some()),
        ("--auto-augment", c.auto_augment.is_some()),
        ("--color-jitter", c.color_jitter.is_some()),
        ("--random-erasing", c.random_erasing.is_some()),
    ]
    .into_iter()
    .find_map(|(flag, given)| given.then_some(flag))
}

/// The run `--config` names, if any.
fn read_replay(c: &CommonTrainArgs) -> Result<Option<CheckpointConfig>> {
    let Some(path) = &c.config else {
        return Ok(None);
    };
    let config = CheckpointConfig::read(path).with_context(|| {
        format!(
            "--config {}: not a run's config.json (train and finetune write one into their --out folder)",
            path.display()
        )
    })?;
    log::info!(
        "replaying {} ({} after {} epochs)",
        path.display(),
        config.card.architecture,
        config.epochs_completed
    );
    Ok(Some(config))
}

/// The data the flags name, else the replayed run's, else the default folder.
fn data_source(
    c: &CommonTrainArgs,
    replay: Option<&CheckpointConfig>,
    config: &TrainConfig,
) -> DataSource {
    let recorded = replay.and_then(|r| r.data.clone());
    let base = recorded
        .clone()
        .unwrap_or_else(|| DataSource::new(DEFAULT_DATA));
    c.split.apply(DataSource {
        path: c.data.clone().unwrap_or(base.path.clone()),
        skip_bad: c.skip_bad || base.skip_bad,
        limit_train: c.limit_train.or(base.limit_train),
        limit_test: c.limit_test.or(base.limit_test),
        subset_seed: config.seed,
        ..base
    })
}

fn out_dir(c: &CommonTrainArgs, default: String) -> PathBuf {
    c.out.clone().unwrap_or_else(|| PathBuf::from(default))
}

fn run_settings(c: &CommonTrainArgs) -> RunSettings {
    RunSettings {
        quiet: c.quiet,
        device: c.device.clone(),
        ..RunSettings::default()
    }
}

/// Evaluating a checkpoint on the test split (and its report with `--report`).
pub fn eval(a: &EvalArgs) -> Result<()> {
    let device = device(&a.pass.device)?;
    let _cast = super::eval_precision(a.precision, &device)?;
    let data = a.pass.split.apply(DataSource {
        skip_bad: a.pass.skip_bad,
        ..DataSource::new(&a.data)
    });
    let evaluated = super::report::open(&a.checkpoint, &data, a.pass.batch_size, &device)?;
    let classifier = &evaluated.classifier;
    let forward = |x: &candle_core::Tensor| {
        classifier
            .logits(x)
            .map_err(|e| candle_core::Error::Msg(format!("{e:#}")))
    };
    let evaluation = cv_train::metrics::evaluate_samples_with(forward, &evaluated.loader)?;
    if let Some(dir) = &a.report {
        let path = super::report::path_in(dir)?;
        super::report::write(&a.checkpoint, &evaluated, &evaluation, &path, a.top_losses)?;
        log::info!("wrote {}", path.display());
    }
    let report = evaluation.report;
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
        "done: {} epochs, test accuracy {acc}; wrote {}/{{model.safetensors, config.json, metrics.jsonl, curves.png, curves.svg, report.html}}",
        summary.epochs_completed,
        out.display()
    );
    Ok(())
}

pub(super) fn open_data(data: &DataSource) -> Result<cv_data::Splits> {
    let splits = data.open().map_err(|e| match e {
        cv_data::DataError::Missing { .. } => anyhow::Error::new(e).context(format!(
            "no dataset at {} (run `cargo xtask fetch-data` for CIFAR-10, or pass --data DIR)",
            data.path.display()
        )),
        other => other.into(),
    })?;
    report_skipped(&splits);
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

/// The architecture's one input-size rule, as a usage error naming the flag.
fn check_image_size(arch: Architecture, config: &TrainConfig) -> Result<()> {
    arch.check_image_size(config.image_size)
        .map_err(|e| usage(format!("--image-size: {e}")))
}

/// `--color-jitter`, `--auto-augment`, `--randaugment-*`, `--random-erasing`.
fn apply_policies(config: &mut TrainConfig, c: &CommonTrainArgs) -> Result<()> {
    if let Some(j) = c.color_jitter {
        config.color_jitter = Some(j);
    }
    if let Some(a) = c.auto_augment {
        config.auto_augment = Some(match a {
            AutoAugmentArg::Trivial => AutoAugmentKind::Trivial,
            AutoAugmentArg::Rand => AutoAugmentKind::Rand,
            AutoAugmentArg::Auto => AutoAugmentKind::Auto,
        });
    }
    if c.randaugment_ops.is_some() || c.randaugment_magnitude.is_some() {
        if config.auto_augment != Some(AutoAugmentKind::Rand) {
            return Err(usage(
                "--randaugment-ops and --randaugment-magnitude need --auto-augment rand",
            ));
        }
        config.randaugment_ops = c.randaugment_ops.unwrap_or(config.randaugment_ops);
        config.randaugment_magnitude = c
            .randaugment_magnitude
            .unwrap_or(config.randaugment_magnitude);
    }
    if let Some(p) = c.random_erasing {
        config.random_erasing = Some(p);
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
    set!(accum_steps);
    if let Some(s) = c.image_size {
        config.image_size = s as usize;
    }
    if let Some(a) = c.mixup {
        config.mixup_alpha = Some(a);
    }
    if let Some(a) = c.cutmix {
        config.cutmix_alpha = Some(a);
    }
    if let Some(f) = c.val_split {
        config.val_split = Some(f);
    }
    if let Some(n) = c.early_stop {
        config.early_stop = Some(n);
    }
    if let Some(d) = c.ema_decay {
        config.ema_decay = Some(d);
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
        config.precision = p.into();
    }
    apply_policies(config, c)?;
    config.validate().map_err(|e| usage(e.to_string()))?;
    Ok(())
}

/// The schedule needs the number of steps, known once the data is open.
fn finish_config(config: &mut TrainConfig, c: &CommonTrainArgs, train_images: usize) {
    let batches = if config.drop_last {
        train_images / config.batch_size
    } else {
        train_images.div_ceil(config.batch_size)
    };
    let steps_per_epoch = config.optimizer_steps(batches).max(1);
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
