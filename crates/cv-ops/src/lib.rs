//! Fast CPU kernels for candle as custom ops, with their backward passes: convolution
//! (forward, input gradient and weight gradient lowered onto the `gemm` crate), fused layers,
//! pooling, BatchNorm and the SGD update. Every op here runs on the CPU in f32 and f64 (the SGD
//! update in f32); the public functions call candle's own ops elsewhere.
//!
//! Why: candle 0.11's CPU conv2d goes through a scalar NCHW->NHWC copy and nested threading,
//! its input gradient is a scalar `conv_transpose2d` and its weight gradient a degenerate GEMM.
//! Here each direction is one gemm per tile of output pixels, straight from NCHW (see
//! `kernels`), with the tile batched across images for small feature maps.
//!
//! [`conv2d`] is a drop-in for `x.conv2d(w, padding, stride, 1, 1)` (no groups, no dilation).
//! On other devices and dtypes it calls candle's own convolution. Besides im2col it has
//! Winograd F(2x2,3x3) for wide 3x3 layers (its products on AVX-512 where the CPU has it),
//! direct AVX2 kernels on zero-padded bands for narrow layers on large maps, and per-tap gemms
//! for outputs of at most 4x4 pixels.
//!
//! Fused layers for small networks, where per-op overhead is most of the time:
//! [`conv_relu_pool2d`] (conv + bias + ReLU + 2x2 max-pool, with direct AVX2 kernels),
//! [`linear`] (+ ReLU) and [`add_channel_bias`]; [`relu`] and [`add_relu`] with a one-pass
//! backward.
//!
//! Where candle's ops are wrong or imprecise: [`max_pool2d`] (PyTorch's tie rule and gradient,
//! kernel != stride), [`batch_norm_train`] (f64 statistics, analytic backward) and
//! [`batch_norm_eval`] (eval BatchNorm + residual + ReLU in one pass). [`sgd_update`] is SGD's
//! step in place on f32 parameters.
//!
//! [`leave_threads_to_rayon`] keeps candle's own thread pool off the cores these kernels use.
//! The `set_*` switches turn single paths off for tests and benchmarks that compare them
//! ([`set_winograd_enabled`], [`set_padded_direct_enabled`], [`set_tapwise_enabled`],
//! [`set_direct_conv_enabled`], [`set_relu_ops_enabled`]) or tune the im2col tile
//! ([`set_tile_elems`]); they are process-wide and default to on.

mod autocast;
mod batch_norm_eval;
mod batch_norm_train;
mod bf16;
mod bias;
mod buffers;
mod conv_pool;
mod direct;
mod elem;
mod error;
mod fold;
#[cfg(target_arch = "x86_64")]
mod gemm_avx512;
mod geom;
mod im2col;
mod im2col_gemm;
pub mod int8;
mod kernels;
mod linear;
mod matmul;
mod max_pool;
mod op;
mod padded_direct;
mod relu;
mod sgd;
mod tapwise;
#[cfg(test)]
mod test_data;
mod winograd;
mod winograd_avx2;
#[cfg(target_arch = "x86_64")]
mod winograd_avx512;

pub use autocast::{autocast_bf16, AutocastGuard};
use autocast::{current_precision, Precision};
pub use batch_norm_eval::{batch_norm_eval, batch_norm_eval_composed, BatchNormEvalParams};
pub use batch_norm_train::{batch_norm_train, batch_norm_train_composed, BatchStats};
pub use bf16::{bf16_kernel, Bf16Kernel};
pub use error::OpsError;
pub use fold::fold_batchnorm;
pub use max_pool::{max_pool2d, max_pool2d_composed, MaxPool2dConfig};
pub use padded_direct::set_padded_direct_enabled;
pub use relu::set_relu_ops_enabled;
pub use sgd::{sgd_update, sgd_update_applies, SgdStep};
pub use tapwise::set_tapwise_enabled;
pub use winograd::set_winograd_enabled;

use candle_core::{DType, Result, Tensor};

