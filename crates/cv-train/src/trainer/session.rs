//! Everything a run sets up before its first epoch and reads during it: the checks, the
//! folder, the model (initialised, pretrained or resumed), the loaders, the probe's feature
//! cache; and what it writes at the end of each epoch.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use candle_core::{DType, Module, Tensor};
use candle_nn::{VarBuilder, VarMap};
use cv_data::{Dataset, Loader, LoaderConfig, Pipeline};
use cv_models::Model;
use rand::seq::SliceRandom;

use super::pipelines::{eval_pipeline, train_pipeline};
use super::step::TrainBatch;
use super::{Init, TrainJob};
use crate::autocast::{compute_name, Autocast};
use crate::checkpoint::{
    CheckpointConfig, CheckpointDir, ModelCard, StateMeta, TrainState, REPORT_FILE, STATE_FILE,
    STATE_VERSION,
};
use crate::config::{Precision, TrainMode};
use crate::error::{Result, TrainError};
use crate::metrics::{evaluate_logit_samples, evaluate_samples, Evaluation};
use crate::optim::AnyOptimizer;
use crate::report::EpochRecord;
use crate::run_report::{self, ReportInput, DEFAULT_TOP_LOSSES};

/// What changes while a run goes on.
#[derive(Debug, Default)]
pub(super) struct Counters {
    /// The first epoch this process trains (0, or where a resume picks up).
    pub start_epoch: usize,
    /// Optimizer steps taken in total.
    pub global_step: usize,
    /// One record per completed epoch, those before a resume included.
    pub records: Vec<EpochRecord>,
    /// Images pushed through the backbone by this process.
    pub backbone_images: u64,
    /// The optimizer state a resume starts from.
    pub saved_optimizer: HashMap<String, Tensor>,
    /// The weight average a resume starts from (empty when the run keeps none).
    pub saved_ema: HashMap<String, Tensor>,
}

/// Backbone features of the eval transforms, computed once for `probe` mode.
struct ProbeCache {
    train: (Tensor, Tensor),
    test: (Tensor, Tensor),
    val: Option<(Tensor, Tensor)>,
}

/// A run's fixed parts.
pub(super) struct Session<'j> {
    pub job: &'j TrainJob,
    pub dir: CheckpointDir,
    pub varmap: VarMap,
    pub model: Model,
    /// `model.detached()`: evaluation and the frozen backbone run on it.
    pub frozen: Model,
    train_loader: Loader,
    test_loader: Loader,
    /// The held-out validation split (eval transforms), with `val_split`.
    val_loader: Option<Loader>,
    probe: Option<ProbeCache>,
    pub steps_per_epoch: usize,
    /// `config.json` as of the start; each epoch fills in its progress.
    config_json: CheckpointConfig,
}

impl<'j> Session<'j> {
    /// Checks the job, opens its folder, builds the model and the loaders.
    pub fn start(job: &'j TrainJob) -> Result<(Self, Counters)> {
        check(job)?;
        let c = &job.config;
        let (dir, previous) = CheckpointDir::open(&job.out_dir, job.resume, &job.device)?;
        let (varmap, model, mut counters) = build_model(job, previous)?;
        log::info!(
            "{} on {:?}, arithmetic {}",
            job.architecture,
            job.device,
            compute_name(c.precision, &job.device)?
        );
        let (mean, std) = job.init.normalization();
        let (train_data, val_data) = hold_out(job);
        let test_data = Arc::new(job.splits.test.clone());
        let train_tf = train_pipeline(c, &train_data, mean, std);
        let eval_tf = eval_pipeline(c.image_size, &test_data, mean, std);
        let train_loader = loader(job, &train_data, &train_tf, true)?;
        let test_loader = loader(job, &test_data, &eval_tf, false)?;
        let val_loader = match &val_data {
            Some(d) => Some(loader(
                job,
                d,
                &eval_pipeline(c.image_size, d, mean, std),
                false,
            )?),
            None => None,
        };
        let steps_per_epoch = train_loader.num_batches();
        if steps_per_epoch == 0 {
            return Err(TrainError::Config(format!(
                "no training batch: {} images, batch_size {} with drop_last",
                train_data.len(),
                c.batch_size
            )));
        }
        let frozen = model.detached();
        // A probe trains on features of the eval transforms: record what it really saw.
        let probe_tf = eval_pipeline(c.image_size, &train_data, mean, std);
        let probe = if c.mode == TrainMode::Probe && counters.start_epoch < c.epochs {
            let val_len = val_data.as_ref().map_or(0, |d| d.len());
            counters.backbone_images += (train_data.len() + test_data.len() + val_len) as u64;
            Some(ProbeCache {
                train: features(job, &frozen, &loader(job, &train_data, &probe_tf, false)?)?,
                test: features(job, &frozen, &test_loader)?,
                val: match &val_loader {
                    Some(l) => Some(features(job, &frozen, l)?),
                    None => None,
                },
            })
        } else {
            None
        };
        let seen_tf = if c.mode == TrainMode::Probe {
            probe_tf
        } else {
            train_tf
        };
        let session = Session {
            job,
            dir,
            varmap,
            model,
            frozen,
            train_loader,
            test_loader,
            val_loader,
            probe,
            steps_per_epoch,
            config_json: config_json(job, eval_tf, seen_tf),
        };
        Ok((session, counters))
    }

