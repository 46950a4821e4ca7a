//! Convolutions with tiny outputs (at most 4x4 pixels, ResNet's last stages on 32x32 inputs)
//! as one gemm per (output pixel, kernel tap) that touches the image, straight from NCHW.
//!
//! Why: on a 1x1 map a padded 3x3 conv sees its input through the centre tap only, on 2x2 maps
//! through 4 of 9 taps; im2col fills the other rows with zeros and gemm multiplies them, so
//! ResNet-18's last two stages on CIFAR-sized images did 2.25-9x the work that counts (about
//! 40% of the network's convolution work was zeros). Here each pair is a gemm over the batch
//! with strided operands (no copies): `y[:, :, p] += W[:, :, tap] . x[:, :, at]` with images
//! as the columns. Forward, input gradient and weight gradient, each parallel over pairs that
//! write disjoint outputs (pixels, input pixels, taps), or one gemm at a time on all threads.

use crate::elem::Elem;
use crate::geom::Geom;
use crate::kernels::{inner_parallelism, matmul, threads, SendPtr};
use gemm::Parallelism;
use rayon::prelude::*;
use std::sync::atomic::{AtomicBool, Ordering};

static DISABLED: AtomicBool = AtomicBool::new(false);

/// Turns this path off (or back on), for benchmarks that compare it with im2col.
pub fn set_tapwise_enabled(on: bool) {
    DISABLED.store(!on, Ordering::Relaxed);
}

/// Largest output (pixels per image) this path takes.
const MAX_PIXELS: usize = 16;

/// (output pixel, tap, input pixel) for every tap of every output pixel that lands inside the
/// image.
fn pairs(g: &Geom) -> Vec<(usize, usize, usize)> {
    let mut v = Vec::new();
    for oy in 0..g.oh {
        for ox in 0..g.ow {
            for ky in 0..g.kh {
                for kx in 0..g.kw {
                    let iy = (oy * g.stride + ky).checked_sub(g.ph).filter(|&i| i < g.h);
                    let ix = (ox * g.stride + kx).checked_sub(g.pw).filter(|&i| i < g.w);
                    if let (Some(iy), Some(ix)) = (iy, ix) {
                        v.push((oy * g.ow + ox, ky * g.kw + kx, iy * g.w + ix));
                    }
                }
            }
        }
    }
    v
}

/// Whether `g` runs here: a tiny output and at least a fifth of im2col's work saved.
pub(crate) fn applies(g: &Geom) -> bool {
    !DISABLED.load(Ordering::Relaxed)
        && g.p() <= MAX_PIXELS
        && g.kh * g.kw > 1
        && g.n > 0
        && 5 * pairs(g).len() <= 4 * g.p() * g.kh * g.kw
}

/// Runs `f(key, items)` for each group of `items` sharing a key (groups write disjoint
/// outputs): in parallel with single-threaded gemms when there are enough groups, else one
/// group after another with every gemm on all threads.
fn for_groups(
    items: &[(usize, usize, usize)],
    key: impl Fn(&(usize, usize, usize)) -> usize + Sync,
    keys: usize,
    f: impl Fn(&[&(usize, usize, usize)], Parallelism) + Sync,
) {
    let mut groups: Vec<Vec<&(usize, usize, usize)>> = vec![Vec::new(); keys];
    for it in items {
        groups[key(it)].push(it);
    }
    groups.retain(|g| !g.is_empty());
    let nt = threads();
    if nt > 1 && groups.len() >= 2 * nt {
        groups.par_iter().for_each(|g| f(g, Parallelism::None));
    } else {
        for g in &groups {
            f(g, inner_parallelism(nt));
        }
    }
}

