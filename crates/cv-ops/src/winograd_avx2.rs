//! AVX2 versions of Winograd's per-tile transforms for f32, eight tiles (one per lane) at a
//! time: the generic lane-wise code in `winograd.rs` gathers each patch value with a scalar
//! load and scatters each output with a scalar store, which makes the transforms about as
//! costly as the gemms of the Winograd forward. Here a patch row of eight tiles is four
//! unaligned loads split into
//! even and odd lanes, and an output row is two interleaved stores; shorter runs of tiles (a
//! 14x14 map has rows of 7) use masked loads and stores.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Whether this CPU runs these kernels (AVX2, detected once; shared with `crate::direct`).
#[cfg(target_arch = "x86_64")]
pub(crate) fn available() -> bool {
    crate::direct::available()
}

/// A lane mask of the first `count` lanes (all for 8 or more, none for 0 or less).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn first_lanes(count: isize) -> __m256i {
    let count = count.clamp(0, 8) as i32;
    _mm256_cmpgt_epi32(
        _mm256_set1_epi32(count),
        _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
    )
}

/// The first `count` of 8 values at `p` (zeros after), reading only those.
///
/// # Safety
/// AVX2 must be available and `p` readable for `min(count, 8)` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn load_first(p: *const f32, count: isize) -> __m256 {
    if count >= 8 {
        // SAFETY: 8 readable values.
        unsafe { _mm256_loadu_ps(p) }
    } else {
        // SAFETY: masked-off lanes are not read.
        unsafe { _mm256_maskload_ps(p, first_lanes(count)) }
    }
}

/// Stores the first `count` lanes of `v` at `p`.
///
/// # Safety
/// AVX2 must be available and `p` writable for `min(count, 8)` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn store_first(p: *mut f32, v: __m256, count: isize) {
    if count >= 8 {
        // SAFETY: 8 writable values.
        unsafe { _mm256_storeu_ps(p, v) }
    } else if count > 0 {
        // SAFETY: masked-off lanes are not written.
        unsafe { _mm256_maskstore_ps(p, first_lanes(count), v) }
    }
}

/// The even and odd lanes of the first `count` (up to 16) values at `p`, each in order, zeros
/// past them.
///
/// # Safety
/// AVX2 must be available and `p` readable for `min(count, 16)` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn split_even_odd(p: *const f32, count: isize) -> (__m256, __m256) {
    // SAFETY: the caller makes `count` values at p readable; no others are read.
    let (lo, hi) = unsafe { (load_first(p, count), load_first(p.add(8), count - 8)) };
    // shuffle_ps works within 128-bit halves; permute4x64 puts the halves' results in order.
    let fix =
        |v: __m256| _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(v), 0b11_01_10_00));
    (
        fix(_mm256_shuffle_ps(lo, hi, 0b10_00_10_00)),
        fix(_mm256_shuffle_ps(lo, hi, 0b11_01_11_01)),
    )
}

/// `V[xi] = (B^T d B)[xi]` for `len` (1 to 8) consecutive tiles of one channel, stored at
/// `v + xi * xi_stride` (`len` values each): the tiles' 4x4 patches start at `rows`, rows `wp`
/// apart, tile `lane` at column `2 * lane`.
///
/// # Safety
/// AVX2 must be available; `rows` readable for 4 rows of `2 * len + 2` values `wp` apart; `v`
/// writable for `len` values at each `xi * xi_stride`, `xi < 16`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn input_tiles8(
    rows: *const f32,
    wp: usize,
    v: *mut f32,
    xi_stride: usize,
    len: usize,
) {
    let (len, width) = (len as isize, 2 * len as isize + 2);
    // d[r][q]: patch value (r, q) of the eight tiles.
    let mut d = [[_mm256_setzero_ps(); 4]; 4];
    for (r, dr) in d.iter_mut().enumerate() {
        // SAFETY: row r holds `width` readable values (caller's contract).
        unsafe {
            let p = rows.add(r * wp);
            let (c0, c1) = split_even_odd(p, width);
            let (c2, c3) = split_even_odd(p.add(2), width - 2);
            *dr = [c0, c1, c2, c3];
        }
    }
    // Columns first (e = B^T d), then rows (e B), as in the generic code.
    let mut e = [[_mm256_setzero_ps(); 4]; 4];
    for q in 0..4 {
        let (d0, d1, d2, d3) = (d[0][q], d[1][q], d[2][q], d[3][q]);
        e[0][q] = _mm256_sub_ps(d0, d2);
        e[1][q] = _mm256_add_ps(d1, d2);
        e[2][q] = _mm256_sub_ps(d2, d1);
        e[3][q] = _mm256_sub_ps(d1, d3);
    }
    for (r, er) in e.iter().enumerate() {
        let (a, b, c, dd) = (er[0], er[1], er[2], er[3]);
        let vals = [
            _mm256_sub_ps(a, c),
            _mm256_add_ps(b, c),
            _mm256_sub_ps(c, b),
            _mm256_sub_ps(b, dd),
        ];
        for (q, val) in vals.into_iter().enumerate() {
            // SAFETY: xi = r * 4 + q < 16, `len` values within the caller's v extent.
            unsafe { store_first(v.add((r * 4 + q) * xi_stride), val, len) };
        }
    }
}

