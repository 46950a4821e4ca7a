//! Max-pooling with PyTorch's semantics and a correct gradient.
//!
//! Why not candle's: in candle 0.11 `Tensor::max_pool2d` backward gives a unique maximum 1/k^2
//! of its gradient and every tied element the full gradient, and `max_pool2d_with_stride`
//! refuses kernel != stride in backward (ResNet's 3x3/2 stem pool). Here the forward and the
//! backward follow PyTorch: padding counts as -inf, the first maximum in row-major window
//! order wins ties (NaN counts as a maximum), and the whole output gradient goes to that one
//! input element.

use candle_core::{
    bail, CpuStorage, CustomOp1, CustomOp2, DType, Device, Layout, Result, Shape, Tensor, D,
};
use rayon::prelude::*;

use crate::elem::Elem;
use crate::op::float_op;

const POOL: &str = "cv-max-pool2d";
const POOL_BWD: &str = "cv-max-pool2d-backward";

/// A 2-D max-pool: square kernel, stride and zero-sized-or-more `-inf` padding (PyTorch's
/// `nn.MaxPool2d(kernel, stride, padding)` with `ceil_mode=False`, `dilation=1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxPool2dConfig {
    /// Window side.
    pub kernel: usize,
    /// Step between windows.
    pub stride: usize,
    /// Implicit `-inf` border on each side; at most `kernel / 2`, as in PyTorch.
    pub padding: usize,
}

impl Default for MaxPool2dConfig {
    /// The 2x2/2 pool of the small CNN.
    fn default() -> Self {
        Self {
            kernel: 2,
            stride: 2,
            padding: 0,
        }
    }
}

impl MaxPool2dConfig {
    /// Checks the configuration against an input of `h` x `w` and returns the output size.
    pub fn output_size(&self, h: usize, w: usize) -> Result<(usize, usize)> {
        if self.kernel == 0 || self.stride == 0 {
            bail!("max_pool2d: kernel and stride must be positive, got {self:?}")
        }
        if self.padding * 2 > self.kernel {
            bail!("max_pool2d: padding must be at most kernel / 2, got {self:?}")
        }
        let (hp, wp) = (h + 2 * self.padding, w + 2 * self.padding);
        if hp < self.kernel || wp < self.kernel {
            bail!("max_pool2d: input {h}x{w} is smaller than the window ({self:?})")
        }
        Ok((
            (hp - self.kernel) / self.stride + 1,
            (wp - self.kernel) / self.stride + 1,
        ))
    }
}

/// Max-pools an NCHW tensor. CPU tensors run the rayon kernel below; other devices run
/// [`max_pool2d_composed`] (candle ops only), whose gradient is also correct.
pub fn max_pool2d(x: &Tensor, cfg: MaxPool2dConfig) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    cfg.output_size(h, w)?;
    match x.device() {
        Device::Cpu if matches!(x.dtype(), DType::F32 | DType::F64) => {
            x.contiguous()?.apply_op1(MaxPool2d(cfg))
        }
        _ => max_pool2d_composed(x, cfg),
    }
}

