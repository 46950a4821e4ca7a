//! The u8 activation tensor the int8 kernels read and write: channels-last (NHWC), channels
//! padded to a multiple of four (one `vpdpbusd` quad), and a border of `border` pixels on
//! every side, all filled with the zero point's code (real 0.0), so a convolution with
//! padding up to the border reads its taps without bound checks.

use rayon::prelude::*;

use crate::error::OpsError;
use crate::int8::QParams;

/// Border of every tensor the int8 ops write: enough for the 3x3 padding-1 convolutions and
/// max-pools of these networks (larger paddings need the input quantized with a larger one).
pub const OUT_BORDER: usize = 1;

/// A quantized activation `[n, c, h, w]` (logical shape; stored NHWC with a border).
#[derive(Clone, Debug, PartialEq)]
pub struct QTensor {
    pub(crate) data: Vec<u8>,
    pub(crate) n: usize,
    pub(crate) c: usize,
    pub(crate) h: usize,
    pub(crate) w: usize,
    pub(crate) border: usize,
    pub(crate) qp: QParams,
}

impl QTensor {
    /// All codes the zero point (`real` 0.0), stored with `border`.
    pub(crate) fn zeros(dims: [usize; 4], border: usize, qp: QParams) -> QTensor {
        let [n, c, h, w] = dims;
        let len = n * (h + 2 * border) * (w + 2 * border) * c.next_multiple_of(4);
        QTensor {
            data: filled(len, qp.zero_point as u8),
            n,
            c,
            h,
            w,
            border,
            qp,
        }
    }

    /// Quantizes f32 values in NCHW order with `qp`, stored with `border` pixels of padding.
    pub fn from_nchw(
        values: &[f32],
        dims: [usize; 4],
        qp: QParams,
        border: usize,
    ) -> Result<QTensor, OpsError> {
        if values.len() != dims.iter().product::<usize>() || dims.contains(&0) {
            return Err(OpsError::Shape {
                op: "quantize",
                what: "values",
                shape: dims.to_vec(),
                expected: format!("no empty dimension and {} values", values.len()),
            });
        }
        let mut t = QTensor::zeros(dims, border, qp);
        let [_, c, h, w] = dims;
        let image = t.offset(1, 0, 0);
        let (cp, wp) = (t.stored_channels(), t.stored_width());
        t.data
            .par_chunks_mut(image)
            .zip(values.par_chunks(c * h * w))
            .for_each(|(dst, src)| {
                // Each row is quantized contiguously (the loop vectorizes), then interleaved.
                let mut codes = vec![0u8; w];
                for ch in 0..c {
                    for y in 0..h {
                        let row = &src[(ch * h + y) * w..][..w];
                        for (q, &v) in codes.iter_mut().zip(row) {
                            *q = qp.quantize(v);
                        }
                        let at = ((y + border) * wp + border) * cp + ch;
                        for (px, &q) in dst[at..].chunks_mut(cp).zip(&codes) {
                            px[0] = q;
                        }
                    }
                }
            });
        Ok(t)
    }

    /// The logical shape `[n, c, h, w]`.
    pub fn dims(&self) -> [usize; 4] {
        [self.n, self.c, self.h, self.w]
    }

    /// What the codes mean.
    pub fn qparams(&self) -> QParams {
        self.qp
    }

    /// Channels as stored (a multiple of four).
    pub(crate) fn stored_channels(&self) -> usize {
        self.c.next_multiple_of(4)
    }

    /// Stored width, border included.
    pub(crate) fn stored_width(&self) -> usize {
        self.w + 2 * self.border
    }

    /// Offset of channel 0 of pixel `(y, x)` of image `b`; `y` and `x` count from the top
    /// left of the border, so `(border, border)` is the first real pixel.
    pub(crate) fn offset(&self, b: usize, y: usize, x: usize) -> usize {
        ((b * (self.h + 2 * self.border) + y) * self.stored_width() + x) * self.stored_channels()
    }

    /// Offset of real pixel `(y, x)`.
    pub(crate) fn index(&self, b: usize, y: usize, x: usize) -> usize {
        self.offset(b, y + self.border, x + self.border)
    }

    /// The code of element `[b, ch, y, x]`.
    pub fn code(&self, b: usize, ch: usize, y: usize, x: usize) -> u8 {
        self.data[self.index(b, y, x) + ch]
    }

    /// The dequantized values in NCHW order.
    pub fn to_nchw(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.n * self.c * self.h * self.w);
        for b in 0..self.n {
            for ch in 0..self.c {
                for y in 0..self.h {
                    for x in 0..self.w {
                        out.push(self.qp.dequantize(self.code(b, ch, y, x)));
                    }
                }
            }
        }
        out
    }

    /// The global average pool, dequantized: `[n, c]` row-major.
    pub fn channel_means(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.n * self.c);
        for b in 0..self.n {
            let mut sums = vec![0u64; self.c];
            for y in 0..self.h {
                for x in 0..self.w {
                    let px = &self.data[self.index(b, y, x)..][..self.c];
                    for (s, &q) in sums.iter_mut().zip(px) {
                        *s += q as u64;
                    }
                }
            }
            let count = (self.h * self.w) as f64;
            out.extend(sums.iter().map(|&s| {
                (self.qp.scale as f64 * (s as f64 / count - self.qp.zero_point as f64)) as f32
            }));
        }
        out
    }
}

/// `len` copies of `code`, written by every thread: a layer's output is megabytes, and one
/// thread filling it while the others wait cost several percent of a small network's time.
fn filled(len: usize, code: u8) -> Vec<u8> {
    const CHUNK: usize = 1 << 16;
    let mut data = Vec::with_capacity(len);
    data.spare_capacity_mut()[..len]
        .par_chunks_mut(CHUNK)
        .for_each(|chunk| chunk.fill(std::mem::MaybeUninit::new(code)));
    // SAFETY: the loop above initialised all `len` elements of the capacity.
    unsafe { data.set_len(len) };
    data
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nchw_values_round_trip_through_the_bordered_layout() {
        let qp = QParams::from_range(-1.0, 1.0).unwrap();
        let values: Vec<f32> = (0..2 * 3 * 4 * 5)
            .map(|i| (i as f32 / 60.0) - 1.0)
            .collect();
        let t = QTensor::from_nchw(&values, [2, 3, 4, 5], qp, 2).unwrap();
        assert_eq!(t.data.len(), 2 * 8 * 9 * 4);
        for (a, b) in t.to_nchw().iter().zip(&values) {
            assert!((a - b).abs() <= qp.scale / 2.0 + 1e-6, "{a} vs {b}");
        }
        // The border and the fourth (padding) channel hold the zero point.
        assert_eq!(t.data[t.offset(1, 0, 3) + 1], qp.zero_point as u8);
        assert_eq!(t.data[t.index(0, 1, 1) + 3], qp.zero_point as u8);
        let means = t.channel_means();
        let want: f32 = values[20..40].iter().sum::<f32>() / 20.0;
        assert!((means[1] - want).abs() < qp.scale);
        assert!(QTensor::from_nchw(&values, [2, 3, 4, 4], qp, 1).is_err());
    }
}
