//! The optimizer of each fine-tuning mode: which parameters train, at which rate, with which
//! decay; rebuilt with its state carried over when gradual unfreezing changes the mode.

use std::collections::HashMap;
use std::path::Path;

use candle_core::Tensor;
use candle_nn::VarMap;
use cv_models::params::{trainable_vars, Trainable};
use cv_models::Architecture;

use crate::config::{OptimizerKind, TrainConfig, TrainMode};
use crate::error::{Result, TrainError};
use crate::optim::{AdamW, AdamWConfig, AnyOptimizer, ParamGroup, Sgd, SgdConfig};

/// The optimizer of the current mode.
pub(super) struct Optimizers {
    current: Option<(TrainMode, AnyOptimizer)>,
    /// State to load into the next optimizer built (a resume's, or the previous mode's).
    carried: HashMap<String, Tensor>,
}

impl Optimizers {
    /// Starts from `saved` state (empty for a new run).
    pub fn new(saved: HashMap<String, Tensor>) -> Self {
        Optimizers {
            current: None,
            carried: saved,
        }
    }

    /// The optimizer of `mode`, built on first use or when the mode changes. `state_file`
    /// names the file in errors about carried state.
    pub fn for_mode(
        &mut self,
        varmap: &VarMap,
        arch: Architecture,
        mode: TrainMode,
        c: &TrainConfig,
        state_file: &Path,
    ) -> Result<&mut AnyOptimizer> {
        if self.current.as_ref().map(|(m, _)| *m) != Some(mode) {
            let carried = match self.current.take() {
                Some((_, o)) => o.state_tensors()?,
                None => std::mem::take(&mut self.carried),
            };
            let mut o = build(varmap, arch, mode, c)?;
            // Keep only the state of parameters this optimizer trains (head -> full keeps all).
            o.load_state_tensors(&carried).map_err(|e| match e {
                TrainError::State { message, .. } => TrainError::State {
                    path: state_file.to_path_buf(),
                    message,
                },
                other => other,
            })?;
            self.current = Some((mode, o));
        }
        match self.current.as_mut() {
            Some((_, o)) => Ok(o),
            None => unreachable!("the optimizer was just built"),
        }
    }
}

/// The optimizer over the parameters `mode` trains, with discriminative rates and no decay
/// on biases and BatchNorm parameters.
fn build(
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
                .partition(|(n, _)| arch.is_head_param(n));
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
