//! One layer of the tutorial's small CNN as a single op: convolution (stride 1, no padding),
//! per-channel bias, ReLU and a 2x2/2 max-pool, forward and backward.
//!
//! Why: as separate ops the layer is a conv, a bias add, a ReLU and a pool forward and about a
//! dozen ops backward, each a pass over a batch-sized buffer (470 K values for conv1 at batch
//! 100) that has left the cache, and candle runs the big elementwise ones on its own spinning
//! thread pool (together ~45% of the training step's samples, perf). Here one rayon task takes
//! a few images through im2col, one gemm and the bias/ReLU/pool epilogue while they sit in L2,
//! and keeps one byte per pooled value (which window element won, whether ReLU let it through)
//! for the backward, which rebuilds the pre-pool gradient, the weight and bias gradients and,
//! when something upstream needs it, the input gradient, per group of images again.
//!
//! Semantics are PyTorch's `max_pool2d(relu(conv2d(x, w, b)), 2)`: the first maximum of each
//! window wins ties, NaN wins over numbers, and the whole gradient of a pooled value goes to
//! its winner when that is positive (ReLU's gradient is 0 at 0).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor, WithDType};
use gemm::Parallelism;
use rayon::prelude::*;

use crate::direct::{Flat, BLOCK};
use crate::elem::Elem;
use crate::error::OpsError;
use crate::geom::{Geom, Unit};
use crate::im2col::{col2im_add, im2col};
use crate::kernels::{grow, matmul, SendPtr};
use crate::op::slice;

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

