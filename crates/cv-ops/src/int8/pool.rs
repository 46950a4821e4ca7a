//! Max-pooling on u8 codes: the order of codes is the order of the values they stand for, so
//! the pool runs on the codes and keeps the input's quantization.

use rayon::prelude::*;

use super::simd::Simd;
use super::tensor::{QTensor, OUT_BORDER};
use crate::error::OpsError;

/// `kernel` x `kernel` max-pool with `stride` and `padding` (PyTorch's floor mode; padded
/// positions never win), output stored with [`OUT_BORDER`].
pub fn max_pool2d_u8(
    x: &QTensor,
    kernel: usize,
    stride: usize,
    padding: usize,
) -> Result<QTensor, OpsError> {
    let side = |s: usize| {
        (s + 2 * padding)
            .checked_sub(kernel)
            .map(|d| d / stride.max(1) + 1)
    };
    let (oh, ow) = match (side(x.h), side(x.w)) {
        (Some(oh), Some(ow)) if stride > 0 && 2 * padding <= kernel => (oh, ow),
        _ => {
            return Err(OpsError::Shape {
                op: "max_pool2d_u8",
                what: "input",
                shape: x.dims().to_vec(),
                expected: format!(
                    "sides of at least {kernel} - 2 * {padding}, stride >= 1, padding <= kernel / 2"
                ),
            })
        }
    };
    let mut out = QTensor::for_interior([x.n, x.c, oh, ow], OUT_BORDER, x.qp);
    let image = out.offset(1, 0, 0);
    let simd = Simd::detect();
    out.data
        .par_chunks_mut(image)
        .take(x.n) // not the slack after the last image
        .enumerate()
        .for_each(|(b, dst)| {
            simd.widest(
                #[inline(always)]
                || pool_image(x, b, dst, [kernel, stride, padding], [oh, ow]),
            )
        });
    Ok(out)
}

/// The pool of image `b` into its output buffer `dst` (bordered like every [`QTensor`]).
#[inline(always)]
fn pool_image(
    x: &QTensor,
    b: usize,
    dst: &mut [u8],
    [kernel, stride, padding]: [usize; 3],
    [oh, ow]: [usize; 2],
) {
    let (c, cp) = (x.c, x.stored_channels());
    let owp = ow + 2 * OUT_BORDER;
    // The real input positions under output position `o`'s window.
    let window = |o: usize, side: usize| {
        (o * stride).saturating_sub(padding)
            ..(o * stride + kernel).saturating_sub(padding).min(side)
    };
    for oy in 0..oh {
        let rows = window(oy, x.h);
        for ox in 0..ow {
            let cols = window(ox, x.w);
            let at = ((oy + OUT_BORDER) * owp + ox + OUT_BORDER) * cp;
            // 64 channels at a time in a local maximum (kept in registers; a maximum in the
            // output would be stored and reloaded at every tap).
            for c0 in (0..c).step_by(LANES) {
                let n = LANES.min(c - c0);
                let mut best = [0u8; LANES]; // the smallest code: any tap wins over it
                for iy in rows.clone() {
                    let row = &x.data[x.index(b, iy, 0) + c0..];
                    for ix in cols.clone() {
                        let px = &row[ix * cp..];
                        if n == LANES {
                            max_into(&mut best, px[..LANES].try_into().expect("64 codes"));
                        } else {
                            for (m, &v) in best.iter_mut().zip(&px[..n]) {
                                *m = (*m).max(v);
                            }
                        }
                    }
                }
                dst[at + c0..][..n].copy_from_slice(&best[..n]);
            }
        }
    }
}

/// Channels per step of the pool (one zmm of codes).
const LANES: usize = 64;

#[inline(always)]
fn max_into(best: &mut [u8; LANES], px: &[u8; LANES]) {
    for (m, &v) in best.iter_mut().zip(px) {
        *m = (*m).max(v);
    }
}
