//! The three convolution kernels on plain slices: forward, input gradient, weight gradient.
//!
//! Each lowers onto `gemm::gemm` per unit of work (see [`crate::geom::plan`]). Threads: with at
//! least as many units as rayon threads, units run in parallel and every gemm call is
//! single-threaded; otherwise units run in turn and each gemm call uses all threads. The two
//! are never nested.

use crate::elem::Elem;
use crate::geom::{plan, Geom, Unit};
use crate::im2col::{col2im_add, im2col};
use gemm::Parallelism;
use rayon::prelude::*;

/// A raw output pointer shared by threads that write disjoint regions.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr<T>(pub(crate) *mut T);
// SAFETY: used only to write regions that no other thread touches (one unit each).
unsafe impl<T: Send> Send for SendPtr<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Sync for SendPtr<T> {}

impl<T> SendPtr<T> {
    /// A method (not field access) so closures capture the whole `Sync` wrapper.
    pub(crate) fn get(self) -> *mut T {
        self.0
    }
}

/// Per-thread reusable buffers (an im2col tile and a gather/scatter staging tile).
struct Scratch<T> {
    col: Vec<T>,
    tmp: Vec<T>,
}

impl<T: Elem> Scratch<T> {
    fn new() -> Self {
        Self {
            col: Vec::new(),
            tmp: Vec::new(),
        }
    }
}

pub(crate) fn grow<T: Elem>(v: &mut Vec<T>, len: usize) -> &mut [T] {
    if v.len() < len {
        v.resize(len, T::ZERO);
    }
    &mut v[..len]
}

pub(crate) fn threads() -> usize {
    rayon::current_num_threads().max(1)
}

pub(crate) fn inner_parallelism(nt: usize) -> Parallelism {
    if nt > 1 {
        Parallelism::Rayon(nt)
    } else {
        Parallelism::None
    }
}

/// `dst[m x n] (+)= lhs[m x k] * rhs[k x n]`, all given by (pointer, row stride, column stride).
///
/// # Safety
/// Every pointer must be valid for the strided matrix it describes; `dst` must not alias the
/// inputs and no other thread may access it.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn matmul<T: Elem>(
    m: usize,
    n: usize,
    k: usize,
    dst: (*mut T, usize, usize),
    accumulate: bool,
    lhs: (*const T, usize, usize),
    rhs: (*const T, usize, usize),
    par: Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    // gemm computes dst := alpha*dst + beta*lhs*rhs (alpha scales dst, unlike BLAS).
    // SAFETY: forwarded from the caller.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.0,
            dst.2 as isize,
            dst.1 as isize,
            accumulate,
            lhs.0,
            lhs.2 as isize,
            lhs.1 as isize,
            rhs.0,
            rhs.2 as isize,
            rhs.1 as isize,
            if accumulate { T::ONE } else { T::ZERO },
            T::ONE,
            false,
            false,
            false,
            par,
        )
    }
}

/// Copies the unit's slice of an `[n, rows, P]` tensor into `tmp` as a `rows x cols` matrix.
fn gather_rows<T: Elem>(src: &[T], rows: usize, p: usize, u: &Unit, tmp: &mut [T]) {
    let tc = u.cols();
    let w = u.p1 - u.p0;
    for (gi, img) in (u.n0..u.n1).enumerate() {
        for r in 0..rows {
            let s = (img * rows + r) * p + u.p0;
            tmp[r * tc + gi * w..r * tc + (gi + 1) * w].copy_from_slice(&src[s..s + w]);
        }
    }
}

/// `y = conv(x, w)`: x `[n, c, h, w]`, w `[co, c*kh*kw]`, y `[n, co, oh, ow]`. 3x3 stride-1
/// layers with enough channels go through Winograd, other narrow stride-1 layers on large maps
/// (f32, AVX2) through the padded direct kernel, outputs of at most 4x4 pixels tap by tap, the
/// rest through im2col.
pub(crate) fn forward<T: Elem>(x: &[T], w: &[T], g: &Geom) -> Vec<T> {
    if crate::winograd::applies(g) {
        return crate::winograd::forward(x, w, g);
    }
    #[cfg(target_arch = "x86_64")]
    if let (Some(xf), Some(wf)) = (T::as_f32(x), T::as_f32(w)) {
        if crate::padded_direct::applies(g) {
            if let Some(y) = T::from_f32(crate::padded_direct::forward(xf, wf, g)) {
                return y;
            }
        }
    }
    if crate::tapwise::applies(g) {
        return crate::tapwise::forward(x, w, g);
    }
    forward_im2col(x, w, g)
}

