//! The training loop: epochs over shuffled, augmented batches; train-mode forward, loss,
//! backward, optimizer step; evaluation on the test split; a checkpoint after every epoch;
//! exact resume. Fine-tuning modes: `full`, `head` (frozen backbone in eval mode), `probe`
//! (cached features, linear head) and gradual unfreezing.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{Module, VarBuilder, VarMap};
use cv_data::transforms::{Transform, CIFAR10_MEAN, CIFAR10_STD};
use cv_data::{Dataset, Loader, LoaderConfig, Pipeline, Splits};
use cv_models::params::{trainable_vars, Trainable};
use cv_models::{Architecture, Model};
use cv_weights::ModelCard;
use rand::seq::SliceRandom;

use crate::atomic;
use crate::checkpoint::{
    CheckpointConfig, InitRecord, StateMeta, TrainState, METRICS_FILE, MODEL_FILE, STATE_FILE,
    STATE_VERSION,
};
use crate::config::{Augment, OptimizerKind, Precision, TrainConfig, TrainMode};
use crate::error::{Result, TrainError};
use crate::loss::cross_entropy;
use crate::metrics::{evaluate, EvalReport, MetricsAccumulator};
use crate::optim::{AdamW, AdamWConfig, AnyOptimizer, ParamGroup, Sgd, SgdConfig};
use crate::report::{self, EpochProgress, EpochRecord};

/// Where the model's weights start.
#[derive(Debug, Clone, PartialEq)]
pub enum Init {
    /// PyTorch's default initialisation drawn from `seed`; CIFAR normalisation.
    Scratch {
        /// Seed of the initialisation.
        seed: u64,
    },
    /// A pretrained checkpoint; the head is replaced when the class count differs.
    Pretrained {
        /// The `.safetensors` file.
        path: PathBuf,
        /// The registry name or path the user gave (recorded in `config.json`).
        origin: String,
        /// Normalisation the weights were trained with (ImageNet's for torchvision).
        mean: [f32; 3],
        /// Standard deviation of that normalisation.
        std: [f32; 3],
    },
}

impl Init {
    /// Pretrained weights as `cv_weights::resolve` found them, with their normalisation.
    pub fn from_resolved(w: &cv_weights::ResolvedWeights) -> Self {
        Init::Pretrained {
            path: w.path.clone(),
            origin: w.origin.clone(),
            mean: w.eval_transforms.mean,
            std: w.eval_transforms.std,
        }
    }

    fn normalization(&self) -> ([f32; 3], [f32; 3]) {
        match self {
            Init::Scratch { .. } => (CIFAR10_MEAN, CIFAR10_STD),
            Init::Pretrained { mean, std, .. } => (*mean, *std),
        }
    }

    fn record(&self) -> InitRecord {
        match self {
            Init::Scratch { seed } => InitRecord::Scratch { seed: *seed },
            Init::Pretrained { path, origin, .. } => InitRecord::Pretrained {
                path: path.clone(),
                origin: origin.clone(),
            },
        }
    }
}

/// One training run.
#[derive(Debug, Clone)]
pub struct TrainJob {
    /// Train and test data with their class names.
    pub splits: Splits,
    /// The network to train.
    pub architecture: Architecture,
    /// Where the weights start.
    pub init: Init,
    /// Hyper-parameters.
    pub config: TrainConfig,
    /// The checkpoint folder (created if missing).
    pub out_dir: PathBuf,
    /// Continue the run saved in `out_dir` (its `train_state.safetensors`).
    pub resume: bool,
    /// Where tensors live.
    pub device: Device,
}

/// What a finished run reports.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// The checkpoint folder.
    pub out_dir: PathBuf,
    /// Epochs completed in total (including those before a resume).
    pub epochs_completed: usize,
    /// The epoch the run resumed at, if it resumed.
    pub resumed_at_epoch: Option<usize>,
    /// Optimizer steps taken in total.
    pub global_step: usize,
    /// One record per completed epoch.
    pub records: Vec<EpochRecord>,
    /// The last evaluation on the test split.
    pub final_eval: Option<EvalReport>,
    /// Images pushed through the backbone by this process (training and evaluation); in
    /// `probe` mode each image's features are computed exactly once.
    pub backbone_images: u64,
}

