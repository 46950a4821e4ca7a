//! The train step: the one function the loop calls for every batch and the benchmark times.
//! Forward in the epoch's mode, cross-entropy (plus the hooks' extra terms), backward,
//! optimizer step.

use candle_core::backprop::GradStore;
use candle_core::{DType, Module, Tensor};
use cv_models::Model;

use super::hooks::{Hook, StepContext};
use crate::autocast::Autocast;
use crate::config::{Precision, TrainMode};
use crate::error::{Result, TrainError};
use crate::loss::{cross_entropy, soft_cross_entropy};
use crate::optim::AnyOptimizer;

/// One training batch.
#[derive(Debug, Clone)]
pub struct TrainBatch {
    /// Images `[N, 3, H, W]`, or the cached backbone features `[N, F]` in `probe` mode.
    pub input: Tensor,
    /// Class indices `[N]` (u32): the ground truth of the training accuracy.
    pub labels: Tensor,
    /// Soft targets `[N, classes]`; when set they replace `labels` in the loss (MixUp, CutMix).
    pub targets: Option<Tensor>,
}

impl TrainBatch {
    /// A batch with hard labels only.
    pub fn new(input: Tensor, labels: Tensor) -> Self {
        TrainBatch {
            input,
            labels,
            targets: None,
        }
    }
}

/// What one step computed.
#[derive(Debug, Clone)]
pub struct StepOutput {
    /// The training loss (hooks' extra terms included), finite.
    pub loss: f32,
    /// The logits `[N, classes]` in f32, detached.
    pub logits: Tensor,
}

/// Forward, loss, backward and update for one mode of one model.
#[derive(Debug, Clone, Copy)]
pub struct TrainStep<'a> {
    model: &'a Model,
    frozen: &'a Model,
    mode: TrainMode,
    precision: Precision,
    label_smoothing: f64,
}

impl<'a> TrainStep<'a> {
    /// The step of `model` in `mode`; `frozen` is `model.detached()`, built once (the frozen
    /// backbone of `head` mode runs on it).
    pub fn new(
        model: &'a Model,
        frozen: &'a Model,
        mode: TrainMode,
        precision: Precision,
        label_smoothing: f64,
    ) -> Self {
        TrainStep {
            model,
            frozen,
            mode,
            precision,
            label_smoothing,
        }
    }

    /// Logits of `input` as this mode trains them: the whole network in train mode (`full`),
    /// the head on the frozen backbone's eval-mode features (`head`), the head on cached
    /// features (`probe`). f32 whatever the compute precision.
    pub fn logits(&self, input: &Tensor) -> Result<Tensor> {
        let cast = Autocast::enter(self.precision, input.device())?;
        let images = || cast.input(input);
        let logits = match self.mode {
            TrainMode::Full => self.model.forward_t(&images()?, true)?,
            TrainMode::Head => {
                let features = self.frozen.features(&images()?, false)?.detach();
                self.model.head().forward(&features)?
            }
            TrainMode::Probe => self.model.head().forward(input)?,
        };
        Ok(logits.to_dtype(DType::F32)?)
    }

    /// One optimizer step on `batch`. A NaN or infinite loss is an error before any weight
    /// changes.
    pub fn run(
        &self,
        batch: &TrainBatch,
        opt: &mut AnyOptimizer,
        hooks: &mut [&mut dyn Hook],
        ctx: &StepContext,
    ) -> Result<StepOutput> {
        let (grads, out) = self.gradients(batch, 1.0, hooks, ctx)?;
        opt.step(&grads)?;
        Ok(out)
    }

    /// Forward, loss (the hooks' terms included) and backward of `batch`, the loss scaled by
    /// `weight` before backward (a batch's share of an accumulated step); no update. The
    /// output's loss is unscaled. A NaN or infinite loss is an error.
    pub fn gradients(
        &self,
        batch: &TrainBatch,
        weight: f64,
        hooks: &mut [&mut dyn Hook],
        ctx: &StepContext,
    ) -> Result<(GradStore, StepOutput)> {
        let logits = self.logits(&batch.input)?;
        let mut loss = match &batch.targets {
            None => cross_entropy(&logits, &batch.labels, self.label_smoothing)?,
            Some(t) => soft_cross_entropy(&logits, t, self.label_smoothing)?,
        };
        let hard_weight: f64 = hooks.iter().map(|h| h.hard_loss_weight()).product();
        if hard_weight != 1.0 {
            loss = loss.affine(hard_weight, 0.0)?;
        }
        for hook in hooks.iter_mut() {
            if let Some(extra) = hook.extra_loss(batch, &logits, ctx)? {
                loss = (loss + extra.to_dtype(DType::F32)?)?;
            }
        }
        let value = loss.to_scalar::<f32>()?;
        if !value.is_finite() {
            return Err(TrainError::NonFiniteLoss {
                value,
                epoch: ctx.epoch + 1,
                batch: ctx.batch,
                step: ctx.global_step,
            });
        }
        let scaled = if weight == 1.0 {
            loss
        } else {
            loss.affine(weight, 0.0)?
        };
        let out = StepOutput {
            loss: value,
            logits: logits.detach(),
        };
        Ok((scaled.backward()?, out))
    }
}
