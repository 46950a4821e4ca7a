//! The training loop as a few named parts: [`TrainStep`] (forward, loss, backward, update:
//! the function the benchmark times), the eval step ([`crate::metrics::evaluate_logits`]),
//! and the epoch loop of [`run_with_hooks`], which features extend through [`Hook`]s rather
//! than by editing it. Fine-tuning modes: `full`, `head` (frozen backbone in eval mode),
//! `probe` (cached features, linear head) and gradual unfreezing.
//!
//! ```text
//! Session::start      checks, folder, model (init | pretrained | resume), loaders, probe cache
//! for each epoch:
//!   for each batch    hooks.on_batch -> TrainStep::run (hooks.extra_loss) -> hooks.after_step
//!   evaluate          every eval_every epochs and after the last (the weight average with
//!                     ema_decay: it is swapped in until the checkpoint is written)
//!   save              model, config, metrics, curves, then the resume state
//!   hooks.after_epoch Continue | Stop
//! report.html         from the last evaluation (crate::run_report)
//! ```

mod accumulate;
mod hooks;
mod optimizers;
mod pipelines;
mod session;
mod step;

use std::path::PathBuf;
use std::time::Instant;

use candle_core::Device;
use cv_data::transforms::{CIFAR10_MEAN, CIFAR10_STD};
use cv_data::{DataSource, Splits};
use cv_models::Architecture;

pub use hooks::{on_epoch, EpochEnd, Flow, Hook, StepContext};
pub use pipelines::{eval_pipeline, train_pipeline};
pub(crate) use session::load_weights;
pub use step::{StepOutput, TrainBatch, TrainStep};

use crate::checkpoint::{InitRecord, STATE_FILE};
use crate::config::{RunSettings, TrainConfig, TrainMode};
use crate::distill::Distillation;
use crate::ema::Ema;
use crate::error::Result;
use crate::metrics::{EvalReport, Evaluation, MetricsAccumulator};
use crate::mixing::BatchMixing;
use crate::optim::AnyOptimizer;
use crate::report::{EpochProgress, EpochRecord};
use crate::selection::Selection;
use accumulate::Accumulated;
use optimizers::Optimizers;
use session::{Counters, Session};

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
        /// The registry name or path the user gave, from which a replay finds the weights.
        source: String,
        /// What the weights are, in words (recorded in `config.json`).
        origin: String,
        /// Normalisation the weights were trained with (ImageNet's for torchvision).
        mean: [f32; 3],
        /// Standard deviation of that normalisation.
        std: [f32; 3],
    },
}

impl Init {
    fn normalization(&self) -> ([f32; 3], [f32; 3]) {
        match self {
            Init::Scratch { .. } => (CIFAR10_MEAN, CIFAR10_STD),
            Init::Pretrained { mean, std, .. } => (*mean, *std),
        }
    }

