//! The u8 activation tensor the int8 kernels read and write: channels-last (NHWC), channels
//! padded to a multiple of four (one `vpdpbusd` quad) from four channels on, and a border of
//! `border` pixels on every side, all filled with the zero point's code (real 0.0), so a
//! convolution with padding up to the border reads its taps without bound checks. Images of
//! one to three channels are stored dense: a kernel row's pixels are then one run of
//! `kernel * c` codes, read in quads (see [`stored_channels`]).

/// Channels as stored for `c` real ones: a multiple of four, but for one to three channels
/// (an image), which are dense so that a 7x7 kernel row of RGB is 21 codes (6 quads) rather
/// than 7 padded quads.
pub(crate) fn stored_channels(c: usize) -> usize {
    if c < 4 {
        c
    } else {
        c.next_multiple_of(4)
    }
}

/// Bytes after the last pixel: a dense kernel row is read in whole quads, up to three codes
/// past its end (their weights are zero).
const SLACK: usize = 4;

use rayon::prelude::*;

use super::simd::Simd;
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
    #[cfg(test)]
    pub(crate) fn zeros(dims: [usize; 4], border: usize, qp: QParams) -> QTensor {
        let mut t = QTensor::for_interior(dims, border, qp);
        t.data
            .par_chunks_mut(1 << 16)
            .for_each(|chunk| chunk.fill(qp.zero_point as u8));
        t
    }

    /// A tensor whose border and padding channels hold the zero point's code and whose real
    /// values are whatever a recycled buffer held: for the ops that write every one of them
    /// (the convolution, the pool, the input's quantization).
    pub(crate) fn for_interior(dims: [usize; 4], border: usize, qp: QParams) -> QTensor {
        let [n, c, h, w] = dims;
        let len = n * (h + 2 * border) * (w + 2 * border) * stored_channels(c) + SLACK;
        let mut t = QTensor {
            data: spare::take(len),
            n,
            c,
            h,
            w,
            border,
            qp,
        };
        t.fill_border();
        t
    }

    /// Writes the zero point's code into the border and the padding channels.
    fn fill_border(&mut self) {
        let code = self.qp.zero_point as u8;
        let (c, cp, b) = (self.c, self.stored_channels(), self.border);
        let (rows, row) = (self.h + 2 * b, self.stored_width() * cp);
        let image = self.offset(1, 0, 0);
        if image == 0 {
            return;
        }
        self.data.par_chunks_mut(image).for_each(|image| {
            for (y, r) in image.chunks_mut(row).enumerate().take(rows) {
                if y < b || y >= rows - b {
                    r.fill(code);
                    continue;
                }
                if cp != c {
                    // Real values overwrite theirs; one fill per row, not one per pixel.
                    r.fill(code);
                    continue;
                }
                let (left, rest) = r.split_at_mut(b * cp);
                let inner = rest.len() - b * cp;
                let right = &mut rest[inner..];
                left.fill(code);
                right.fill(code);
            }
        });
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
        let mut t = QTensor::for_interior(dims, border, qp);
        let [_, c, h, w] = dims;
        let image = t.offset(1, 0, 0);
        let (cp, wp) = (t.stored_channels(), t.stored_width());
        let simd = Simd::detect();
        t.data
            .par_chunks_mut(image)
            .zip(values.par_chunks(c * h * w))
            .for_each(|(dst, src)| {
                // Each channel's row is quantized contiguously, then the row's pixels are
                // written whole (with their padding channels); both loops vectorize.
                let mut codes = vec![qp.zero_point as u8; cp * w];
                simd.widest(
                    #[inline(always)]
                    || {
                        for y in 0..h {
                            for (ch, row_codes) in codes.chunks_exact_mut(w).take(c).enumerate() {
                                let row = &src[(ch * h + y) * w..][..w];
                                for (q, &v) in row_codes.iter_mut().zip(row) {
                                    *q = qp.quantize(v);
                                }
                            }
                            let at = ((y + border) * wp + border) * cp;
                            let pixels = dst[at..][..w * cp].chunks_exact_mut(cp);
                            if cp == 4 {
                                let [r0, r1, r2, r3]: [&[u8]; 4] =
                                    std::array::from_fn(|ch| &codes[ch * w..][..w]);
                                let quads = r0.iter().zip(r1).zip(r2.iter().zip(r3));
                                for (px, ((&a, &b), (&c, &d))) in pixels.zip(quads) {
                                    px.copy_from_slice(&[a, b, c, d]);
                                }
                            } else if cp == 3 {
                                let [r0, r1, r2]: [&[u8]; 3] =
                                    std::array::from_fn(|ch| &codes[ch * w..][..w]);
                                let rgb = r0.iter().zip(r1).zip(r2);
                                for (px, ((&a, &b), &c)) in pixels.zip(rgb) {
                                    px.copy_from_slice(&[a, b, c]);
                                }
                            } else {
                                for (x, px) in pixels.enumerate() {
                                    for (ch, q) in px.iter_mut().enumerate() {
                                        *q = codes[ch * w + x];
                                    }
                                }
                            }
                        }
                    },
                )
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

    /// Channels as stored ([`stored_channels`]).
    pub(crate) fn stored_channels(&self) -> usize {
        stored_channels(self.c)
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

impl Drop for QTensor {
    fn drop(&mut self) {
        spare::give(std::mem::take(&mut self.data));
    }
}

/// Buffers of dropped tensors, lent to the next ones: a network asks for the same sizes on every
/// layer and pass, and a fresh buffer costs a page fault per 4 KiB and a fill (several percent
/// of ResNet-18's int8 forward). At most [`spare::KEPT`] bytes are held; a buffer is lent only
/// for a request of at least half its size.
mod spare {
    use std::sync::{Mutex, MutexGuard};

    pub(super) const KEPT: usize = 64 << 20;

    static SPARE: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

    fn held() -> MutexGuard<'static, Vec<Vec<u8>>> {
        // A panic elsewhere cannot leave the list inconsistent: every update is one push or
        // one removal.
        SPARE
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A buffer of `len` bytes (their values unspecified).
    pub(super) fn take(len: usize) -> Vec<u8> {
        let found = {
            let mut spare = held();
            let fit = (0..spare.len())
                .filter(|&i| (len..=2 * len.max(1)).contains(&spare[i].capacity()))
                .min_by_key(|&i| spare[i].capacity());
            fit.map(|i| spare.swap_remove(i))
        };
        match found {
            Some(mut buffer) => {
                buffer.resize(len, 0);
                buffer
            }
            None => vec![0; len],
        }
    }

    pub(super) fn give(buffer: Vec<u8>) {
        if buffer.capacity() == 0 || buffer.capacity() > KEPT {
            return;
        }
        let mut spare = held();
        let kept: usize = spare.iter().map(Vec::capacity).sum();
        if kept + buffer.capacity() <= KEPT {
            spare.push(buffer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tensor made from a dropped tensor's buffer (garbage left in it) has the zero point in
    /// every border pixel and padding channel.
    #[test]
    fn recycled_buffers_get_their_border_and_padding_rewritten() {
        let qp = QParams {
            scale: 0.1,
            zero_point: 77,
        };
        let mut junk = QTensor::for_interior([2, 5, 4, 5], 2, qp);
        junk.data.fill(0xAB);
        drop(junk);
        let t = QTensor::for_interior([2, 5, 4, 5], 2, qp);
        assert_eq!(t.data.len(), 2 * 8 * 9 * 8 + SLACK);
        for b in 0..2 {
            for y in 0..8 {
                for x in 0..9 {
                    for ch in 0..8 {
                        let real = (2..6).contains(&y) && (2..7).contains(&x) && ch < 5;
                        let code = t.data[t.offset(b, y, x) + ch];
                        assert!(
                            real || code == 77,
                            "image {b} ({y}, {x}) channel {ch}: {code}"
                        );
                    }
                }
            }
        }
    }

    /// Dense RGB, four channels, and five padded to eight: the values come back within half
    /// a step, the border and the padding channels hold the zero point.
    #[test]
    fn nchw_values_round_trip_through_the_bordered_layout() {
        let qp = QParams::from_range(-1.0, 1.0).unwrap();
        for (c, cp) in [(3, 3), (4, 4), (5, 8)] {
            let values: Vec<f32> = (0..2 * c * 4 * 5)
                .map(|i| (i as f32 / (20 * c) as f32) - 1.0)
                .collect();
            let t = QTensor::from_nchw(&values, [2, c, 4, 5], qp, 2).unwrap();
            assert_eq!(t.data.len(), 2 * 8 * 9 * cp + SLACK, "{c} channels");
            for (a, b) in t.to_nchw().iter().zip(&values) {
                assert!(
                    (a - b).abs() <= qp.scale / 2.0 + 1e-6,
                    "{c} channels: {a} vs {b}"
                );
            }
            assert_eq!(t.data[t.offset(1, 0, 3) + 1], qp.zero_point as u8);
            for ch in c..cp {
                assert_eq!(t.data[t.index(0, 1, 1) + ch], qp.zero_point as u8);
            }
            let means = t.channel_means();
            let want: f32 = values[20..40].iter().sum::<f32>() / 20.0;
            assert!((means[1] - want).abs() < qp.scale, "{c} channels");
        }
        let values = vec![0.0; 2 * 3 * 4 * 5];
        assert!(QTensor::from_nchw(&values, [2, 3, 4, 4], qp, 1).is_err());
    }
}
