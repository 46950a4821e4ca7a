//! One strided matrix product on the `gemm` crate, and how many threads a call may use.

use crate::autocast::Precision;
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

/// `dst[m x n] (+)= lhs[m x k] * rhs[k x n]`, all given by (pointer, row stride, column stride),
/// in `precision` (bf16 applies to f32 only; f64 always multiplies in f64).
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
    precision: Precision,
) {
    if m == 0 || n == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if let (Precision::Bf16(kernel), true) = (precision, T::IS_F32) {
        let f = |p: *const T| p.cast::<f32>();
        // SAFETY: T is f32 (IS_F32); forwarded from the caller.
        unsafe {
            let d = (dst.0.cast::<f32>(), dst.1, dst.2);
            let (l, r) = ((f(lhs.0), lhs.1, lhs.2), (f(rhs.0), rhs.1, rhs.2));
            crate::bf16::matmul_bf16(m, n, k, d, accumulate, l, r, par, kernel);
        }
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

/// The left operand of many products (a convolution's weights, one product per tile): in
/// bf16 it is packed once here instead of once per product.
pub(crate) enum SharedLhs<T> {
    /// Multiplied as it lies, in the tensors' precision.
    Plain {
        lhs: (*const T, usize, usize),
        m: usize,
        k: usize,
    },
    /// Packed to bf16 for this kernel family.
    #[cfg(target_arch = "x86_64")]
    Bf16(crate::bf16::PackedLhs, crate::bf16::Bf16Kernel),
}

// SAFETY: the pointer is only read, and the caller of `new` keeps its matrix alive and
// unchanged while the value exists.
unsafe impl<T: Sync> Sync for SharedLhs<T> {}
// SAFETY: as above.
unsafe impl<T: Sync> Send for SharedLhs<T> {}

impl<T: Elem> SharedLhs<T> {
    /// `lhs` (`m x k`) for products in `precision`.
    ///
    /// # Safety
    /// `lhs` is a valid `m x k` matrix that stays alive and unchanged while this value does.
    pub(crate) unsafe fn new(
        m: usize,
        k: usize,
        lhs: (*const T, usize, usize),
        precision: Precision,
    ) -> Self {
        #[cfg(target_arch = "x86_64")]
        if let (Precision::Bf16(kernel), true) = (precision, T::IS_F32) {
            let l = (lhs.0.cast::<f32>(), lhs.1, lhs.2);
            // SAFETY: T is f32 (IS_F32); forwarded from the caller.
            return SharedLhs::Bf16(unsafe { crate::bf16::PackedLhs::new(m, k, l) }, kernel);
        }
        let _ = precision;
        SharedLhs::Plain { lhs, m, k }
    }

    /// `dst[m x n] (+)= lhs * rhs[k x n]`, as [`matmul`].
    ///
    /// # Safety
    /// As [`matmul`] for `rhs` and `dst`.
    pub(crate) unsafe fn matmul(
        &self,
        n: usize,
        dst: (*mut T, usize, usize),
        accumulate: bool,
        rhs: (*const T, usize, usize),
        par: Parallelism,
    ) {
        match self {
            // SAFETY: forwarded from the caller and from `new`.
            SharedLhs::Plain { lhs, m, k } => unsafe {
                matmul(*m, n, *k, dst, accumulate, *lhs, rhs, par, Precision::Full)
            },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: T is f32 here (`new` packs only then); forwarded from the caller.
            SharedLhs::Bf16(a, kernel) => unsafe {
                let d = (dst.0.cast::<f32>(), dst.1, dst.2);
                let r = (rhs.0.cast::<f32>(), rhs.1, rhs.2);
                crate::bf16::matmul_packed(a, n, d, accumulate, r, par, *kernel)
            },
        }
    }
}