    fn record(&self) -> InitRecord {
        match self {
            Init::Scratch { seed } => InitRecord::Scratch { seed: *seed },
            Init::Pretrained {
                path,
                source,
                origin,
                ..
            } => InitRecord::Pretrained {
                path: path.clone(),
                source: Some(source.clone()),
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
    /// The recipe: every hyper-parameter.
    pub config: TrainConfig,
    /// How this process runs it (progress bar, device name, prefetch).
    pub settings: RunSettings,
    /// Where `splits` was opened from, recorded in `config.json` so the run can be replayed
    /// (`None` for data built in memory).
    pub data: Option<DataSource>,
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
    /// `report.html` in the run folder (`None`, with a warning, when it could not be drawn).
    pub report: Option<PathBuf>,
}

/// Runs `job`: trains, evaluates and checkpoints after every epoch.
pub fn run(job: &TrainJob) -> Result<RunSummary> {
    run_with_hooks(job, &mut [])
}

/// [`run`] with `hooks` called at their points of every step and epoch, in order.
pub fn run_with_hooks(job: &TrainJob, hooks: &mut [&mut dyn Hook]) -> Result<RunSummary> {
    // Every step frees and reallocates the same large buffers: keep them (see the function).
    cv_data::keep_freed_memory();
    let c = &job.config;
    let (session, mut counters) = Session::start(job)?;
    let mut recipe = RecipeHooks::new(&session, &mut counters)?;
    let resumed_at_epoch = job
        .resume
        .then_some(counters.start_epoch)
        .filter(|&e| e > 0);
    let mut optimizers = Optimizers::new(std::mem::take(&mut counters.saved_optimizer));
    let state_file = job.out_dir.join(STATE_FILE);
    let mut final_eval = None;
    // The evaluation of the last epoch trained, if it ran one: the report reuses it.
    let mut last_evaluation = None;
    for epoch in counters.start_epoch..c.epochs {
        let mode = c.mode_at(epoch);
        let opt = optimizers.for_mode(&session.varmap, job.architecture, mode, c, &state_file)?;
        let started = Instant::now();
        let (train, lr, progress) =
            train_epoch(&session, &mut counters, opt, epoch, &mut recipe.with(hooks))?;
        // The average is what the epoch evaluates and publishes; `raw` goes on training.
        let raw = recipe
            .ema
            .as_ref()
            .map(|e| e.swap_in(&session.varmap))
            .transpose()?;
        let images_per_s = train.images() as f64 / started.elapsed().as_secs_f64().max(1e-9);
        let evaluation = if (epoch + 1) % c.eval_every == 0 || epoch + 1 == c.epochs {
            let (evaluation, images) = session.evaluate(mode)?;
            counters.backbone_images += images;
            Some(evaluation)
        } else {
            None
        };
        let eval = evaluation.as_ref().map(|e| e.report.clone());
        let val = if evaluation.is_some() {
            match session.evaluate_val(mode)? {
                Some((v, images)) => {
                    counters.backbone_images += images;
                    Some(v.report)
                }
                None => None,
            }
        } else {
            None
        };
        let record = EpochRecord {
            epoch: epoch + 1,
            lr,
            train_loss: train.mean_loss(),
            train_acc: train.accuracy(),
            test_loss: eval.as_ref().map(|r| r.loss),
            test_acc: eval.as_ref().map(|r| r.accuracy),
            test_top5: eval.as_ref().map(|r| r.top5),
            val_loss: val.as_ref().map(|r| r.loss),
            val_acc: val.as_ref().map(|r| r.accuracy),
            seconds: started.elapsed().as_secs_f64(),
            images_per_s,
        };
        progress.finish(summary_line(&record));
        let epoch_end = EpochEndInput {
            record,
            eval: eval.as_ref(),
            raw: raw.as_ref(),
        };
        let flow = end_epoch(
            &session,
            &mut counters,
            opt,
            epoch_end,
            &mut recipe.with(hooks),
        )?;
        if let Some(raw) = &raw {
            cv_models::state::load_state_dict(&session.varmap, raw)?;
        }
        if eval.is_some() {
            final_eval = eval;
        }
        last_evaluation = evaluation;
        if flow == Flow::Stop {
            break;
        }
    }
    if let Some(ema) = &recipe.ema {
        // The report shows the published weights.
        ema.swap_in(&session.varmap)?;
    }
    let report = report_at_end(&session, &mut counters, last_evaluation);
    Ok(RunSummary {
        out_dir: job.out_dir.clone(),
        epochs_completed: counters.records.len(),
        resumed_at_epoch,
        global_step: counters.global_step,
        records: counters.records,
        final_eval,
        backbone_images: counters.backbone_images,
        report,
    })
}

/// Writes `report.html` from the last epoch's evaluation (evaluating the final weights when
/// that epoch ran none). The checkpoint is complete by then, so a report that cannot be
/// drawn is a warning, not a failed run.
fn report_at_end(
    session: &Session,
    counters: &mut Counters,
    last: Option<Evaluation>,
) -> Option<PathBuf> {
    let written = (|| {
        let evaluation = match last {
            Some(e) => e,
            None => {
                let epoch = counters.records.len().saturating_sub(1);
                let (evaluation, images) = session.evaluate(session.job.config.mode_at(epoch))?;
                counters.backbone_images += images;
                evaluation
            }
        };
        session.write_report(&evaluation, &counters.records)
    })();
    match written {
        Ok(path) => Some(path),
        Err(e) => {
            log::warn!("no run report: {e} (the checkpoint is complete; `cv report` retries)");
            None
        }
    }
}

/// The recipe's own features that run as hooks, before the caller's: MixUp/CutMix on each
/// batch, distillation's loss term (on the mixed batch), the weight average after each step,
/// model selection after each epoch.
struct RecipeHooks {
    mixing: Option<BatchMixing>,
    distill: Option<Distillation>,
    ema: Option<Ema>,
    selection: Selection,
}

impl RecipeHooks {
    fn new(session: &Session, counters: &mut Counters) -> Result<Self> {
        let c = &session.job.config;
        let classes = session.job.splits.classes.len();
        let saved_ema = std::mem::take(&mut counters.saved_ema);
        let ema = match c.ema_decay {
            Some(decay) => {
                let steps = counters.global_step as u64;
                let saved = (!saved_ema.is_empty()).then_some((saved_ema, steps));
                Some(Ema::new(&session.varmap, decay, saved)?)
            }
            None => None,
        };
        let distill = match &c.distill {
            Some(d) => {
                let (mean, std) = session.job.init.normalization();
                let classes = &session.job.splits.classes;
                Some(Distillation::new(
                    d,
                    classes,
                    mean,
                    std,
                    &session.job.device,
                )?)
            }
            None => None,
        };
        Ok(RecipeHooks {
            mixing: BatchMixing::new(c.mixup_alpha, c.cutmix_alpha, classes, c.seed)?,
            distill,
            ema,
            selection: Selection::new(c.early_stop),
        })
    }

    /// These hooks, then the caller's.
    fn with<'a>(&'a mut self, caller: &'a mut [&mut dyn Hook]) -> Vec<&'a mut dyn Hook> {
        let mut all: Vec<&mut dyn Hook> = Vec::with_capacity(caller.len() + 4);
        if let Some(m) = self.mixing.as_mut() {
            all.push(m);
        }
        if let Some(d) = self.distill.as_mut() {
            all.push(d);
        }
        if let Some(e) = self.ema.as_mut() {
            all.push(e);
        }
        all.push(&mut self.selection);
        for h in caller.iter_mut() {
            // Shortens the trait object's lifetime to the borrow's, as the local hooks have.
            let h: &mut dyn Hook = &mut **h;
            all.push(h);
        }
        all
    }
}

/// What an epoch hands to its checkpoint.
struct EpochEndInput<'a> {
    record: EpochRecord,
    eval: Option<&'a EvalReport>,
    /// The raw weights, when the model holds the weight average.
    raw: Option<&'a std::collections::HashMap<String, candle_core::Tensor>>,
}

/// Records the epoch, writes its checkpoint, then asks the hooks whether to go on (every hook
/// sees the epoch, even after one has said stop).
fn end_epoch(
    session: &Session,
    counters: &mut Counters,
    opt: &AnyOptimizer,
    input: EpochEndInput,
    hooks: &mut [&mut dyn Hook],
) -> Result<Flow> {
    let EpochEndInput { record, eval, raw } = input;
    counters.records.push(record.clone());
    session.save(counters, opt, raw)?;
    let end = EpochEnd {
        record: &record,
        records: &counters.records,
        eval,
        checkpoint: session.dir.path(),
        vars: &session.varmap,
    };
    let mut flow = Flow::Continue;
    for hook in hooks.iter_mut() {
        if hook.after_epoch(&end)? == Flow::Stop {
            flow = Flow::Stop;
        }
    }
    Ok(flow)
}

/// One pass over the training batches of `epoch`; returns the epoch's training metrics, the
/// last learning rate and the epoch's progress bar (finished once the epoch is evaluated).
fn train_epoch(
    session: &Session,
    counters: &mut Counters,
    opt: &mut AnyOptimizer,
    epoch: usize,
    hooks: &mut [&mut dyn Hook],
) -> Result<(MetricsAccumulator, f64, EpochProgress)> {
    let job = session.job;
    let c = &job.config;
    let mode = c.mode_at(epoch);
    let progress = EpochProgress::new(
        epoch + 1,
        c.epochs,
        session.steps_per_epoch,
        job.settings.quiet,
    );
    let step = TrainStep::new(
        &session.model,
        &session.frozen,
        mode,
        c.precision,
        c.label_smoothing,
    );
    let total_steps = c.optimizer_steps(session.steps_per_epoch) * c.epochs;
    let accum = c.accum_steps.max(1);
    let mut sums = Accumulated::new(session.varmap.all_vars());
    let mut group_images = 0usize;
    let started = Instant::now();
    let mut metrics = MetricsAccumulator::new(job.splits.classes.len());
    let mut lr = c.lr;
    for (b, batch) in session.batches(epoch, mode)?.enumerate() {
        if b % accum == 0 {
            lr = c.schedule.lr_at(c.lr, counters.global_step, total_steps);
            opt.set_learning_rate(lr);
        }
        let ctx = StepContext {
            epoch,
            batch: b,
            global_step: counters.global_step,
            mode,
            lr,
        };
        let mut batch = batch?;
        for hook in hooks.iter_mut() {
            batch = hook.on_batch(batch, &ctx)?;
        }
        let last_of_step = (b + 1) % accum == 0 || b + 1 == session.steps_per_epoch;
        let out = if accum == 1 {
            step.run(&batch, opt, hooks, &ctx)?
        } else {
            // Weighted by the images of a full step; a short last step is rescaled below.
            let full_step = (accum * c.batch_size) as f64;
            let images = batch.labels.dim(0)?;
            let (grads, out) = step.gradients(&batch, images as f64 / full_step, hooks, &ctx)?;
            group_images += images;
            sums.add(&grads)?;
            if last_of_step {
                let factor = full_step / group_images.max(1) as f64;
                opt.step(&sums.finish(grads, factor)?)?;
                group_images = 0;
            }
            out
        };
        let labels = batch.labels.to_vec1::<u32>()?;
        metrics.update(&out.logits, &labels, out.loss as f64)?;
        if last_of_step {
            for hook in hooks.iter_mut() {
                hook.after_step(&out, &session.varmap, &ctx)?;
            }
            counters.global_step += 1;
        }
        if mode != TrainMode::Probe {
            counters.backbone_images += labels.len() as u64;
        }
        let secs = started.elapsed().as_secs_f64().max(1e-9);
        progress.update(
            metrics.mean_loss(),
            metrics.accuracy(),
            metrics.images() as f64 / secs,
        );
    }
    Ok((metrics, lr, progress))
}

/// The line the progress bar ends an epoch with.
fn summary_line(r: &EpochRecord) -> String {
    let test = r
        .test_acc
        .map(|a| format!(" test {:.1}%", 100.0 * a))
        .unwrap_or_default();
    let test = match r.val_acc {
        Some(v) => format!(" val {:.1}%{test}", 100.0 * v),
        None => test,
    };
    format!(
        "loss {:.4} acc {:.1}%{test} {:.0} img/s {:.1}s",
        r.train_loss,
        100.0 * r.train_acc,
        r.images_per_s,
        r.seconds
    )
}
