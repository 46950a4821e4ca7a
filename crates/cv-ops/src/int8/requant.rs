//! The epilogue of the int8 convolution: exact i32 sums to real values (zero-point
//! correction, scales, folded bias), plus the dequantized residual, ReLU, and quantized to the
//! output's parameters, rounding as [`QParams::quantize`] does.

use super::kernels::BLOCK;
use super::quantize::round_even;
use super::{Epilogue, QConv, QParams};

pub(super) struct Requant {
    /// `scale(x) * scale(w[o])`.
    multiplier: Vec<f32>,
    bias: Vec<f32>,
    residual: Option<QParams>,
    relu: bool,
    out: QParams,
    avx2: bool,
}

impl Requant {
    pub(super) fn new(w: &QConv, x: QParams, e: &Epilogue) -> Requant {
        Requant {
            multiplier: w.scale.iter().map(|s| s * x.scale).collect(),
            bias: w.bias.clone(),
            residual: e.residual.map(|r| r.qp),
            relu: e.relu,
            out: e.out,
            #[cfg(target_arch = "x86_64")]
            avx2: is_x86_feature_detected!("avx2"),
            #[cfg(not(target_arch = "x86_64"))]
            avx2: false,
        }
    }

    /// Writes the codes of channels `oc0..oc0 + sums.len()` of one pixel; `correction` is
    /// `zero_point(x) * the sum of the weight codes of the taps run`, for those channels.
    pub(super) fn store(
        &self,
        oc0: usize,
        sums: &[i32],
        correction: &[i32],
        residual: Option<&[u8]>,
        out: &mut [u8],
    ) {
        #[cfg(target_arch = "x86_64")]
        if self.avx2 {
            // SAFETY: the CPU has AVX2 (checked when `self` was made).
            return unsafe { self.store_avx2(oc0, sums, correction, residual, out) };
        }
        self.store_portable(oc0, sums, correction, residual, out)
    }

