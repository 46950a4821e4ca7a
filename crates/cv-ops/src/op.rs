//! What every custom op of the crate shares ([`float_op!`]: the dtype dispatch, contiguous
//! slices, the dtype error), and the convolution's own ops: the convolution itself (with a
//! backward built from the two gradient ops) and the two gradient ops (forward-only, so no
//! double backward).

use crate::autocast::Precision;
use crate::error::OpsError;
use crate::geom::Geom;
use crate::kernels;
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Storage, Tensor};

/// The contiguous slice a layout describes.
pub(crate) fn slice<'a, T>(
    data: &'a [T],
    l: &Layout,
    op: &'static str,
    what: &'static str,
) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => Err(OpsError::Layout { op, what }.into()),
    }
}

/// The error for arguments that are not all f32 or all f64: each argument's name and dtype.
pub(crate) fn dtype_error(op: &'static str, args: &[(&CpuStorage, &str)]) -> candle_core::Error {
    let dtypes: Vec<String> = args
        .iter()
        .map(|(s, what)| format!("{what} {:?}", s.dtype()))
        .collect();
    OpsError::DType {
        op,
        dtype: dtypes.join(", "),
    }
    .into()
}

/// The storage of a tensor that must be on the CPU (an op's backward reads its arguments).
pub(crate) fn cpu_storage<'a>(op: &'static str, s: &'a Storage) -> Result<&'a CpuStorage> {
    match s {
        Storage::Cpu(s) => Ok(s),
        _ => Err(OpsError::Mismatch {
            op,
            message: "backward needs CPU tensors".into(),
        }
        .into()),
    }
}

/// The one dtype dispatch of the crate's ops. `float_op!(OP, [(x, s1, l1, "input"), ...],
/// body)` binds each `x` to the contiguous values of its `(storage, layout)` pair, all `&[f32]`
/// or all `&[f64]`, and evaluates `body` (generic code, written once, compiled for both types)
/// to a `Vec` that it returns as the matching [`CpuStorage`]; `float_op!(raw OP, ...)` returns
/// the body's value as it is (it must have one type for both). Other dtypes, mixed dtypes and
/// strided layouts return the op's error from the enclosing function.
macro_rules! float_op {
    (raw $op:expr, [$(($v:ident, $s:expr, $l:expr, $what:expr)),+ $(,)?], $body:expr) => {
        $crate::op::float_op!(@ $op, [$(($v, $s, $l, $what)),+], std::convert::identity,
            std::convert::identity, $body)
    };
    ($op:expr, [$(($v:ident, $s:expr, $l:expr, $what:expr)),+ $(,)?], $body:expr) => {
        $crate::op::float_op!(@ $op, [$(($v, $s, $l, $what)),+], candle_core::CpuStorage::F32,
            candle_core::CpuStorage::F64, $body)
    };
    (@ $op:expr, [$(($v:ident, $s:expr, $l:expr, $what:expr)),+], $f32:path, $f64:path,
        $body:expr) => {
        match ($($s,)+) {
            ($(candle_core::CpuStorage::F32($v),)+) => {
                $(let $v = $crate::op::slice($v, $l, $op, $what)?;)+
                $f32($body)
            }
            ($(candle_core::CpuStorage::F64($v),)+) => {
                $(let $v = $crate::op::slice($v, $l, $op, $what)?;)+
                $f64($body)
            }
            _ => return Err($crate::op::dtype_error($op, &[$(($s, $what)),+])),
        }
    };
}
pub(crate) use float_op;

fn dims4(l: &Layout, op: &'static str, what: &'static str) -> Result<[usize; 4]> {
    match *l.dims() {
        [a, b, c, d] => Ok([a, b, c, d]),
        ref other => Err(OpsError::Shape {
            op,
            what,
            shape: other.to_vec(),
            expected: "rank 4".into(),
        }
        .into()),
    }
}

fn geom(
    op: &'static str,
    x: [usize; 4],
    w: [usize; 4],
    stride: usize,
    padding: usize,
) -> Result<Geom> {
    let [n, c, h, wd] = x;
    let [co, ci, kh, kw] = w;
    if ci != c || c == 0 || co == 0 {
        return Err(OpsError::Mismatch {
            op,
            message: format!("input {x:?} and weight {w:?} need equal, non-zero channels"),
        }
        .into());
    }
    Geom::new(n, c, h, wd, co, kh, kw, stride, padding, padding).ok_or_else(|| {
        OpsError::Mismatch {
            op,
            message: format!(
                "kernel {kh}x{kw} with stride {stride} and padding {padding} does not fit input {h}x{wd}"
            ),
        }
        .into()
    })
}

/// `conv2d(x, w)` with our forward kernel and our gradient kernels in backward.
pub(crate) struct Conv2d {
    pub stride: usize,
    pub padding: usize,
    pub precision: Precision,
}

const CONV: &str = "cv-ops conv2d";
const CONV_DX: &str = "cv-ops conv2d input-grad";
const CONV_DW: &str = "cv-ops conv2d weight-grad";

