//! f32 matrix products on AVX-512 that read their operands where they lie, for Winograd's many
//! small products (a unit of tiles at a time). Not for im2col's products: with their long inner
//! dimension (`c x 9`) `gemm`'s packed panels are faster (`docs/benchmarks.md`).
//!
//! Why not the `gemm` crate there: it packs both operands on every call, and with 64 to 512
//! channels and 64 to 512 columns per product the packing took about as long as two thirds of
//! the multiply-adds (`perf` on `benches/conv.rs`, figures in `docs/benchmarks.md`). Here a
//! register block of 6 rows x 64 columns keeps its 24 accumulators in registers while each
//! step of the inner dimension loads 4 vectors of the right operand (rows contiguous) and
//! broadcasts 6 values of the left one (any strides); the inner dimension runs in chunks whose
//! slice of the right operand stays in L2. Compiled on x86-64 only (see `lib.rs`).

use std::arch::x86_64::*;

/// Whether this CPU runs these kernels (AVX-512 F, detected once).
pub(crate) fn available() -> bool {
    use std::sync::OnceLock;
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| is_x86_feature_detected!("avx512f"))
}

/// Rows of the product per register block.
const ROWS: usize = 6;

/// Vectors of 16 columns per register block.
const VECS: usize = 4;

/// Columns per register block.
const COLS: usize = 16 * VECS;

/// Steps of the inner dimension per pass over a column block: 256 rows x 64 columns of the
/// right operand (64 KiB) stay in L2 while every row block of the left one passes.
const INNER_CHUNK: usize = 256;

/// A strided f32 matrix operand: its first value and the distances between its rows and
/// between its columns.
#[derive(Clone, Copy)]
pub(crate) struct Strided {
    pub ptr: *const f32,
    pub row: usize,
    pub col: usize,
}

/// `m[rows x cols] (+)= a[rows x inner] . b[inner x cols]`; `b` and `m` have contiguous rows
/// (column stride 1) `ldb` and `ldm` apart, `a` any strides. `m` is overwritten, or added to
/// with `accumulate`.
///
/// # Safety
/// [`available`] returned true; `a`, `b` and `m` are valid for the values of
/// `[rows, inner, cols]` at their strides, and `m` overlaps neither input.
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn products(
    a: Strided,
    (b, ldb): (*const f32, usize),
    (m, ldm): (*mut f32, usize),
    [rows, inner, cols]: [usize; 3],
    accumulate: bool,
) {
    for j0 in (0..cols).step_by(COLS) {
        for k0 in (0..inner.max(1)).step_by(INNER_CHUNK) {
            let s = Block {
                inner: (inner - k0).min(INNER_CHUNK),
                a_row: a.row,
                a_col: a.col,
                ldb,
                ldm,
                cols: (cols - j0).min(COLS),
                accumulate: accumulate || k0 > 0,
            };
            // SAFETY (every call): rows o..o+R of a and m, steps k0.. of the inner dimension
            // and columns j0..j0+cols of b and m are inside the caller's extents.
            unsafe {
                let at = |o: usize| {
                    (
                        a.ptr.add(o * a.row + k0 * a.col),
                        b.add(k0 * ldb + j0),
                        m.add(o * ldm + j0),
                    )
                };
                let mut o = 0;
                while o + ROWS <= rows {
                    let (a, b, m) = at(o);
                    block::<ROWS>(a, b, m, s);
                    o += ROWS;
                }
                let (a, b, m) = at(o);
                match rows - o {
                    1 => block::<1>(a, b, m, s),
                    2 => block::<2>(a, b, m, s),
                    3 => block::<3>(a, b, m, s),
                    4 => block::<4>(a, b, m, s),
                    5 => block::<5>(a, b, m, s),
                    _ => {}
                }
            }
        }
    }
}

/// The extent of one register block: the inner dimension, the strides, the block's columns
/// (1 to [`COLS`]) and whether it adds to `m`.
#[derive(Clone, Copy)]
struct Block {
    inner: usize,
    a_row: usize,
    a_col: usize,
    ldb: usize,
    ldm: usize,
    cols: usize,
    accumulate: bool,
}

/// A mask of the first `lanes` of 16 lanes (all for 16 or more, none for 0 or less).
pub(crate) fn first_lanes(lanes: isize) -> __mmask16 {
    match lanes {
        l if l >= 16 => 0xffff,
        l if l <= 0 => 0,
        l => (1u16 << l) - 1,
    }
}

/// `R` rows x `s.cols` columns of the product over `s.inner` steps: `a` at the block's first
/// row and step, `b` at its first step and column, `m` at its first row and column.
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
            // SAFETY: a[r][k] is inside the block's rows and steps.
            let ar = _mm512_set1_ps(unsafe { *a.add(r * s.a_row + k * s.a_col) });
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

    /// Every block remainder (rows not a multiple of 6, columns not of 16 or 64), inner
    /// dimensions past one chunk, a transposed left operand, padded row strides and
    /// accumulation; the padding of `m` is never written.
    #[test]
    fn products_match_the_f64_reference_for_every_block_remainder() {
        if !available() {
            eprintln!("skipping: this CPU has no AVX-512 F, so the kernel cannot run here");
            return;
        }
        for &(rows, inner, cols, transposed, accumulate) in &[
            (1, 1, 1, false, false),
            (5, 3, 17, true, false),
            (6, 64, 64, false, true),
            (7, 9, 65, false, false),
            (13, 33, 130, true, true),
            (64, 64, 128, false, false),
            (11, 600, 48, false, true),
            (8, 513, 70, true, false),
        ] {
            let (ldb, ldm) = (cols + 3, cols + 5);
            let a_vals = values(rows * inner, 1);
            let b = values(inner * ldb, 2);
            // a[r][k] at r * inner + k, or transposed at k * rows + r.
            let (row, col) = if transposed { (1, rows) } else { (inner, 1) };
            let a_at = |r: usize, k: usize| a_vals[r * row + k * col];
            let start = if accumulate {
                values(rows * ldm, 3)
            } else {
                vec![f32::NAN; rows * ldm]
            };
            let mut m = start.clone();
            // SAFETY: available() holds and the buffers have the sizes `products` reads.
            unsafe {
                let a = Strided {
                    ptr: a_vals.as_ptr(),
                    row,
                    col,
                };
                let shape = [rows, inner, cols];
                products(
                    a,
                    (b.as_ptr(), ldb),
                    (m.as_mut_ptr(), ldm),
                    shape,
                    accumulate,
                )
            };
            let what = format!("{rows}x{inner}x{cols} transposed {transposed} acc {accumulate}");
            for r in 0..rows {
                for j in 0..ldm {
                    let got = m[r * ldm + j];
                    if j >= cols {
                        assert!(
                            got.to_bits() == start[r * ldm + j].to_bits(),
                            "{what}: padding"
                        );
                        continue;
                    }
                    let base = if accumulate {
                        f64::from(start[r * ldm + j])
                    } else {
                        0.0
                    };
                    let want: f64 = base
                        + (0..inner)
                            .map(|k| f64::from(a_at(r, k)) * f64::from(b[k * ldb + j]))
                            .sum::<f64>();
                    let tol = 1e-5 * (1.0 + want.abs()) * (inner as f64).sqrt();
                    let got = f64::from(got);
                    assert!(
                        (got - want).abs() <= tol,
                        "{what} at ({r}, {j}): {got} vs {want}"
                    );
                }
            }
        }
    }
}