/// Square images of side `size` already? Then resizing would only cost time.
fn all_sized(d: &Dataset, size: usize) -> bool {
    d.images
        .iter()
        .all(|i| i.width() as usize == size && i.height() as usize == size)
}

/// The training pipeline of `augment` at `size`, normalised with `mean`/`std`.
pub fn train_pipeline(
    augment: Augment,
    size: usize,
    data: &Dataset,
    mean: [f32; 3],
    std: [f32; 3],
) -> Pipeline {
    let s = size as u32;
    let mut transforms = Vec::new();
    let fit = |t: &mut Vec<Transform>| {
        if !all_sized(data, size) {
            t.push(Transform::resize(s));
            t.push(Transform::center_crop(s));
        }
    };
    match augment {
        Augment::Cifar => {
            fit(&mut transforms);
            transforms.push(Transform::random_crop(s, (s / 8).max(1)));
            transforms.push(Transform::flip(0.5));
        }
        Augment::Imagenet => {
            transforms.push(Transform::random_resized_crop(s));
            transforms.push(Transform::flip(0.5));
        }
        Augment::None => fit(&mut transforms),
    }
    Pipeline {
        transforms,
        mean,
        std,
    }
}

/// The evaluation pipeline: resize + centre crop to `size` (nothing when already that size).
pub fn eval_pipeline(size: usize, data: &Dataset, mean: [f32; 3], std: [f32; 3]) -> Pipeline {
    let s = size as u32;
    let transforms = if all_sized(data, size) {
        Vec::new()
    } else {
        vec![Transform::resize(s), Transform::center_crop(s)]
    };
    Pipeline {
        transforms,
        mean,
        std,
    }
}

/// Whether `name` is a parameter of the classifier head.
fn is_head(arch: Architecture, name: &str) -> bool {
    name.starts_with(&format!("{}.", cv_weights::load::head_module(arch)))
}

/// The optimizer over the parameters `mode` trains, with discriminative rates and no decay
/// on biases and BatchNorm parameters.
fn build_optimizer(
    varmap: &VarMap,
    arch: Architecture,
    mode: TrainMode,
    c: &TrainConfig,
) -> Result<AnyOptimizer> {
    let mut groups = Vec::new();
    match mode {
        TrainMode::Full => {
            let (head, backbone): (Vec<_>, Vec<_>) = trainable_vars(varmap, arch, Trainable::All)
                .into_iter()
                .partition(|(n, _)| is_head(arch, n));
            groups.extend(ParamGroup::split_decay(
                "backbone",
                backbone,
                c.backbone_lr_scale,
                c.weight_decay,
            ));
            groups.extend(ParamGroup::split_decay("head", head, 1.0, c.weight_decay));
        }
        TrainMode::Head | TrainMode::Probe => {
            let head = trainable_vars(varmap, arch, Trainable::Head);
            groups.extend(ParamGroup::split_decay("head", head, 1.0, c.weight_decay));
        }
    }
    Ok(match c.optimizer {
        OptimizerKind::Sgd => AnyOptimizer::Sgd(Sgd::with_groups(
            groups,
            SgdConfig {
                lr: c.lr,
                momentum: c.momentum,
                dampening: 0.0,
                nesterov: c.nesterov,
                weight_decay: c.weight_decay,
            },
        )?),
        OptimizerKind::AdamW => AnyOptimizer::AdamW(AdamW::with_groups(
            groups,
            AdamWConfig {
                lr: c.lr,
                beta1: c.adam_beta1,
                beta2: c.adam_beta2,
                eps: c.adam_eps,
                weight_decay: c.weight_decay,
            },
        )?),
    })
}

