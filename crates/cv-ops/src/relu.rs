//! ReLU, and the residual `relu(a + b)`, as ops whose backward is one parallel pass.
//!
//! Why: candle 0.11 differentiates `relu` as `grad * (x >= 0).to_dtype()`, four full-size
//! passes and three temporaries, and its comparison op alone costs several times a plain
//! product. Here the backward reads the output and the gradient once and writes the result.
//! The arithmetic is PyTorch's: the forward keeps NaN (`x <= 0 ? 0 : x`), the backward is
//! `threshold_backward` on the output (`y <= 0 ? 0 : g`, so the gradient at 0 is 0).

use crate::elem::Elem;
use crate::error::OpsError;
use crate::op::float_op;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::atomic::{AtomicBool, Ordering};

const RELU: &str = "cv-ops relu";
const ADD_RELU: &str = "cv-ops add_relu";
const RELU_BWD: &str = "cv-ops relu backward";

static DISABLED: AtomicBool = AtomicBool::new(false);

/// Turns the ops of [`crate::relu`] and [`crate::add_relu`] off (candle's `relu` and `add`
/// instead) or back on, for benchmarks that compare them. Process-wide; on by default.
pub fn set_relu_ops_enabled(on: bool) {
    DISABLED.store(!on, Ordering::Relaxed);
}

/// Whether [`crate::relu`] and [`crate::add_relu`] use the ops here.
pub(crate) fn enabled() -> bool {
    !DISABLED.load(Ordering::Relaxed)
}

/// Values per rayon task: big enough that a task is a long vector loop.
const MIN_TASK: usize = 1 << 14;

/// `max(x, 0)`, NaN kept.
pub(crate) struct Relu;

/// `max(a + b, 0)` for two tensors of one shape (a residual connection's join).
pub(crate) struct AddRelu;

/// `(y, dy) -> dy where y > 0, else 0`: the gradient of both ops above from their output.
struct ReluBackward;

fn relu<T: Elem>(v: T) -> T {
    if v <= T::ZERO {
        T::ZERO
    } else {
        v
    }
}

/// The gradient `g` through a ReLU whose output was `y`.
fn relu_back<T: Elem>(y: T, g: T) -> T {
    if y <= T::ZERO {
        T::ZERO
    } else {
        g
    }
}

/// The error for two layouts of different shapes.
fn same_shape(op: &'static str, a: &Layout, b: &Layout) -> Result<()> {
    if a.shape() == b.shape() {
        return Ok(());
    }
    Err(OpsError::Mismatch {
        op,
        message: format!("shapes {:?} and {:?} differ", a.dims(), b.dims()),
    }
    .into())
}

/// The gradient of a ReLU output `res` for the incoming gradient `grad`.
fn relu_grad(res: &Tensor, grad: &Tensor) -> Result<Tensor> {
    res.apply_op2_no_bwd(&grad.contiguous()?, &ReluBackward)
}

/// An elementwise op of two same-shape tensors: its name, its arguments' names (for errors)
/// and its value.
trait Pairwise {
    const NAME: &'static str;
    const ARGS: [&'static str; 2];
    fn value<T: Elem>(a: T, b: T) -> T;
}

impl Pairwise for AddRelu {
    const NAME: &'static str = ADD_RELU;
    const ARGS: [&'static str; 2] = ["a", "b"];
    fn value<T: Elem>(a: T, b: T) -> T {
        relu(a + b)
    }
}

impl Pairwise for ReluBackward {
    const NAME: &'static str = RELU_BWD;
    const ARGS: [&'static str; 2] = ["output", "gradient"];
    fn value<T: Elem>(y: T, g: T) -> T {
        relu_back(y, g)
    }
}

/// `P::value` of every pair of values of two same-shape contiguous storages, in parallel.
fn pairwise_fwd<P: Pairwise>(
    (s1, l1): (&CpuStorage, &Layout),
    (s2, l2): (&CpuStorage, &Layout),
) -> Result<(CpuStorage, Shape)> {
    same_shape(P::NAME, l1, l2)?;
    let out = float_op!(
        P::NAME,
        [(a, s1, l1, P::ARGS[0]), (b, s2, l2, P::ARGS[1])],
        a.par_iter()
            .zip(b.par_iter())
            .with_min_len(MIN_TASK)
            .map(|(&a, &b)| P::value(a, b))
            .collect()
    );
    Ok((out, l1.shape().clone()))
}

impl CustomOp1 for Relu {
    fn name(&self) -> &'static str {
        RELU
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let out = float_op!(
            RELU,
            [(x, s, l, "input")],
            x.par_iter()
                .with_min_len(MIN_TASK)
                .map(|&v| relu(v))
                .collect()
        );
        Ok((out, l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(relu_grad(res, grad)?))
    }
}

impl CustomOp2 for AddRelu {
    fn name(&self) -> &'static str {
        ADD_RELU
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        pairwise_fwd::<Self>((s1, l1), (s2, l2))
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = relu_grad(res, grad)?;
        Ok((a.track_op().then(|| g.clone()), b.track_op().then_some(g)))
    }
}

impl CustomOp2 for ReluBackward {
    fn name(&self) -> &'static str {
        RELU_BWD
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        pairwise_fwd::<Self>((s1, l1), (s2, l2))
    }
}
