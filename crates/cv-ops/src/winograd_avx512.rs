//! The 16 products of a Winograd forward unit, `M[xi] = U[xi] V[xi]`, on AVX-512 for f32.
//!
//! Why not the `gemm` crate here: each product is small (`co x c` times `c x tiles`, with
//! 64 to 512 channels and 64 to 128 tiles), and `gemm` packs both operands on every call. With
//! 64 channels the packing took as long as two thirds of the multiply-adds (`perf` on
//! `benches/conv.rs`, figures in `docs/benchmarks.md`). Both operands already lie in a layout a
//! kernel can read directly: `U[xi]` row-major (a row per output channel) and `V[xi]`
//! row-major with the tiles contiguous, so a block of 6 output channels x 64 tiles keeps its
//! 24 accumulators in registers while each step of the inner dimension loads 4 vectors of
//! `V` and broadcasts 6 values of `U`. Compiled on x86-64 only (see `lib.rs`).

use std::arch::x86_64::*;

/// Whether this CPU runs [`products`] (AVX-512 F, detected once).
pub(crate) fn available() -> bool {
    use std::sync::OnceLock;
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| is_x86_feature_detected!("avx512f"))
}

/// Output channels per register block.
const ROWS: usize = 6;

/// Vectors of 16 tiles per register block.
const VECS: usize = 4;

/// Tiles per register block.
const COLS: usize = 16 * VECS;

/// A row-major f32 matrix operand: its first value and the distance between its rows.
#[derive(Clone, Copy)]
pub(crate) struct Rows {
    pub ptr: *const f32,
    pub stride: usize,
}

/// `m[rows x cols] (+)= a[rows x inner] . b[inner x cols]`, each row-major with its own row
/// stride (`ldm` for `m`); `m` is overwritten, or added to with `accumulate`.
///
/// # Safety
/// [`available`] returned true; `a`, `b` and `m` are valid for the rows and columns of
/// `[rows, inner, cols]` at their strides, and `m` overlaps neither input.
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn products(
    a: Rows,
    b: Rows,
    m: *mut f32,
    ldm: usize,
    [rows, inner, cols]: [usize; 3],
    accumulate: bool,
) {
    let shape = Block {
        inner,
        lda: a.stride,
        ldb: b.stride,
        ldm,
        cols: 0,
        accumulate,
    };
    for j0 in (0..cols).step_by(COLS) {
        let shape = Block {
            cols: (cols - j0).min(COLS),
            ..shape
        };
        let mut o = 0;
        // SAFETY (every call): rows o..o+R of a and m and columns j0..j0+cols of b and m are
        // inside the caller's extents.
        unsafe {
            let at = |o: usize| (a.ptr.add(o * a.stride), b.ptr.add(j0), m.add(o * ldm + j0));
            while o + ROWS <= rows {
                let (a, b, m) = at(o);
                block::<ROWS>(a, b, m, shape);
                o += ROWS;
            }
            let (a, b, m) = at(o);
            match rows - o {
                1 => block::<1>(a, b, m, shape),
                2 => block::<2>(a, b, m, shape),
                3 => block::<3>(a, b, m, shape),
                4 => block::<4>(a, b, m, shape),
                5 => block::<5>(a, b, m, shape),
                _ => {}
            }
        }
    }
}

/// The extent of one register block: the inner dimension, the three row strides, the block's
/// columns (1 to [`COLS`]) and whether it adds to `m`.
#[derive(Clone, Copy)]
struct Block {
    inner: usize,
    lda: usize,
    ldb: usize,
    ldm: usize,
    cols: usize,
    accumulate: bool,
}

/// A mask of the first `lanes` of 16 lanes (all for 16 or more, none for 0 or less).
fn first_lanes(lanes: isize) -> __mmask16 {
    match lanes {
        l if l >= 16 => 0xffff,
        l if l <= 0 => 0,
        l => (1u16 << l) - 1,
    }
}

