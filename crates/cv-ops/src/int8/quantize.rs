//! The quantization rules: affine per-tensor u8 for activations, symmetric per-channel i8 for
//! weights, both rounding half to even (as PyTorch's `quantize_per_tensor`).

use crate::error::OpsError;

/// An affine u8 quantization: `real = scale * (q - zero_point)`, `q` in 0..=255.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QParams {
    /// Step between two codes.
    pub scale: f32,
    /// The code of 0.0 (0..=255).
    pub zero_point: i32,
}

impl QParams {
    /// The parameters that cover `[lo, hi]` widened to include 0 (so 0.0, the padding and
    /// the ReLU floor, is exact), as PyTorch's `MinMaxObserver` computes them.
    pub fn from_range(lo: f32, hi: f32) -> Result<QParams, OpsError> {
        if !(lo.is_finite() && hi.is_finite()) || lo > hi {
            return Err(OpsError::Mismatch {
                op: "quantize",
                message: format!("activation range [{lo}, {hi}] is not a finite interval"),
            });
        }
        let (lo, hi) = (lo.min(0.0), hi.max(0.0));
        let scale = ((hi - lo) / 255.0).max(f32::EPSILON);
        let zero_point = ((-lo / scale).round_ties_even() as i32).clamp(0, 255);
        Ok(QParams { scale, zero_point })
    }

    /// Checks parameters read from a file.
    pub fn check(self) -> Result<QParams, OpsError> {
        if self.scale.is_finite() && self.scale > 0.0 && (0..=255).contains(&self.zero_point) {
            return Ok(self);
        }
        Err(OpsError::Mismatch {
            op: "quantize",
            message: format!(
                "scale {} / zero point {} (expected a positive scale and a zero point in 0..=255)",
                self.scale, self.zero_point
            ),
        })
    }

    /// The code of `v` (NaN gives 0).
    #[inline(always)]
    pub fn quantize(self, v: f32) -> u8 {
        // `max` takes the number when one side is NaN, so `q` is a whole number in 0..=255;
        // added to 2^23 it is the low byte of the sum's bits. Unlike `as u8` (a saturating
        // conversion, scalar in every loop), the bit cast vectorizes.
        #[allow(clippy::manual_clamp)] // `clamp` keeps NaN, whose bits are no code
        let q = (round_even(v / self.scale) + self.zero_point as f32)
            .max(0.0)
            .min(255.0);
        (q + 8_388_608.0).to_bits() as u8
    }

    /// The value of code `q`.
    pub fn dequantize(self, q: u8) -> f32 {
        self.scale * (q as i32 - self.zero_point) as f32
    }
}

/// `v` rounded half to even, as `f32::round_ties_even` within the codes' reach: adding and
/// subtracting 1.5 * 2^23 rounds in the FPU's default mode, and, unlike `round_ties_even`
/// (a libm call without SSE4.1), the loops that quantize vectorize. Beyond +-2^22 the value
/// is clamped first; any such value clamps to code 0 or 255 anyway.
#[inline(always)]
pub(crate) fn round_even(v: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    (v.clamp(-ROUND_LIMIT, ROUND_LIMIT) + MAGIC) - MAGIC
}

/// Where [`round_even`] (and the AVX2 epilogue) clamps: 2^22.
pub(crate) const ROUND_LIMIT: f32 = 4_194_304.0;

/// Symmetric per-output-channel quantization of `weight` (`rows` rows of equal length):
/// `scale[o] = max |w[o]| / 127`, codes in -127..=127 (an all-zero row gets scale 1).
pub fn quantize_weights(weight: &[f32], rows: usize) -> Result<(Vec<i8>, Vec<f32>), OpsError> {
    if rows == 0 || !weight.len().is_multiple_of(rows) {
        return Err(OpsError::Shape {
            op: "quantize_weights",
            what: "weight",
            shape: vec![weight.len()],
            expected: format!("a multiple of {rows} values"),
        });
    }
    if let Some(v) = weight.iter().find(|v| !v.is_finite()) {
        return Err(OpsError::Mismatch {
            op: "quantize_weights",
            message: format!("weight {v} is not finite"),
        });
    }
    let len = weight.len() / rows;
    let mut codes = Vec::with_capacity(weight.len());
    let mut scales = Vec::with_capacity(rows);
    for row in weight.chunks(len) {
        let max = row.iter().fold(0f32, |m, v| m.max(v.abs()));
        let scale = if max > 0.0 { max / 127.0 } else { 1.0 };
        codes.extend(
            row.iter()
                .map(|&v| (v / scale).round_ties_even().clamp(-127.0, 127.0) as i8),
        );
        scales.push(scale);
    }
    Ok((codes, scales))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_include_zero_and_round_trip_their_ends() {
        let qp = QParams::from_range(-1.0, 3.0).unwrap();
        assert!((qp.scale - 4.0 / 255.0).abs() < 1e-7);
        assert_eq!(qp.zero_point, 64);
        assert_eq!(qp.quantize(0.0), 64);
        assert!((qp.dequantize(qp.quantize(3.0)) - 3.0).abs() <= qp.scale / 2.0 + 1e-6);
        let relu = QParams::from_range(0.5, 2.0).unwrap();
        assert_eq!(relu.zero_point, 0);
        assert_eq!(relu.quantize(-5.0), 0);
        assert_eq!(relu.quantize(100.0), 255);
        assert!(QParams::from_range(f32::NAN, 1.0).is_err());
        assert!(QParams::from_range(2.0, 1.0).is_err());
        assert!(QParams {
            scale: 0.0,
            zero_point: 3
        }
        .check()
        .is_err());
    }

    #[test]
    fn rounding_is_half_to_even_and_saturates() {
        for v in [
            0.5f32, 1.5, 2.5, -0.5, -1.5, 3.49, -3.51, 254.5, 1e-3, 0.0, 123.456,
        ] {
            assert_eq!(round_even(v), v.round_ties_even(), "{v}");
        }
        assert_eq!(round_even(1e30), 4_194_304.0);
        assert_eq!(round_even(f32::NEG_INFINITY), -4_194_304.0);
        let qp = QParams {
            scale: 0.5,
            zero_point: 10,
        };
        assert_eq!(
            (qp.quantize(1e30), qp.quantize(-1e30), qp.quantize(0.25)),
            (255, 0, 10)
        );
        let special = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY].map(|v| qp.quantize(v));
        assert_eq!(special, [0, 255, 0]);
        // The bit-cast conversion is the plain definition on every step and half step.
        for i in -600..600 {
            let v = i as f32 * 0.125;
            let want = ((v / 0.5).round_ties_even() + 10.0).clamp(0.0, 255.0) as u8;
            assert_eq!(qp.quantize(v), want, "{v}");
        }
    }

    #[test]
    fn weights_use_the_whole_symmetric_range_per_channel() {
        let (q, s) = quantize_weights(&[0.3, -1.0, 0.2, 0.0, 0.0, 0.0, 2.0, 1.1, -0.5], 3).unwrap();
        assert_eq!(q, vec![38, -127, 25, 0, 0, 0, 127, 70, -32]);
        assert_eq!(s, vec![1.0 / 127.0, 1.0, 2.0 / 127.0]);
        assert!(quantize_weights(&[1.0, f32::INFINITY], 1).is_err());
        assert!(quantize_weights(&[1.0, 2.0, 3.0], 2).is_err());
    }
}
