//! The AVX512-BF16 micro-kernel: the same 32x32 block and the same packed panels as the AMX
//! kernel ([`super::amx::block_32x32`]), for CPUs without AMX. Each `vdpbf16ps` adds the
//! products of one bf16 pair of `A` (broadcast) with 16 pairs of `B` (one packed row) into
//! 16 f32 lanes; 8 rows x 32 columns of `C` live in 16 registers at a time.

use std::arch::x86_64::*;

/// Whether the CPU has AVX512-BF16 (with the AVX512 F and BW it builds on).
pub(super) fn available() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512bf16")
}

/// Rows of `C` per pass.
const ROWS: usize = 8;

/// `c[32 x 32] (+)= A . B` over `blocks` K-blocks; the arguments as in
/// [`super::amx::block_32x32`].
///
/// # Safety
/// [`available`] returned true; the panels hold `blocks` tiles; `c` is valid for a 32x32
/// block with row stride `ldc`.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub(super) unsafe fn block_32x32(
    a: [*const u16; 2],
    b: [*const u16; 2],
    blocks: usize,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
) {
    for group in 0..32 / ROWS {
        let panel = a[group * ROWS / 16];
        let row0 = group * ROWS % 16;
        let mut acc = [[_mm512_setzero_ps(); 2]; ROWS];
        for (r, acc) in acc.iter_mut().enumerate() {
            for (h, acc) in acc.iter_mut().enumerate() {
                if accumulate {
                    // SAFETY: inside the caller's 32x32 block of c.
                    *acc = unsafe { _mm512_loadu_ps(c.add((group * ROWS + r) * ldc + 16 * h)) };
                }
            }
        }
        for q in 0..blocks {
            for p in 0..16 {
                // SAFETY: tile q of each panel, packed row p (64 bytes).
                let (b0, b1) = unsafe {
                    let at = (q * 16 + p) * 32;
                    (
                        _mm512_loadu_si512(b[0].add(at).cast()),
                        _mm512_loadu_si512(b[1].add(at).cast()),
                    )
                };
                let (b0, b1) = (as_bf16(b0), as_bf16(b1));
                for (r, acc) in acc.iter_mut().enumerate() {
                    // SAFETY: row row0 + r of tile q, the pair of K at 2p.
                    let pair = unsafe {
                        panel
                            .add((q * 16 + row0 + r) * 32 + 2 * p)
                            .cast::<i32>()
                            .read_unaligned()
                    };
                    let av = as_bf16(_mm512_set1_epi32(pair));
                    acc[0] = _mm512_dpbf16_ps(acc[0], av, b0);
                    acc[1] = _mm512_dpbf16_ps(acc[1], av, b1);
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            for (h, acc) in acc.iter().enumerate() {
                // SAFETY: inside the caller's 32x32 block of c.
                unsafe { _mm512_storeu_ps(c.add((group * ROWS + r) * ldc + 16 * h), *acc) };
            }
        }
    }
}

/// 32 bf16 held in an integer vector, as the bf16 vector type.
fn as_bf16(v: __m512i) -> __m512bh {
    // SAFETY: both are 64-byte vectors of plain bits.
    unsafe { std::mem::transmute::<__m512i, __m512bh>(v) }
}
