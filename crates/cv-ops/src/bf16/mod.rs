//! Matrix products with bf16 inputs and f32 accumulation, the arithmetic of PyTorch's CPU
//! autocast: f32 operands are rounded to bf16 (nearest even) while they are packed, the
//! products are summed in f32 and the result is f32. Two kernel families, picked once per
//! process from what the CPU and the OS offer: AMX tiles (`tdpbf16ps`) where the CPU has
//! AMX-BF16, else AVX512-BF16 (`vdpbf16ps`). Both read the same packed panels ([`pack`]).
//!
//! Why our own: the `gemm` crate multiplies bf16 by widening it to f32 (no AMX, no
//! `vdpbf16ps`), and stable Rust has no AMX intrinsics, so the tile instructions are `asm!`.

#[cfg(target_arch = "x86_64")]
mod amx;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "x86_64")]
mod gemm;
#[cfg(target_arch = "x86_64")]
mod pack;

#[cfg(target_arch = "x86_64")]
pub(crate) use gemm::{matmul_bf16, matmul_packed, PackedLhs};

use crate::error::OpsError;
use std::sync::OnceLock;

/// The instructions a bf16 product runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bf16Kernel {
    /// AMX tiles (`tdpbf16ps`), Intel Sapphire Rapids and later.
    Amx,
    /// AVX512-BF16 (`vdpbf16ps`), Intel Cooper Lake and later, AMD Zen 4 and later.
    Avx512,
}

impl Bf16Kernel {
    /// The name recorded in `config.json` and logs: `amx-bf16` or `avx512-bf16`.
    pub fn name(self) -> &'static str {
        match self {
            Bf16Kernel::Amx => "amx-bf16",
            Bf16Kernel::Avx512 => "avx512-bf16",
        }
    }
}

impl std::fmt::Display for Bf16Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The bf16 kernel family of this CPU, or why it has none (detected once per process).
pub fn bf16_kernel() -> Result<Bf16Kernel, OpsError> {
    static KERNEL: OnceLock<Result<Bf16Kernel, String>> = OnceLock::new();
    KERNEL
        .get_or_init(detect)
        .clone()
        .map_err(|lacks| OpsError::Unsupported {
            what: "bf16 on the CPU".into(),
            reason: lacks,
        })
}

#[cfg(target_arch = "x86_64")]
fn detect() -> Result<Bf16Kernel, String> {
    if !avx512::available() {
        return Err(
            "this CPU has neither AMX-BF16 nor AVX512-BF16 (bf16 needs Intel Sapphire \
             Rapids / Cooper Lake or AMD Zen 4 or later); use --precision f32"
                .into(),
        );
    }
    if amx::available() {
        Ok(Bf16Kernel::Amx)
    } else {
        Ok(Bf16Kernel::Avx512)
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> Result<Bf16Kernel, String> {
    Err(
        "bf16 on the CPU needs an x86-64 CPU with AMX-BF16 or AVX512-BF16; use --precision f32"
            .into(),
    )
}

/// `x` rounded to the nearest bf16, ties to even, as bits (a NaN stays a quiet NaN). The
/// hardware conversion used in [`pack`] rounds the same way.
pub(crate) fn to_bf16(x: f32) -> u16 {
    if x.is_nan() {
        return 0x7fc0 | ((x.to_bits() >> 16) as u16 & 0x8000);
    }
    let b = x.to_bits();
    ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

/// The f32 a bf16 stands for.
#[cfg(test)]
pub(crate) fn from_bf16(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_is_to_nearest_even_and_keeps_nan_and_infinity() {
        assert_eq!(to_bf16(1.0), 0x3f80);
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to the even mantissa (1.0).
        assert_eq!(to_bf16(1.0 + 1.0 / 256.0), 0x3f80);
        // 1 + 3 * 2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6: ties to even (1 + 2^-6).
        assert_eq!(from_bf16(to_bf16(1.0 + 3.0 / 256.0)), 1.0 + 1.0 / 64.0);
        assert_eq!(from_bf16(to_bf16(-2.5)), -2.5);
        assert!(from_bf16(to_bf16(f32::NAN)).is_nan());
        assert_eq!(from_bf16(to_bf16(f32::INFINITY)), f32::INFINITY);
        assert_eq!(from_bf16(to_bf16(f32::MAX)), f32::INFINITY);
        for &x in &[0.1f32, 3.3, -7.77, 1e-3, 123456.0] {
            let r = from_bf16(to_bf16(x));
            assert!(((r - x) / x).abs() <= 1.0 / 256.0, "{x} -> {r}");
        }
    }
}