/// Forward: the pooled output `[n, co, ph, pw]` and, if `record`, the mask.
fn forward<T: Elem>(x: &[T], w: &[T], b: &[T], d: &Dims, record: bool) -> (Vec<T>, Vec<u8>) {
    let (g, q) = (&d.g, d.pooled());
    let (p, k, co) = (g.p(), g.k(), g.co);
    let mut out = vec![T::ZERO; g.n * co * q];
    let mut mask = if record {
        vec![0u8; g.n * co * q]
    } else {
        Vec::new()
    };
    let out_ptr = SendPtr(out.as_mut_ptr());
    let mask_ptr = SendPtr(mask.as_mut_ptr());
    let units = d.units(rayon::current_num_threads());
    units.par_iter().for_each_init(Scratch::new, |s, u| {
        let cols = u.cols();
        let col = grow(&mut s.col, k * cols);
        im2col(x, g, u, col);
        let pre = grow(&mut s.pre, co * cols);
        // pre[r, j] = sum_t w[r, t] * col[t, j], as the gemm (j, r) = col^T * w^T so the long
        // pixel axis is the vectorised one.
        // SAFETY: pre holds co*cols elements, col k*cols, w co*k; pre is this task's own.
        unsafe {
            matmul(
                cols,
                co,
                k,
                (pre.as_mut_ptr(), 1, cols),
                false,
                (col.as_ptr(), 1, cols),
                (w.as_ptr(), 1, k),
                Parallelism::None,
            );
        }
        for (gi, img) in (u.n0..u.n1).enumerate() {
            for r in 0..co {
                let plane = &pre[r * cols + gi * p..r * cols + (gi + 1) * p];
                let at = (img * co + r) * q;
                // SAFETY: image img belongs to this unit alone; q values per (img, r).
                let (dst, m) = unsafe {
                    (
                        std::slice::from_raw_parts_mut(out_ptr.get().add(at), q),
                        record.then(|| std::slice::from_raw_parts_mut(mask_ptr.get().add(at), q)),
                    )
                };
                pool_plane(plane, g.ow, b[r], d, dst, m);
            }
        }
    });
    (out, mask)
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

/// Backward from the pooled gradient `dy` `[n, co, ph, pw]` and the forward's mask.
fn backward<T: Elem>(x: &[T], w: &[T], dy: &[T], mask: &[u8], d: &Dims, want_dx: bool) -> Grads<T> {
    let (g, q) = (&d.g, d.pooled());
    let (p, k, co) = (g.p(), g.k(), g.co);
    let mut dx = want_dx.then(|| vec![T::ZERO; x.len()]);
    let dx_ptr = SendPtr(dx.as_mut().map_or(std::ptr::null_mut(), |v| v.as_mut_ptr()));
    let units = d.units(rayon::current_num_threads());
    // One partial (dw, db) per unit, summed in unit order below: the result does not depend on
    // which thread ran what.
    let partials: Vec<(Vec<T>, Vec<T>)> = units
        .par_iter()
        .map_init(Scratch::new, |s, u| {
            let cols = u.cols();
            let pre = grow(&mut s.pre, co * cols);
            let mut db = vec![T::ZERO; co];
            for (gi, img) in (u.n0..u.n1).enumerate() {
                for (r, db_r) in db.iter_mut().enumerate() {
                    let plane = &mut pre[r * cols + gi * p..r * cols + (gi + 1) * p];
                    let at = (img * co + r) * q;
                    *db_r += unpool_plane(&dy[at..at + q], &mask[at..at + q], d, plane, 0, g.ow);
                }
            }
            let col = grow(&mut s.col, k * cols);
            im2col(x, g, u, col);
            let mut dw = vec![T::ZERO; co * k];
            // dw[r, t] = sum_j pre[r, j] * col[t, j].
            // SAFETY: dw is co*k, pre co*cols, col k*cols; dw is this task's own.
            unsafe {
                matmul(
                    co,
                    k,
                    cols,
                    (dw.as_mut_ptr(), k, 1),
                    false,
                    (pre.as_ptr(), cols, 1),
                    (col.as_ptr(), 1, cols),
                    Parallelism::None,
                );
            }
            if want_dx {
                // dcol[t, j] = sum_r w[r, t] * pre[r, j], reusing col; then scatter onto dx.
                // SAFETY: as above; col is k*cols.
                unsafe {
                    matmul(
                        cols,
                        k,
                        co,
                        (col.as_mut_ptr(), 1, cols),
                        false,
                        (pre.as_ptr(), 1, cols),
                        (w.as_ptr(), k, 1),
                        Parallelism::None,
                    );
                }
                let per_image = g.c * g.h * g.w;
                // SAFETY: images n0..n1 of dx belong to this unit alone.
                let dx_unit = unsafe {
                    std::slice::from_raw_parts_mut(
                        dx_ptr.get().add(u.n0 * per_image),
                        (u.n1 - u.n0) * per_image,
                    )
                };
                col2im_add(col, g, u, dx_unit, u.n0);
            }
            (dw, db)
        })
        .collect();
    sum_partials(partials, co * k, co, dx)
}

/// Whether the f32 kernels of [`crate::direct`] run this layer (else im2col + gemm).
fn direct_applies() -> bool {
    crate::direct::available() && !DIRECT_DISABLED.load(Ordering::Relaxed)
}

static DIRECT_DISABLED: AtomicBool = AtomicBool::new(false);

/// Turns the direct kernels off (or back on), for tests and benchmarks of the gemm path.
pub(crate) fn set_direct_enabled(on: bool) {
    DIRECT_DISABLED.store(!on, Ordering::Relaxed);
}

/// Buffer sizes of the direct path for one layer.
#[derive(Clone, Copy, Debug)]
struct FlatSizes {
    /// Flattened output length `(oh - 1) * w + ow`, rounded up to whole blocks.
    lr: usize,
    /// Zeros before the output gradient's values, so the input-gradient kernel may read
    /// `(k - 1) * (w + 1)` positions ahead of any input position (0 without an input gradient).
    pad: usize,
    /// Input plane length `h * w` rounded up to whole blocks.
    hwr: usize,
    /// Length of one channel's row of the (padded) output gradient.
    row: usize,
}

impl FlatSizes {
    fn new(g: &Geom, want_dx: bool) -> Self {
        let lr = ((g.oh - 1) * g.w + g.ow).next_multiple_of(BLOCK);
        let hwr = (g.h * g.w).next_multiple_of(BLOCK);
        let pad = if want_dx { (g.kh - 1) * (g.w + 1) } else { 0 };
        let row = if want_dx { pad + hwr } else { lr };
        Self { lr, pad, hwr, row }
    }

    fn flat(&self, g: &Geom) -> Flat {
        Flat {
            cin: g.c,
            in_stride: g.h * g.w,
            row_w: g.w,
            k: g.kh,
            cout: g.co,
            blocks: self.lr / BLOCK,
            nonzero: (0, usize::MAX),
        }
    }
}

/// Images `n0..n1` of `x`, readable past their end as far as `extent` asks: `x` itself when it
/// is long enough, else a zero-padded copy in `buf`.
fn images_readable<'a>(
    x: &'a [f32],
    per_image: usize,
    n0: usize,
    n1: usize,
    extent: usize,
    buf: &'a mut Vec<f32>,
) -> &'a [f32] {
    let start = n0 * per_image;
    let need = (n1 - n0 - 1) * per_image + extent;
    if start + need <= x.len() {
        return &x[start..start + need];
    }
    buf.clear();
    buf.extend_from_slice(&x[start..n1 * per_image]);
    buf.resize(need.max(buf.len()), 0.0);
    &buf[..need]
}

