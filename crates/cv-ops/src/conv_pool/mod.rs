//! One layer of the tutorial's small CNN as a single op: convolution (stride 1, no padding),
//! per-channel bias, ReLU and a 2x2/2 max-pool, forward and backward.
//!
//! Why: as separate ops the layer is a conv, a bias add, a ReLU and a pool forward and about a
//! dozen ops backward, each a pass over a batch-sized buffer (470 K values for conv1 at batch
//! 100) that has left the cache, and candle runs the big elementwise ones on its own spinning
//! thread pool. Here one rayon task takes
//! a few images through the convolution (the direct AVX2 kernels of `via_direct`, else im2col
//! and one gemm in `via_gemm`) and the bias/ReLU/pool epilogue while they sit in L2,
//! and keeps one byte per pooled value (which window element won, whether ReLU let it through)
//! for the backward, which rebuilds the pre-pool gradient, the weight and bias gradients and,
//! when something upstream needs it, the input gradient, per group of images again.
//!
//! Semantics are PyTorch's `max_pool2d(relu(conv2d(x, w, b)), 2)`: the first maximum of each
//! window wins ties, NaN wins over numbers, and the whole gradient of a pooled value goes to
//! its winner when that is positive (ReLU's gradient is 0 at 0).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor, WithDType};

use crate::autocast::Precision;
use crate::elem::Elem;
use crate::error::OpsError;
use crate::geom::{Geom, Unit};
use crate::op::{cpu_storage, float_op};

#[cfg(target_arch = "x86_64")]
mod via_direct;
mod via_gemm;

const OP: &str = "cv-ops conv_relu_pool";

/// Bit of a mask byte set when the window's maximum was positive (ReLU passed it); the low two
/// bits are the winner's position in the window, `2 * dy + dx`.
const PASSED: u8 = 4;

/// Output columns (pixels of all images of a unit) we aim for per gemm call.
const TARGET_COLS: usize = 512;

/// The op; `mask` is filled by the forward when a gradient will be needed.
pub(crate) struct ConvReluPool {
    /// Whether the forward records the mask (some argument tracks a gradient).
    pub record: bool,
    /// The arithmetic of its gemms (bf16 takes im2col + gemm, not the direct kernels).
    pub precision: Precision,
    pub mask: Mutex<Option<Vec<u8>>>,
}

/// Shapes of one call: the convolution's geometry and the pooled size.
#[derive(Clone, Copy, Debug)]
struct Dims {
    g: Geom,
    ph: usize,
    pw: usize,
}

impl Dims {
    fn new(x: &[usize], w: &[usize], b: &[usize]) -> Result<Self> {
        let shape_err = |what, shape: &[usize], expected: String| OpsError::Shape {
            op: OP,
            what,
            shape: shape.to_vec(),
            expected,
        };
        let &[n, c, h, wd] = x else {
            return Err(shape_err("input", x, "[n, c, h, w]".into()).into());
        };
        let &[co, ci, kh, kw] = w else {
            return Err(shape_err("weight", w, "[co, c, kh, kw]".into()).into());
        };
        if ci != c || c == 0 || co == 0 {
            return Err(OpsError::Mismatch {
                op: OP,
                message: format!("input {x:?} and weight {w:?} need equal, non-zero channels"),
            }
            .into());
        }
        if b != [co] {
            return Err(shape_err("bias", b, format!("[{co}]")).into());
        }
        let g = Geom::new(n, c, h, wd, co, kh, kw, 1, 0, 0)
            .filter(|g| g.oh >= 2 && g.ow >= 2)
            .ok_or_else(|| OpsError::Mismatch {
                op: OP,
                message: format!("kernel {kh}x{kw} leaves less than 2x2 of input {h}x{wd} to pool"),
            })?;
        Ok(Self {
            g,
            ph: g.oh / 2,
            pw: g.ow / 2,
        })
    }

    /// Pooled values per image and channel.
    fn pooled(&self) -> usize {
        self.ph * self.pw
    }

    /// Units of whole images, `cols` pixels each at most `TARGET_COLS` where images allow,
    /// preferring a multiple of 8 columns (gemm then reads the im2col matrix unpacked), and at
    /// least two units per thread.
    fn units(&self, threads: usize) -> Vec<Unit> {
        let (n, p) = (self.g.n, self.g.p());
        let most = (TARGET_COLS / p).max(1);
        let mut per = (1..=most).rev().find(|g| g * p % 8 == 0).unwrap_or(most);
        let min_units = 2 * threads.max(1);
        if n.div_ceil(per) < min_units {
            per = n.div_ceil(min_units).max(1);
        }
        (0..n.div_ceil(per))
            .map(|i| Unit {
                n0: i * per,
                n1: ((i + 1) * per).min(n),
                p0: 0,
                p1: p,
            })
            .collect()
    }
}