    /// The training batches of 0-based `epoch` in `mode`: augmented images from the loader,
    /// or shuffled cached features in `probe` mode.
    pub fn batches(
        &self,
        epoch: usize,
        mode: TrainMode,
    ) -> Result<Box<dyn Iterator<Item = Result<TrainBatch>> + '_>> {
        let c = &self.job.config;
        match (&self.probe, mode) {
            (Some(probe), TrainMode::Probe) => {
                let (feats, labels) = &probe.train;
                let n = feats.dim(0)?;
                let mut order: Vec<u32> = (0..n as u32).collect();
                order.shuffle(&mut cv_data::seed::shuffle_rng(c.seed, epoch as u64));
                let device = self.job.device.clone();
                let steps = self.steps_per_epoch;
                Ok(Box::new((0..steps).map(move |b| {
                    let idx = &order[b * c.batch_size..((b + 1) * c.batch_size).min(n)];
                    let idx = Tensor::new(idx, &device)?;
                    Ok(TrainBatch::new(
                        feats.index_select(&idx, 0)?,
                        labels.index_select(&idx, 0)?,
                    ))
                })))
            }
            _ => Ok(Box::new(self.train_loader.epoch(epoch as u64).map(|b| {
                let b = b?;
                Ok(TrainBatch::new(b.images, b.labels))
            }))),
        }
    }

    /// The eval step over the test split: on cached features in `probe` mode, else through
    /// the whole network. Returns the evaluation (every image's outcome included) and the
    /// images that crossed the backbone.
    pub fn evaluate(&self, mode: TrainMode) -> Result<(Evaluation, u64)> {
        let cached = self.probe.as_ref().map(|p| &p.test);
        self.evaluate_on(mode, &self.test_loader, cached)
    }

    /// The same on the validation split, when the run holds one out.
    pub fn evaluate_val(&self, mode: TrainMode) -> Result<Option<(Evaluation, u64)>> {
        let Some(val_loader) = &self.val_loader else {
            return Ok(None);
        };
        let cached = self.probe.as_ref().and_then(|p| p.val.as_ref());
        Ok(Some(self.evaluate_on(mode, val_loader, cached)?))
    }

    fn evaluate_on(
        &self,
        mode: TrainMode,
        data: &Loader,
        cached: Option<&(Tensor, Tensor)>,
    ) -> Result<(Evaluation, u64)> {
        let _cast = eval_autocast(self.job)?;
        let classes = &self.job.splits.classes;
        match (cached, mode) {
            (Some((feats, labels)), TrainMode::Probe) => {
                let head = self.frozen.head();
                let n = feats.dim(0)?;
                let size = self.job.config.batch_size;
                let batches = (0..n).step_by(size).map(|start| {
                    let len = size.min(n - start);
                    Ok((
                        head.forward(&feats.narrow(0, start, len)?)?,
                        labels.narrow(0, start, len)?,
                    ))
                });
                Ok((evaluate_logit_samples(batches, classes)?, 0))
            }
            _ => Ok((
                evaluate_samples(&self.model, data)?,
                data.dataset().len() as u64,
            )),
        }
    }

    /// Writes the folder's files for the epochs completed so far. With `raw`, the model holds
    /// the weight average ([`crate::ema`]) and `raw` the weights the optimizer goes on from.
    pub fn save(
        &self,
        counters: &Counters,
        opt: &AnyOptimizer,
        raw: Option<&HashMap<String, Tensor>>,
    ) -> Result<()> {
        let c = &self.job.config;
        let records = &counters.records;
        let epochs_completed = records.len();
        let config_json = self.config_after(records);
        let state = TrainState {
            meta: StateMeta {
                version: STATE_VERSION,
                epochs_completed,
                global_step: counters.global_step,
                seed: c.seed,
                config: c.clone(),
                classes: self.job.splits.classes.clone(),
                records: records.clone(),
            },
            model: match raw {
                Some(raw) => raw.clone(),
                None => cv_models::state::state_dict(&self.varmap)?,
            },
            optimizer: opt.state_tensors()?,
            ema: match raw {
                Some(_) => cv_models::state::state_dict(&self.varmap)?,
                None => HashMap::new(),
            },
        };
        self.dir.save_epoch(&config_json, &state, records)
    }
}