/// [`forward`] through the direct kernels (f32, [`direct_applies`]).
fn forward_direct(x: &[f32], w: &[f32], b: &[f32], d: &Dims, record: bool) -> (Vec<f32>, Vec<u8>) {
    let (g, q) = (&d.g, d.pooled());
    let co = g.co;
    let sizes = FlatSizes::new(g, false);
    let f = sizes.flat(g);
    let per_image = g.c * g.h * g.w;
    // Every value (and mask byte) is written below, so neither is zero-filled first: the
    // writes go through raw pointers into the capacity and the lengths are set after.
    let len = g.n * co * q;
    let mut out: Vec<f32> = Vec::with_capacity(len);
    let mut mask: Vec<u8> = Vec::with_capacity(if record { len } else { 0 });
    let out_ptr = SendPtr(out.as_mut_ptr());
    let mask_ptr = SendPtr(mask.as_mut_ptr());
    let units = d.units(rayon::current_num_threads());
    units.par_iter().for_each_init(Scratch::<f32>::new, |s, u| {
        // Each row gets BLOCK of slack so the pooling may read whole groups of windows.
        let stride = sizes.lr + BLOCK;
        let pre = grow(&mut s.pre, co * stride);
        for img in u.n0..u.n1 {
            let xi = images_readable(x, per_image, img, img + 1, f.input_extent(), &mut s.col);
            // SAFETY: direct_applies() checked the CPU; xi holds input_extent elements, w
            // co*c*k*k, pre co*lr.
            unsafe { crate::direct::conv(&f, xi.as_ptr(), w.as_ptr(), pre.as_mut_ptr(), stride) };
            for r in 0..co {
                let at = (img * co + r) * q;
                // SAFETY: image img belongs to this unit alone; q values per (img, r).
                let (dst, m) = unsafe {
                    (
                        std::slice::from_raw_parts_mut(out_ptr.get().add(at), q),
                        record.then(|| std::slice::from_raw_parts_mut(mask_ptr.get().add(at), q)),
                    )
                };
                let plane = pre[r * stride..].as_ptr();
                let mut m = m;
                for py in 0..d.ph {
                    let mask_row = m
                        .as_deref_mut()
                        .map_or(std::ptr::null_mut(), |m| m[py * d.pw..].as_mut_ptr());
                    // SAFETY: rows 2py and 2py+1 of the plane, read for 16 * ceil(pw / 8) <=
                    // ow + 16 values: within the row stride's slack (lr + BLOCK).
                    unsafe {
                        crate::direct::pool_rows(
                            plane.add(2 * py * g.w),
                            plane.add((2 * py + 1) * g.w),
                            b[r],
                            d.pw,
                            dst[py * d.pw..].as_mut_ptr(),
                            mask_row,
                        );
                    }
                }
            }
        }
    });
    // SAFETY: the units cover every image, and for each image every (channel, pooled row,
    // pooled column) value and mask byte was written above.
    unsafe {
        out.set_len(len);
        if record {
            mask.set_len(len);
        }
    }
    (out, mask)
}