/// Leaves the CPU's threads to rayon: sets `CANDLE_NUM_THREADS=1` unless the user set it, so
/// candle 0.11 runs its large elementwise ops on the calling thread instead of its own pool,
/// whose workers spin for a while after each op on cores that rayon's workers (our kernels,
/// gemm) need (`xtask bench models` measures the effect; see `docs/benchmarks.md`).
///
/// Call it first thing in `main`, before any thread starts or candle runs an op (the variable
/// is read once): setting the environment while other threads read it is a data race.
pub fn leave_threads_to_rayon() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
}

/// The precision an op on `x` gets: the autocast scope's for f32 ([`autocast_bf16`]), the
/// tensor's own for f64 (the exact reference).
fn precision_for(x: &Tensor) -> Precision {
    if x.dtype() == DType::F32 {
        current_precision()
    } else {
        Precision::Full
    }
}

/// Whether [`conv2d`] runs our kernels for these tensors (CPU, f32 or f64, same dtype).
pub fn uses_fast_path(x: &Tensor, w: &Tensor) -> bool {
    x.device().is_cpu()
        && w.device().is_cpu()
        && matches!(x.dtype(), DType::F32 | DType::F64)
        && x.dtype() == w.dtype()
}

/// 2-D convolution of `x` `[n, c, h, w]` with `w` `[co, c, kh, kw]` (torchvision layout), the
/// same `stride` and zero `padding` on both axes; returns `[n, co, oh, ow]`.
///
/// Gradients flow to both arguments through our own kernels; the gradient of `x` is skipped
/// when no variable depends on it (e.g. the input images).
pub fn conv2d(x: &Tensor, w: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
    if !uses_fast_path(x, w) {
        return x.conv2d(w, padding, stride, 1, 1);
    }
    let x = x.contiguous()?;
    let w = w.contiguous()?;
    let precision = precision_for(&x);
    x.apply_op2(
        &w,
        op::Conv2d {
            stride,
            padding,
            precision,
        },
    )
}

/// `y + b` for `y` `[n, c, ...]` and a per-channel bias `b` `[c]` (a conv's bias), with both
/// gradients; the bias gradient is one parallel, contiguous sum per channel instead of
/// candle's strided reduction. Elsewhere than on the CPU in f32/f64, candle's `broadcast_add`.
pub fn add_channel_bias(y: &Tensor, b: &Tensor) -> Result<Tensor> {
    let fast = y.device().is_cpu()
        && b.device().is_cpu()
        && matches!(y.dtype(), DType::F32 | DType::F64)
        && y.dtype() == b.dtype()
        && y.rank() >= 2;
    if !fast {
        let mut shape = vec![1; y.rank()];
        if y.rank() >= 2 {
            shape[1] = b.elem_count();
        }
        return y.broadcast_add(&b.reshape(shape)?);
    }
    y.contiguous()?
        .apply_op2(&b.contiguous()?, bias::AddChannelBias)
}

/// `max_pool2d(relu(conv2d(x, w) + b), 2)`: a stride-1, unpadded convolution of `x`
/// `[n, c, h, w]` with `w` `[co, c, kh, kw]`, the per-channel bias `b` `[co]`, ReLU and a
/// 2x2/2 max-pool (floor), as one op with its own backward: `[n, co, (h-kh+1)/2, (w-kw+1)/2]`.
/// One layer of the PyTorch tutorial's CNN. Ties in a window go to its first maximum, as in
/// PyTorch, and the gradient of `x` is skipped when no variable depends on it.
///
/// Elsewhere than on the CPU in f32/f64, the same through candle's ops (whose max-pool
/// backward treats tied maxima differently).
pub fn conv_relu_pool2d(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    if !(uses_fast_path(x, w) && b.device().is_cpu() && b.dtype() == x.dtype()) {
        let co = b.elem_count();
        return x
            .conv2d(w, 0, 1, 1, 1)?
            .broadcast_add(&b.reshape((1, co, 1, 1))?)?
            .relu()?
            .max_pool2d(2);
    }
    let op = conv_pool::ConvReluPool {
        record: x.track_op() || w.track_op() || b.track_op(),
        precision: precision_for(x),
        mask: std::sync::Mutex::new(None),
    };
    x.contiguous()?
        .apply_op3(&w.contiguous()?, &b.contiguous()?, op)
}

