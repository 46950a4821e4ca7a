//! Eval-mode BatchNorm2d as one pass: `y = x * scale + shift` per channel, optionally
//! `+ residual`, optionally followed by ReLU.
//!
//! Why: composed from candle ops, eval BN is a broadcast mul, a broadcast add, a ReLU and
//! (after a block's second BN) a residual add, each a single-threaded full-tensor pass, which
//! together cost more than the GEMM convs of a ResNet-18 eval forward on the CPU. Here
//! `scale = gamma / sqrt(var + eps)` and `shift = beta - mean * scale` are found once per
//! call (C values) and the rest is one rayon pass over the N*C planes, with the composed
//! path's roundings (`x * scale`, `+ shift`, `+ residual`), so both give the same bits.
//!
//! The kernel has no backward, so [`batch_norm_eval`] takes it only when no input records a
//! graph (a `detached()` model); anything that tracks gradients goes through
//! [`batch_norm_eval_composed`], whose autograd is candle's.

use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::elem::Elem;
use crate::op::float_op;

const BN_EVAL: &str = "cv-batch-norm-eval";
const BN_EVAL_RESIDUAL: &str = "cv-batch-norm-eval-residual";

/// The per-channel tensors of an eval-mode BatchNorm2d, all `[C]` in one dtype.
#[derive(Debug, Clone, Copy)]
pub struct BatchNormEvalParams<'a> {
    /// Learnable scale (gamma).
    pub weight: &'a Tensor,
    /// Learnable shift (beta).
    pub bias: &'a Tensor,
    /// Running mean.
    pub running_mean: &'a Tensor,
    /// Running variance.
    pub running_var: &'a Tensor,
    /// Added to the variance before the square root.
    pub eps: f64,
}

impl BatchNormEvalParams<'_> {
    fn tensors(&self) -> [&Tensor; 4] {
        [self.weight, self.bias, self.running_mean, self.running_var]
    }
}

/// Eval BatchNorm of NCHW `x`, then `+ residual` (same shape) when given, then ReLU when
/// `relu`. CPU f32/f64 inputs that record no graph use the fused kernel; the rest the
/// composed candle ops (differentiable).
pub fn batch_norm_eval(
    x: &Tensor,
    p: &BatchNormEvalParams,
    residual: Option<&Tensor>,
    relu: bool,
) -> Result<Tensor> {
    let (_, c, _, _) = x.dims4()?;
    for t in p.tensors() {
        if t.dims() != [c] {
            bail!(
                "batch_norm: input has {c} channels, a parameter has shape {:?}",
                t.dims()
            )
        }
    }
    if let Some(r) = residual {
        if r.dims() != x.dims() {
            bail!(
                "batch_norm: residual {:?} does not match input {:?}",
                r.dims(),
                x.dims()
            )
        }
    }
    let all = || {
        p.tensors()
            .into_iter()
            .chain(std::iter::once(x))
            .chain(residual)
    };
    let fast = x.device().is_cpu()
        && matches!(x.dtype(), DType::F32 | DType::F64)
        && all().all(|t| t.dtype() == x.dtype() && t.device().is_cpu() && !t.track_op());
    if !fast {
        return batch_norm_eval_composed(x, p, residual, relu);
    }
    let (scale, shift) = scale_shift(p)?;
    let op = BatchNormEval { scale, shift, relu };
    let x = x.contiguous()?;
    match residual {
        Some(r) => x.apply_op2_no_bwd(&r.contiguous()?, &op),
        None => x.apply_op1_no_bwd(&op),
    }
}

/// The same computation from candle ops (autograd works through it): for other devices and
/// dtypes, and whenever an input records a graph.
pub fn batch_norm_eval_composed(
    x: &Tensor,
    p: &BatchNormEvalParams,
    residual: Option<&Tensor>,
    relu: bool,
) -> Result<Tensor> {
    let (_, c, _, _) = x.dims4()?;
    let (scale, shift) = scale_shift_tensors(p)?;
    let mut y = x
        .broadcast_mul(&scale.reshape((1, c, 1, 1))?)?
        .broadcast_add(&shift.reshape((1, c, 1, 1))?)?;
    if let Some(r) = residual {
        y = (y + r)?;
    }
    if relu {
        y = y.relu()?;
    }
    Ok(y)
}

/// Per-channel scale and shift, `[C]` each, computed by the same candle ops (in the input's
/// dtype) as [`batch_norm_eval_composed`], so that the two paths agree bit for bit: a model
/// and its `detached()` twin give identical eval outputs.
fn scale_shift_tensors(p: &BatchNormEvalParams) -> Result<(Tensor, Tensor)> {
    let scale = p.weight.div(&(p.running_var.detach() + p.eps)?.sqrt()?)?;
    let shift = p.bias.sub(&p.running_mean.detach().mul(&scale)?)?;
    Ok((scale, shift))
}