/// `R` rows x `s.cols` columns of the product: `a` at the block's first row, `b` and `m` at
/// its first column.
///
/// # Safety
/// As [`products`], for this block.
#[target_feature(enable = "avx512f")]
unsafe fn block<const R: usize>(a: *const f32, b: *const f32, m: *mut f32, s: Block) {
    let masks: [__mmask16; VECS] =
        std::array::from_fn(|q| first_lanes(s.cols as isize - 16 * q as isize));
    let used = s.cols.div_ceil(16);
    // SAFETY (loads and stores of m): row r of m holds the block's `cols` columns; masked-off
    // lanes are neither read nor written.
    let mut acc: [[__m512; VECS]; R] = std::array::from_fn(|r| {
        std::array::from_fn(|q| {
            if s.accumulate && q < used {
                unsafe { _mm512_maskz_loadu_ps(masks[q], m.add(r * s.ldm + 16 * q)) }
            } else {
                _mm512_setzero_ps()
            }
        })
    });
    for k in 0..s.inner {
        // SAFETY: row k of b holds the block's `cols` columns; masked-off lanes are not read.
        let bk: [__m512; VECS] = std::array::from_fn(|q| unsafe {
            _mm512_maskz_loadu_ps(masks[q], b.add(k * s.ldb + 16 * q))
        });
        for (r, acc_r) in acc.iter_mut().enumerate() {
            // SAFETY: a[r][k] is inside the block's rows.
            let ar = _mm512_set1_ps(unsafe { *a.add(r * s.lda + k) });
            // All four vectors even in a narrower tail block: its zero lanes cost less than
            // a branch per multiply-add.
            for q in 0..VECS {
                acc_r[q] = _mm512_fmadd_ps(ar, bk[q], acc_r[q]);
            }
        }
    }
    for (r, acc_r) in acc.iter().enumerate() {
        for q in 0..used {
            unsafe { _mm512_mask_storeu_ps(m.add(r * s.ldm + 16 * q), masks[q], acc_r[q]) };
        }
    }
}

/// `V[xi] = (B^T d B)[xi]` for `len` (1 to 16) consecutive tiles of one channel, stored at
/// `v + xi * xi_stride` (`len` values each): the tiles' 4x4 patches start at `rows`, rows `wp`
/// apart, tile `lane` at column `2 * lane`. `winograd_avx2::input_tiles8` with twice the
/// lanes: a patch row of 16 tiles is three masked loads, its even and odd columns two-source
/// permutes.
///
/// # Safety
/// [`available`] returned true; `rows` readable for 4 rows of `2 * len + 2` values `wp` apart;
/// `v` writable for `len` values at each `xi * xi_stride`, `xi < 16`.
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
/// `M^T[xi] += V[xi] E[xi]` is a [`products`] call. Sixteen channels per gather.
///
/// # Safety
/// [`available`] returned true; `dy` holds `g.n * g.co * g.oh * g.ow` values with
/// `g.co * g.oh * g.ow < 2^31`; `e` is writable for `16 * (t1 - t0) * g.co` values.
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

#[cfg(test)]
mod tests {
    use super::*;

    fn values(len: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn products_match_the_f64_reference_for_every_block_remainder() {
        if !available() {
            eprintln!("skipping: this CPU has no AVX-512 F, so the kernel cannot run here");
            return;
        }
        for &(co, c, nb) in &[
            (1, 1, 1),
            (5, 3, 17),
            (6, 64, 64),
            (7, 9, 65),
            (13, 33, 130),
            (64, 64, 128),
            (11, 512, 48),
        ] {
            let (u, v) = (values(co * c, 1), values(c * nb, 2));
            // NaN sentinels: every value of m must be written.
            let mut m = vec![f32::NAN; co * nb];
            // SAFETY: available() holds and the buffers have the sizes `products` reads.
            unsafe {
                products(
                    Rows {
                        ptr: u.as_ptr(),
                        stride: c,
                    },
                    Rows {
                        ptr: v.as_ptr(),
                        stride: nb,
                    },
                    m.as_mut_ptr(),
                    nb,
                    [co, c, nb],
                    false,
                )
            };
            for o in 0..co {
                for j in 0..nb {
                    let want: f64 = (0..c)
                        .map(|k| f64::from(u[o * c + k]) * f64::from(v[k * nb + j]))
                        .sum();
                    let got = f64::from(m[o * nb + j]);
                    assert!(
                        (got - want).abs() <= 1e-5 * (1.0 + want.abs()) * (c as f64).sqrt(),
                        "co {co} c {c} nb {nb} at ({o}, {j}): {got} vs {want}"
                    );
                }
            }
        }
    }
}
