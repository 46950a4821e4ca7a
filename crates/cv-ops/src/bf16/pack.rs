//! Packing strided f32 matrices into the bf16 panels both micro-kernels read, rounding to
//! bf16 on the way. A K-block is 32 values of the reduction axis; a tile is 1 KiB.
//! - `A` (`m x k`): panels of 16 rows; tile `(panel, q)` holds rows `16 panel..+16`, K values
//!   `32 q..+32`, row-major (`[16][32]`).
//! - `B` (`k x n`): panels of 16 columns; tile `(panel, q)` holds K pairs `16` x columns `16`
//!   x the pair (`[16][16][2]`), the "VNNI" layout `tdpbf16ps` and `vdpbf16ps` multiply.
//!
//! Every tile is written whole: rows and columns past the matrix are zeros. Full tiles of contiguous rows or columns are
//! converted 32 values at a time (`vcvtne2ps2bf16`); edges value by value.

use super::to_bf16;
use std::arch::x86_64::*;

/// Values per tile.
pub(super) const TILE: usize = 512;

/// A strided f32 matrix: pointer, row stride, column stride.
pub(crate) type Strided = (*const f32, usize, usize);

/// Makes `out` at least `len` long; its old values stay (every tile is overwritten).
fn grow(out: &mut Vec<u16>, len: usize) {
    if out.len() < len {
        out.resize(len, 0);
    }
}

/// Number of 16-wide panels and 32-deep K-blocks for a side of `len` and a depth `k`.
pub(super) fn panels(len: usize) -> usize {
    len.div_ceil(32) * 2
}

/// Packs `A` (`m x k`) into `panels(m)` panels of `blocks` tiles each.
///
/// # Safety
/// `a` describes a valid `m x k` matrix; the CPU has AVX512-BF16.
pub(super) unsafe fn pack_a(m: usize, k: usize, a: Strided, blocks: usize, out: &mut Vec<u16>) {
    let np = panels(m);
    grow(out, np * blocks * TILE);
    for panel in 0..np {
        for q in 0..blocks {
            let tile = &mut out[(panel * blocks + q) * TILE..][..TILE];
            let (r0, k0) = (panel * 16, q * 32);
            let full = r0 + 16 <= m && k0 + 32 <= k;
            // SAFETY: a full tile lies inside the matrix; AVX512-BF16 (caller).
            unsafe {
                if full && a.2 == 1 {
                    tile_rows_contiguous(a.0.add(r0 * a.1 + k0), a.1, tile);
                } else if full && a.1 == 1 {
                    tile_a_transposed(a.0.add(r0 + k0 * a.2), a.2, tile);
                } else {
                    tile.fill(0);
                    for r in 0..16.min(m.saturating_sub(r0)) {
                        for kk in 0..32.min(k.saturating_sub(k0)) {
                            let v = *a.0.add((r0 + r) * a.1 + (k0 + kk) * a.2);
                            tile[r * 32 + kk] = to_bf16(v);
                        }
                    }
                }
            }
        }
    }
}

/// Packs `B` (`k x n`) into `panels(n)` panels of `blocks` tiles each.
///
/// # Safety
/// `b` describes a valid `k x n` matrix; the CPU has AVX512-BF16.
pub(super) unsafe fn pack_b(k: usize, n: usize, b: Strided, blocks: usize, out: &mut Vec<u16>) {
    let np = panels(n);
    grow(out, np * blocks * TILE);
    for panel in 0..np {
        for q in 0..blocks {
            let tile = &mut out[(panel * blocks + q) * TILE..][..TILE];
            let (c0, k0) = (panel * 16, q * 32);
            let full = c0 + 16 <= n && k0 + 32 <= k;
            // SAFETY: a full tile lies inside the matrix; AVX512-BF16 (caller).
            unsafe {
                if full && b.2 == 1 {
                    tile_b_rows(b.0.add(k0 * b.1 + c0), b.1, tile);
                } else if full && b.1 == 1 {
                    tile_rows_contiguous_pairs_scattered(b.0.add(k0 + c0 * b.2), b.2, tile);
                } else {
                    tile.fill(0);
                    for kk in 0..32.min(k.saturating_sub(k0)) {
                        for c in 0..16.min(n.saturating_sub(c0)) {
                            let v = *b.0.add((k0 + kk) * b.1 + (c0 + c) * b.2);
                            tile[((kk / 2) * 16 + c) * 2 + kk % 2] = to_bf16(v);
                        }
                    }
                }
            }
        }
    }
}