/// The config fields that may change between a run and its resume.
fn resumable_view(c: &TrainConfig) -> TrainConfig {
    TrainConfig {
        epochs: 0,
        quiet: false,
        device: String::new(),
        eval_every: 1,
        prefetch: 0,
        // Arithmetic, like the device, may change on resume (the weights are f32 either way).
        precision: Precision::F32,
        ..c.clone()
    }
}

/// Features of every image of `loader` through the frozen backbone, in dataset order.
fn compute_features(frozen: &Model, loader: &Loader) -> Result<(Tensor, Tensor)> {
    let mut feats = Vec::new();
    let mut labels = Vec::new();
    for batch in loader.epoch(0) {
        let batch = batch?;
        feats.push(frozen.features(&batch.images, false)?.detach());
        labels.push(batch.labels);
    }
    Ok((Tensor::cat(&feats, 0)?, Tensor::cat(&labels, 0)?))
}

/// Test-split metrics of the head on cached features.
fn evaluate_cached(
    head: &candle_nn::Linear,
    feats: &Tensor,
    labels: &Tensor,
    classes: &[String],
    batch: usize,
) -> Result<EvalReport> {
    let n = feats.dim(0)?;
    let mut acc = MetricsAccumulator::new(classes.len());
    let mut start = 0;
    while start < n {
        let len = batch.min(n - start);
        let f = feats.narrow(0, start, len)?;
        let y = labels.narrow(0, start, len)?;
        let logits = head.forward(&f)?.detach();
        let loss = cross_entropy(&logits, &y, 0.0)?.to_scalar::<f32>()?;
        acc.update(&logits, &y.to_vec1::<u32>()?, loss as f64)?;
        start += len;
    }
    Ok(acc.finish(classes))
}

/// A head with detached weights (for evaluation without recording a graph).
fn detached_linear(l: &candle_nn::Linear) -> candle_nn::Linear {
    candle_nn::Linear::new(l.weight().detach(), l.bias().map(|b| b.detach()))
}

/// Runs `job`: trains, evaluates and checkpoints after every epoch.
pub fn run(job: &TrainJob) -> Result<RunSummary> {
    run_with(job, &mut |_| true)
}

