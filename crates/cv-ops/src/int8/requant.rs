//! The epilogue of the int8 convolution: exact i32 sums to output codes (zero-point
//! correction, the scales and the folded bias), plus the residual, ReLU, and rounding half to
//! even, in one pass.
//!
//! Everything is measured in the output's codes: per channel, a sum becomes
//! `sum * multiplier + base`, with `multiplier = scale(x) * scale(w) / scale(out)` once per
//! layer and `base = offset - correction * multiplier` once per tile (the correction depends
//! on the taps a tile runs, not on its pixels), where `offset = bias / scale(out) +
//! zero_point(out)`, less the residual's zero point in output steps when there is a residual;
//! the residual then adds `step * code`. No value is divided (a division per value cost more
//! than the rest of the epilogue), and a pixel's channels cost a conversion, a multiply and an
//! add before the clamp (the AVX-512 kernel's epilogue shares pipes with its products). ReLU
//! and the codes' range are one clamp to `[lo, 255]` (`lo` is the zero point's code after
//! ReLU, 0 without), which equals clamping after rounding because both bounds are integers.

use super::kernels::{BLOCK, PIXELS};
use super::quantize::round_even;
use super::simd::Simd;
use super::{Epilogue, QConv};

pub(super) struct Requant {
    multiplier: Vec<f32>,
    /// Per channel, `bias / scale(out) + zero_point(out)` less the residual's zero point in
    /// output steps (the module's `offset`).
    offset: Vec<f32>,
    /// A residual code's worth in output steps: `scale(r) / scale(out)`.
    residual: Option<f32>,
    /// The lowest code: the output's zero point after ReLU, else 0.
    lo: f32,
    simd: Simd,
}

/// The highest code.
const HI: f32 = 255.0;

/// Where the codes of one tile go: pixel `i < count` writes channels `oc0..oc0 + n` at
/// `out[i]`, with the residual's codes of those channels at `residual[i]` when there is one.
pub(super) struct TileRows<'a> {
    pub oc0: usize,
    pub n: usize,
    pub count: usize,
    pub out: [*mut u8; PIXELS],
    pub residual: Option<[*const u8; PIXELS]>,
    /// [`Requant::store`]'s correction for channels `oc0..oc0 + n`.
    pub correction: &'a [i32],
}

/// The mask of the first `n` of 16 lanes (all of them from 16 on).
#[cfg(target_arch = "x86_64")]
pub(super) fn lanes(n: usize) -> u16 {
    if n >= 16 {
        u16::MAX
    } else {
        (1u16 << n) - 1
    }
}

impl Requant {
    pub(super) fn new(w: &QConv, x: super::QParams, e: &Epilogue) -> Requant {
        let step = e.out.scale;
        let zero = e.out.zero_point as f32;
        let residual = e.residual.map(|r| r.qp.scale / step);
        let shift = e
            .residual
            .zip(residual)
            .map_or(0.0, |(r, rstep)| rstep * r.qp.zero_point as f32);
        Requant {
            multiplier: w.scale.iter().map(|s| s * x.scale / step).collect(),
            offset: w.bias.iter().map(|b| (b / step + zero) - shift).collect(),
            residual,
            lo: if e.relu { zero } else { 0.0 },
            simd: Simd::detect(),
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
        let n = sums.len().min(correction.len()).min(out.len()).min(BLOCK);
        let residual = residual.filter(|r| r.len() >= n);
        let (sums, correction, out) = (&sums[..n], &correction[..n], &mut out[..n]);
        match self.simd {
            // SAFETY: the CPU has the instructions (checked when `self` was made), and every
            // slice holds `n` values.
            #[cfg(target_arch = "x86_64")]
            Simd::Avx512 => unsafe { self.store_avx512(oc0, sums, correction, residual, out) },
            #[cfg(target_arch = "x86_64")]
            Simd::Avx2 => unsafe { self.store_avx2(oc0, sums, correction, residual, out) },
            Simd::Portable => self.store_portable(oc0, sums, correction, residual, out),
        }
    }

    /// [`Requant::store`] sixteen channels at a time, the tail masked.
    ///
    /// # Safety
    /// The CPU has AVX-512 F, BW and VL; the slices have equal lengths.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn store_avx512(
        &self,
        oc0: usize,
        sums: &[i32],
        correction: &[i32],
        residual: Option<&[u8]>,
        out: &mut [u8],
    ) {
        use std::arch::x86_64::*;
        let n = out.len();
        for j in (0..n).step_by(16) {
            let mask = lanes(n - j);
            // SAFETY: the mask keeps every access below `n`, within every slice.
            unsafe {
                let sums = _mm512_maskz_loadu_epi32(mask, sums.as_ptr().add(j));
                let residual = residual.map(|r| r.as_ptr().add(j));
                let base = self.base16_avx512(oc0 + j, correction.as_ptr().add(j), mask);
                let codes = self.codes16_avx512(oc0 + j, sums, base, residual, mask);
                _mm_mask_storeu_epi8(out.as_mut_ptr().add(j).cast(), mask, codes);
            }
        }
    }