/// Max-pool from candle primitives, for devices without a kernel here (CUDA, Metal) and for
/// dtypes the CPU kernel does not cover. Why not candle's `max_pool2d` there: its backward is
/// wrong on every device (the same generic autograd rule), and it refuses kernel != stride.
/// On CUDA, ties go to whichever maximum candle's `argmax` kernel returns (the first, on CPU).
///
/// It pads with `-inf`, gathers the k*k shifted, strided views with `index_select` (so the
/// stride never goes through candle's pooling), stacks them on a last axis and picks the
/// first maximum with `argmax` + `gather`: gather's backward is a scatter-add, so exactly one
/// element per window receives the gradient, as in PyTorch. It uses k*k times the output
/// memory; fine where the device is fast.
pub fn max_pool2d_composed(x: &Tensor, cfg: MaxPool2dConfig) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let (oh, ow) = cfg.output_size(h, w)?;
    let p = cfg.padding;
    let x = if p > 0 {
        let neg = |shape: (usize, usize, usize, usize)| {
            Tensor::full(f32::NEG_INFINITY, shape, x.device())?.to_dtype(x.dtype())
        };
        let side = neg((n, c, h, p))?;
        let x = Tensor::cat(&[&side, x, &side], 3)?;
        let top = neg((n, c, p, w + 2 * p))?;
        Tensor::cat(&[&top, &x, &top], 2)?
    } else {
        x.clone()
    };
    let mut picks = Vec::with_capacity(cfg.kernel * cfg.kernel);
    for ky in 0..cfg.kernel {
        let rows: Vec<u32> = (0..oh).map(|i| (ky + i * cfg.stride) as u32).collect();
        let rows = Tensor::new(rows.as_slice(), x.device())?;
        let xr = x.index_select(&rows, 2)?;
        for kx in 0..cfg.kernel {
            let cols: Vec<u32> = (0..ow).map(|j| (kx + j * cfg.stride) as u32).collect();
            let cols = Tensor::new(cols.as_slice(), x.device())?;
            picks.push(xr.index_select(&cols, 3)?);
        }
    }
    let stacked = Tensor::stack(&picks, 4)?;
    let idx = stacked.argmax_keepdim(D::Minus1)?;
    stacked.gather(&idx, D::Minus1)?.squeeze(D::Minus1)
}

/// Forward op: pooled values; backward recomputes the argmax with [`MaxPool2dBackward`].
struct MaxPool2d(MaxPool2dConfig);

/// Index (within the input plane) of the first maximum of the window at (oy, ox), or None
/// when the window lies entirely in the padding (impossible with padding <= kernel/2).
#[inline]
fn window_argmax<T: Elem>(
    plane: &[T],
    h: usize,
    w: usize,
    cfg: &MaxPool2dConfig,
    oy: usize,
    ox: usize,
) -> Option<usize> {
    // The window clamped to the plane: padding is -inf, so it never wins.
    let y0 = (oy * cfg.stride).saturating_sub(cfg.padding);
    let y1 = (oy * cfg.stride + cfg.kernel)
        .saturating_sub(cfg.padding)
        .min(h);
    let x0 = (ox * cfg.stride).saturating_sub(cfg.padding);
    let x1 = (ox * cfg.stride + cfg.kernel)
        .saturating_sub(cfg.padding)
        .min(w);
    if y0 >= y1 || x0 >= x1 {
        return None;
    }
    let mut best_i = y0 * w + x0;
    let mut best = plane[best_i];
    if best.is_nan_() {
        return Some(best_i);
    }
    for y in y0..y1 {
        let row = &plane[y * w + x0..y * w + x1];
        for (dx, &v) in row.iter().enumerate() {
            // PyTorch: `val > maxval || isnan(val)`; the first NaN wins for good.
            if v > best || v.is_nan_() {
                best = v;
                best_i = y * w + x0 + dx;
                if v.is_nan_() {
                    return Some(best_i);
                }
            }
        }
    }
    Some(best_i)
}

/// `max(a, b)` where a NaN in either wins (PyTorch's forward) and, between equal values, the
/// earlier `a`; branch-free enough to vectorise.
#[inline(always)]
fn nan_max<T: Elem>(a: T, b: T) -> T {
    if b > a || b.is_nan_() {
        b
    } else {
        a
    }
}

/// Planes handed to one rayon task at least (small planes at 32x32 input).
const MIN_ELEMS_PER_TASK: usize = 16 * 1024;

