//! SGD's update as two in-place passes over each contiguous f32 parameter on the CPU: the
//! momentum buffer, then the parameter, where they lie, in parallel chunks. Other dtypes,
//! strided tensors and other devices are the caller's to update (see [`sgd_update_applies`]).
//!
//! Why: through candle ops one update is five full passes and four fresh allocations per
//! parameter (scale, add, scale, subtract, then `Var::set` copies back), a visible share of a
//! ResNet-18 training step for its 11.7 M parameters. The arithmetic is PyTorch's, in the same
//! order: `buf = m * buf + (1 - dampening) * (g + wd * p)` and `p = p - lr * buf` (Nesterov:
//! `p = p - lr * ((g + wd * p) + m * buf)`).

use candle_core::{CpuStorage, DType, InplaceOp2, InplaceOp3, Layout, Result, Tensor};
use rayon::prelude::*;

/// Elements per parallel chunk; smaller parameters are updated on the calling thread.
const CHUNK: usize = 1 << 16;

/// The hyper-parameters of one parameter's update, as f32 (PyTorch's `torch.optim.SGD`).
#[derive(Clone, Copy, Debug)]
pub struct SgdStep {
    /// Learning rate.
    pub lr: f32,
    /// Momentum factor (0: plain SGD, no buffer).
    pub momentum: f32,
    /// Dampening of the gradient's share of the momentum buffer.
    pub dampening: f32,
    /// L2 penalty added to the gradient (`g + wd * p`).
    pub weight_decay: f32,
    /// Nesterov momentum.
    pub nesterov: bool,
}

impl SgdStep {
    /// The gradient with L2 weight decay, PyTorch's `grad.add(p, alpha=wd)`.
    #[inline]
    fn decayed(&self, g: f32, p: f32) -> f32 {
        if self.weight_decay != 0.0 {
            g + p * self.weight_decay
        } else {
            g
        }
    }
}

/// Whether these tensors can be updated by [`sgd_update`]: CPU, f32, contiguous.
pub fn sgd_update_applies(tensors: &[&Tensor]) -> bool {
    tensors
        .iter()
        .all(|t| t.device().is_cpu() && t.dtype() == DType::F32 && t.is_contiguous())
}

fn f32s<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
        _ => candle_core::bail!("sgd update: {what} must be contiguous f32"),
    }
}

fn f32s_mut<'a>(s: &'a mut CpuStorage, l: &Layout, what: &str) -> Result<&'a mut [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&mut v[a..b]),
        _ => candle_core::bail!("sgd update: {what} must be contiguous f32"),
    }
}

/// Runs `f(dst_chunk, offset)` over `dst`, in parallel chunks when it is large.
fn chunked(dst: &mut [f32], f: impl Fn(&mut [f32], usize) + Sync) {
    if dst.len() <= CHUNK {
        f(dst, 0);
    } else {
        dst.par_chunks_mut(CHUNK)
            .enumerate()
            .for_each(|(i, c)| f(c, i * CHUNK));
    }
}

fn check_len(what: &str, a: usize, b: usize) -> Result<()> {
    if a != b {
        candle_core::bail!("sgd update: {what} has {b} values, the parameter {a}");
    }
    Ok(())
}

/// `buf = m * buf + (1 - dampening) * (g + wd * p)`: in place on the buffer, reading (g, p).
struct Momentum(SgdStep);

impl InplaceOp3 for Momentum {
    fn name(&self) -> &'static str {
        "cv-ops sgd momentum"
    }

    fn cpu_fwd(
        &self,
        buf: &mut CpuStorage,
        bl: &Layout,
        g: &CpuStorage,
        gl: &Layout,
        p: &CpuStorage,
        pl: &Layout,
    ) -> Result<()> {
        let s = self.0;
        let buf = f32s_mut(buf, bl, "momentum buffer")?;
        let (g, p) = (f32s(g, gl, "gradient")?, f32s(p, pl, "parameter")?);
        check_len("gradient", buf.len(), g.len())?;
        check_len("parameter", buf.len(), p.len())?;
        let keep = 1.0 - s.dampening;
        chunked(buf, |b, at| {
            let (g, p) = (&g[at..at + b.len()], &p[at..at + b.len()]);
            for ((b, &g), &p) in b.iter_mut().zip(g).zip(p) {
                let d = s.decayed(g, p);
                *b = *b * s.momentum + if keep != 1.0 { d * keep } else { d };
            }
        });
        Ok(())
    }
}

