//! `BatchNorm2d` that trains, with PyTorch's running statistics.
//!
//! Why our own: candle-nn's `BatchNorm` has no `num_batches_tracked` (which torchvision's
//! strict `load_state_dict` needs) and lets its running statistics record gradients. Here the
//! running mean/variance and `num_batches_tracked` are buffers: `Var`s in the `VarMap` (so they
//! are saved and loaded) that are only ever changed with `Var::set` on detached values.

use candle_core::{DType, ModuleT, Result, Tensor, Var};
use candle_nn::{Init, VarBuilder};

use crate::error::ModelError;
use cv_ops::{batch_norm_eval, batch_norm_train, BatchNormEvalParams};

/// BatchNorm hyper-parameters (PyTorch's defaults).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BatchNormConfig {
    /// Added to the variance before the square root.
    pub eps: f64,
    /// Weight of the new batch statistic in the running average.
    pub momentum: f64,
}

impl Default for BatchNormConfig {
    fn default() -> Self {
        Self {
            eps: 1e-5,
            momentum: 0.1,
        }
    }
}

/// 2-D batch normalisation over NCHW input, per channel.
///
/// Train mode (`forward_t(x, true)`) normalises with the batch mean and biased variance, then
/// updates `running = (1 - momentum) * running + momentum * batch` with the unbiased variance,
/// and adds one to `num_batches_tracked`. Eval mode uses the running statistics.
#[derive(Clone, Debug)]
pub struct BatchNorm2d {
    name: String,
    weight: Tensor,
    bias: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    num_batches_tracked: Tensor,
    config: BatchNormConfig,
}

/// Builds a `BatchNorm2d` of `channels` from `vb` (`weight`, `bias`, `running_mean`,
/// `running_var`, `num_batches_tracked` under its prefix). A `VarBuilder` over fixed tensors
/// that lacks `num_batches_tracked` (torchvision files often drop it) gets a constant 0.
pub fn batch_norm2d(
    channels: usize,
    config: BatchNormConfig,
    vb: VarBuilder,
) -> Result<BatchNorm2d> {
    let dtype = vb.dtype();
    let weight = vb.get_with_hints_dtype(channels, "weight", Init::Const(1.0), dtype)?;
    let bias = vb.get_with_hints_dtype(channels, "bias", Init::Const(0.0), dtype)?;
    let running_mean =
        vb.get_with_hints_dtype(channels, "running_mean", Init::Const(0.0), dtype)?;
    let running_var = vb.get_with_hints_dtype(channels, "running_var", Init::Const(1.0), dtype)?;
    let num_batches_tracked =
        match vb.get_with_hints_dtype((), "num_batches_tracked", Init::Const(0.0), DType::I64) {
            Ok(t) => t,
            Err(_) => Tensor::zeros((), DType::I64, vb.device())?,
        };
    Ok(BatchNorm2d {
        name: vb.prefix(),
        weight,
        bias,
        running_mean,
        running_var,
        num_batches_tracked,
        config,
    })
}

impl BatchNorm2d {
    /// Learnable scale (gamma), `[C]`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }
    /// Learnable shift (beta), `[C]`.
    pub fn bias(&self) -> &Tensor {
        &self.bias
    }
    /// Running mean buffer, `[C]`.
    pub fn running_mean(&self) -> &Tensor {
        &self.running_mean
    }
    /// Running (unbiased) variance buffer, `[C]`.
    pub fn running_var(&self) -> &Tensor {
        &self.running_var
    }
    /// Number of train-mode forwards seen, i64 scalar.
    pub fn num_batches_tracked(&self) -> &Tensor {
        &self.num_batches_tracked
    }
    /// Its hyper-parameters.
    pub fn config(&self) -> &BatchNormConfig {
        &self.config
    }

    /// The same layer over detached tensors that share storage with this one: it records no
    /// graph and sees every later `Var::set` (optimizer steps, loads). Eval only.
    pub fn detached(&self) -> Self {
        Self {
            name: self.name.clone(),
            weight: self.weight.detach(),
            bias: self.bias.detach(),
            running_mean: self.running_mean.detach(),
            running_var: self.running_var.detach(),
            num_batches_tracked: self.num_batches_tracked.detach(),
            config: self.config,
        }
    }

    fn channels_of(&self, x: &Tensor) -> Result<usize> {
        let (_, c, _, _) = x.dims4()?;
        let expected = self.weight.dim(0)?;
        if c != expected {
            candle_core::bail!(
                "batch norm {}: input has {c} channels, expected {expected}",
                self.name
            )
        }
        Ok(c)
    }

    /// Eval mode (running statistics), then `+ residual` when given, then ReLU when `relu`,
    /// in one pass where nothing records a graph (see [`batch_norm_eval`]). The residual add
    /// and ReLU are here so that a ResNet block's "bn2, add, ReLU" is one pass.
    pub fn forward_eval_fused(
        &self,
        x: &Tensor,
        residual: Option<&Tensor>,
        relu: bool,
    ) -> Result<Tensor> {
        let dtype = self.weight.dtype();
        if x.dtype() != dtype {
            let r = residual.map(|r| r.to_dtype(dtype)).transpose()?;
            let y = self.forward_eval_fused(&x.to_dtype(dtype)?, r.as_ref(), relu)?;
            return y.to_dtype(x.dtype());
        }
        self.channels_of(x)?;
        let params = BatchNormEvalParams {
            weight: &self.weight,
            bias: &self.bias,
            running_mean: &self.running_mean,
            running_var: &self.running_var,
            eps: self.config.eps,
        };
        batch_norm_eval(x, &params, residual, relu)
    }

    fn forward_train(&self, x: &Tensor) -> Result<Tensor> {
        self.channels_of(x)?;
        let (n, _, h, w) = x.dims4()?;
        let count = n * h * w;
        let buffers = [
            &self.running_mean,
            &self.running_var,
            &self.num_batches_tracked,
        ];
        if buffers.iter().any(|t| !t.is_variable()) {
            return Err(ModelError::FrozenBuffers(self.name.clone()).into_candle());
        }
        let (y, stats) = batch_norm_train(x, &self.weight, &self.bias, self.config.eps)?;

        // Running statistics: detached values only, so no gradient ever reaches them.
        let m = self.config.momentum;
        let unbiased = (stats.var * (count as f64 / (count - 1) as f64))?;
        let rm = self.running_mean.detach();
        let rv = self.running_var.detach();
        let new_rm = ((rm * (1.0 - m))? + (stats.mean * m)?)?;
        let new_rv = ((rv * (1.0 - m))? + (unbiased * m)?)?;
        Var::from_tensor(&self.running_mean)?.set(&new_rm)?;
        Var::from_tensor(&self.running_var)?.set(&new_rv)?;
        // Counted on the device: reading the count back would synchronise a GPU every layer.
        let next = self.num_batches_tracked.detach().affine(1.0, 1.0)?;
        Var::from_tensor(&self.num_batches_tracked)?.set(&next)?;
        Ok(y)
    }
}

impl ModuleT for BatchNorm2d {
    /// An input in another dtype than the parameters (bf16 activations, f32 master weights)
    /// is normalised in the parameters' dtype and cast back, as PyTorch's autocast runs
    /// BatchNorm in f32.
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        if x.dtype() != self.weight.dtype() {
            let y = self.forward_t(&x.to_dtype(self.weight.dtype())?, train)?;
            return y.to_dtype(x.dtype());
        }
        if train {
            self.forward_train(x)
        } else {
            self.forward_eval_fused(x, None, false)
        }
    }
}
