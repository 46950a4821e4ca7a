//! The candle custom ops wrapping the kernels: the convolution itself (with a backward built
//! from the two gradient ops) and the two gradient ops (forward-only, so no double backward).

use crate::error::OpsError;
use crate::geom::Geom;
use crate::kernels;
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};

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

/// The contiguous `T` values a CPU storage and its layout describe (an error for another
/// dtype or a strided layout).
pub(crate) fn typed_slice<'a, T: candle_core::WithDType>(
    s: &'a CpuStorage,
    l: &Layout,
    op: &'static str,
    what: &'static str,
) -> Result<&'a [T]> {
    slice(T::cpu_storage_as_slice(s)?, l, op, what)
}

/// The float dtype (f32 or f64) three storages share, or the error naming theirs.
pub(crate) fn common_float(op: &'static str, s: [&CpuStorage; 3]) -> Result<candle_core::DType> {
    let d = s[0].dtype();
    if matches!(d, candle_core::DType::F32 | candle_core::DType::F64)
        && s.iter().all(|x| x.dtype() == d)
    {
        return Ok(d);
    }
    Err(OpsError::DType {
        op,
        dtype: format!("{:?}/{:?}/{:?}", s[0].dtype(), s[1].dtype(), s[2].dtype()),
    }
    .into())
}

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

/// Runs `f` on the two storages as slices of one float type.
fn with_slices(
    op: &'static str,
    (s1, l1, what1): (&CpuStorage, &Layout, &'static str),
    (s2, l2, what2): (&CpuStorage, &Layout, &'static str),
    f32_fn: impl FnOnce(&[f32], &[f32]) -> Vec<f32>,
    f64_fn: impl FnOnce(&[f64], &[f64]) -> Vec<f64>,
) -> Result<CpuStorage> {
    match (s1, s2) {
        (CpuStorage::F32(a), CpuStorage::F32(b)) => Ok(CpuStorage::F32(f32_fn(
            slice(a, l1, op, what1)?,
            slice(b, l2, op, what2)?,
        ))),
        (CpuStorage::F64(a), CpuStorage::F64(b)) => Ok(CpuStorage::F64(f64_fn(
            slice(a, l1, op, what1)?,
            slice(b, l2, op, what2)?,
        ))),
        (a, b) if a.dtype() != b.dtype() => Err(OpsError::Mismatch {
            op,
            message: format!("{what1} is {:?} but {what2} is {:?}", a.dtype(), b.dtype()),
        }
        .into()),
        (a, _) => Err(OpsError::DType {
            op,
            dtype: format!("{:?}", a.dtype()),
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
        let out = with_slices(
            CONV,
            (s1, l1, "input"),
            (s2, l2, "weight"),
            |x, w| kernels::forward(x, w, &g),
            |x, w| kernels::forward(x, w, &g),
        )?;
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
        let out = with_slices(
            CONV_DX,
            (s1, l1, "output gradient"),
            (s2, l2, "weight"),
            |dy, w| kernels::input_grad(dy, w, &g),
            |dy, w| kernels::input_grad(dy, w, &g),
        )?;
        Ok((out, Shape::from((g.n, g.c, g.h, g.w))))
    }
}

/// `(x, dy) -> dw` for a `kh x kw` kernel.
pub(crate) struct ConvWeightGrad {
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub padding: usize,
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
        let out = with_slices(
            CONV_DW,
            (s1, l1, "input"),
            (s2, l2, "output gradient"),
            |x, dy| kernels::weight_grad(x, dy, &g),
            |x, dy| kernels::weight_grad(x, dy, &g),
        )?;
        Ok((out, Shape::from((g.co, g.c, g.kh, g.kw))))
    }
}
