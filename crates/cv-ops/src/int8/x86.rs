//! The x86 int8 kernels (see `kernels::tile` for the contract): each reads the pixels' input
//! quads as 32-bit broadcasts and the packed weights as vectors of output channels.

use std::arch::x86_64::*;

use super::kernels::{Tap, BLOCK, PIXELS};
use super::requant::{lanes, Requant, TileRows};

pub(super) fn has_avx512_vnni() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vnni")
}

pub(super) fn has_avx_vnni() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("avxvnni")
}

pub(super) fn has_avx2() -> bool {
    is_x86_feature_detected!("avx2")
}

/// 6 pixels x 64 channels in 24 zmm accumulators, stored to `acc`.
///
/// # Safety
/// As `kernels::tile`, on a CPU with AVX512-VNNI.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub(super) unsafe fn vnni512(
    inputs: &[*const u8; PIXELS],
    taps: &[Tap],
    quads: usize,
    w: *const i8,
    acc: &mut [[i32; BLOCK]; PIXELS],
) {
    // SAFETY: as the function's contract.
    unsafe {
        let c = vnni512_sums(inputs, taps, quads, w);
        for (ci, out) in c.iter().zip(acc.iter_mut()) {
            for (v, cv) in ci.iter().enumerate() {
                _mm512_storeu_si512(out.as_mut_ptr().add(16 * v).cast(), *cv);
            }
        }
    }
}

/// [`vnni512`] requantized in its registers and written to `rows` (no round trip of the
/// sums through memory, no call per pixel).
///
/// # Safety
/// As `kernels::tile`, on a CPU with AVX512-VNNI, F, BW and VL; `rows` as
/// [`TileRows`] says, every row valid for its `n` channels.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) unsafe fn vnni512_requant(
    inputs: &[*const u8; PIXELS],
    taps: &[Tap],
    quads: usize,
    w: *const i8,
    requant: &Requant,
    rows: &TileRows,
) {
    // SAFETY: as the function's contract; the masks keep each pixel within its `n` channels.
    unsafe {
        let c = vnni512_sums(inputs, taps, quads, w);
        // A pixel's 64 codes leave in one store (four 16-byte stores of `vpmovdb` cost more).
        let bytes: __mmask64 = if rows.n >= BLOCK {
            u64::MAX
        } else {
            (1u64 << rows.n) - 1
        };
        let vectors = rows.n.div_ceil(16);
        let mut base = [_mm512_setzero_ps(); 4];
        for (v, b) in base.iter_mut().enumerate().take(vectors) {
            let j = 16 * v;
            let correction = rows.correction.as_ptr().add(j);
            *b = requant.base16_avx512(rows.oc0 + j, correction, lanes(rows.n - j));
        }
        for (i, ci) in c.iter().enumerate().take(rows.count) {
            let mut codes = [_mm_setzero_si128(); 4];
            for (v, code) in codes.iter_mut().enumerate().take(vectors) {
                let j = 16 * v;
                let residual = rows.residual.map(|r| r[i].add(j));
                let mask = lanes(rows.n - j);
                *code = requant.codes16_avx512(rows.oc0 + j, ci[v], base[v], residual, mask);
            }
            let low = _mm256_inserti128_si256(_mm256_castsi128_si256(codes[0]), codes[1], 1);
            let high = _mm256_inserti128_si256(_mm256_castsi128_si256(codes[2]), codes[3], 1);
            let all = _mm512_inserti64x4(_mm512_castsi256_si512(low), high, 1);
            _mm512_mask_storeu_epi8(rows.out[i].cast(), bytes, all);
        }
    }
}

/// The sums of [`vnni512`].
///
/// # Safety
/// As `kernels::tile`, on a CPU with AVX512-VNNI.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[inline]
unsafe fn vnni512_sums(
    inputs: &[*const u8; PIXELS],
    taps: &[Tap],
    quads: usize,
    w: *const i8,
) -> [[__m512i; 4]; PIXELS] {
    // SAFETY: as the function's contract.
    unsafe {
        let mut c = [[_mm512_setzero_si512(); 4]; PIXELS];
        for tap in taps {
            let (t, mut wp) = (tap.input, w.add(tap.weight * BLOCK * 4));
            for q in 0..quads {
                let off = t + 4 * q;
                let wv = [0, 1, 2, 3].map(|v| _mm512_loadu_si512(wp.add(64 * v).cast()));
                for (ci, input) in c.iter_mut().zip(inputs) {
                    let a = _mm512_set1_epi32(input.add(off).cast::<i32>().read_unaligned());
                    for (cv, wv) in ci.iter_mut().zip(&wv) {
                        *cv = _mm512_dpbusd_epi32(*cv, a, *wv);
                    }
                }
                wp = wp.add(BLOCK * 4);
            }
        }
        c
    }
}