/// Per-task buffers: the unit's im2col matrix and its `co x cols` conv output (or gradient).
struct Scratch<T> {
    col: Vec<T>,
    pre: Vec<T>,
    /// Used by the direct path (x86-64) only.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    tmp: Vec<T>,
}

impl<T> Scratch<T> {
    fn new() -> Self {
        Self {
            col: Vec::new(),
            pre: Vec::new(),
            tmp: Vec::new(),
        }
    }
}

/// The window maximum (first wins ties, NaN wins), with its position.
#[inline]
fn window_max<T: Elem>(v: [T; 4]) -> (T, u8) {
    let (mut m, mut at) = (v[0], 0);
    for (i, &x) in v.iter().enumerate().skip(1) {
        #[allow(clippy::eq_op)]
        let nan = x != x;
        if x > m || nan {
            m = x;
            at = i as u8;
        }
    }
    (m, at)
}

/// Bias, ReLU and 2x2 max-pool of one `oh x ow` plane (rows `row` apart) into `ph x pw` values (+ mask bytes).
#[inline]
fn pool_plane<T: Elem>(
    plane: &[T],
    row: usize,
    bias: T,
    d: &Dims,
    dst: &mut [T],
    mut mask: Option<&mut [u8]>,
) {
    for py in 0..d.ph {
        let r0 = &plane[2 * py * row..];
        let r1 = &plane[(2 * py + 1) * row..];
        for px in 0..d.pw {
            let i = 2 * px;
            let (m, at) = window_max([
                r0[i] + bias,
                r0[i + 1] + bias,
                r1[i] + bias,
                r1[i + 1] + bias,
            ]);
            let passed = m > T::ZERO;
            #[allow(clippy::eq_op)]
            let nan = m != m;
            dst[py * d.pw + px] = if passed || nan { m } else { T::ZERO };
            if let Some(mask) = mask.as_deref_mut() {
                mask[py * d.pw + px] = if passed { at | PASSED } else { 0 };
            }
        }
    }
}

/// What the backward produces: the weight and bias gradients, and the input gradient if asked.
struct Grads<T> {
    dw: Vec<T>,
    db: Vec<T>,
    dx: Option<Vec<T>>,
}

/// Whether the f32 kernels of [`crate::direct`] run this layer (else im2col + gemm).
#[cfg(target_arch = "x86_64")]
fn direct_applies() -> bool {
    crate::direct::available() && !DIRECT_DISABLED.load(Ordering::Relaxed)
}

static DIRECT_DISABLED: AtomicBool = AtomicBool::new(false);

/// Turns the direct kernels off (or back on), for tests and benchmarks of the gemm path.
pub(crate) fn set_direct_enabled(on: bool) {
    DIRECT_DISABLED.store(!on, Ordering::Relaxed);
}

/// The per-unit weight and bias gradients summed in unit order (independent of scheduling).
fn sum_partials<T: Elem>(
    partials: Vec<(Vec<T>, Vec<T>)>,
    dw_len: usize,
    co: usize,
    dx: Option<Vec<T>>,
) -> Grads<T> {
    let mut dw = vec![T::ZERO; dw_len];
    let mut db = vec![T::ZERO; co];
    for (pw, pb) in &partials {
        for (a, &v) in dw.iter_mut().zip(pw) {
            *a += v;
        }
        for (a, &v) in db.iter_mut().zip(pb) {
            *a += v;
        }
    }
    Grads { dw, db, dx }
}

/// Routes one channel's pooled gradient back onto its `oh x ow` pre-activation plane (rows
/// `row` apart, starting at `plane[at]`): zeros everywhere in `plane` except at the
/// ReLU-passed window winners. Returns the plane's sum (its bias gradient).
#[inline]
fn unpool_plane<T: Elem>(
    dy: &[T],
    mask: &[u8],
    d: &Dims,
    plane: &mut [T],
    at: usize,
    row: usize,
) -> T {
    plane.fill(T::ZERO);
    let mut sum = T::ZERO;
    for py in 0..d.ph {
        for px in 0..d.pw {
            let m = mask[py * d.pw + px];
            if m & PASSED != 0 {
                let v = dy[py * d.pw + px];
                let (wy, wx) = ((m >> 1) & 1, m & 1);
                plane[at + (2 * py + wy as usize) * row + 2 * px + wx as usize] = v;
                sum += v;
            }
        }
    }
    sum
}