/// `y = conv(x, w)`, `[n, co, oh, ow]`.
pub(crate) fn forward<T: Elem>(x: &[T], w: &[T], g: &Geom) -> Vec<T> {
    let (p, taps, plane) = (g.p(), g.kh * g.kw, g.h * g.w);
    let mut y = vec![T::ZERO; g.n * g.co * p];
    let yp = SendPtr(y.as_mut_ptr());
    for_groups(
        &pairs(g),
        |&(q, _, _)| q,
        p,
        |group, par| {
            for &&(q, tap, at) in group {
                // y[img, o, q] += sum_i w[o, i, tap] * x[img, i, at], images as columns.
                // SAFETY: the strided views stay inside y, w and x; only this group writes pixel q.
                unsafe {
                    matmul(
                        g.co,
                        g.n,
                        g.c,
                        (yp.get().add(q), p, g.co * p),
                        true,
                        (w.as_ptr().add(tap), g.c * taps, taps),
                        (x.as_ptr().add(at), plane, g.c * plane),
                        par,
                    );
                }
            }
        },
    );
    y
}

/// `dx` `[n, c, h, w]` from `dy` `[n, co, oh, ow]`.
pub(crate) fn input_grad<T: Elem>(dy: &[T], w: &[T], g: &Geom) -> Vec<T> {
    let (p, taps, plane) = (g.p(), g.kh * g.kw, g.h * g.w);
    let mut dx = vec![T::ZERO; g.n * g.c * plane];
    let dxp = SendPtr(dx.as_mut_ptr());
    for_groups(
        &pairs(g),
        |&(_, _, at)| at,
        plane,
        |group, par| {
            for &&(q, tap, at) in group {
                // dx[img, i, at] += sum_o w[o, i, tap] * dy[img, o, q].
                // SAFETY: as in forward; only this group writes input pixel `at`.
                unsafe {
                    matmul(
                        g.c,
                        g.n,
                        g.co,
                        (dxp.get().add(at), plane, g.c * plane),
                        true,
                        (w.as_ptr().add(tap), taps, g.c * taps),
                        (dy.as_ptr().add(q), p, g.co * p),
                        par,
                    );
                }
            }
        },
    );
    dx
}

/// `dw` `[co, c, kh, kw]` from `x` and `dy`.
pub(crate) fn weight_grad<T: Elem>(x: &[T], dy: &[T], g: &Geom) -> Vec<T> {
    let (p, taps, plane) = (g.p(), g.kh * g.kw, g.h * g.w);
    let mut dw = vec![T::ZERO; g.co * g.c * taps];
    let dwp = SendPtr(dw.as_mut_ptr());
    for_groups(
        &pairs(g),
        |&(_, tap, _)| tap,
        taps,
        |group, par| {
            for &&(q, tap, at) in group {
                // dw[o, i, tap] += sum_img dy[img, o, q] * x[img, i, at].
                // SAFETY: as in forward; only this group writes tap `tap`.
                unsafe {
                    matmul(
                        g.co,
                        g.c,
                        g.n,
                        (dwp.get().add(tap), g.c * taps, taps),
                        true,
                        (dy.as_ptr().add(q), p, g.co * p),
                        (x.as_ptr().add(at), g.c * plane, plane),
                        par,
                    );
                }
            }
        },
    );
    dw
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geom(hw: usize, k: usize, stride: usize, pad: usize) -> Geom {
        Geom::new(4, 8, hw, hw, 8, k, k, stride, pad, pad).unwrap()
    }

    #[test]
    fn takes_resnets_tiny_maps_only() {
        // ResNet-18 on 32x32 inputs: layer4 (1x1), layer3 (2x2) and layer2 (4x4) 3x3 convs and
        // their stride-2 entries.
        for g in [
            geom(1, 3, 1, 1),
            geom(2, 3, 1, 1),
            geom(4, 3, 1, 1),
            geom(2, 3, 2, 1),
            geom(4, 3, 2, 1),
        ] {
            assert!(applies(&g), "{g:?}");
        }
        // 8x8 maps, unpadded and pointwise convs stay on im2col.
        for g in [geom(8, 3, 1, 1), geom(4, 3, 1, 0), geom(4, 1, 2, 0)] {
            assert!(!applies(&g), "{g:?}");
        }
        // Only the centre tap of a padded 3x3 conv on a 1x1 map touches the image.
        assert_eq!(pairs(&geom(1, 3, 1, 1)), vec![(0, 4, 0)]);
        assert_eq!(pairs(&geom(2, 3, 1, 1)).len(), 16);
    }
}