/// [`backward`] through the direct kernels (f32, [`direct_applies`]).
fn backward_direct(
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    mask: &[u8],
    d: &Dims,
    want_dx: bool,
) -> Grads<f32> {
    let (g, q) = (&d.g, d.pooled());
    let (co, k) = (g.co, g.k());
    let sizes = FlatSizes::new(g, want_dx);
    let f = sizes.flat(g);
    let per_image = g.c * g.h * g.w;
    let plane = g.h * g.w;
    // The input gradient is the forward kernel over the padded output gradient with
    // wt[ci][o][k-1-ky][k-1-kx] = w[o][ci][ky][kx].
    let back = Flat {
        cin: co,
        in_stride: sizes.row,
        row_w: g.w,
        k: g.kh,
        cout: g.c,
        blocks: sizes.hwr / BLOCK,
        // The output gradient's values sit after `pad` zeros, `(oh - 1) * w + ow` of them.
        nonzero: (sizes.pad, sizes.pad + (g.oh - 1) * g.w + g.ow),
    };
    let mut wt = Vec::new();
    if want_dx {
        let taps = g.kh * g.kw;
        wt = vec![0f32; w.len()];
        for o in 0..co {
            for ci in 0..g.c {
                for t in 0..taps {
                    wt[(ci * co + o) * taps + taps - 1 - t] = w[(o * g.c + ci) * taps + t];
                }
            }
        }
    }
    // Every plane of every image is copied in below: no zero fill (see forward_direct).
    let mut dx: Option<Vec<f32>> = want_dx.then(|| Vec::with_capacity(x.len()));
    let dx_ptr = SendPtr(dx.as_mut().map_or(std::ptr::null_mut(), |v| v.as_mut_ptr()));
    let units = d.units(rayon::current_num_threads());
    let partials: Vec<(Vec<f32>, Vec<f32>)> = units
        .par_iter()
        .map_init(Scratch::<f32>::new, |s, u| {
            let images = u.n1 - u.n0;
            let per_d = co * sizes.row;
            let dpre = grow(&mut s.pre, images * per_d);
            let mut db = vec![0f32; co];
            for (gi, img) in (u.n0..u.n1).enumerate() {
                for (r, db_r) in db.iter_mut().enumerate() {
                    let at = (img * co + r) * q;
                    let row =
                        &mut dpre[gi * per_d + r * sizes.row..gi * per_d + (r + 1) * sizes.row];
                    *db_r +=
                        unpool_plane(&dy[at..at + q], &mask[at..at + q], d, row, sizes.pad, g.w);
                }
            }
            let xs = images_readable(x, per_image, u.n0, u.n1, f.input_extent(), &mut s.col);
            let mut dw = vec![0f32; co * k];
            // SAFETY: xs holds the unit's images readable to input_extent; dpre rows hold
            // pad + lr (>= lr after the pad) elements; dw co*k.
            unsafe {
                crate::direct::weight_grad(
                    &f,
                    images,
                    xs.as_ptr(),
                    per_image,
                    dpre.as_ptr().add(sizes.pad),
                    sizes.row,
                    per_d,
                    dw.as_mut_ptr(),
                );
            }
            if want_dx {
                let tmp = grow(&mut s.tmp, g.c * sizes.hwr);
                for (gi, img) in (u.n0..u.n1).enumerate() {
                    // SAFETY: the image's padded gradient rows (row elements each, read up to
                    // pad + hwr + (k-1)(w+1) - (k-1)(w+1) = row), wt c*co*k*k, tmp c*hwr.
                    unsafe {
                        crate::direct::conv(
                            &back,
                            dpre.as_ptr().add(gi * per_d),
                            wt.as_ptr(),
                            tmp.as_mut_ptr(),
                            sizes.hwr,
                        );
                    }
                    for ci in 0..g.c {
                        // SAFETY: image img of dx belongs to this unit alone.
                        unsafe {
                            std::ptr::copy_nonoverlapping(
                                tmp.as_ptr().add(ci * sizes.hwr),
                                dx_ptr.get().add(img * per_image + ci * plane),
                                plane,
                            );
                        }
                    }
                }
            }
            (dw, db)
        })
        .collect();
    if let Some(v) = dx.as_mut() {
        // SAFETY: the units cover every image, and each copied all its c planes of h*w values.
        unsafe { v.set_len(x.len()) };
    }
    sum_partials(partials, co * k, co, dx)
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
    ) -> (Vec<Self>, Vec<u8>) {
        forward(x, w, b, d, record)
    }
    fn conv_relu_pool_backward(
        x: &[Self],
        w: &[Self],
        dy: &[Self],
        mask: &[u8],
        d: &Dims,
        want_dx: bool,
    ) -> Grads<Self> {
        backward(x, w, dy, mask, d, want_dx)
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
    ) -> (Vec<f32>, Vec<u8>) {
        if direct_applies() {
            forward_direct(x, w, b, d, record)
        } else {
            forward(x, w, b, d, record)
        }
    }
    fn conv_relu_pool_backward(
        x: &[f32],
        w: &[f32],
        dy: &[f32],
        mask: &[u8],
        d: &Dims,
        want_dx: bool,
    ) -> Grads<f32> {
        if direct_applies() {
            backward_direct(x, w, dy, mask, d, want_dx)
        } else {
            backward(x, w, dy, mask, d, want_dx)
        }
    }
}

