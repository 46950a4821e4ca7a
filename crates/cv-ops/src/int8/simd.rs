//! Which vector width the int8 element-wise passes (epilogue, input quantization, max-pool)
//! run with: detected once per process. Our crates build for baseline x86-64 (SSE2), so a loop
//! left to the compiler vectorizes 16 bytes at a time unless it is compiled inside a function
//! that enables wider instructions; [`Simd::widest`] is that function.

use std::sync::OnceLock;

/// The widest vectors this CPU has for the int8 passes; every one gives the portable codes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Simd {
    #[cfg(target_arch = "x86_64")]
    Avx512,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    Portable,
}

impl Simd {
    pub(super) fn detect() -> Simd {
        static SIMD: OnceLock<Simd> = OnceLock::new();
        *SIMD.get_or_init(|| {
            #[cfg(target_arch = "x86_64")]
            {
                if is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vl")
                {
                    return Simd::Avx512;
                }
                if is_x86_feature_detected!("avx2") {
                    return Simd::Avx2;
                }
            }
            Simd::Portable
        })
    }

    /// Runs `f` inlined into a function compiled for this width, so that its loops vectorize
    /// with it (`f` must be `#[inline(always)]`-able: a closure or a small generic function).
    pub(super) fn widest<R>(self, f: impl FnOnce() -> R) -> R {
        match self {
            // SAFETY: `detect` found the instructions on this CPU.
            #[cfg(target_arch = "x86_64")]
            Simd::Avx512 => unsafe { with_avx512(f) },
            // SAFETY: as above.
            #[cfg(target_arch = "x86_64")]
            Simd::Avx2 => unsafe { with_avx2(f) },
            Simd::Portable => f(),
        }
    }
}

/// # Safety
/// The CPU has AVX-512 F, BW and VL.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn with_avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// # Safety
/// The CPU has AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn with_avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}
