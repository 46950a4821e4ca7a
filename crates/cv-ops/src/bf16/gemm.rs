//! The blocked driver: pack both operands ([`super::pack`]; the left one once for many
//! products, see [`PackedLhs`]), then walk 32x32 blocks of `C` in K chunks that keep one `A`
//! block pair in L1 and the `B` chunk in L2, rows split across threads. Blocks inside the
//! matrix are accumulated in `dst` itself (row-major destinations); edge blocks in a small
//! buffer that is copied out at the end.

use super::pack::{pack_a, pack_b, panels, Strided, TILE};
use super::{amx, avx512, Bf16Kernel};
use crate::buffers::SendPtr;
use gemm::Parallelism;
use rayon::prelude::*;
use std::cell::RefCell;

/// K-blocks (of 32) per chunk: 512 values of the reduction axis.
const CHUNK: usize = 16;

/// Values of one 32x32 block.
const BLOCK: usize = 32 * 32;

/// The left operand of many products (a convolution's weights), packed to bf16 once.
pub(crate) struct PackedLhs {
    data: Vec<u16>,
    m: usize,
    k: usize,
    blocks: usize,
}

impl PackedLhs {
    /// Packs `lhs` (`m x k`).
    ///
    /// # Safety
    /// `lhs` describes a valid `m x k` matrix; the CPU has AVX512-BF16 (a [`Bf16Kernel`]).
    pub(crate) unsafe fn new(m: usize, k: usize, lhs: Strided) -> Self {
        let blocks = k.div_ceil(32);
        let mut data = Vec::new();
        // SAFETY: forwarded from the caller.
        unsafe { pack_a(m, k, lhs, blocks, &mut data) };
        PackedLhs { data, m, k, blocks }
    }
}

thread_local! {
    /// The packed right operand of this thread's products, reused between calls.
    static RHS: RefCell<Vec<u16>> = const { RefCell::new(Vec::new()) };
}

/// `dst[m x n] (+)= lhs[m x k] * rhs[k x n]` with both operands rounded to bf16 and f32 sums,
/// on `kernel`; the arguments as in [`crate::matmul::matmul`].
///
/// # Safety
/// As [`crate::matmul::matmul`]; `kernel` came from [`super::bf16_kernel`].
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn matmul_bf16(
    m: usize,
    n: usize,
    k: usize,
    dst: (*mut f32, usize, usize),
    accumulate: bool,
    lhs: Strided,
    rhs: Strided,
    par: Parallelism,
    kernel: Bf16Kernel,
) {
    if m == 0 || n == 0 {
        return;
    }
    // SAFETY: forwarded from the caller.
    unsafe {
        let a = PackedLhs::new(m, k, lhs);
        matmul_packed(&a, n, dst, accumulate, rhs, par, kernel);
    }
}

/// `dst[m x n] (+)= a * rhs[k x n]` for a packed `a` (`m x k`).
///
/// # Safety
/// As [`matmul_bf16`].
pub(crate) unsafe fn matmul_packed(
    a: &PackedLhs,
    n: usize,
    dst: (*mut f32, usize, usize),
    accumulate: bool,
    rhs: Strided,
    par: Parallelism,
    kernel: Bf16Kernel,
) {
    let (m, k) = (a.m, a.k);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                for j in 0..n {
                    // SAFETY: (i, j) is inside dst (caller).
                    unsafe { *dst.0.add(i * dst.1 + j * dst.2) = 0.0 };
                }
            }
        }
        return;
    }
    let threads = match par {
        Parallelism::Rayon(t) => t.max(1),
        _ => 1,
    };
    let run = |b: &mut Vec<u16>| {
        // SAFETY: rhs is valid (caller); a Bf16Kernel implies AVX512-BF16.
        unsafe { pack_b(k, n, rhs, a.blocks, b) };
        let c = Dst {
            ptr: SendPtr(dst.0),
            rs: dst.1,
            cs: dst.2,
            m,
            n,
            accumulate,
        };
        multiply(a, b, c, threads, kernel);
    };
    // A product started while this thread's buffer is in use (rayon ran another task here
    // while waiting) packs into a buffer of its own.
    RHS.with(|cell| match cell.try_borrow_mut() {
        Ok(mut b) => run(&mut b),
        Err(_) => run(&mut Vec::new()),
    });
}