fn storage_slice<'a, T: WithDType>(
    s: &'a CpuStorage,
    l: &Layout,
    what: &'static str,
) -> Result<&'a [T]> {
    slice(T::cpu_storage_as_slice(s)?, l, OP, what)
}

impl ConvReluPool {
    fn fwd_typed<T: PathFor>(
        &self,
        (s1, l1): (&CpuStorage, &Layout),
        (s2, l2): (&CpuStorage, &Layout),
        (s3, l3): (&CpuStorage, &Layout),
        d: &Dims,
    ) -> Result<CpuStorage> {
        let x = storage_slice::<T>(s1, l1, "input")?;
        let w = storage_slice::<T>(s2, l2, "weight")?;
        let b = storage_slice::<T>(s3, l3, "bias")?;
        let (out, mask) = T::conv_relu_pool_forward(x, w, b, d, self.record);
        if self.record {
            *self.mask.lock().map_err(|_| poisoned())? = Some(mask);
        }
        Ok(T::to_cpu_storage_owned(out))
    }

    fn bwd_typed<T: PathFor>(
        &self,
        x: &Tensor,
        w: &Tensor,
        grad: &Tensor,
        want_dx: bool,
    ) -> Result<(Option<Tensor>, Tensor, Tensor)> {
        let d = Dims::new(x.dims(), w.dims(), &[w.dims()[0]])?;
        let mask = self.mask.lock().map_err(|_| poisoned())?;
        let mask = mask.as_ref().ok_or_else(|| OpsError::Mismatch {
            op: OP,
            message: "backward without a recorded forward".into(),
        })?;
        let (xs, xl) = x.storage_and_layout();
        let (ws, wl) = w.storage_and_layout();
        let (gs, gl) = grad.storage_and_layout();
        let (
            candle_core::Storage::Cpu(xs),
            candle_core::Storage::Cpu(ws),
            candle_core::Storage::Cpu(gs),
        ) = (&*xs, &*ws, &*gs)
        else {
            return Err(OpsError::Mismatch {
                op: OP,
                message: "backward needs CPU tensors".into(),
            }
            .into());
        };
        let grads = T::conv_relu_pool_backward(
            storage_slice::<T>(xs, xl, "input")?,
            storage_slice::<T>(ws, wl, "weight")?,
            storage_slice::<T>(gs, gl, "output gradient")?,
            mask,
            &d,
            want_dx,
        );
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
        let args = ((s1, l1), (s2, l2), (s3, l3));
        let out = match (s1, s2, s3) {
            (CpuStorage::F32(_), CpuStorage::F32(_), CpuStorage::F32(_)) => {
                self.fwd_typed::<f32>(args.0, args.1, args.2, &d)?
            }
            (CpuStorage::F64(_), CpuStorage::F64(_), CpuStorage::F64(_)) => {
                self.fwd_typed::<f64>(args.0, args.1, args.2, &d)?
            }
            _ => {
                return Err(OpsError::DType {
                    op: OP,
                    dtype: format!("{:?}/{:?}/{:?}", s1.dtype(), s2.dtype(), s3.dtype()),
                }
                .into())
            }
        };
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
        let (dx, dw, db) = match x.dtype() {
            candle_core::DType::F32 => self.bwd_typed::<f32>(x, w, &grad, want_dx)?,
            candle_core::DType::F64 => self.bwd_typed::<f64>(x, w, &grad, want_dx)?,
            other => {
                return Err(OpsError::DType {
                    op: OP,
                    dtype: format!("{other:?}"),
                }
                .into())
            }
        };
        Ok((dx, w.track_op().then_some(dw), b.track_op().then_some(db)))
    }
}
