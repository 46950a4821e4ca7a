//! The 2-D convolution and the fully connected layer every model here uses: the one place
//! where the `cv-ops` kernels replace candle's without touching the networks.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};

/// A 2-D convolution with torchvision names (`weight` `[out, in, k, k]`, optional `bias`).
#[derive(Clone, Debug)]
pub struct Conv2d {
    inner: candle_nn::Conv2d,
}

/// Square-kernel conv without bias (ResNet); weights are filled later by [`crate::init`].
pub fn conv2d_no_bias(
    in_c: usize,
    out_c: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
    vb: VarBuilder,
) -> Result<Conv2d> {
    let cfg = Conv2dConfig {
        padding,
        stride,
        ..Default::default()
    };
    Ok(Conv2d {
        inner: candle_nn::conv2d_no_bias(in_c, out_c, kernel, cfg, vb)?,
    })
}

/// Square-kernel, stride-1, unpadded conv with bias (the small CNN).
pub fn conv2d(in_c: usize, out_c: usize, kernel: usize, vb: VarBuilder) -> Result<Conv2d> {
    Ok(Conv2d {
        inner: candle_nn::conv2d(in_c, out_c, kernel, Conv2dConfig::default(), vb)?,
    })
}

impl Conv2d {
    /// The kernel, `[out, in, k, k]`.
    pub fn weight(&self) -> &Tensor {
        self.inner.weight()
    }
    /// The bias, `[out]`, if any.
    pub fn bias(&self) -> Option<&Tensor> {
        self.inner.bias()
    }
    /// Stride, padding, dilation, groups.
    pub fn config(&self) -> &Conv2dConfig {
        self.inner.config()
    }
    /// The same conv over detached tensors sharing storage (records no graph; eval only).
    pub fn detached(&self) -> Self {
        Self {
            inner: candle_nn::Conv2d::new(
                self.inner.weight().detach(),
                self.inner.bias().map(|b| b.detach()),
                *self.inner.config(),
            ),
        }
    }
}

impl Module for Conv2d {
    /// On the CPU in f32/f64, `cv_ops::conv2d` (GEMM-lowered forward, input and weight
    /// gradients: candle 0.11's CPU conv is several times slower, its input gradient goes
    /// through a scalar `conv_transpose2d`); elsewhere candle's own conv, which `cv_ops` falls
    /// back to.
    ///
    /// Mixed precision (bf16 input, f32 master weights): the weights are cast to the input's
    /// dtype, differentiably, so gradients reach the f32 `Var`s; a no-op when dtypes agree.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let cfg = self.inner.config();
        let w = self.inner.weight().to_dtype(x.dtype())?;
        let y = cv_ops::conv2d(x, &w, cfg.stride, cfg.padding)?;
        match self.inner.bias() {
            Some(b) => cv_ops::add_channel_bias(&y, &b.to_dtype(x.dtype())?),
            None => Ok(y),
        }
    }
}

/// A `Linear` over detached tensors sharing storage with `l` (eval only).
pub(crate) fn detach_linear(l: &candle_nn::Linear) -> candle_nn::Linear {
    candle_nn::Linear::new(l.weight().detach(), l.bias().map(|b| b.detach()))
}

/// `l(x)`, then ReLU if `relu`: one op with its own backward on the CPU
/// ([`cv_ops::linear`]: candle's chain of ops, each allocating, dominates a small head, and
/// it multiplies in bf16 under `cv_ops`'s autocast), candle's ops elsewhere.
pub(crate) fn dense(l: &candle_nn::Linear, x: &Tensor, relu: bool) -> Result<Tensor> {
    match l.bias() {
        Some(b) if x.rank() == 2 => Ok(cv_ops::linear(x, l.weight(), b, relu)?),
        _ => {
            let y = l.forward(x)?;
            Ok(if relu { y.relu()? } else { y })
        }
    }
}