/// Where the product goes.
#[derive(Clone, Copy)]
struct Dst {
    ptr: SendPtr<f32>,
    rs: usize,
    cs: usize,
    m: usize,
    n: usize,
    accumulate: bool,
}

impl Dst {
    /// Whether block `(mb, nb)` lies inside and its rows are contiguous: accumulated in place.
    fn direct(&self, mb: usize, nb: usize) -> bool {
        self.cs == 1 && (mb + 1) * 32 <= self.m && (nb + 1) * 32 <= self.n
    }
}

/// `dst (+)= A . B` over the packed panels, bands of 32-row blocks per thread.
fn multiply(a: &PackedLhs, b: &[u16], dst: Dst, threads: usize, kernel: Bf16Kernel) {
    let (row_pairs, col_pairs) = (panels(dst.m) / 2, panels(dst.n) / 2);
    let blocks = a.blocks;
    // Edge blocks (outside the matrix in part, or a strided dst): one 32x32 buffer each.
    let edge: Vec<(usize, usize)> = (0..row_pairs)
        .flat_map(|mb| (0..col_pairs).map(move |nb| (mb, nb)))
        .filter(|&(mb, nb)| !dst.direct(mb, nb))
        .collect();
    let mut edge_buf = vec![0f32; edge.len() * BLOCK];
    let edge_ptr = SendPtr(edge_buf.as_mut_ptr());
    let edge_at = |mb: usize, nb: usize| edge.binary_search(&(mb, nb)).ok();
    let band = |rows: std::ops::Range<usize>| {
        if kernel == Bf16Kernel::Amx {
            // SAFETY: AMX state was granted (kernel is Amx only then); released below.
            unsafe { amx::configure() };
        }
        for q0 in (0..blocks).step_by(CHUNK) {
            let nq = CHUNK.min(blocks - q0);
            for mb in rows.clone() {
                let ap = |h: usize| a.data[((2 * mb + h) * blocks + q0) * TILE..].as_ptr();
                for nb in 0..col_pairs {
                    let bp = |h: usize| b[((2 * nb + h) * blocks + q0) * TILE..].as_ptr();
                    // SAFETY: block (mb, nb) (of dst, or its edge buffer) belongs to this
                    // band; the panels hold tiles q0..q0+nq.
                    unsafe {
                        let (c, ldc, load) = match edge_at(mb, nb) {
                            Some(e) => (edge_ptr.get().add(e * BLOCK), 32, q0 > 0),
                            None => {
                                let at = mb * 32 * dst.rs + nb * 32;
                                (dst.ptr.get().add(at), dst.rs, q0 > 0 || dst.accumulate)
                            }
                        };
                        block(kernel, [ap(0), ap(1)], [bp(0), bp(1)], nq, c, ldc, load);
                    }
                }
            }
        }
        if kernel == Bf16Kernel::Amx {
            // SAFETY: configured above on this thread.
            unsafe { amx::release() };
        }
    };
    let per = row_pairs.div_ceil(threads.min(row_pairs).max(1));
    if threads > 1 && row_pairs > per {
        (0..row_pairs.div_ceil(per))
            .into_par_iter()
            .for_each(|i| band(i * per..((i + 1) * per).min(row_pairs)));
    } else {
        band(0..row_pairs);
    }
    for (e, &(mb, nb)) in edge.iter().enumerate() {
        let c = &edge_buf[e * BLOCK..(e + 1) * BLOCK];
        for r in 0..32.min(dst.m - mb * 32) {
            for col in 0..32.min(dst.n - nb * 32) {
                let (i, j) = (mb * 32 + r, nb * 32 + col);
                let v = c[r * 32 + col];
                // SAFETY: (i, j) is inside dst (caller).
                unsafe {
                    let d = dst.ptr.get().add(i * dst.rs + j * dst.cs);
                    *d = if dst.accumulate { *d + v } else { v };
                }
            }
        }
    }
}

