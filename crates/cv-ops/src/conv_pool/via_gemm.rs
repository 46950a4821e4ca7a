//! The portable path of `conv_relu_pool2d`: im2col and one gemm per group of images, for f64
//! and for CPUs without the direct kernels (f32 on AVX2 takes `via_direct`).

use gemm::Parallelism;
use rayon::prelude::*;

use super::{pool_plane, sum_partials, unpool_plane, Dims, Grads, Scratch};
use crate::autocast::Precision;
use crate::buffers::{grow, SendPtr};
use crate::elem::Elem;
use crate::im2col::{col2im_add, im2col};
use crate::matmul::matmul;

/// Forward: the pooled output `[n, co, ph, pw]` and, if `record`, the mask.
pub(super) fn forward<T: Elem>(
    x: &[T],
    w: &[T],
    b: &[T],
    d: &Dims,
    record: bool,
    prec: Precision,
) -> (Vec<T>, Vec<u8>) {
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
                prec,
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

/// Backward from the pooled gradient `dy` `[n, co, ph, pw]` and the forward's mask.
pub(super) fn backward<T: Elem>(
    x: &[T],
    w: &[T],
    dy: &[T],
    mask: &[u8],
    d: &Dims,
    want_dx: bool,
    prec: Precision,
) -> Grads<T> {
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
                    prec,
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
                        prec,
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
