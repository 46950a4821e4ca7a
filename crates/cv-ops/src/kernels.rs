//! The three convolution kernels on plain slices (forward, input gradient, weight gradient):
//! each picks the path for a geometry (Winograd, padded direct, tapwise, or im2col + gemm for
//! the rest) and runs it. The paths live in their own modules and do not call back here.

use crate::autocast::Precision;
use crate::elem::Elem;
use crate::geom::Geom;
use crate::im2col_gemm::{forward_im2col, input_grad_col2im, weight_grad_im2col};

/// `y = conv(x, w)`: x `[n, c, h, w]`, w `[co, c*kh*kw]`, y `[n, co, oh, ow]`. 3x3 stride-1
/// layers with enough channels go through Winograd, other narrow stride-1 layers on large maps
/// (f32, AVX2) through the padded direct kernel, outputs of at most 4x4 pixels tap by tap, the
/// rest through im2col. In bf16 every geometry takes im2col, whose gemm runs on the bf16
/// kernels (Winograd's transforms would add bf16's rounding error on top of its own).
pub(crate) fn forward<T: Elem>(x: &[T], w: &[T], g: &Geom, prec: Precision) -> Vec<T> {
    if prec != Precision::Full {
        return forward_im2col(x, w, g, prec);
    }
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
    forward_im2col(x, w, g, prec)
}

/// Whether the input gradient runs as a forward convolution of the output gradient with the
/// rotated, transposed kernel (stride 1 and padding below the kernel size: no scatter needed).
/// Only where its im2col matrix is no larger than the scatter's: with heavy padding (e.g. the
/// small CNN's 5x5 unpadded conv) that matrix is mostly zeros and the scatter is faster.
fn dgrad_as_forward(g: &Geom) -> bool {
    g.stride == 1 && g.ph < g.kh && g.pw < g.kw && g.co * g.h * g.w <= g.c * g.oh * g.ow
}

/// `dx` from `dy` `[n, co, oh, ow]` and w `[co, c, kh, kw]`.
pub(crate) fn input_grad<T: Elem>(dy: &[T], w: &[T], g: &Geom, prec: Precision) -> Vec<T> {
    if prec == Precision::Full && crate::tapwise::applies(g) {
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
        return forward(dy, &wt, &gt, prec);
    }
    input_grad_col2im(dy, w, g, prec)
}

/// `dw[co, c*kh*kw] = sum over images and pixels of dy[co, p] * col[k, p]`.
pub(crate) fn weight_grad<T: Elem>(x: &[T], dy: &[T], g: &Geom, prec: Precision) -> Vec<T> {
    if prec != Precision::Full {
        return weight_grad_im2col(x, dy, g, prec);
    }
    if crate::winograd::weight_grad_applies(g) {
        return crate::winograd::weight_grad(x, dy, g);
    }
    if crate::tapwise::applies(g) {
        return crate::tapwise::weight_grad(x, dy, g);
    }
    weight_grad_im2col(x, dy, g, prec)
}
