//! The f32 path of `conv_relu_pool2d` on AVX2 CPUs: the flattened-plane kernels of
//! [`crate::direct`], no im2col.

use rayon::prelude::*;

use super::{sum_partials, unpool_plane, Dims, Grads, Scratch};
use crate::buffers::{grow, SendPtr};
use crate::direct::{Flat, BLOCK};
use crate::geom::Geom;

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

/// `super::via_gemm::forward` through the direct kernels (f32, `super::direct_applies`).
pub(super) fn forward(
    x: &[f32],
    w: &[f32],
    b: &[f32],
    d: &Dims,
    record: bool,
) -> (Vec<f32>, Vec<u8>) {
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

/// `super::via_gemm::backward` through the direct kernels (f32, `super::direct_applies`).
pub(super) fn backward(
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
    // Every plane of every image is copied in below: no zero fill (see `forward`).
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