/// 6 pixels x 16 channels in 12 ymm accumulators, four passes over the block.
///
/// # Safety
/// As `kernels::tile`, on a CPU with AVX-VNNI.
#[target_feature(enable = "avx2,avxvnni")]
pub(super) unsafe fn avx_vnni(
    inputs: &[*const u8; PIXELS],
    taps: &[Tap],
    quads: usize,
    w: *const i8,
    acc: &mut [[i32; BLOCK]; PIXELS],
) {
    // SAFETY: as the function's contract.
    unsafe {
        for pass in 0..BLOCK / 16 {
            let mut c = [[_mm256_setzero_si256(); 2]; PIXELS];
            for tap in taps {
                let (t, mut wp) = (tap.input, w.add(pass * 64 + tap.weight * BLOCK * 4));
                for q in 0..quads {
                    let off = t + 4 * q;
                    let w0 = _mm256_loadu_si256(wp.cast());
                    let w1 = _mm256_loadu_si256(wp.add(32).cast());
                    for (ci, input) in c.iter_mut().zip(inputs) {
                        let a = _mm256_set1_epi32(input.add(off).cast::<i32>().read_unaligned());
                        ci[0] = _mm256_dpbusd_avx_epi32(ci[0], a, w0);
                        ci[1] = _mm256_dpbusd_avx_epi32(ci[1], a, w1);
                    }
                    wp = wp.add(BLOCK * 4);
                }
            }
            store_pass(&c, pass, acc);
        }
    }
}

/// 6 pixels x 16 channels in 12 ymm accumulators, four passes over the block; each quad is
/// two `vpmaddwd` steps on i16 pairs (exact: a pair sums to at most 2 * 255 * 127).
///
/// # Safety
/// As `kernels::tile`, on a CPU with AVX2, with the i16 pair weights.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn avx2(
    inputs: &[*const u8; PIXELS],
    taps: &[Tap],
    quads: usize,
    w: *const i16,
    acc: &mut [[i32; BLOCK]; PIXELS],
) {
    // SAFETY: as the function's contract.
    unsafe {
        for pass in 0..BLOCK / 16 {
            let mut c = [[_mm256_setzero_si256(); 2]; PIXELS];
            for tap in taps {
                let (t, mut wp) = (tap.input, w.add(pass * 32 + tap.weight * BLOCK * 4));
                for q in 0..quads {
                    for half in 0..2 {
                        let off = t + 4 * q + 2 * half;
                        let w0 = _mm256_loadu_si256(wp.add(half * 2 * BLOCK).cast());
                        let w1 = _mm256_loadu_si256(wp.add(half * 2 * BLOCK + 16).cast());
                        for (ci, input) in c.iter_mut().zip(inputs) {
                            let pair = input.add(off).cast::<u16>().read_unaligned() as u32;
                            let a =
                                _mm256_set1_epi32(((pair & 0xff) | ((pair & 0xff00) << 8)) as i32);
                            ci[0] = _mm256_add_epi32(ci[0], _mm256_madd_epi16(a, w0));
                            ci[1] = _mm256_add_epi32(ci[1], _mm256_madd_epi16(a, w1));
                        }
                    }
                    wp = wp.add(BLOCK * 4);
                }
            }
            store_pass(&c, pass, acc);
        }
    }
}

/// Stores one 16-channel pass of the ymm kernels.
#[target_feature(enable = "avx2")]
unsafe fn store_pass(c: &[[__m256i; 2]; PIXELS], pass: usize, acc: &mut [[i32; BLOCK]; PIXELS]) {
    // SAFETY: as the function's contract.
    unsafe {
        for (ci, out) in c.iter().zip(acc.iter_mut()) {
            _mm256_storeu_si256(out.as_mut_ptr().add(16 * pass).cast(), ci[0]);
            _mm256_storeu_si256(out.as_mut_ptr().add(16 * pass + 8).cast(), ci[1]);
        }
    }
}