    /// The `base` of sixteen channels from `ch` for a tile whose taps have `correction`.
    ///
    /// # Safety
    /// As [`Requant::codes16_avx512`], with `correction` valid for the lanes of `mask`.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    #[inline]
    pub(super) unsafe fn base16_avx512(
        &self,
        ch: usize,
        correction: *const i32,
        mask: std::arch::x86_64::__mmask16,
    ) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        // SAFETY: as the function's contract.
        unsafe {
            let correction = _mm512_cvtepi32_ps(_mm512_maskz_loadu_epi32(mask, correction));
            let multiplier = _mm512_maskz_loadu_ps(mask, self.multiplier.as_ptr().add(ch));
            let offset = _mm512_maskz_loadu_ps(mask, self.offset.as_ptr().add(ch));
            _mm512_sub_ps(offset, _mm512_mul_ps(correction, multiplier))
        }
    }

    /// The codes of sixteen channels from `ch` of one pixel, their sums in a register and
    /// their tile's [`Requant::base16_avx512`] in another (the AVX512-VNNI kernel calls it on
    /// its accumulators and stores a pixel's 64 codes at once). The same operations in the
    /// same order as the portable path (multiply then add, no FMA; `vcvtps2dq` rounds half to
    /// even), so both give the same codes; `vpmovusdb`'s saturation is the clamp to 255 (a
    /// value past `i32`, `+inf` included, converts to `0x8000_0000`, which saturates to 255 as
    /// the portable clamp gives; a NaN is `lo` by then).
    ///
    /// # Safety
    /// The CPU has AVX-512 F, BW and VL; the lanes of `mask` are channels below the layer's
    /// count from `ch`, and within `residual`.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    #[inline]
    pub(super) unsafe fn codes16_avx512(
        &self,
        ch: usize,
        sums: std::arch::x86_64::__m512i,
        base: std::arch::x86_64::__m512,
        residual: Option<*const u8>,
        mask: std::arch::x86_64::__mmask16,
    ) -> std::arch::x86_64::__m128i {
        use std::arch::x86_64::*;
        // SAFETY: as the function's contract.
        unsafe {
            let multiplier = _mm512_maskz_loadu_ps(mask, self.multiplier.as_ptr().add(ch));
            let mut v = _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(sums), multiplier), base);
            if let (Some(r), Some(step)) = (residual, self.residual) {
                let codes = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(mask, r.cast()));
                v = _mm512_add_ps(
                    v,
                    _mm512_mul_ps(_mm512_set1_ps(step), _mm512_cvtepi32_ps(codes)),
                );
            }
            // max(v, lo) gives lo for NaN, as f32::max does.
            let v = _mm512_max_ps(v, _mm512_set1_ps(self.lo));
            _mm512_cvtusepi32_epi8(_mm512_cvtps_epi32(v))
        }
    }

    /// Whether the AVX512-VNNI kernel may requantize in its registers
    /// ([`Requant::codes16_avx512`]).
    pub(super) fn in_registers(&self) -> bool {
        #[cfg(target_arch = "x86_64")]
        return self.simd == Simd::Avx512;
        #[cfg(not(target_arch = "x86_64"))]
        false
    }

    /// [`Requant::store`] eight channels at a time with AVX2, the tail on the portable path;
    /// the same operations as the others.
    ///
    /// # Safety
    /// The CPU has AVX2; the slices have equal lengths.
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
        let n = out.len();
        let full = n / 8 * 8;
        let mult = self.multiplier[oc0..oc0 + n].as_ptr();
        let offset = self.offset[oc0..oc0 + n].as_ptr();
        let (lo, hi) = (_mm256_set1_ps(self.lo), _mm256_set1_ps(HI));
        let order = _mm256_setr_epi32(0, 4, 0, 0, 0, 0, 0, 0);
        for j in (0..full).step_by(8) {
            // SAFETY: j + 8 <= n, within every slice read or written.
            unsafe {
                let load = |p: *const i32| _mm256_cvtepi32_ps(_mm256_loadu_si256(p.cast()));
                let multiplier = _mm256_loadu_ps(mult.add(j));
                let base = _mm256_sub_ps(
                    _mm256_loadu_ps(offset.add(j)),
                    _mm256_mul_ps(load(correction.as_ptr().add(j)), multiplier),
                );
                let mut v =
                    _mm256_add_ps(_mm256_mul_ps(load(sums.as_ptr().add(j)), multiplier), base);
                if let (Some(r), Some(step)) = (residual, self.residual) {
                    let codes = _mm256_cvtepu8_epi32(_mm_loadl_epi64(r.as_ptr().add(j).cast()));
                    v = _mm256_add_ps(
                        v,
                        _mm256_mul_ps(_mm256_set1_ps(step), _mm256_cvtepi32_ps(codes)),
                    );
                }
                let q = _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(v, lo), hi));
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
                &sums[full..],
                &correction[full..],
                residual.map(|r| &r[full..]),
                &mut out[full..],
            );
        }
    }

    fn store_portable(
        &self,
        oc0: usize,
        sums: &[i32],
        correction: &[i32],
        residual: Option<&[u8]>,
        out: &mut [u8],
    ) {
        let n = out.len();
        let mult = &self.multiplier[oc0..][..n];
        let offset = &self.offset[oc0..][..n];
        for j in 0..n {
            let base = offset[j] - correction[j] as f32 * mult[j];
            let mut v = sums[j] as f32 * mult[j] + base;
            if let (Some(r), Some(step)) = (residual, self.residual) {
                v += step * r[j] as f32;
            }
            out[j] = round_even(v.max(self.lo).min(HI)) as u8;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::int8::{QParams, QTensor, OUT_BORDER};

    /// Every SIMD epilogue this CPU has gives the portable one's codes, and those are the f64
    /// definition's within one code: every channel count up to a block (tails included), with
    /// and without residual and ReLU, sums far outside the codes' range.
    #[test]
    fn simd_and_portable_epilogues_agree_with_the_definition() {
        #[cfg(target_arch = "x86_64")]
        let simd: Vec<Simd> = [
            (Simd::Avx512, Simd::detect() == Simd::Avx512),
            (Simd::Avx2, is_x86_feature_detected!("avx2")),
        ]
        .into_iter()
        .filter_map(|(family, present)| present.then_some(family))
        .collect();
        #[cfg(not(target_arch = "x86_64"))]
        let simd: Vec<Simd> = Vec::new();
        if simd.is_empty() {
            eprintln!("skipping the SIMD comparison: this CPU has no AVX2 or AVX-512");
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
        let out = QParams {
            scale: 0.04,
            zero_point: 20,
        };
        let res = QTensor::zeros([1, oc, 1, 1], OUT_BORDER, rq);
        for (relu, residual) in [(false, None), (true, Some(&res)), (true, None)] {
            let e = Epilogue {
                out,
                residual,
                relu,
            };
            let mut r = Requant::new(&conv, xq, &e);
            for n in 1..=BLOCK.min(oc) {
                let sums: Vec<i32> = (0..n as i32)
                    .map(|j| (j - 30) * 977 * (j % 7 - 3))
                    .collect();
                let corr: Vec<i32> = (0..n as i32).map(|j| j * 13 - 200).collect();
                let codes: Vec<u8> = (0..n).map(|j| (j * 37 % 256) as u8).collect();
                let res = residual.map(|_| &codes[..]);
                let mut portable = vec![0u8; n];
                r.store_portable(3, &sums, &corr, res, &mut portable);
                for j in 0..n {
                    let o = 3 + j;
                    let mut y = (sums[j] - corr[j]) as f64 * xq.scale as f64 * conv.scale[o] as f64
                        + conv.bias[o] as f64;
                    if res.is_some() {
                        y += rq.scale as f64 * (codes[j] as f64 - rq.zero_point as f64);
                    }
                    if relu {
                        y = y.max(0.0);
                    }
                    let want = ((y / out.scale as f64).round() + out.zero_point as f64)
                        .clamp(0.0, 255.0) as u8;
                    assert!(
                        want.abs_diff(portable[j]) <= 1,
                        "channel {o}: {want} vs {}",
                        portable[j]
                    );
                }
                for &family in &simd {
                    r.simd = family;
                    let mut fast = vec![0u8; n];
                    r.store(3, &sums, &corr, res, &mut fast);
                    assert_eq!(
                        fast,
                        portable,
                        "{family:?}, {n} channels, relu {relu}, residual {}",
                        residual.is_some()
                    );
                }
            }
        }
    }
}
