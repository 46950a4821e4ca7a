//! A fully connected layer, `x W^T + b` with an optional ReLU, as one op with its backward.
//!
//! Why: candle builds this from a transpose, a matmul, a broadcast add and a ReLU, and its
//! backward from about ten ops (the bias gradient a strided reduction, ReLU's gradient three
//! elementwise passes), each allocating, an overhead that dominates a small head such as the
//! small CNN's 400-120-84-10. Here the forward is
//! one gemm plus one pass for bias and ReLU, the backward one masking pass and two gemms.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor, WithDType};
use gemm::Parallelism;

use crate::autocast::Precision;
use crate::elem::Elem;
use crate::error::OpsError;
use crate::matmul::{inner_parallelism, matmul, threads};
use crate::op::{cpu_storage, float_op};

const OP: &str = "cv-ops linear";

/// Below this many multiply-adds a gemm runs on one thread (splitting costs more).
const PARALLEL_MIN_MACS: usize = 1 << 20;

/// `x [n, i]`, `w [o, i]`, `b [o]` -> `[n, o]`, then ReLU if `relu`.
pub(crate) struct Linear {
    pub relu: bool,
    pub precision: Precision,
}

fn par(macs: usize) -> Parallelism {
    if macs >= PARALLEL_MIN_MACS {
        inner_parallelism(threads())
    } else {
        Parallelism::None
    }
}

/// (rows, inputs, outputs) of a call, checked.
fn sizes(x: &[usize], w: &[usize], b: &[usize]) -> Result<(usize, usize, usize)> {
    let err = |what, shape: &[usize], expected: String| -> candle_core::Error {
        OpsError::Shape {
            op: OP,
            what,
            shape: shape.to_vec(),
            expected,
        }
        .into()
    };
    let &[n, i] = x else {
        return Err(err("input", x, "[n, in]".into()));
    };
    let &[o, wi] = w else {
        return Err(err("weight", w, "[out, in]".into()));
    };
    if wi != i {
        return Err(err("weight", w, format!("[out, {i}]")));
    }
    if b != [o] {
        return Err(err("bias", b, format!("[{o}]")));
    }
    Ok((n, i, o))
}

fn forward<T: Elem>(
    x: &[T],
    w: &[T],
    b: &[T],
    (n, i, o): (usize, usize, usize),
    relu: bool,
    prec: Precision,
) -> Vec<T> {
    let mut y = vec![T::ZERO; n * o];
    // SAFETY: y is n x o, x n x i, w o x i (read as its transpose); y is ours alone.
    unsafe {
        matmul(
            n,
            o,
            i,
            (y.as_mut_ptr(), o, 1),
            false,
            (x.as_ptr(), i, 1),
            (w.as_ptr(), 1, i),
            par(n * o * i),
            prec,
        );
    }
    for row in y.chunks_exact_mut(o.max(1)) {
        for (v, &bias) in row.iter_mut().zip(b) {
            let z = *v + bias;
            // ReLU that keeps NaN (so a trainer sees it): zero only for z <= 0.
            *v = if relu && z <= T::ZERO { T::ZERO } else { z };
        }
    }
    y
}

/// (dx if wanted, dw, db) from the output `y` and its gradient `dy`.
#[allow(clippy::type_complexity)]
fn backward<T: Elem>(
    x: &[T],
    w: &[T],
    y: &[T],
    dy: &[T],
    (n, i, o): (usize, usize, usize),
    op: &Linear,
    want_dx: bool,
) -> (Option<Vec<T>>, Vec<T>, Vec<T>) {
    let prec = op.precision;
    // The pre-activation gradient: ReLU passes it where the output is positive.
    let masked: Vec<T>;
    let dz: &[T] = if op.relu {
        masked = y
            .iter()
            .zip(dy)
            .map(|(&v, &g)| if v > T::ZERO { g } else { T::ZERO })
            .collect();
        &masked
    } else {
        dy
    };
    let mut db = vec![T::ZERO; o];
    for row in dz.chunks_exact(o.max(1)) {
        for (a, &g) in db.iter_mut().zip(row) {
            *a += g;
        }
    }
    let mut dw = vec![T::ZERO; o * i];
    // dw[o, i] = sum_n dz[n, o] x[n, i].
    // SAFETY: dw is o x i, dz n x o (read transposed), x n x i; dw is ours alone.
    unsafe {
        matmul(
            o,
            i,
            n,
            (dw.as_mut_ptr(), i, 1),
            false,
            (dz.as_ptr(), 1, o),
            (x.as_ptr(), i, 1),
            par(n * o * i),
            prec,
        );
    }
    let dx = want_dx.then(|| {
        let mut dx = vec![T::ZERO; n * i];
        // dx[n, i] = sum_o dz[n, o] w[o, i].
        // SAFETY: dx is n x i, dz n x o, w o x i; dx is ours alone.
        unsafe {
            matmul(
                n,
                i,
                o,
                (dx.as_mut_ptr(), i, 1),
                false,
                (dz.as_ptr(), o, 1),
                (w.as_ptr(), i, 1),
                par(n * o * i),
                prec,
            );
        }
        dx
    });
    (dx, dw, db)
}

/// The gradients [`backward`] found, as tensors shaped like `x`, `w` and `w`'s rows.
#[allow(clippy::type_complexity)]
fn grad_tensors<T: WithDType>(
    (dx, dw, db): (Option<Vec<T>>, Vec<T>, Vec<T>),
    x: &Tensor,
    w: &Tensor,
) -> Result<(Option<Tensor>, Tensor, Tensor)> {
    let dev = x.device();
    Ok((
        dx.map(|v| Tensor::from_vec(v, x.shape(), dev))
            .transpose()?,
        Tensor::from_vec(dw, w.shape(), dev)?,
        Tensor::from_vec(db, w.dims()[0], dev)?,
    ))
}

impl CustomOp3 for Linear {
    fn name(&self) -> &'static str {
        OP
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dims = sizes(l1.dims(), l2.dims(), l3.dims())?;
        let out = float_op!(
            OP,
            [
                (x, s1, l1, "input"),
                (w, s2, l2, "weight"),
                (b, s3, l3, "bias")
            ],
            forward(x, w, b, dims, self.relu, self.precision)
        );
        Ok((out, Shape::from((dims.0, dims.2))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let dims = sizes(x.dims(), w.dims(), &[w.dims()[0]])?;
        let ((xs, xl), (ws, wl), (ys, yl), (gs, gl)) = (
            x.storage_and_layout(),
            w.storage_and_layout(),
            res.storage_and_layout(),
            grad.storage_and_layout(),
        );
        let (xs, ws, ys, gs) = (
            cpu_storage(OP, &xs)?,
            cpu_storage(OP, &ws)?,
            cpu_storage(OP, &ys)?,
            cpu_storage(OP, &gs)?,
        );
        let (dx, dw, db) = float_op!(
            raw OP,
            [
                (xv, xs, xl, "input"),
                (wv, ws, wl, "weight"),
                (yv, ys, yl, "output"),
                (gv, gs, gl, "output gradient"),
            ],
            grad_tensors(
                backward(xv, wv, yv, gv, dims, self, x.track_op()),
                x,
                w
            )?
        );
        Ok((dx, w.track_op().then_some(dw), b.track_op().then_some(db)))
    }
}