impl Session<'_> {
    /// `config.json` after the epochs of `records`.
    fn config_after(&self, records: &[EpochRecord]) -> CheckpointConfig {
        CheckpointConfig {
            epochs_completed: records.len(),
            test_accuracy: records.iter().rev().find_map(|r| r.test_acc),
            ..self.config_json.clone()
        }
    }

    /// Writes `report.html` into the run folder from `evaluation` (of the current weights on
    /// the test split) and the epochs so far.
    pub fn write_report(
        &self,
        evaluation: &Evaluation,
        records: &[EpochRecord],
    ) -> Result<PathBuf> {
        let path = self.dir.path().join(REPORT_FILE);
        let config = self.config_after(records);
        let title = self.dir.path().display().to_string();
        run_report::write_report(
            &path,
            &ReportInput {
                title: &title,
                model: &self.model,
                test: &self.test_loader,
                evaluation,
                records,
                config: Some(&config),
                top_losses: DEFAULT_TOP_LOSSES,
            },
        )?;
        Ok(path)
    }
}

/// The model of `job` in a fresh `VarMap`: PyTorch's init from the seed (the head of a
/// pretrained model keeps it), then the pretrained weights, or the resume state.
fn build_model(job: &TrainJob, previous: Option<TrainState>) -> Result<(VarMap, Model, Counters)> {
    let varmap = VarMap::new();
    let model = Model::new(
        job.architecture,
        job.splits.classes.len(),
        VarBuilder::from_varmap(&varmap, DType::F32, &job.device),
    )?;
    let init_seed = match &job.init {
        Init::Scratch { seed } => *seed,
        Init::Pretrained { .. } => job.config.seed,
    };
    cv_models::init::initialise(&varmap, job.architecture, init_seed)?;
    let counters = match previous {
        Some(state) => restore(job, &varmap, state)?,
        None => {
            if let Init::Pretrained { path, .. } = &job.init {
                load_pretrained(job, &varmap, path)?;
            }
            Counters::default()
        }
    };
    Ok((varmap, model, counters))
}

/// The training images the run trains on and, with `val_split`, the stratified part of the
/// training split held out for validation (drawn from the run's seed).
fn hold_out(job: &TrainJob) -> (Arc<Dataset>, Option<Arc<Dataset>>) {
    let train = &job.splits.train;
    match job.config.val_split {
        None => (Arc::new(train.clone()), None),
        Some(fraction) => {
            let (rest, val) = train.split_stratified(fraction, job.config.seed);
            log::info!(
                "validation split: {} of the {} training images held out (stratified, seed {}); \
                 model selection uses it",
                val.len(),
                train.len(),
                job.config.seed
            );
            (Arc::new(rest), Some(Arc::new(val)))
        }
    }
}

/// A loader of `data` through `tf`: shuffled (and dropping the last short batch when the
/// recipe says so) for training, in order for evaluation.
fn loader(job: &TrainJob, data: &Arc<Dataset>, tf: &Pipeline, shuffle: bool) -> Result<Loader> {
    let c = &job.config;
    let config = LoaderConfig {
        batch_size: c.batch_size,
        shuffle,
        drop_last: shuffle && c.drop_last,
        seed: c.seed,
        prefetch: job.settings.prefetch,
    };
    Ok(Loader::new(
        data.clone(),
        tf.clone(),
        config,
        job.device.clone(),
    )?)
}

/// `config.json` as of the start of `job`, with `train_tf` the transforms training sees.
fn config_json(job: &TrainJob, eval_tf: Pipeline, train_tf: Pipeline) -> CheckpointConfig {
    let c = &job.config;
    CheckpointConfig {
        card: ModelCard {
            architecture: job.architecture,
            classes: job.splits.classes.clone(),
            image_size: c.image_size,
            eval_transforms: eval_tf,
            weights_from: match &job.init {
                Init::Pretrained { origin, .. } => Some(origin.clone()),
                Init::Scratch { .. } => None,
            },
            quantization: None,
        },
        train_transforms: train_tf,
        train: c.clone(),
        runtime: job.settings.clone(),
        compute: compute_name(c.precision, &job.device).ok(),
        data: job.data.clone(),
        init: job.init.record(),
        seed: c.seed,
        epochs_completed: 0,
        test_accuracy: None,
    }
}

