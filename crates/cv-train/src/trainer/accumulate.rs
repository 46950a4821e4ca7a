//! Gradient accumulation: the gradients of the batches of one optimizer step, summed per
//! parameter. Each batch's loss is weighted by its share of a full group's images before
//! backward; a short last group is rescaled at the end, so the sum is the gradient of the
//! group's mean loss, as one batch of all its images would give.

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

use crate::error::Result;

/// The running sums of one optimizer step.
pub(super) struct Accumulated {
    vars: Vec<Var>,
    sums: Vec<Option<Tensor>>,
}

impl Accumulated {
    /// Empty sums over `vars` (the model's parameters).
    pub fn new(vars: Vec<Var>) -> Self {
        let sums = vec![None; vars.len()];
        Accumulated { vars, sums }
    }

    /// Adds one batch's gradients (only the parameters'; the rest of the store is dropped
    /// with it).
    pub fn add(&mut self, grads: &GradStore) -> Result<()> {
        for (var, sum) in self.vars.iter().zip(&mut self.sums) {
            if let Some(g) = grads.get(var.as_tensor()) {
                *sum = Some(match sum.take() {
                    Some(s) => (s + g)?,
                    None => g.clone(),
                });
            }
        }
        Ok(())
    }

    /// The store the optimizer reads: `last` (the group's last batch, already added) with
    /// each parameter's sum times `factor`; the sums start again from zero.
    pub fn finish(&mut self, mut last: GradStore, factor: f64) -> Result<GradStore> {
        for (var, sum) in self.vars.iter().zip(&mut self.sums) {
            if let Some(s) = sum.take() {
                let s = if factor == 1.0 {
                    s
                } else {
                    s.affine(factor, 0.0)?
                };
                last.insert(var.as_tensor(), s);
            }
        }
        Ok(last)
    }
}
