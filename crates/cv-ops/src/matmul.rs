//! One strided matrix product on the `gemm` crate, and how many threads a call may use.

use crate::elem::Elem;
use gemm::Parallelism;

/// Threads in the current rayon pool (at least one).
pub(crate) fn threads() -> usize {
    rayon::current_num_threads().max(1)
}

/// Parallelism for a gemm call that runs alone: all `nt` threads, or none for one.
pub(crate) fn inner_parallelism(nt: usize) -> Parallelism {
    if nt > 1 {
        Parallelism::Rayon(nt)
    } else {
        Parallelism::None
    }
}

/// `dst[m x n] (+)= lhs[m x k] * rhs[k x n]`, all given by (pointer, row stride, column stride).
///
/// # Safety
/// Every pointer must be valid for the strided matrix it describes; `dst` must not alias the
/// inputs and no other thread may access it.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn matmul<T: Elem>(
    m: usize,
    n: usize,
    k: usize,
    dst: (*mut T, usize, usize),
    accumulate: bool,
    lhs: (*const T, usize, usize),
    rhs: (*const T, usize, usize),
    par: Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    // gemm computes dst := alpha*dst + beta*lhs*rhs (alpha scales dst, unlike BLAS).
    // SAFETY: forwarded from the caller.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.0,
            dst.2 as isize,
            dst.1 as isize,
            accumulate,
            lhs.0,
            lhs.2 as isize,
            lhs.1 as isize,
            rhs.0,
            rhs.2 as isize,
            rhs.1 as isize,
            if accumulate { T::ONE } else { T::ZERO },
            T::ONE,
            false,
            false,
            false,
            par,
        )
    }
}
