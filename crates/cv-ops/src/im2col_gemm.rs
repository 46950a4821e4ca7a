//! The convolution kernels for any geometry: im2col and one `gemm` call per unit of output
//! pixels (see [`crate::geom::plan`]), forward, input gradient (`W^T dy`, then a col2im
//! scatter-add) and weight gradient. Threads: with at least as many units as rayon threads,
//! units run in parallel and every gemm call is single-threaded; otherwise units run in turn
//! and each gemm call uses all threads. The two are never nested.

use crate::autocast::Precision;
use crate::buffers::{grow, SendPtr};
use crate::elem::Elem;
use crate::geom::{plan, Geom, Unit};
use crate::im2col::{col2im_add, im2col};
use crate::matmul::{inner_parallelism, matmul, threads, SharedLhs};
use gemm::Parallelism;
use rayon::prelude::*;

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

/// The forward convolution through im2col and gemm, for any geometry.
pub(crate) fn forward_im2col<T: Elem>(x: &[T], w: &[T], g: &Geom, prec: Precision) -> Vec<T> {
    let (p, k, co) = (g.p(), g.k(), g.co);
    // Every unit writes all of its output (a product without accumulation, or a copy), and
    // the units cover every pixel: no zero-filling first.
    let len = g.n * co * p;
    let mut y: Vec<T> = Vec::with_capacity(len);
    let nt = threads();
    let units = plan(g.n, p, k, nt, prec);
    let yp = SendPtr(y.as_mut_ptr());
    // SAFETY: w is the co x k weight matrix, alive and unchanged during this call.
    let lhs = unsafe { SharedLhs::new(co, k, (w.as_ptr(), k, 1), prec) };
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
                lhs.matmul(tc, (dst, p, 1), false, rhs, par);
            }
        } else {
            let tmp = grow(&mut s.tmp, co * tc);
            // SAFETY: tmp is this thread's buffer of co*tc elements.
            unsafe {
                let dst = (tmp.as_mut_ptr(), tc, 1);
                lhs.matmul(tc, dst, false, rhs, par);
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
    // SAFETY: the units cover every (image, pixel) once (`plan`), and each wrote all `co`
    // rows of its pixels.
    unsafe { y.set_len(len) };
    y
}

/// Input gradient as `dcol = W^T * dY` then a col2im scatter-add; each task owns whole images so
/// no two threads add into the same place.
pub(crate) fn input_grad_col2im<T: Elem>(dy: &[T], w: &[T], g: &Geom, prec: Precision) -> Vec<T> {
    let (p, k, co) = (g.p(), g.k(), g.co);
    let chw = g.c * g.h * g.w;
    let mut dx = vec![T::ZERO; g.n * chw];
    if chw == 0 {
        return dx;
    }
    let nt = threads();
    let units = plan(g.n, p, k, nt, prec);
    // Tasks: runs of units over the same images.
    let mut tasks: Vec<(usize, usize, &[Unit])> = Vec::new();
    let mut start = 0;
    for i in 1..=units.len() {
        if i == units.len() || units[i].n0 != units[start].n0 {
            tasks.push((units[start].n0, units[start].n1, &units[start..i]));
            start = i;
        }
    }
    // SAFETY: w^T (row stride 1, column stride k), alive and unchanged during this call.
    let lhs = unsafe { SharedLhs::new(k, co, (w.as_ptr(), 1, k), prec) };
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
            // SAFETY: col is this thread's k*tc buffer.
            unsafe { lhs.matmul(tc, (col.as_mut_ptr(), tc, 1), false, rhs, par) };
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

/// The weight gradient through im2col and gemm, for any geometry.
pub(crate) fn weight_grad_im2col<T: Elem>(x: &[T], dy: &[T], g: &Geom, prec: Precision) -> Vec<T> {
    let (p, k, co) = (g.p(), g.k(), g.co);
    let nt = threads();
    let units = plan(g.n, p, k, nt, prec);
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
        unsafe {
            matmul(
                co,
                k,
                tc,
                (acc.as_mut_ptr(), k, 1),
                true,
                lhs,
                rhs,
                par,
                prec,
            )
        }
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