/// [`run`], calling `on_epoch` after each epoch's checkpoint is written; returning `false`
/// stops the run there, exactly as an interruption would (it stays resumable).
pub fn run_with(
    job: &TrainJob,
    on_epoch: &mut dyn FnMut(&EpochRecord) -> bool,
) -> Result<RunSummary> {
    // Every step frees and reallocates the same large buffers: keep them (see the function).
    cv_data::keep_freed_memory();
    let c = &job.config;
    c.validate()?;
    let arch = job.architecture;
    let classes = job.splits.classes.clone();
    let num_classes = classes.len();
    if num_classes == 0 {
        return Err(TrainError::Config("the dataset has no classes".into()));
    }
    if job.splits.train.is_empty() || job.splits.test.is_empty() {
        return Err(TrainError::Config(format!(
            "the train split has {} images and the test split {}: both need at least one",
            job.splits.train.len(),
            job.splits.test.len()
        )));
    }
    if arch == Architecture::SimpleCnn && c.image_size != 32 {
        return Err(TrainError::Config(format!(
            "the small CNN takes 32x32 images, image_size is {}",
            c.image_size
        )));
    }
    if c.precision == Precision::Bf16 && !job.device.is_cuda() {
        return Err(TrainError::Config(format!(
            "precision bf16 needs a CUDA device (got {:?}): build with --features cuda and \
             pass --device cuda, or use --precision f32",
            job.device
        )));
    }
    let out = job.out_dir.as_path();
    std::fs::create_dir_all(out).map_err(|e| TrainError::io(out, e))?;
    atomic::remove_stale_temps(out)?;
    let device = &job.device;

    let previous = TrainState::read(out, device)?;
    if previous.is_some() && !job.resume {
        return Err(TrainError::Config(format!(
            "{} already holds a run ({STATE_FILE}); resume it or choose another folder",
            out.display()
        )));
    }
    if previous.is_none() && !job.resume && out.join(MODEL_FILE).exists() {
        return Err(TrainError::Config(format!(
            "{} already holds a checkpoint ({MODEL_FILE}); choose another folder",
            out.display()
        )));
    }
    if previous.is_none() && job.resume {
        log::warn!(
            "{}: nothing to resume (no {STATE_FILE}); starting a new run",
            out.display()
        );
    }

    // Model: PyTorch init from the seed (the head of a pretrained model keeps it), then the
    // pretrained weights, or the resume state.
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, device);
    let model = Model::new(arch, num_classes, vb)?;
    let init_seed = match &job.init {
        Init::Scratch { seed } => *seed,
        Init::Pretrained { .. } => c.seed,
    };
    cv_models::init::initialise(&varmap, arch, init_seed)?;
    let mut start_epoch = 0;
    let mut global_step = 0;
    let mut records = Vec::new();
    let mut saved_optimizer = HashMap::new();
    match previous {
        Some(state) => {
            let path = out.join(STATE_FILE);
            if state.meta.classes != classes {
                return Err(TrainError::State {
                    path,
                    message: format!(
                        "saved with classes {:?}, the data has {:?}",
                        state.meta.classes, classes
                    ),
                });
            }
            if resumable_view(&state.meta.config) != resumable_view(c) {
                return Err(TrainError::State {
                    path,
                    message: "saved with other hyper-parameters (only epochs, eval_every, quiet, device and prefetch may change on resume)".into(),
                });
            }
            cv_models::state::load_state_dict(&varmap, &state.model).map_err(|e| {
                TrainError::State {
                    path: path.clone(),
                    message: format!(
                        "the saved model does not fit {arch} with {num_classes} classes: {e}"
                    ),
                }
            })?;
            start_epoch = state.meta.epochs_completed;
            global_step = state.meta.global_step;
            records = state.meta.records;
            saved_optimizer = state.optimizer;
        }
        None => {
            if let Init::Pretrained { path, .. } = &job.init {
                cv_weights::load_into(&varmap, arch, path, num_classes, device)?;
            }
        }
    }
    let resumed_at_epoch = job.resume.then_some(start_epoch).filter(|&e| e > 0);

    // Data.
    let (mean, std) = job.init.normalization();
    let train_data = Arc::new(job.splits.train.clone());
    let test_data = Arc::new(job.splits.test.clone());
    let train_tf = train_pipeline(c.augment, c.image_size, &train_data, mean, std);
    let eval_tf = eval_pipeline(c.image_size, &test_data, mean, std);
    let train_loader = Loader::new(
        train_data.clone(),
        train_tf.clone(),
        LoaderConfig {
            batch_size: c.batch_size,
            shuffle: true,
            drop_last: c.drop_last,
            seed: c.seed,
            prefetch: c.prefetch,
        },
        device.clone(),
    )?;
    let eval_config = LoaderConfig {
        batch_size: c.batch_size,
        shuffle: false,
        drop_last: false,
        seed: c.seed,
        prefetch: c.prefetch,
    };
    let test_loader = Loader::new(
        test_data.clone(),
        eval_tf.clone(),
        eval_config.clone(),
        device.clone(),
    )?;
    let steps_per_epoch = train_loader.num_batches();
    if steps_per_epoch == 0 {
        return Err(TrainError::Config(format!(
            "no training batch: {} images, batch_size {} with drop_last",
            train_data.len(),
            c.batch_size
        )));
    }
    let total_steps = steps_per_epoch * c.epochs;

    let frozen = model.detached();
    let mut backbone_images = 0u64;
    // Probe: features of the eval transforms, computed once.
    let probe_cache = if c.mode == TrainMode::Probe && start_epoch < c.epochs {
        let train_eval_loader = Loader::new(
            train_data.clone(),
            eval_pipeline(c.image_size, &train_data, mean, std),
            eval_config,
            device.clone(),
        )?;
        let train = compute_features(&frozen, &train_eval_loader)?;
        let test = compute_features(&frozen, &test_loader)?;
        backbone_images += (train_data.len() + test_data.len()) as u64;
        Some((train, test))
    } else {
        None
    };

    let card = ModelCard {
        architecture: arch,
        classes: classes.clone(),
        image_size: c.image_size,
        eval_transforms: eval_tf.clone(),
        weights_from: match &job.init {
            Init::Pretrained { origin, .. } => Some(origin.clone()),
            Init::Scratch { .. } => None,
        },
    };

    // A probe trains on features of the eval transforms: record what it really saw.
    let recorded_train_tf = if c.mode == TrainMode::Probe {
        eval_pipeline(c.image_size, &train_data, mean, std)
    } else {
        train_tf.clone()
    };

    let mut optimizer: Option<(TrainMode, AnyOptimizer)> = None;
    let mut final_eval = None;
    for epoch in start_epoch..c.epochs {
        let mode = c.mode_at(epoch);
        // (Re)build the optimizer when the mode changes, carrying its state over.
        if optimizer.as_ref().map(|(m, _)| *m) != Some(mode) {
            let carried = match optimizer.take() {
                Some((_, o)) => o.state_tensors()?,
                None => std::mem::take(&mut saved_optimizer),
            };
            let mut o = build_optimizer(&varmap, arch, mode, c)?;
            // Keep only the state of parameters this optimizer trains (head -> full keeps all).
            o.load_state_tensors(&carried).map_err(|e| match e {
                TrainError::State { message, .. } => TrainError::State {
                    path: out.join(STATE_FILE),
                    message,
                },
                other => other,
            })?;
            optimizer = Some((mode, o));
        }
        let Some((_, opt)) = optimizer.as_mut() else {
            unreachable!("the optimizer was just built")
        };

        let started = Instant::now();
        let progress = EpochProgress::new(epoch + 1, c.epochs, steps_per_epoch, c.quiet);
        let mut train_acc = MetricsAccumulator::new(num_classes);
        let mut lr = c.lr;
        let mut step_images = 0usize;
        let mut train_one = |batch: usize,
                             logits_of: &dyn Fn() -> Result<(Tensor, Tensor)>,
                             opt: &mut AnyOptimizer|
         -> Result<()> {
            lr = c.schedule.lr_at(c.lr, global_step, total_steps);
            opt.set_learning_rate(lr);
            let (logits, labels) = logits_of()?;
            // f32 loss whatever the compute dtype (a no-op in f32).
            let logits = logits.to_dtype(DType::F32)?;
            let loss = cross_entropy(&logits, &labels, c.label_smoothing)?;
            let value = loss.to_scalar::<f32>()?;
            if !value.is_finite() {
                return Err(TrainError::NonFiniteLoss {
                    value,
                    epoch: epoch + 1,
                    batch,
                    step: global_step,
                });
            }
            let grads = loss.backward()?;
            opt.step(&grads)?;
            let labels = labels.to_vec1::<u32>()?;
            step_images += labels.len();
            train_acc.update(&logits.detach(), &labels, value as f64)?;
            global_step += 1;
            let secs = started.elapsed().as_secs_f64().max(1e-9);
            progress.update(
                train_acc.mean_loss(),
                train_acc.accuracy(),
                step_images as f64 / secs,
            );
            Ok(())
        };
        match (&probe_cache, mode) {
            (Some(((feats, labels), _)), TrainMode::Probe) => {
                let n = feats.dim(0)?;
                let mut order: Vec<u32> = (0..n as u32).collect();
                order.shuffle(&mut cv_data::seed::shuffle_rng(c.seed, epoch as u64));
                for b in 0..steps_per_epoch {
                    let idx = &order[b * c.batch_size..((b + 1) * c.batch_size).min(n)];
                    let idx = Tensor::new(idx, device)?;
                    let head = model.head();
                    train_one(
                        b,
                        &|| {
                            Ok((
                                head.forward(&feats.index_select(&idx, 0)?)?,
                                labels.index_select(&idx, 0)?,
                            ))
                        },
                        opt,
                    )?;
                }
            }
            _ => {
                for (b, batch) in train_loader.epoch(epoch as u64).enumerate() {
                    let batch = batch?;
                    // Mixed precision: bf16 activations; the layers cast their f32 weights.
                    let images = match c.precision {
                        Precision::F32 => batch.images,
                        Precision::Bf16 => batch.images.to_dtype(DType::BF16)?,
                    };
                    let labels = batch.labels;
                    if mode == TrainMode::Head {
                        train_one(
                            b,
                            &|| {
                                let f = frozen.features(&images, false)?.detach();
                                Ok((model.head().forward(&f)?, labels.clone()))
                            },
                            opt,
                        )?;
                    } else {
                        train_one(
                            b,
                            &|| Ok((model.forward_t(&images, true)?, labels.clone())),
                            opt,
                        )?;
                    }
                    backbone_images += labels.dim(0)? as u64;
                }
            }
        }
        let train_seconds = started.elapsed().as_secs_f64();
        let images_per_s = step_images as f64 / train_seconds.max(1e-9);

        let evaluate_now = (epoch + 1) % c.eval_every == 0 || epoch + 1 == c.epochs;
        let eval = if evaluate_now {
            let report = match (&probe_cache, mode) {
                (Some((_, (feats, labels))), TrainMode::Probe) => evaluate_cached(
                    &detached_linear(model.head()),
                    feats,
                    labels,
                    &classes,
                    c.batch_size,
                )?,
                _ => {
                    backbone_images += test_data.len() as u64;
                    evaluate(&model, &test_loader)?
                }
            };
            Some(report)
        } else {
            None
        };
        let record = EpochRecord {
            epoch: epoch + 1,
            lr,
            train_loss: train_acc.mean_loss(),
            train_acc: train_acc.accuracy(),
            test_loss: eval.as_ref().map(|r| r.loss),
            test_acc: eval.as_ref().map(|r| r.accuracy),
            test_top5: eval.as_ref().map(|r| r.top5),
            seconds: started.elapsed().as_secs_f64(),
            images_per_s,
        };
        progress.finish(format!(
            "loss {:.4} acc {:.1}%{} {:.0} img/s {:.1}s",
            record.train_loss,
            100.0 * record.train_acc,
            record
                .test_acc
                .map(|a| format!(" test {:.1}%", 100.0 * a))
                .unwrap_or_default(),
            record.images_per_s,
            record.seconds
        ));
        records.push(record);
        if eval.is_some() {
            final_eval = eval;
        }

        let saved = CheckpointConfig {
            card: card.clone(),
            train_transforms: recorded_train_tf.clone(),
            train: c.clone(),
            init: job.init.record(),
            seed: c.seed,
            epochs_completed: epoch + 1,
            test_accuracy: records.iter().rev().find_map(|r| r.test_acc),
        };
        let state = TrainState {
            meta: StateMeta {
                version: STATE_VERSION,
                epochs_completed: epoch + 1,
                global_step,
                seed: c.seed,
                config: c.clone(),
                classes: classes.clone(),
                records: records.clone(),
            },
            model: cv_models::state::state_dict(&varmap)?,
            optimizer: opt.state_tensors()?,
        };
        save_epoch(out, &saved, &state, &records)?;
        if let Some(last) = records.last() {
            if !on_epoch(last) {
                break;
            }
        }
    }

    Ok(RunSummary {
        out_dir: out.to_path_buf(),
        epochs_completed: records.len(),
        resumed_at_epoch,
        global_step,
        records,
        final_eval,
        backbone_images,
    })
}

/// Writes the folder's files, each atomically; the resume state last, so it never points
/// past what the other files hold.
fn save_epoch(
    out: &Path,
    config: &CheckpointConfig,
    state: &TrainState,
    records: &[EpochRecord],
) -> Result<()> {
    atomic::write_safetensors(&out.join(MODEL_FILE), &state.model)?;
    config.write(out)?;
    report::write_metrics(&out.join(METRICS_FILE), records)?;
    report::write_curves(out, records)?;
    state.write(out)
}