impl CustomOp2 for Conv2d {
    fn name(&self) -> &'static str {
        CONV
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = dims4(l1, CONV, "input")?;
        let w = dims4(l2, CONV, "weight")?;
        let g = geom(CONV, x, w, self.stride, self.padding)?;
        let out = float_op!(
            CONV,
            [(x, s1, l1, "input"), (w, s2, l2, "weight")],
            kernels::forward(x, w, &g, self.precision)
        );
        Ok((out, Shape::from((g.n, g.co, g.oh, g.ow))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        // An input that no variable depends on (the images) needs no gradient: skip its cost.
        let dx = if x.track_op() {
            let (_, _, h, wd) = x.dims4()?;
            let op = ConvInputGrad {
                h,
                w: wd,
                stride: self.stride,
                padding: self.padding,
                precision: self.precision,
            };
            Some(grad.apply_op2_no_bwd(w, &op)?)
        } else {
            None
        };
        let dw = if w.track_op() {
            let (_, _, kh, kw) = w.dims4()?;
            let op = ConvWeightGrad {
                kh,
                kw,
                stride: self.stride,
                padding: self.padding,
                precision: self.precision,
            };
            Some(x.apply_op2_no_bwd(&grad, &op)?)
        } else {
            None
        };
        Ok((dx, dw))
    }
}

/// `(dy, w) -> dx` for an input of spatial size `h x w`.
pub(crate) struct ConvInputGrad {
    pub h: usize,
    pub w: usize,
    pub stride: usize,
    pub padding: usize,
    pub precision: Precision,
}

impl ConvInputGrad {
    fn geom(&self, dy: [usize; 4], w: [usize; 4]) -> Result<Geom> {
        let [n, co, oh, ow] = dy;
        let [wco, c, _, _] = w;
        let g = geom(
            CONV_DX,
            [n, c, self.h, self.w],
            w,
            self.stride,
            self.padding,
        )?;
        if wco != co || (g.oh, g.ow) != (oh, ow) {
            return Err(OpsError::Shape {
                op: CONV_DX,
                what: "output gradient",
                shape: dy.to_vec(),
                expected: format!("[{n}, {wco}, {}, {}]", g.oh, g.ow),
            }
            .into());
        }
        Ok(g)
    }
}

impl CustomOp2 for ConvInputGrad {
    fn name(&self) -> &'static str {
        CONV_DX
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dy = dims4(l1, CONV_DX, "output gradient")?;
        let w = dims4(l2, CONV_DX, "weight")?;
        let g = self.geom(dy, w)?;
        let out = float_op!(
            CONV_DX,
            [(dy, s1, l1, "output gradient"), (w, s2, l2, "weight")],
            kernels::input_grad(dy, w, &g, self.precision)
        );
        Ok((out, Shape::from((g.n, g.c, g.h, g.w))))
    }
}

/// `(x, dy) -> dw` for a `kh x kw` kernel.
pub(crate) struct ConvWeightGrad {
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub padding: usize,
    pub precision: Precision,
}

impl CustomOp2 for ConvWeightGrad {
    fn name(&self) -> &'static str {
        CONV_DW
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = dims4(l1, CONV_DW, "input")?;
        let dy = dims4(l2, CONV_DW, "output gradient")?;
        let w = [dy[1], x[1], self.kh, self.kw];
        let g = geom(CONV_DW, x, w, self.stride, self.padding)?;
        if dy != [g.n, g.co, g.oh, g.ow] {
            return Err(OpsError::Shape {
                op: CONV_DW,
                what: "output gradient",
                shape: dy.to_vec(),
                expected: format!("[{}, {}, {}, {}]", g.n, g.co, g.oh, g.ow),
            }
            .into());
        }
        let out = float_op!(
            CONV_DW,
            [(x, s1, l1, "input"), (dy, s2, l2, "output gradient")],
            kernels::weight_grad(x, dy, &g, self.precision)
        );
        Ok((out, Shape::from((g.co, g.c, g.kh, g.kw))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<CpuStorage> {
        Ok(float_op!(
            "test add",
            [(a, s1, l1, "a"), (b, s2, l2, "b")],
            a.iter().zip(b).map(|(&x, &y)| x + y).collect()
        ))
    }

    #[test]
    fn float_op_runs_both_types_and_names_every_argument_of_mixed_dtypes() {
        let l = Layout::contiguous(2);
        let (a32, a64) = (
            CpuStorage::F32(vec![1.0, 2.0]),
            CpuStorage::F64(vec![1.0, 2.0]),
        );
        assert!(matches!(add(&a32, &l, &a32, &l), Ok(CpuStorage::F32(v)) if v == [2.0, 4.0]));
        assert!(matches!(add(&a64, &l, &a64, &l), Ok(CpuStorage::F64(v)) if v == [2.0, 4.0]));
        let e = add(&a32, &l, &a64, &l).err().map(|e| e.to_string());
        let e = e.unwrap_or_default();
        assert!(e.contains("test add") && e.contains("a F32, b F64"), "{e}");
        let b = CpuStorage::F32(vec![1.0; 4]);
        let l4 = Layout::contiguous((2, 2));
        let strided = l4.transpose(0, 1);
        let e = strided.map(|t| add(&b, &t, &b, &l4).err().map(|e| e.to_string()));
        assert!(matches!(e, Ok(Some(m)) if m.contains("a is not contiguous")));
    }
}