/// Forward values only, separably: each input row's max over every window's columns, then
/// the max over each window's rows, a vectorisable pass over whole output rows. Why not
/// [`window_argmax`] per output: it rescans k*k elements with a NaN branch each, a visible
/// part of a ResNet-18 eval forward. The values are the same: a NaN wins, ties are equal.
fn pool_fwd<T: Elem>(
    x: &[T],
    (n, c, h, w): (usize, usize, usize, usize),
    cfg: &MaxPool2dConfig,
) -> Result<Vec<T>> {
    let (oh, ow) = cfg.output_size(h, w)?;
    let mut out = vec![T::ZERO; n * c * oh * ow];
    // The window of output `o` clamped to [0, len): padding is -inf, so it never wins, and
    // padding <= kernel/2 keeps every clamped window non-empty.
    let span = |o: usize, len: usize| {
        let a = (o * cfg.stride).saturating_sub(cfg.padding);
        let b = (o * cfg.stride + cfg.kernel)
            .saturating_sub(cfg.padding)
            .min(len);
        (a, b.max(a + 1).min(len))
    };
    let cols: Vec<(usize, usize)> = (0..ow).map(|o| span(o, w)).collect();
    let rows: Vec<(usize, usize)> = (0..oh).map(|o| span(o, h)).collect();
    if oh * ow > 0 && h * w > 0 {
        out.par_chunks_mut(oh * ow)
            .zip(x.par_chunks(h * w))
            .with_min_len((MIN_ELEMS_PER_TASK / (h * w)).max(1))
            .for_each_init(
                || vec![T::ZERO; h * ow],
                |rowmax, (o, plane)| {
                    for (y, rm) in rowmax.chunks_mut(ow).enumerate() {
                        let row = &plane[y * w..(y + 1) * w];
                        for (m, &(a, b)) in rm.iter_mut().zip(&cols) {
                            *m = row[a + 1..b].iter().fold(row[a], |m, &v| nan_max(m, v));
                        }
                    }
                    for (orow, &(a, b)) in o.chunks_mut(ow).zip(&rows) {
                        orow.copy_from_slice(&rowmax[a * ow..(a + 1) * ow]);
                        for src in rowmax[(a + 1) * ow..b * ow].chunks(ow) {
                            for (m, &v) in orow.iter_mut().zip(src) {
                                *m = nan_max(*m, v);
                            }
                        }
                    }
                },
            );
    }
    Ok(out)
}

fn pool_bwd<T: Elem>(
    x: &[T],
    g: &[T],
    (n, c, h, w): (usize, usize, usize, usize),
    cfg: &MaxPool2dConfig,
) -> Result<Vec<T>> {
    let (oh, ow) = cfg.output_size(h, w)?;
    if g.len() != n * c * oh * ow {
        bail!(
            "max_pool2d backward: gradient has {} elements, expected {}",
            g.len(),
            n * c * oh * ow
        )
    }
    let mut dx = vec![T::ZERO; n * c * h * w];
    if oh * ow > 0 && h * w > 0 {
        dx.par_chunks_mut(h * w)
            .zip(x.par_chunks(h * w))
            .zip(g.par_chunks(oh * ow))
            .for_each(|((d, plane), gp)| {
                for oy in 0..oh {
                    for ox in 0..ow {
                        if let Some(i) = window_argmax(plane, h, w, cfg, oy, ox) {
                            d[i] += gp[oy * ow + ox];
                        }
                    }
                }
            });
    }
    Ok(dx)
}

impl CustomOp1 for MaxPool2d {
    fn name(&self) -> &'static str {
        POOL
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let dims @ (n, c, h, w) = layout.shape().dims4()?;
        let (oh, ow) = self.0.output_size(h, w)?;
        let out = float_op!(
            POOL,
            [(x, storage, layout, "input")],
            pool_fwd(x, dims, &self.0)?
        );
        Ok((out, Shape::from((n, c, oh, ow))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let grad = grad_res.contiguous()?;
        Ok(Some(
            arg.apply_op2_no_bwd(&grad, &MaxPool2dBackward(self.0))?,
        ))
    }
}

/// Backward op: (input, output gradient) -> input gradient, recomputing each window's first
/// maximum instead of storing argmax indices (a cheap pass; keeps the forward op stateless).
struct MaxPool2dBackward(MaxPool2dConfig);

impl CustomOp2 for MaxPool2dBackward {
    fn name(&self) -> &'static str {
        POOL_BWD
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dims = l1.shape().dims4()?;
        let out = float_op!(
            POOL_BWD,
            [(x, s1, l1, "input"), (g, s2, l2, "gradient")],
            pool_bwd(x, g, dims, &self.0)?
        );
        Ok((out, l1.shape().clone()))
    }
}