    /// [`Requant::store`] eight channels at a time with AVX2: the same operations in the same
    /// order (multiply then add, no FMA; `vcvtps2dq` rounds half to even as `round_even`; the
    /// saturating packs clamp to 0..=255), so both paths give the same codes.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn store_avx2(
        &self,
        oc0: usize,
        sums: &[i32],
        correction: &[i32],
        residual: Option<&[u8]>,
        out: &mut [u8],
    ) {
        use std::arch::x86_64::*;
        let n = sums.len().min(correction.len()).min(out.len());
        let full = n / 8 * 8;
        let mult = &self.multiplier[oc0..oc0 + n];
        let bias = &self.bias[oc0..oc0 + n];
        let residual = residual.zip(self.residual).filter(|(r, _)| r.len() >= n);
        let limit = _mm256_set1_ps(super::quantize::ROUND_LIMIT);
        let order = _mm256_setr_epi32(0, 4, 0, 0, 0, 0, 0, 0);
        for j in (0..full).step_by(8) {
            // SAFETY: j + 8 <= n, within every slice read or written.
            unsafe {
                let load = |p: *const i32| _mm256_loadu_si256(p.cast());
                let acc =
                    _mm256_sub_epi32(load(sums.as_ptr().add(j)), load(correction.as_ptr().add(j)));
                let mut y = _mm256_add_ps(
                    _mm256_mul_ps(
                        _mm256_cvtepi32_ps(acc),
                        _mm256_loadu_ps(mult.as_ptr().add(j)),
                    ),
                    _mm256_loadu_ps(bias.as_ptr().add(j)),
                );
                if let Some((r, qp)) = residual {
                    let codes = _mm256_cvtepu8_epi32(_mm_loadl_epi64(r.as_ptr().add(j).cast()));
                    let centred = _mm256_sub_ps(
                        _mm256_cvtepi32_ps(codes),
                        _mm256_set1_ps(qp.zero_point as f32),
                    );
                    y = _mm256_add_ps(y, _mm256_mul_ps(_mm256_set1_ps(qp.scale), centred));
                }
                if self.relu {
                    y = _mm256_max_ps(y, _mm256_setzero_ps());
                }
                let v = _mm256_div_ps(y, _mm256_set1_ps(self.out.scale));
                let v = _mm256_min_ps(
                    _mm256_max_ps(v, _mm256_sub_ps(_mm256_setzero_ps(), limit)),
                    limit,
                );
                let q = _mm256_add_epi32(
                    _mm256_cvtps_epi32(v),
                    _mm256_set1_epi32(self.out.zero_point),
                );
                let words = _mm256_packs_epi32(q, q);
                let bytes = _mm256_permutevar8x32_epi32(_mm256_packus_epi16(words, words), order);
                _mm_storel_epi64(
                    out.as_mut_ptr().add(j).cast(),
                    _mm256_castsi256_si128(bytes),
                );
            }
        }
        if full < n {
            self.store_portable(
                oc0 + full,
                &sums[full..n],
                &correction[full..n],
                residual.map(|(r, _)| &r[full..n]),
                &mut out[full..n],
            );
        }
    }

    #[inline(always)]
    fn store_portable(
        &self,
        oc0: usize,
        sums: &[i32],
        correction: &[i32],
        residual: Option<&[u8]>,
        out: &mut [u8],
    ) {
        let n = sums.len().min(BLOCK);
        let mut y = [0f32; BLOCK];
        let corr = &correction[..n];
        let mult = &self.multiplier[oc0..][..n];
        let bias = &self.bias[oc0..][..n];
        for j in 0..n {
            y[j] = (sums[j] - corr[j]) as f32 * mult[j] + bias[j];
        }
        if let (Some(r), Some(qp)) = (residual, self.residual) {
            let zero = qp.zero_point as f32;
            for (yj, &rj) in y.iter_mut().zip(&r[..n]) {
                *yj += qp.scale * (rj as f32 - zero);
            }
        }
        if self.relu {
            for yj in &mut y[..n] {
                *yj = yj.max(0.0);
            }
        }
        let (scale, zero) = (self.out.scale, self.out.zero_point as f32);
        for (o, yj) in out[..n].iter_mut().zip(&y) {
            *o = (round_even(yj / scale) + zero).clamp(0.0, 255.0) as u8;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::int8::{QTensor, OUT_BORDER};

    /// The AVX2 epilogue gives the portable one's codes: every channel count up to a block
    /// (tails included), with and without residual and ReLU, sums far outside the codes' range.
    #[test]
    fn avx2_and_portable_epilogues_agree() {
        #[cfg(target_arch = "x86_64")]
        {
            if !is_x86_feature_detected!("avx2") {
                eprintln!("skipping: this CPU has no AVX2");
                return;
            }
            let oc = 70;
            let scale: Vec<f32> = (0..oc).map(|o| 0.001 + o as f32 * 1e-4).collect();
            let bias: Vec<f32> = (0..oc).map(|o| (o as f32 - 35.0) * 0.03).collect();
            let conv = QConv::new(vec![1; oc * 9], [oc, 1, 3, 3], scale, bias, 1, 1).unwrap();
            let xq = QParams {
                scale: 0.02,
                zero_point: 7,
            };
            let rq = QParams {
                scale: 0.05,
                zero_point: 100,
            };
            let res = QTensor::zeros([1, oc, 1, 1], OUT_BORDER, rq);
            for (relu, residual) in [(false, None), (true, Some(&res)), (true, None)] {
                let e = Epilogue {
                    out: QParams {
                        scale: 0.04,
                        zero_point: 20,
                    },
                    residual,
                    relu,
                };
                let r = Requant::new(&conv, xq, &e);
                for n in 1..=BLOCK.min(oc) {
                    let sums: Vec<i32> = (0..n as i32)
                        .map(|j| (j - 30) * 977 * (j % 7 - 3))
                        .collect();
                    let corr: Vec<i32> = (0..n as i32).map(|j| j * 13 - 200).collect();
                    let codes: Vec<u8> = (0..n).map(|j| (j * 37 % 256) as u8).collect();
                    let res = residual.map(|_| &codes[..]);
                    let (mut a, mut b) = (vec![0u8; n], vec![0u8; n]);
                    r.store_portable(3, &sums, &corr, res, &mut a);
                    // SAFETY: the CPU has AVX2 (checked above).
                    unsafe { r.store_avx2(3, &sums, &corr, res, &mut b) };
                    assert_eq!(
                        a,
                        b,
                        "{n} channels, relu {relu}, residual {}",
                        residual.is_some()
                    );
                }
            }
        }
    }
}