/// The element types of this op and the path each takes: f32 the direct kernels where the CPU
/// has them, f64 (exact gradient checks) always im2col + gemm.
trait PathFor: Elem + WithDType {
    fn conv_relu_pool_forward(
        x: &[Self],
        w: &[Self],
        b: &[Self],
        d: &Dims,
        record: bool,
        prec: Precision,
    ) -> (Vec<Self>, Vec<u8>) {
        via_gemm::forward(x, w, b, d, record, prec)
    }
    fn conv_relu_pool_backward(
        x: &[Self],
        w: &[Self],
        dy: &[Self],
        mask: &[u8],
        d: &Dims,
        want_dx: bool,
        prec: Precision,
    ) -> Grads<Self> {
        via_gemm::backward(x, w, dy, mask, d, want_dx, prec)
    }
}

impl PathFor for f64 {}

impl PathFor for f32 {
    fn conv_relu_pool_forward(
        x: &[f32],
        w: &[f32],
        b: &[f32],
        d: &Dims,
        record: bool,
        prec: Precision,
    ) -> (Vec<f32>, Vec<u8>) {
        #[cfg(target_arch = "x86_64")]
        if direct_applies() && prec == Precision::Full {
            return via_direct::forward(x, w, b, d, record);
        }
        via_gemm::forward(x, w, b, d, record, prec)
    }
    fn conv_relu_pool_backward(
        x: &[f32],
        w: &[f32],
        dy: &[f32],
        mask: &[u8],
        d: &Dims,
        want_dx: bool,
        prec: Precision,
    ) -> Grads<f32> {
        #[cfg(target_arch = "x86_64")]
        if direct_applies() && prec == Precision::Full {
            return via_direct::backward(x, w, dy, mask, d, want_dx);
        }
        via_gemm::backward(x, w, dy, mask, d, want_dx, prec)
    }
}

impl ConvReluPool {
    fn forward<T: PathFor>(&self, x: &[T], w: &[T], b: &[T], d: &Dims) -> Result<Vec<T>> {
        let (out, mask) = T::conv_relu_pool_forward(x, w, b, d, self.record, self.precision);
        if self.record {
            *self.mask.lock().map_err(|_| poisoned())? = Some(mask);
        }
        Ok(out)
    }

    /// The gradients of `x` (if `want_dx`), `w` and the bias, from the input values `xv`, the
    /// weights `wv` and the output gradient `gv`.
    #[allow(clippy::type_complexity)]
    fn backward<T: PathFor>(
        &self,
        (x, w): (&Tensor, &Tensor),
        (xv, wv, gv): (&[T], &[T], &[T]),
        want_dx: bool,
    ) -> Result<(Option<Tensor>, Tensor, Tensor)> {
        let d = Dims::new(x.dims(), w.dims(), &[w.dims()[0]])?;
        let mask = self.mask.lock().map_err(|_| poisoned())?;
        let mask = mask.as_ref().ok_or_else(|| OpsError::Mismatch {
            op: OP,
            message: "backward without a recorded forward".into(),
        })?;
        let grads = T::conv_relu_pool_backward(xv, wv, gv, mask, &d, want_dx, self.precision);
        let dev = x.device();
        let dx = match grads.dx {
            Some(v) => Some(Tensor::from_vec(v, x.shape(), dev)?),
            None => None,
        };
        Ok((
            dx,
            Tensor::from_vec(grads.dw, w.shape(), dev)?,
            Tensor::from_vec(grads.db, w.dims()[0], dev)?,
        ))
    }
}

fn poisoned() -> candle_core::Error {
    OpsError::Mismatch {
        op: OP,
        message: "a thread panicked while holding the pooling mask".into(),
    }
    .into()
}

impl CustomOp3 for ConvReluPool {
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
        let d = Dims::new(l1.dims(), l2.dims(), l3.dims())?;
        let out = float_op!(
            OP,
            [
                (x, s1, l1, "input"),
                (w, s2, l2, "weight"),
                (b, s3, l3, "bias")
            ],
            self.forward(x, w, b, &d)?
        );
        Ok((out, Shape::from((d.g.n, d.g.co, d.ph, d.pw))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        // The images need no gradient: skip the input-gradient gemm and scatter for them.
        let want_dx = x.track_op();
        let ((xs, xl), (ws, wl), (gs, gl)) = (
            x.storage_and_layout(),
            w.storage_and_layout(),
            grad.storage_and_layout(),
        );
        let (xs, ws, gs) = (
            cpu_storage(OP, &xs)?,
            cpu_storage(OP, &ws)?,
            cpu_storage(OP, &gs)?,
        );
        let (dx, dw, db) = float_op!(
            raw OP,
            [
                (xv, xs, xl, "input"),
                (wv, ws, wl, "weight"),
                (gv, gs, gl, "output gradient"),
            ],
            self.backward((x, w), (xv, wv, gv), want_dx)?
        );
        Ok((dx, w.track_op().then_some(dw), b.track_op().then_some(db)))
    }
}