/// ReLU, `max(x, 0)` with NaN kept, whose backward is one parallel pass over the output and
/// the gradient (PyTorch's arithmetic: the gradient at 0 is 0) instead of candle's four.
/// Elsewhere than on the CPU in f32/f64, candle's `relu`.
pub fn relu(x: &Tensor) -> Result<Tensor> {
    if !(relu::enabled() && x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64)) {
        return x.relu();
    }
    x.contiguous()?.apply_op1(relu::Relu)
}

/// `relu(a + b)` for two tensors of one shape (a residual block's join) as one op, forward and
/// backward, like [`relu`]. Elsewhere than on the CPU in f32/f64 (or for shapes that differ),
/// candle's `(a + b).relu()`.
pub fn add_relu(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let fast = relu::enabled()
        && a.device().is_cpu()
        && b.device().is_cpu()
        && matches!(a.dtype(), DType::F32 | DType::F64)
        && a.dtype() == b.dtype()
        && a.shape() == b.shape();
    if !fast {
        return (a + b)?.relu();
    }
    a.contiguous()?.apply_op2(&b.contiguous()?, relu::AddRelu)
}

/// A fully connected layer: `x [n, in] . w^T + b` with `w` `[out, in]` (PyTorch's layout) and
/// `b` `[out]`, then ReLU when `relu`; one op forward and one backward (two gemms), instead of
/// candle's chain of transpose, matmul, broadcast add and ReLU. Elsewhere than on the CPU in
/// f32/f64, exactly that chain.
pub fn linear(x: &Tensor, w: &Tensor, b: &Tensor, relu: bool) -> Result<Tensor> {
    if !(uses_fast_path(x, w) && b.device().is_cpu() && b.dtype() == x.dtype()) {
        let y = x.matmul(&w.t()?)?.broadcast_add(b)?;
        return if relu { y.relu() } else { Ok(y) };
    }
    x.contiguous()?.apply_op3(
        &w.contiguous()?,
        &b.contiguous()?,
        linear::Linear {
            relu,
            precision: precision_for(x),
        },
    )
}

/// The gradient of [`conv2d`] with respect to its input, for an input of spatial size `hw`:
/// `dy` `[n, co, oh, ow]`, `w` `[co, c, kh, kw]` -> `[n, c, h, w]`. CPU, f32/f64 only; it
/// records no gradient of its own.
pub fn conv2d_input_grad(
    dy: &Tensor,
    w: &Tensor,
    hw: (usize, usize),
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    let op = op::ConvInputGrad {
        h: hw.0,
        w: hw.1,
        stride,
        padding,
        precision: precision_for(dy),
    };
    dy.contiguous()?.apply_op2_no_bwd(&w.contiguous()?, &op)
}

/// The gradient of [`conv2d`] with respect to its weight, for a `khw` kernel:
/// `x` `[n, c, h, w]`, `dy` `[n, co, oh, ow]` -> `[co, c, kh, kw]`. CPU, f32/f64 only; it
/// records no gradient of its own.
pub fn conv2d_weight_grad(
    x: &Tensor,
    dy: &Tensor,
    khw: (usize, usize),
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    let op = op::ConvWeightGrad {
        kh: khw.0,
        kw: khw.1,
        stride,
        padding,
        precision: precision_for(x),
    };
    x.contiguous()?.apply_op2_no_bwd(&dy.contiguous()?, &op)
}

/// Turns the direct f32 kernels of [`conv_relu_pool2d`] off (im2col + gemm instead) or back
/// on, for tests and benchmarks of both paths. Process-wide; on by default.
pub fn set_direct_conv_enabled(on: bool) {
    conv_pool::set_direct_enabled(on)
}

/// Sets the element budget of one im2col tile (the tile is `k x cols`; bf16 tiles get twice
/// the budget), for benchmarks that tune it; 0 restores the default. Process-wide.
pub fn set_tile_elems(elems: usize) {
    geom::set_tile_elems(elems)
}