/// [`scale_shift_tensors`] read back; f32 values survive the trip through f64 exactly.
fn scale_shift(p: &BatchNormEvalParams) -> Result<(Vec<f64>, Vec<f64>)> {
    let (scale, shift) = scale_shift_tensors(p)?;
    let read = |t: &Tensor| t.to_dtype(DType::F64)?.to_vec1::<f64>();
    Ok((read(&scale)?, read(&shift)?))
}

/// (x[, residual]) -> y, forward only.
struct BatchNormEval {
    scale: Vec<f64>,
    shift: Vec<f64>,
    relu: bool,
}

/// Planes handed to one rayon task at least (layer4 planes are 1x1 at 32x32 input).
const MIN_ELEMS_PER_TASK: usize = 16 * 1024;

impl BatchNormEval {
    fn run<T: Elem + Mul>(
        &self,
        x: &[T],
        residual: Option<&[T]>,
        layout: &Layout,
    ) -> Result<Vec<T>> {
        let (_, c, h, w) = layout.shape().dims4()?;
        let hw = h * w;
        if hw == 0 || x.is_empty() {
            return Ok(vec![T::ZERO; x.len()]);
        }
        if c != self.scale.len() {
            bail!(
                "batch_norm: input has {c} channels, parameters {}",
                self.scale.len()
            )
        }
        if residual.is_some_and(|r| r.len() != x.len()) {
            bail!("batch_norm: the residual and the input differ in size")
        }
        let scale: Vec<T> = self.scale.iter().map(|&v| T::from_f64(v)).collect();
        let shift: Vec<T> = self.shift.iter().map(|&v| T::from_f64(v)).collect();
        let relu = self.relu;
        let min_planes = (MIN_ELEMS_PER_TASK / hw).max(1);
        // Written once, plane by plane, without zero-filling first (a pass over the output).
        let mut y: Vec<T> = Vec::with_capacity(x.len());
        let planes = y.spare_capacity_mut()[..x.len()]
            .par_chunks_mut(hw)
            .zip(x.par_chunks(hw))
            .enumerate();
        match residual {
            Some(r) => planes
                .zip(r.par_chunks(hw))
                .with_min_len(min_planes)
                .for_each(|((i, (yp, xp)), rp)| {
                    let (s, b) = (scale[i % c], shift[i % c]);
                    for ((y, &x), &r) in yp.iter_mut().zip(xp).zip(rp) {
                        y.write(T::finish(x.mul_add_(s, b) + r, relu));
                    }
                }),
            None => planes.with_min_len(min_planes).for_each(|(i, (yp, xp))| {
                let (s, b) = (scale[i % c], shift[i % c]);
                for (y, &x) in yp.iter_mut().zip(xp) {
                    y.write(T::finish(x.mul_add_(s, b), relu));
                }
            }),
        }
        // SAFETY: the planes above cover x.len() values (the residual has as many, checked
        // above) and each loop wrote every value of its plane.
        unsafe { y.set_len(x.len()) };
        Ok(y)
    }
}

/// The arithmetic the kernel needs beyond [`Elem`], written so that it vectorises.
trait Mul: Sized + std::ops::Add<Output = Self> {
    /// `self * s + b`, two roundings (as the composed mul then add; no libm `fma` call).
    fn mul_add_(self, s: Self, b: Self) -> Self;
    /// ReLU when `relu` (NaN stays NaN, as in PyTorch).
    fn finish(self, relu: bool) -> Self;
}

macro_rules! impl_mul {
    ($($t:ty),*) => {$(
        impl Mul for $t {
            #[inline(always)]
            fn mul_add_(self, s: Self, b: Self) -> Self {
                self * s + b
            }
            #[inline(always)]
            fn finish(self, relu: bool) -> Self {
                if relu && self < 0.0 {
                    0.0
                } else {
                    self
                }
            }
        }
    )*};
}

impl_mul!(f32, f64);

impl CustomOp1 for BatchNormEval {
    fn name(&self) -> &'static str {
        BN_EVAL
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let y = float_op!(
            BN_EVAL,
            [(x, storage, layout, "input")],
            self.run(x, None, layout)?
        );
        Ok((y, layout.shape().clone()))
    }
}

impl CustomOp2 for BatchNormEval {
    fn name(&self) -> &'static str {
        BN_EVAL_RESIDUAL
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        if l1.shape() != l2.shape() {
            bail!(
                "batch_norm eval: residual {:?} does not match input {:?}",
                l2.shape(),
                l1.shape()
            )
        }
        let y = float_op!(
            BN_EVAL_RESIDUAL,
            [(x, s1, l1, "input"), (r, s2, l2, "residual")],
            self.run(x, Some(r), l1)?
        );
        Ok((y, l1.shape().clone()))
    }
}
