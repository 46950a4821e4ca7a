//! The two ends of every augmentation, per image row: interleaved RGB u8 to normalised planar
//! f32 ([`to_planar`], what a batch holds), and the rounding and packing that turn planar f32
//! back into interleaved u8 between steps ([`round_u8`], [`pack_rgb_words`]).
//!
//! AVX2 paths are chosen at run time, because the compiler leaves the stride-3
//! (de)interleaving scalar and these loops touch every value of every sample. They use the
//! same f32 operations as the scalar ones (a multiply then an add, never an FMA), so a sample
//! is the same on every CPU.

/// Whether the CPU runs the AVX2 paths (std caches the detection).
#[cfg(target_arch = "x86_64")]
pub(crate) fn avx2() -> bool {
    std::arch::is_x86_feature_detected!("avx2")
}

/// Row `src` (interleaved RGB, `3 * w` values) into the planar rows `dst` (`w` each) as
/// `v * scale[c] + bias[c]`, mirrored when `flip`.
pub(crate) fn to_planar(
    src: &[u8],
    mut dst: [&mut [f32]; 3],
    flip: bool,
    scale: [f32; 3],
    bias: [f32; 3],
) {
    let w = dst[0].len();
    assert!(
        src.len() == 3 * w && dst.iter().all(|d| d.len() == w),
        "row sizes"
    );
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        // SAFETY: AVX2 was detected; the sizes were checked above.
        done = unsafe { to_planar_avx2(src, &mut dst, flip, scale, bias) };
    }
    let [r, g, b] = dst;
    for x in done..w {
        let s = 3 * if flip { w - 1 - x } else { x };
        r[x] = src[s] as f32 * scale[0] + bias[0];
        g[x] = src[s + 1] as f32 * scale[1] + bias[1];
        b[x] = src[s + 2] as f32 * scale[2] + bias[2];
    }
}

/// `v` rounded half up and clamped to 0..=255, as PIL rounds (NaN gives 0); `+ 0.5` and
/// truncation avoid a libm call.
pub(crate) fn round_u8(v: f32) -> u8 {
    (v + 0.5).clamp(0.0, 255.0) as u8
}

/// [`round_u8`] of 8 values, as 8 words.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
pub(crate) fn round_u8_avx2(v: std::arch::x86_64::__m256) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::*;
    let v = _mm256_add_ps(v, _mm256_set1_ps(0.5));
    // `max` first: it returns its second operand, 0, for NaN.
    let v = _mm256_min_ps(_mm256_max_ps(v, _mm256_setzero_ps()), _mm256_set1_ps(255.0));
    _mm256_cvttps_epi32(v)
}

/// `_mm256_shuffle_epi8` masks that move channel `c` of 8 pixels into the low byte of 8 words:
/// pixels 0-3 from bytes 0..12 of the low lane, pixels 4-7 from bytes 4..16 of the high lane
/// (loaded 8 bytes further on, so a block reads exactly its own 24 bytes).
const fn channel_mask(c: i8) -> [i8; 32] {
    let mut m = [-1i8; 32];
    let mut k = 0;
    while k < 4 {
        m[4 * k] = c + 3 * k as i8;
        m[16 + 4 * k] = c + 4 + 3 * k as i8;
        k += 1;
    }
    m
}

const CHANNEL_MASKS: [[i8; 32]; 3] = [channel_mask(0), channel_mask(1), channel_mask(2)];

/// The `_mm256_shuffle_epi8` mask that drops the high byte of each word in both lanes.
const DROP_HIGH_BYTES: [i8; 32] = [
    0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14, -1, -1, -1, -1, 0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14,
    -1, -1, -1, -1,
];