/// One 32x32 block on the chosen kernel.
///
/// # Safety
/// As [`amx::block_32x32`] (which also needs [`amx::configure`] on this thread).
#[allow(clippy::too_many_arguments)]
unsafe fn block(
    kernel: Bf16Kernel,
    a: [*const u16; 2],
    b: [*const u16; 2],
    nq: usize,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
) {
    // SAFETY: forwarded from the caller.
    unsafe {
        match kernel {
            Bf16Kernel::Amx => amx::block_32x32(a, b, nq, c, ldc, accumulate),
            Bf16Kernel::Avx512 => avx512::block_32x32(a, b, nq, c, ldc, accumulate),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bf16::{from_bf16, to_bf16};
    use crate::test_data::data;

    fn values(len: usize, seed: usize) -> Vec<f32> {
        data(len, seed).into_iter().map(|v| v as f32).collect()
    }

    /// The kernels this CPU runs; prints a notice for each it lacks.
    pub(crate) fn kernels_here() -> Vec<Bf16Kernel> {
        let mut v = Vec::new();
        if avx512::available() {
            v.push(Bf16Kernel::Avx512);
            if amx::available() {
                v.push(Bf16Kernel::Amx);
            } else {
                eprintln!("notice: no AMX-BF16 here; the AMX kernel is not tested");
            }
        } else {
            eprintln!("notice: no AVX512-BF16 here; the bf16 kernels are not tested");
        }
        v
    }

    /// `lhs . rhs` in f64 from the bf16-rounded operands, with `sum |terms|` for the bound.
    fn reference(m: usize, n: usize, k: usize, a: &[f32], b: &[f32]) -> (Vec<f64>, Vec<f64>) {
        let r = |x: f32| from_bf16(to_bf16(x)) as f64;
        let (mut c, mut mag) = (vec![0.0; m * n], vec![0.0; m * n]);
        for i in 0..m {
            for j in 0..n {
                for t in 0..k {
                    let p = r(a[i * k + t]) * r(b[t * n + j]);
                    c[i * n + j] += p;
                    mag[i * n + j] += p.abs();
                }
            }
        }
        (c, mag)
    }

    #[test]
    fn products_match_the_rounded_f64_reference_for_every_kernel_shape_and_layout() {
        let shapes = [
            (1, 1, 1),
            (32, 32, 32),
            (17, 5, 33),
            (64, 48, 600),
            (33, 70, 31),
            (100, 1, 7),
            (3, 129, 1100),
            (8, 450, 576),
        ];
        for kernel in kernels_here() {
            for &(m, n, k) in &shapes {
                let a = values(m * k, 1);
                let b = values(k * n, 2);
                let (want, mag) = reference(m, n, k, &a, &b);
                // The same matrices row-major and transposed in memory.
                let at: Vec<f32> = (0..k * m).map(|i| a[(i % m) * k + i / m]).collect();
                let bt: Vec<f32> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
                for (transposed, par) in [(false, Parallelism::None), (true, Parallelism::Rayon(2))]
                {
                    for accumulate in [false, true] {
                        let start = values(m * n, 3);
                        let mut c = if accumulate {
                            start.clone()
                        } else {
                            vec![0.0; m * n]
                        };
                        let (lhs, rhs) = if transposed {
                            ((at.as_ptr(), 1, m), (bt.as_ptr(), 1, k))
                        } else {
                            ((a.as_ptr(), k, 1), (b.as_ptr(), n, 1))
                        };
                        // SAFETY: every operand is the m x k / k x n / m x n matrix it claims.
                        unsafe {
                            let dst = (c.as_mut_ptr(), n, 1);
                            matmul_bf16(m, n, k, dst, accumulate, lhs, rhs, par, kernel);
                        }
                        for i in 0..m * n {
                            let base = if accumulate { start[i] as f64 } else { 0.0 };
                            let err = (c[i] as f64 - base - want[i]).abs();
                            let bound = 1e-5 * (mag[i] + base.abs()) + 1e-6;
                            assert!(
                                err <= bound,
                                "{kernel} {m}x{n}x{k} transposed={transposed} \
                                 accumulate={accumulate} [{i}]: {} vs {}",
                                c[i],
                                base + want[i]
                            );
                        }
                    }
                }
            }
        }
    }
}