/// [`forward`] through im2col and gemm, for any geometry.
pub(crate) fn forward_im2col<T: Elem>(x: &[T], w: &[T], g: &Geom) -> Vec<T> {
    let (p, k, co) = (g.p(), g.k(), g.co);
    let mut y = vec![T::ZERO; g.n * co * p];
    let nt = threads();
    let units = plan(g.n, p, k, nt);
    let yp = SendPtr(y.as_mut_ptr());
    let run = |u: &Unit, s: &mut Scratch<T>, par: Parallelism| {
        let tc = u.cols();
        let rhs = if g.is_pointwise() && u.single_image() {
            (x[u.n0 * g.c * p + u.p0..].as_ptr(), p, 1)
        } else {
            let col = grow(&mut s.col, k * tc);
            im2col(x, g, u, col);
            (col.as_ptr(), tc, 1)
        };
        if u.single_image() {
            // SAFETY: rows co of image n0, columns p0..p1: this unit's own output region.
            unsafe {
                let dst = yp.get().add(u.n0 * co * p + u.p0);
                matmul(co, tc, k, (dst, p, 1), false, (w.as_ptr(), k, 1), rhs, par);
            }
        } else {
            let tmp = grow(&mut s.tmp, co * tc);
            // SAFETY: tmp is this thread's buffer of co*tc elements.
            unsafe {
                let dst = (tmp.as_mut_ptr(), tc, 1);
                matmul(co, tc, k, dst, false, (w.as_ptr(), k, 1), rhs, par);
            }
            for (gi, img) in (u.n0..u.n1).enumerate() {
                for r in 0..co {
                    let src = &tmp[r * tc + gi * p..r * tc + (gi + 1) * p];
                    // SAFETY: image img belongs to this unit alone; the row has p elements.
                    unsafe {
                        let dst = yp.get().add((img * co + r) * p);
                        std::ptr::copy_nonoverlapping(src.as_ptr(), dst, p);
                    }
                }
            }
        }
    };
    if units.len() >= nt && nt > 1 {
        units
            .par_iter()
            .for_each_init(Scratch::new, |s, u| run(u, s, Parallelism::None));
    } else {
        let mut s = Scratch::new();
        for u in &units {
            run(u, &mut s, inner_parallelism(nt));
        }
    }
    y
}

/// Whether the input gradient runs as a forward convolution of the output gradient with the
/// rotated, transposed kernel (stride 1 and padding below the kernel size: no scatter needed).
/// Only where its im2col matrix is no larger than the scatter's (else heavy padding, e.g. the
/// small CNN's 5x5 unpadded conv, makes it ~5x slower, measured).
fn dgrad_as_forward(g: &Geom) -> bool {
    g.stride == 1 && g.ph < g.kh && g.pw < g.kw && g.co * g.h * g.w <= g.c * g.oh * g.ow
}

/// `dx` from `dy` `[n, co, oh, ow]` and w `[co, c, kh, kw]`.
pub(crate) fn input_grad<T: Elem>(dy: &[T], w: &[T], g: &Geom) -> Vec<T> {
    if crate::tapwise::applies(g) {
        return crate::tapwise::input_grad(dy, w, g);
    }
    if dgrad_as_forward(g) {
        // dx[ci, iy, ix] = sum dy[co, iy + ky' - (kh-1-ph), ...] * w[co, ci, kh-1-ky', kw-1-kx'].
        let (kh, kw, c, co) = (g.kh, g.kw, g.c, g.co);
        let mut wt = vec![T::ZERO; w.len()];
        for o in 0..co {
            for i in 0..c {
                for ky in 0..kh {
                    for kx in 0..kw {
                        wt[((i * co + o) * kh + ky) * kw + kx] =
                            w[((o * c + i) * kh + (kh - 1 - ky)) * kw + (kw - 1 - kx)];
                    }
                }
            }
        }
        let gt = Geom {
            n: g.n,
            c: co,
            h: g.oh,
            w: g.ow,
            co: c,
            kh,
            kw,
            stride: 1,
            ph: kh - 1 - g.ph,
            pw: kw - 1 - g.pw,
            oh: g.h,
            ow: g.w,
        };
        return forward(dy, &wt, &gt);
    }
    input_grad_col2im(dy, w, g)
}