/// The first step's buffer, `g + wd * p`, written over a copy of `g`: in place, reading p.
struct FirstBuffer(SgdStep);

impl InplaceOp2 for FirstBuffer {
    fn name(&self) -> &'static str {
        "cv-ops sgd first buffer"
    }

    fn cpu_fwd(
        &self,
        buf: &mut CpuStorage,
        bl: &Layout,
        p: &CpuStorage,
        pl: &Layout,
    ) -> Result<()> {
        let s = self.0;
        let buf = f32s_mut(buf, bl, "momentum buffer")?;
        let p = f32s(p, pl, "parameter")?;
        check_len("parameter", buf.len(), p.len())?;
        chunked(buf, |b, at| {
            let p = &p[at..at + b.len()];
            for (b, &p) in b.iter_mut().zip(p) {
                *b = s.decayed(*b, p);
            }
        });
        Ok(())
    }
}

/// `p = p - lr * buf`, or with Nesterov `p = p - lr * ((g + wd * p) + m * buf)`: in place on
/// the parameter, reading (buf, g). Without momentum `buf` is the gradient itself.
struct Apply(SgdStep);

impl InplaceOp3 for Apply {
    fn name(&self) -> &'static str {
        "cv-ops sgd apply"
    }

    fn cpu_fwd(
        &self,
        p: &mut CpuStorage,
        pl: &Layout,
        buf: &CpuStorage,
        bl: &Layout,
        g: &CpuStorage,
        gl: &Layout,
    ) -> Result<()> {
        let s = self.0;
        let p = f32s_mut(p, pl, "parameter")?;
        let (buf, g) = (f32s(buf, bl, "momentum buffer")?, f32s(g, gl, "gradient")?);
        check_len("momentum buffer", p.len(), buf.len())?;
        check_len("gradient", p.len(), g.len())?;
        chunked(p, |p, at| {
            let (buf, g) = (&buf[at..at + p.len()], &g[at..at + p.len()]);
            for ((p, &b), &g) in p.iter_mut().zip(buf).zip(g) {
                let step = if s.nesterov {
                    s.decayed(g, *p) + b * s.momentum
                } else {
                    b
                };
                *p -= step * s.lr;
            }
        });
        Ok(())
    }
}

/// One SGD update of `param` from `grad`, with the momentum buffer `buf` (None before the
/// first step, or without momentum), in place; returns the buffer to keep. All three must pass
/// [`sgd_update_applies`] (else an error, and nothing is changed).
pub fn sgd_update(
    param: &Tensor,
    grad: &Tensor,
    buf: Option<&Tensor>,
    s: SgdStep,
) -> Result<Option<Tensor>> {
    if s.momentum == 0.0 {
        // p = p - lr * (g + wd * p): the decayed gradient in a scratch copy, then apply.
        let d = grad.copy()?;
        d.inplace_op2(param, &FirstBuffer(s))?;
        param.inplace_op3(
            &d,
            grad,
            &Apply(SgdStep {
                nesterov: false,
                ..s
            }),
        )?;
        return Ok(None);
    }
    let buf = match buf {
        Some(b) => {
            b.inplace_op3(grad, param, &Momentum(s))?;
            b.clone()
        }
        None => {
            let b = grad.copy()?;
            b.inplace_op2(param, &FirstBuffer(s))?;
            b
        }
    };
    param.inplace_op3(&buf, grad, &Apply(s))?;
    Ok(Some(buf))
}