/// 32 contiguous f32 at `src` as 32 bf16 (in order).
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn convert32(src: *const f32) -> __m512i {
    // SAFETY: 32 readable values (caller).
    let (lo, hi) = unsafe { (_mm512_loadu_ps(src), _mm512_loadu_ps(src.add(16))) };
    // SAFETY: same-size vector reinterpretation.
    unsafe { std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(hi, lo)) }
}

/// Two rows of 16 f32 (`even`, `odd`) as 16 interleaved bf16 pairs `(even[i], odd[i])`.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn interleave16(even: *const f32, odd: *const f32) -> __m512i {
    // SAFETY: 16 readable values each (caller).
    let (e, o) = unsafe { (_mm512_loadu_ps(even), _mm512_loadu_ps(odd)) };
    // SAFETY: same-size vector reinterpretation.
    let v = unsafe { std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(o, e)) };
    let idx = _mm512_set_epi16(
        31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5, 20, 4,
        19, 3, 18, 2, 17, 1, 16, 0,
    );
    _mm512_permutexvar_epi16(idx, v)
}

/// An `A` tile from 16 rows of 32 contiguous values, `ld` apart.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn tile_rows_contiguous(src: *const f32, ld: usize, tile: &mut [u16]) {
    for r in 0..16 {
        // SAFETY: row r has 32 values (caller); the tile has 512.
        unsafe {
            _mm512_storeu_si512(
                tile[r * 32..].as_mut_ptr().cast(),
                convert32(src.add(r * ld)),
            )
        };
    }
}

/// An `A` tile from a transposed source: `A[r][kk]` at `src[r + kk * ld]`.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn tile_a_transposed(src: *const f32, ld: usize, tile: &mut [u16]) {
    // Pair p = (A[r][2p], A[r][2p+1]) is u32 number r * 16 + p of the tile.
    let rows = _mm512_mullo_epi32(
        _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
        _mm512_set1_epi32(16),
    );
    for p in 0..16 {
        // SAFETY: K values 2p and 2p+1 of 16 rows (caller); scattered inside the tile.
        unsafe {
            let v = interleave16(src.add(2 * p * ld), src.add((2 * p + 1) * ld));
            let idx = _mm512_add_epi32(rows, _mm512_set1_epi32(p as i32));
            _mm512_i32scatter_epi32::<4>(tile.as_mut_ptr().cast(), idx, v);
        }
    }
}

/// A `B` tile from 32 rows of 16 contiguous values, `ld` apart.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn tile_b_rows(src: *const f32, ld: usize, tile: &mut [u16]) {
    for p in 0..16 {
        // SAFETY: rows 2p and 2p+1 have 16 values (caller); the tile row has 32 bf16.
        unsafe {
            let v = interleave16(src.add(2 * p * ld), src.add((2 * p + 1) * ld));
            _mm512_storeu_si512(tile[p * 32..].as_mut_ptr().cast(), v);
        }
    }
}

/// A `B` tile from a transposed source: column `c` is 32 contiguous K values at
/// `src[c * ld..]`, whose pairs go to u32 number `p * 16 + c` of the tile.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn tile_rows_contiguous_pairs_scattered(src: *const f32, ld: usize, tile: &mut [u16]) {
    let pairs = _mm512_mullo_epi32(
        _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
        _mm512_set1_epi32(16),
    );
    for c in 0..16 {
        // SAFETY: 32 values of column c (caller); scattered inside the tile.
        unsafe {
            let v = convert32(src.add(c * ld));
            let idx = _mm512_add_epi32(pairs, _mm512_set1_epi32(c as i32));
            _mm512_i32scatter_epi32::<4>(tile.as_mut_ptr().cast(), idx, v);
        }
    }
}
