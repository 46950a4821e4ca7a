//! AVX-512 versions of Winograd's per-tile transforms for f32: the input transform sixteen
//! tiles (one per lane) at a time, and the weight gradient's output-gradient transform with the
//! channels in the lanes, so that the products of both directions run on
//! [`crate::gemm_avx512::products`]. Compiled on x86-64 only (see `lib.rs`).

use crate::gemm_avx512::first_lanes;
use std::arch::x86_64::*;

/// `V[xi] = (B^T d B)[xi]` for `len` (1 to 16) consecutive tiles of one channel, stored at
/// `v + xi * xi_stride` (`len` values each): the tiles' 4x4 patches start at `rows`, rows `wp`
/// apart, tile `lane` at column `2 * lane`. `winograd_avx2::input_tiles8` with twice the
/// lanes: a patch row of 16 tiles is three masked loads, its even and odd columns two-source
/// permutes.
///
/// # Safety
/// [`crate::gemm_avx512::available`] returned true; `rows` readable for 4 rows of
/// `2 * len + 2` values `wp` apart; `v` writable for `len` values at each `xi * xi_stride`,
/// `xi < 16`.
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn input_tiles16(
    rows: *const f32,
    wp: usize,
    v: *mut f32,
    xi_stride: usize,
    len: usize,
) {
    let width = 2 * len as isize + 2;
    let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    let odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    // Values 2.. of the row: (lo, hi, top) shifted down by two lanes.
    let shift2 = |high: __m512, low: __m512| {
        _mm512_castsi512_ps(_mm512_alignr_epi32::<2>(
            _mm512_castps_si512(high),
            _mm512_castps_si512(low),
        ))
    };
    // d[r][q]: patch value (r, q) of the sixteen tiles.
    let d: [[__m512; 4]; 4] = std::array::from_fn(|r| {
        // SAFETY: row r holds `width` readable values (caller's contract); masked-off lanes
        // are not read.
        let (lo, hi, top) = unsafe {
            let p = rows.add(r * wp);
            (
                _mm512_maskz_loadu_ps(first_lanes(width), p),
                _mm512_maskz_loadu_ps(first_lanes(width - 16), p.add(16)),
                _mm512_maskz_loadu_ps(first_lanes(width - 32), p.add(32)),
            )
        };
        let (lo2, hi2) = (shift2(hi, lo), shift2(top, hi));
        [
            _mm512_permutex2var_ps(lo, even, hi),
            _mm512_permutex2var_ps(lo, odd, hi),
            _mm512_permutex2var_ps(lo2, even, hi2),
            _mm512_permutex2var_ps(lo2, odd, hi2),
        ]
    });
    // Columns first (e = B^T d), then rows (e B), as in the generic code.
    let e: [[__m512; 4]; 4] = std::array::from_fn(|r| {
        std::array::from_fn(|q| {
            let (d0, d1, d2, d3) = (d[0][q], d[1][q], d[2][q], d[3][q]);
            match r {
                0 => _mm512_sub_ps(d0, d2),
                1 => _mm512_add_ps(d1, d2),
                2 => _mm512_sub_ps(d2, d1),
                _ => _mm512_sub_ps(d1, d3),
            }
        })
    });
    let mask = first_lanes(len as isize);
    for (r, er) in e.iter().enumerate() {
        let (a, b, c, dd) = (er[0], er[1], er[2], er[3]);
        let vals = [
            _mm512_sub_ps(a, c),
            _mm512_add_ps(b, c),
            _mm512_sub_ps(c, b),
            _mm512_sub_ps(b, dd),
        ];
        for (q, val) in vals.into_iter().enumerate() {
            // SAFETY: xi = r * 4 + q < 16, `len` values within the caller's v extent.
            unsafe { _mm512_mask_storeu_ps(v.add((r * 4 + q) * xi_stride), mask, val) };
        }
    }
}

/// The weight gradient's transformed output-gradient tiles with the channels contiguous:
/// `E[xi][t - t0][o] = (A e A^T)[xi]` for the 2x2 patch `e` of channel `o` at tile `t`
/// (`A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]`, zero past the map's edge), so that
/// `M^T[xi] += V[xi] E[xi]` is a [`crate::gemm_avx512::products`] call. Sixteen channels per
/// gather, whose lane offsets are up to 15 planes of `oh * ow` values.
///
/// # Safety
/// [`crate::gemm_avx512::available`] returned true; `dy` holds `g.n * g.co * g.oh * g.ow`
/// values with `16 * g.oh * g.ow <= i32::MAX`; `e` is writable for `16 * (t1 - t0) * g.co`
/// values.
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn grad_tiles_by_channel(
    dy: *const f32,
    g: &crate::geom::Geom,
    (t0, t1): (usize, usize),
    e: *mut f32,
) {
    let (co, oh, ow) = (g.co, g.oh, g.ow);
    let (th, tw) = (oh.div_ceil(2), ow.div_ceil(2));
    let nb = t1 - t0;
    let plane = (oh * ow) as i32;
    let offsets = _mm512_mullo_epi32(
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
        _mm512_set1_epi32(plane),
    );
    let zero = _mm512_setzero_ps();
    for t in t0..t1 {
        let (img, ty, tx) = (t / (th * tw), t / tw % th, t % tw);
        let (y0, x0) = (2 * ty, 2 * tx);
        let (right, below) = (x0 + 1 < ow, y0 + 1 < oh);
        for o0 in (0..co).step_by(16) {
            let mask = first_lanes((co - o0) as isize);
            // SAFETY: pixel (y0 + dy, x0 + dx) of channels o0.. of image img, inside the map
            // when read (masked-off channels and pixels past the edge are not).
            let at = |dy_: usize, dx: usize, inside: bool| unsafe {
                if inside {
                    let p = dy.add((img * co + o0) * oh * ow + (y0 + dy_) * ow + x0 + dx);
                    _mm512_mask_i32gather_ps::<4>(zero, mask, offsets, p)
                } else {
                    zero
                }
            };
            let (e00, e01) = (at(0, 0, true), at(0, 1, right));
            let (e10, e11) = (at(1, 0, below), at(1, 1, right && below));
            // f = A e (4x2), then f A^T (4x4): row r of f is (a, b), its outputs
            // (a, a + b, a - b, -b).
            let f = [
                (e00, e01),
                (_mm512_add_ps(e00, e10), _mm512_add_ps(e01, e11)),
                (_mm512_sub_ps(e00, e10), _mm512_sub_ps(e01, e11)),
                (_mm512_sub_ps(zero, e10), _mm512_sub_ps(zero, e11)),
            ];
            for (r, &(fa, fb)) in f.iter().enumerate() {
                let vals = [
                    fa,
                    _mm512_add_ps(fa, fb),
                    _mm512_sub_ps(fa, fb),
                    _mm512_sub_ps(zero, fb),
                ];
                for (q, val) in vals.into_iter().enumerate() {
                    let xi = r * 4 + q;
                    // SAFETY: E[xi][t - t0][o0..o0 + lanes] lies inside e.
                    unsafe {
                        _mm512_mask_storeu_ps(e.add((xi * nb + t - t0) * co + o0), mask, val)
                    };
                }
            }
        }
    }
}