/// `to_planar` on blocks of 8 pixels; returns how many leading pixels it wrote.
///
/// # Safety
/// The CPU must have AVX2; `src.len() == 3 * w` and every `dst[c].len() == w`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn to_planar_avx2(
    src: &[u8],
    dst: &mut [&mut [f32]; 3],
    flip: bool,
    scale: [f32; 3],
    bias: [f32; 3],
) -> usize {
    use std::arch::x86_64::*;
    let w = dst[0].len();
    // SAFETY: the masks are 32 bytes each.
    let masks = CHANNEL_MASKS.map(|m| unsafe { _mm256_loadu_si256(m.as_ptr().cast()) });
    let reverse = _mm256_setr_epi32(7, 6, 5, 4, 3, 2, 1, 0);
    let mut x = 0;
    while x + 8 <= w {
        let first = if flip { w - 8 - x } else { x };
        // SAFETY: the block's pixels `first..first + 8` lie in the row (`first + 8 <= w`), so
        // both 16-byte loads stay inside its `3 * w` bytes.
        let both = unsafe {
            let p = src.as_ptr().add(3 * first);
            _mm256_set_m128i(_mm_loadu_si128(p.add(8).cast()), _mm_loadu_si128(p.cast()))
        };
        for c in 0..3 {
            let v = _mm256_cvtepi32_ps(_mm256_shuffle_epi8(both, masks[c]));
            let v = _mm256_mul_ps(v, _mm256_set1_ps(scale[c]));
            let mut v = _mm256_add_ps(v, _mm256_set1_ps(bias[c]));
            if flip {
                v = _mm256_permutevar8x32_ps(v, reverse);
            }
            // SAFETY: `x + 8 <= w = dst[c].len()`.
            unsafe { _mm256_storeu_ps(dst[c].as_mut_ptr().add(x), v) };
        }
        x += 8;
    }
    x
}

/// Store 8 pixels held as `R | G << 8 | B << 16` words as 24 interleaved bytes at `dst`,
/// writing 4 bytes past them.
///
/// # Safety
/// The CPU must have AVX2 and `dst .. dst + 28` must be writable.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn pack_rgb_words(words: std::arch::x86_64::__m256i, dst: *mut u8) {
    use std::arch::x86_64::*;
    // SAFETY: the mask is 32 bytes; the caller guarantees the 28 bytes at `dst`.
    unsafe {
        let drop_high = _mm256_loadu_si256(DROP_HIGH_BYTES.as_ptr().cast());
        let packed = _mm256_shuffle_epi8(words, drop_high);
        _mm_storeu_si128(dst.cast(), _mm256_castsi256_si128(packed));
        _mm_storeu_si128(dst.add(12).cast(), _mm256_extracti128_si256::<1>(packed));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The scalar definition, pixel by pixel, for comparison with whichever path runs.
    fn planar_reference(
        src: &[u8],
        w: usize,
        flip: bool,
        scale: [f32; 3],
        bias: [f32; 3],
    ) -> Vec<f32> {
        let mut out = vec![0f32; 3 * w];
        for x in 0..w {
            let s = if flip { w - 1 - x } else { x };
            for c in 0..3 {
                out[c * w + x] = src[3 * s + c] as f32 * scale[c] + bias[c];
            }
        }
        out
    }

    #[test]
    fn planar_rows_match_the_scalar_definition_at_every_width() {
        #[cfg(target_arch = "x86_64")]
        if !avx2() {
            eprintln!("notice: no AVX2 on this CPU, only the scalar path is tested");
        }
        let (scale, bias) = ([1.0 / 58.4, 1.0 / 57.1, 1.0 / 57.4], [-2.1, -2.03, -1.8]);
        for w in [1, 7, 8, 9, 10, 16, 17, 33, 224] {
            let src: Vec<u8> = (0..3 * w).map(|i| (i * 37 % 256) as u8).collect();
            for flip in [false, true] {
                let mut out = vec![0f32; 3 * w];
                let (r, rest) = out.split_at_mut(w);
                let (g, b) = rest.split_at_mut(w);
                to_planar(&src, [r, g, b], flip, scale, bias);
                assert_eq!(
                    out,
                    planar_reference(&src, w, flip, scale, bias),
                    "w {w} flip {flip}"
                );
            }
        }
    }
}
