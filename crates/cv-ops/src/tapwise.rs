//! Convolutions with tiny outputs (at most 4x4 pixels, ResNet's last stages on 32x32 inputs)
//! as one gemm per (output pixel, kernel tap) that touches the image, straight from NCHW.
//!
//! Why: on a 1x1 map a padded 3x3 conv sees its input through the centre tap only, on 2x2 maps
//! through 4 of 9 taps; im2col fills the other rows with zeros and gemm multiplies them, so
//! ResNet-18's last two stages on CIFAR-sized images do 2.25-9x the work that counts. Here
//! each pair is a gemm over the batch
//! with strided operands (no copies): `y[:, :, p] += W[:, :, tap] . x[:, :, at]` with images
//! as the columns. Forward, input gradient and weight gradient, each parallel over pairs that
//! write disjoint outputs (pixels, input pixels, taps), or one gemm at a time on all threads.

use crate::autocast::Precision;
use crate::buffers::SendPtr;
use crate::elem::Elem;
use crate::geom::Geom;
use crate::matmul::{inner_parallelism, matmul, threads};
use gemm::Parallelism;
use rayon::prelude::*;
use std::sync::atomic::{AtomicBool, Ordering};

static DISABLED: AtomicBool = AtomicBool::new(false);

/// Turns the tapwise path of [`crate::conv2d`] (outputs of at most 4x4 pixels) off, or back
/// on, for benchmarks that compare it with im2col. Process-wide; on by default.
pub fn set_tapwise_enabled(on: bool) {
    DISABLED.store(!on, Ordering::Relaxed);
}

/// Largest output (pixels per image) this path takes.
const MAX_PIXELS: usize = 16;

/// (output pixel, kernel tap, input pixel).
type Pair = (usize, usize, usize);

/// Every (output pixel, tap, input pixel) whose tap lands inside the image.
fn pairs(g: &Geom) -> Vec<Pair> {
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
    items: &[Pair],
    key: impl Fn(&Pair) -> usize + Sync,
    keys: usize,
    f: impl Fn(&[&Pair], Parallelism) + Sync,
) {
    let mut groups: Vec<Vec<&Pair>> = vec![Vec::new(); keys];
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

/// One pair's gemm: `out[dst] += lhs . rhs`, sizes `m x k` by `k x n`; the destination as
/// (offset in the output, row stride, column stride), the operands as (pointer, row stride,
/// column stride).
struct PairGemm<T> {
    m: usize,
    n: usize,
    k: usize,
    dst: (usize, usize, usize),
    lhs: (*const T, usize, usize),
    rhs: (*const T, usize, usize),
}

/// A zeroed output of `len` values plus the gemm of every pair, grouped by `key` (pairs of one
/// key write the same outputs, pairs of different keys disjoint ones).
fn accumulate<T: Elem>(
    g: &Geom,
    len: usize,
    key: impl Fn(&Pair) -> usize + Sync,
    keys: usize,
    gemm: impl Fn(&Pair) -> PairGemm<T> + Sync,
) -> Vec<T> {
    let mut out = vec![T::ZERO; len];
    let out_ptr = SendPtr(out.as_mut_ptr());
    for_groups(&pairs(g), key, keys, |group, par| {
        for pair in group {
            let c = gemm(pair);
            // SAFETY: each caller's strided views stay inside `out` and its operands, and only
            // this group writes the outputs of its key.
            unsafe {
                let dst = (out_ptr.get().add(c.dst.0), c.dst.1, c.dst.2);
                matmul(c.m, c.n, c.k, dst, true, c.lhs, c.rhs, par, Precision::Full);
            }
        }
    });
    out
}

/// `y = conv(x, w)`, `[n, co, oh, ow]`: `y[img, o, q] += sum_i w[o, i, tap] * x[img, i, at]`,
/// images as the columns; pairs grouped by output pixel.
pub(crate) fn forward<T: Elem>(x: &[T], w: &[T], g: &Geom) -> Vec<T> {
    let (p, taps, plane) = (g.p(), g.kh * g.kw, g.h * g.w);
    accumulate(
        g,
        g.n * g.co * p,
        |&(q, _, _)| q,
        p,
        |&(q, tap, at)| PairGemm {
            m: g.co,
            n: g.n,
            k: g.c,
            dst: (q, p, g.co * p),
            lhs: (w[tap..].as_ptr(), g.c * taps, taps),
            rhs: (x[at..].as_ptr(), plane, g.c * plane),
        },
    )
}

/// `dx` `[n, c, h, w]` from `dy` `[n, co, oh, ow]`:
/// `dx[img, i, at] += sum_o w[o, i, tap] * dy[img, o, q]`; pairs grouped by input pixel.
pub(crate) fn input_grad<T: Elem>(dy: &[T], w: &[T], g: &Geom) -> Vec<T> {
    let (p, taps, plane) = (g.p(), g.kh * g.kw, g.h * g.w);
    accumulate(
        g,
        g.n * g.c * plane,
        |&(_, _, at)| at,
        plane,
        |&(q, tap, at)| PairGemm {
            m: g.c,
            n: g.n,
            k: g.co,
            dst: (at, plane, g.c * plane),
            lhs: (w[tap..].as_ptr(), taps, g.c * taps),
            rhs: (dy[q..].as_ptr(), p, g.co * p),
        },
    )
}

/// `dw` `[co, c, kh, kw]` from `x` and `dy`:
/// `dw[o, i, tap] += sum_img dy[img, o, q] * x[img, i, at]`; pairs grouped by tap.
pub(crate) fn weight_grad<T: Elem>(x: &[T], dy: &[T], g: &Geom) -> Vec<T> {
    let (p, taps, plane) = (g.p(), g.kh * g.kw, g.h * g.w);
    accumulate(
        g,
        g.co * g.c * taps,
        |&(_, tap, _)| tap,
        taps,
        |&(q, tap, at)| PairGemm {
            m: g.co,
            n: g.c,
            k: g.n,
            dst: (tap, g.c * taps, taps),
            lhs: (dy[q..].as_ptr(), p, g.co * p),
            rhs: (x[at..].as_ptr(), g.c * plane, plane),
        },
    )
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
