//! Max-pooling on u8 codes: the order of codes is the order of the values they stand for, so
//! the pool runs on the codes and keeps the input's quantization.

use rayon::prelude::*;

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
    let (c, cp, owp) = (x.c, out.stored_channels(), out.stored_width());
    out.data
        .par_chunks_mut(image)
        .enumerate()
        .for_each(|(b, dst)| {
            for oy in 0..oh {
                for ox in 0..ow {
                    let at = ((oy + OUT_BORDER) * owp + ox + OUT_BORDER) * cp;
                    let best = &mut dst[at..at + c];
                    best.fill(0); // the smallest code: any tap wins over it
                    for ky in 0..kernel {
                        let Some(iy) = (oy * stride + ky).checked_sub(padding).filter(|&y| y < x.h)
                        else {
                            continue;
                        };
                        for kx in 0..kernel {
                            let Some(ix) =
                                (ox * stride + kx).checked_sub(padding).filter(|&v| v < x.w)
                            else {
                                continue;
                            };
                            let px = &x.data[x.index(b, iy, ix)..][..c];
                            for (m, &v) in best.iter_mut().zip(px) {
                                *m = (*m).max(v);
                            }
                        }
                    }
                }
            }
        });
    Ok(out)
}