/// What cannot train, refused before anything is written.
fn check(job: &TrainJob) -> Result<()> {
    let c = &job.config;
    c.validate()?;
    job.architecture.check_image_size(c.image_size)?;
    if job.splits.classes.is_empty() {
        return Err(TrainError::Config("the dataset has no classes".into()));
    }
    if job.splits.format == cv_data::DataFormat::ClassFolders && job.splits.test.is_empty() {
        return Err(TrainError::Config(format!(
            "the data is {}: hold out a test split with test_split (--test-split F, e.g. 0.2)",
            job.splits.format.layout()
        )));
    }
    if job.splits.train.is_empty() || job.splits.test.is_empty() {
        return Err(TrainError::Config(format!(
            "the train split has {} images and the test split {}: both need at least one",
            job.splits.train.len(),
            job.splits.test.len()
        )));
    }
    compute_name(c.precision, &job.device)?;
    if let Some(d) = &c.distill {
        // Before the run folder exists: a wrong teacher leaves nothing behind.
        crate::distill::teacher_card(d, &job.splits.classes)?;
    }
    Ok(())
}

/// The recipe fields that may change between a run and its resume: the length of the run,
/// how often it evaluates, the arithmetic (the weights are f32 either way) and when it stops
/// early.
fn resumable_view(c: &crate::config::TrainConfig) -> crate::config::TrainConfig {
    crate::config::TrainConfig {
        epochs: 0,
        eval_every: 1,
        precision: Precision::F32,
        early_stop: None,
        ..c.clone()
    }
}

/// Loads a resume state into `varmap` after checking it belongs to this job.
fn restore(job: &TrainJob, varmap: &VarMap, state: TrainState) -> Result<Counters> {
    let path = job.out_dir.join(STATE_FILE);
    let refuse = |message: String| TrainError::State {
        path: path.clone(),
        message,
    };
    if state.meta.classes != job.splits.classes {
        return Err(refuse(format!(
            "saved with classes {:?}, the data has {:?}",
            state.meta.classes, job.splits.classes
        )));
    }
    if resumable_view(&state.meta.config) != resumable_view(&job.config) {
        return Err(refuse(
            "saved with other hyper-parameters (only epochs, eval_every, precision and \
             early_stop may change on resume)"
                .into(),
        ));
    }
    cv_models::state::load_state_dict(varmap, &state.model).map_err(|e| {
        refuse(format!(
            "the saved model does not fit {} with {} classes: {e}",
            job.architecture,
            job.splits.classes.len()
        ))
    })?;
    Ok(Counters {
        start_epoch: state.meta.epochs_completed,
        global_step: state.meta.global_step,
        records: state.meta.records,
        backbone_images: 0,
        saved_optimizer: state.optimizer,
        saved_ema: state.ema,
    })
}

/// Pretrained weights into `varmap`, the head replaced when the class count differs.
fn load_pretrained(job: &TrainJob, varmap: &VarMap, path: &std::path::Path) -> Result<()> {
    let classes = job.splits.classes.len();
    let load = load_weights(varmap, job.architecture, path, classes, &job.device)?;
    if let Some(h) = &load.head_replaced {
        log::info!("{}: {h}", path.display());
    }
    log::info!(
        "{}: loaded {} tensors into {}",
        path.display(),
        load.loaded,
        job.architecture
    );
    Ok(())
}

/// The safetensors weights at `path` into `varmap` for `arch` with `classes` outputs
/// (`cv_models::state::load_pretrained`), a failure naming the file: the training run's
/// pretrained start and the distillation teacher.
pub(crate) fn load_weights(
    varmap: &VarMap,
    arch: cv_models::Architecture,
    path: &std::path::Path,
    classes: usize,
    device: &candle_core::Device,
) -> Result<cv_models::state::PretrainedLoad> {
    let tensors = cv_models::state::read_safetensors(path, device)?;
    cv_models::state::load_pretrained(varmap, arch, tensors, classes).map_err(|e| {
        TrainError::Pretrained {
            path: path.to_path_buf(),
            message: e.to_string(),
        }
    })
}

/// The precision of the eval-mode passes (evaluation, the probe's features): the run's on the
/// CPU, f32 elsewhere ([`crate::autocast`]).
fn eval_autocast(job: &TrainJob) -> Result<Option<Autocast>> {
    job.device
        .is_cpu()
        .then(|| Autocast::enter(job.config.precision, &job.device))
        .transpose()
}

/// Features of every image of `loader` through the frozen backbone, in dataset order.
fn features(job: &TrainJob, frozen: &Model, loader: &Loader) -> Result<(Tensor, Tensor)> {
    let _cast = eval_autocast(job)?;
    let mut feats = Vec::new();
    let mut labels = Vec::new();
    for batch in loader.epoch(0) {
        let batch = batch?;
        feats.push(frozen.features(&batch.images, false)?.detach());
        labels.push(batch.labels);
    }
    Ok((Tensor::cat(&feats, 0)?, Tensor::cat(&labels, 0)?))
}