/// `Y = A^T m A` for `len` (1 to 8) consecutive tiles of one output channel: `m[xi]` (`len`
/// values) at `m + xi * xi_stride`, the 2x2 outputs written to `rows` rows (1 or 2, `ow` apart)
/// from `out`, tile `lane` at columns `2 * lane` and `2 * lane + 1`, the first `cols` columns
/// only (the map's edge may clip the last tile).
///
/// # Safety
/// AVX2 must be available; `m` readable for `len` values at each `xi * xi_stride`; `out`
/// writable for `rows` rows of `cols` values `ow` apart.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn output_tiles8(
    m: *const f32,
    xi_stride: usize,
    len: usize,
    out: *mut f32,
    ow: usize,
    rows: usize,
    cols: usize,
) {
    let cols = cols as isize;
    // SAFETY: 16 rows of `len` readable values (caller's contract); no others are read.
    let mm: [__m256; 16] =
        std::array::from_fn(|xi| unsafe { load_first(m.add(xi * xi_stride), len as isize) });
    for dy in 0..rows.min(2) {
        // r = A^T m (row dy), then its columns.
        let rq: [__m256; 4] = std::array::from_fn(|q| {
            let (a, b, c, d) = (mm[q], mm[4 + q], mm[8 + q], mm[12 + q]);
            if dy == 0 {
                _mm256_add_ps(_mm256_add_ps(a, b), c)
            } else {
                _mm256_sub_ps(_mm256_sub_ps(b, c), d)
            }
        });
        let o0 = _mm256_add_ps(_mm256_add_ps(rq[0], rq[1]), rq[2]);
        let o1 = _mm256_sub_ps(_mm256_sub_ps(rq[1], rq[2]), rq[3]);
        // Interleave to o0[0], o1[0], o0[1], o1[1], ...
        let lo = _mm256_unpacklo_ps(o0, o1);
        let hi = _mm256_unpackhi_ps(o0, o1);
        // SAFETY: `cols` writable values in row dy (caller's contract); no others written.
        unsafe {
            let p = out.add(dy * ow);
            store_first(p, _mm256_permute2f128_ps(lo, hi, 0x20), cols);
            store_first(p.add(8), _mm256_permute2f128_ps(lo, hi, 0x31), cols - 8);
        }
    }
}

/// `E[xi] = (A e A^T)[xi]` for `len` (1 to 8) consecutive tiles of one output-gradient channel,
/// stored at `e + xi * xi_stride` (`len` values each): the tiles' 2x2 patches start at `rows`
/// (`rows_in` rows inside the map, 1 or 2, `ow` apart; zeros below), tile `lane` at columns
/// `2 * lane` and `2 * lane + 1`, `cols` columns inside the map (zeros past them).
///
/// # Safety
/// AVX2 must be available; `rows` readable for `rows_in` rows of `cols` values `ow` apart; `e`
/// writable for `len` values at each `xi * xi_stride`, `xi < 16`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn grad_tiles8(
    rows: *const f32,
    ow: usize,
    rows_in: usize,
    cols: usize,
    e: *mut f32,
    xi_stride: usize,
    len: usize,
) {
    // p[r][q]: gradient (r, q) of the tiles, zero outside the map.
    let mut p = [[_mm256_setzero_ps(); 2]; 2];
    for (r, pr) in p.iter_mut().enumerate().take(rows_in.min(2)) {
        // SAFETY: row r holds `cols` readable values (caller's contract).
        let (c0, c1) = unsafe { split_even_odd(rows.add(r * ow), cols as isize) };
        *pr = [c0, c1];
    }
    let neg = |v: __m256| _mm256_sub_ps(_mm256_setzero_ps(), v);
    for r in 0..4 {
        // f = A p (row r of 4), then E[r] = f A^T.
        let f: [__m256; 2] = std::array::from_fn(|q| {
            let (a, b) = (p[0][q], p[1][q]);
            match r {
                0 => a,
                1 => _mm256_add_ps(a, b),
                2 => _mm256_sub_ps(a, b),
                _ => neg(b),
            }
        });
        let (a, b) = (f[0], f[1]);
        let vals = [a, _mm256_add_ps(a, b), _mm256_sub_ps(a, b), neg(b)];
        for (q, val) in vals.into_iter().enumerate() {
            // SAFETY: xi = r * 4 + q < 16, `len` values within the caller's e extent.
            unsafe { store_first(e.add((r * 4 + q) * xi_stride), val, len as isize) };
        }
    }
}