/// Input gradient as `dcol = W^T * dY` then a col2im scatter-add; each task owns whole images so
/// no two threads add into the same place.
fn input_grad_col2im<T: Elem>(dy: &[T], w: &[T], g: &Geom) -> Vec<T> {
    let (p, k, co) = (g.p(), g.k(), g.co);
    let chw = g.c * g.h * g.w;
    let mut dx = vec![T::ZERO; g.n * chw];
    if chw == 0 {
        return dx;
    }
    let nt = threads();
    let units = plan(g.n, p, k, nt);
    // Tasks: runs of units over the same images.
    let mut tasks: Vec<(usize, usize, &[Unit])> = Vec::new();
    let mut start = 0;
    for i in 1..=units.len() {
        if i == units.len() || units[i].n0 != units[start].n0 {
            tasks.push((units[start].n0, units[start].n1, &units[start..i]));
            start = i;
        }
    }
    let run = |dx_imgs: &mut [T], first: usize, us: &[Unit], s: &mut Scratch<T>, par| {
        for u in us {
            let tc = u.cols();
            let rhs = if u.single_image() {
                (dy[u.n0 * co * p + u.p0..].as_ptr(), p, 1)
            } else {
                let tmp = grow(&mut s.tmp, co * tc);
                gather_rows(dy, co, p, u, tmp);
                (tmp.as_ptr(), tc, 1)
            };
            let col = grow(&mut s.col, k * tc);
            // SAFETY: col is this thread's k*tc buffer; lhs is w^T (row stride 1, col stride k).
            unsafe {
                let dst = (col.as_mut_ptr(), tc, 1);
                matmul(k, tc, co, dst, false, (w.as_ptr(), 1, k), rhs, par);
            }
            col2im_add(col, g, u, dx_imgs, first);
        }
    };
    // Split dx into the tasks' disjoint image ranges.
    let mut pieces: Vec<(&mut [T], usize, &[Unit])> = Vec::with_capacity(tasks.len());
    let mut rest: &mut [T] = &mut dx;
    let mut at = 0;
    for &(n0, n1, us) in &tasks {
        debug_assert_eq!(n0, at);
        let (head, tail) = rest.split_at_mut((n1 - n0) * chw);
        pieces.push((head, n0, us));
        rest = tail;
        at = n1;
    }
    if pieces.len() >= nt && nt > 1 {
        pieces
            .par_iter_mut()
            .for_each_init(Scratch::new, |s, (d, first, us)| {
                run(d, *first, us, s, Parallelism::None)
            });
    } else {
        let mut s = Scratch::new();
        for (d, first, us) in pieces.iter_mut() {
            run(d, *first, us, &mut s, inner_parallelism(nt));
        }
    }
    dx
}

/// `dw[co, c*kh*kw] = sum over images and pixels of dy[co, p] * col[k, p]`.
pub(crate) fn weight_grad<T: Elem>(x: &[T], dy: &[T], g: &Geom) -> Vec<T> {
    if crate::winograd::weight_grad_applies(g) {
        return crate::winograd::weight_grad(x, dy, g);
    }
    if crate::tapwise::applies(g) {
        return crate::tapwise::weight_grad(x, dy, g);
    }
    weight_grad_im2col(x, dy, g)
}

/// [`weight_grad`] through im2col and gemm, for any geometry.
pub(crate) fn weight_grad_im2col<T: Elem>(x: &[T], dy: &[T], g: &Geom) -> Vec<T> {
    let (p, k, co) = (g.p(), g.k(), g.co);
    let nt = threads();
    let units = plan(g.n, p, k, nt);
    let run = |acc: &mut [T], u: &Unit, s: &mut Scratch<T>, par: Parallelism| {
        let tc = u.cols();
        // rhs[t, k] = col[k, t]: row stride 1, column stride = the col row length.
        let rhs = if g.is_pointwise() && u.single_image() {
            (x[u.n0 * g.c * p + u.p0..].as_ptr(), 1, p)
        } else {
            let col = grow(&mut s.col, k * tc);
            im2col(x, g, u, col);
            (col.as_ptr(), 1, tc)
        };
        let lhs = if u.single_image() {
            (dy[u.n0 * co * p + u.p0..].as_ptr(), p, 1)
        } else {
            let tmp = grow(&mut s.tmp, co * tc);
            gather_rows(dy, co, p, u, tmp);
            (tmp.as_ptr(), tc, 1)
        };
        // SAFETY: acc is this task's own co*k accumulator.
        unsafe { matmul(co, k, tc, (acc.as_mut_ptr(), k, 1), true, lhs, rhs, par) }
    };
    if units.len() >= nt && nt > 1 {
        // Contiguous chunks of units, one accumulator each, summed at the end.
        let per = units.len().div_ceil(nt);
        let partials: Vec<Vec<T>> = units
            .par_chunks(per)
            .map(|chunk| {
                let mut acc = vec![T::ZERO; co * k];
                let mut s = Scratch::new();
                for u in chunk {
                    run(&mut acc, u, &mut s, Parallelism::None);
                }
                acc
            })
            .collect();
        let mut it = partials.into_iter();
        let mut dw = it.next().unwrap_or_else(|| vec![T::ZERO; co * k]);
        for part in it {
            for (d, v) in dw.iter_mut().zip(&part) {
                *d += *v;
            }
        }
        dw
    } else {
        let mut dw = vec![T::ZERO; co * k];
        let mut s = Scratch::new();
        for u in &units {
            run(&mut dw, u, &mut s, inner_parallelism(nt));
        }
        dw
    }
}
