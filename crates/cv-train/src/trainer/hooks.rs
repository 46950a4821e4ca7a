//! How a feature plugs into the loop without editing it. A [`Hook`] is called at four points
//! of every run, in the order the hooks were given:
//!
//! | point | called | what plugs in there |
//! |---|---|---|
//! | [`Hook::on_batch`] | before each forward | batch transforms: MixUp, CutMix (set [`TrainBatch::targets`]) |
//! | [`Hook::extra_loss`], [`Hook::hard_loss_weight`] | between forward and backward | extra loss terms and the labels' share: distillation |
//! | [`Hook::after_step`] | after each optimizer step | weight averaging (EMA), per-step logging |
//! | [`Hook::after_epoch`] | after each epoch's evaluation and checkpoint | stopping rules, checkpoint policies (keep the best) |
//!
//! Every method has a default that does nothing, so a hook implements only its points.

use std::path::Path;

use candle_core::Tensor;
use candle_nn::VarMap;

use super::step::{StepOutput, TrainBatch};
use crate::config::TrainMode;
use crate::error::Result;
use crate::metrics::EvalReport;
use crate::report::EpochRecord;

/// Where a training step is in the run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepContext {
    /// 0-based epoch.
    pub epoch: usize,
    /// 0-based batch within the epoch.
    pub batch: usize,
    /// 0-based optimizer step over the whole run (the schedule's position).
    pub global_step: usize,
    /// What trains in this epoch.
    pub mode: TrainMode,
    /// The learning rate of this step (the head's; the backbone's is scaled).
    pub lr: f64,
}

/// What a hook sees at the end of an epoch.
#[derive(Clone, Copy)]
pub struct EpochEnd<'a> {
    /// The epoch's metrics, as written to `metrics.jsonl`.
    pub record: &'a EpochRecord,
    /// Every epoch's so far, this one last (those before a resume included).
    pub records: &'a [EpochRecord],
    /// The evaluation on the test split, when this epoch ran one.
    pub eval: Option<&'a EvalReport>,
    /// The checkpoint folder, already holding this epoch's files.
    pub checkpoint: &'a Path,
    /// The model's parameters and buffers (torchvision keys).
    pub vars: &'a VarMap,
}

/// Whether the run goes on after an epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Train the next epoch.
    Continue,
    /// Stop here, as an interruption would: the folder stays resumable.
    Stop,
}

/// A feature that plugs into the training loop (see the module doc for the call points).
pub trait Hook {
    /// May replace the batch before the forward pass.
    fn on_batch(&mut self, batch: TrainBatch, _ctx: &StepContext) -> Result<TrainBatch> {
        Ok(batch)
    }

    /// A scalar added to the training loss before backward; it must be computed from
    /// `logits` (or other tensors on the graph) for its gradient to flow.
    fn extra_loss(
        &mut self,
        _batch: &TrainBatch,
        _logits: &Tensor,
        _ctx: &StepContext,
    ) -> Result<Option<Tensor>> {
        Ok(None)
    }

    /// The factor of the labels' cross-entropy in the loss (the hooks' factors multiply):
    /// distillation gives the labels `1 - alpha` and its own term `alpha`.
    fn hard_loss_weight(&self) -> f64 {
        1.0
    }

    /// After the optimizer step; `vars` already holds the updated weights.
    fn after_step(&mut self, _out: &StepOutput, _vars: &VarMap, _ctx: &StepContext) -> Result<()> {
        Ok(())
    }

    /// After the epoch's evaluation and checkpoint: [`Flow::Stop`] ends the run there.
    fn after_epoch(&mut self, _end: &EpochEnd) -> Result<Flow> {
        Ok(Flow::Continue)
    }
}

/// A hook from a closure called at the end of every epoch.
pub fn on_epoch<F: FnMut(&EpochEnd) -> Flow>(f: F) -> impl Hook {
    struct OnEpoch<F>(F);
    impl<F: FnMut(&EpochEnd) -> Flow> Hook for OnEpoch<F> {
        fn after_epoch(&mut self, end: &EpochEnd) -> Result<Flow> {
            Ok((self.0)(end))
        }
    }
    OnEpoch(f)
}
