//! The AMX micro-kernel: a 32x32 f32 block of `C` from two 16-row panels of `A` and two
//! 16-column panels of `B` ([`super::pack`]), in the eight tile registers: four accumulators
//! (`tmm0..3`), two `A` tiles (`tmm4..5`), two `B` tiles (`tmm6..7`), each 16 rows of 64 bytes.
//!
//! Stable Rust has no AMX intrinsics (`x86_amx_intrinsics` is unstable), so the instructions
//! are `asm!`. The compiler never allocates tile registers, so they keep their values between
//! the `asm!` blocks of one call. Linux hands out tile state only on request
//! (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`, once per process, before any use).

use std::arch::asm;

/// Bytes per tile row, and per tile (16 rows).
const ROW_BYTES: usize = 64;
const TILE_BYTES: usize = 16 * ROW_BYTES;

/// Whether the CPU has AMX-BF16 and the OS granted this process the tile state.
pub(super) fn available() -> bool {
    // cpuid leaf 7 exists on every CPU with AVX512 (checked by the caller first).
    let leaf7 = std::arch::x86_64::__cpuid_count(7, 0);
    let amx_bf16 = leaf7.edx & (1 << 22) != 0;
    let amx_tile = leaf7.edx & (1 << 24) != 0;
    amx_bf16 && amx_tile && request_tile_state()
}

#[cfg(target_os = "linux")]
fn request_tile_state() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: a syscall with integer arguments; it only changes this process's permissions.
    unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        ) == 0
    }
}

/// Other systems: only Linux is known to enable tile state here, so AVX512-BF16 is used.
#[cfg(not(target_os = "linux"))]
fn request_tile_state() -> bool {
    false
}

/// The `ldtilecfg` operand: palette 1, eight tiles of 16 rows x 64 bytes.
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    bytes_per_row: [u16; 16],
    rows: [u8; 16],
}

/// Loads the tile configuration on this thread; [`release`] ends it.
///
/// # Safety
/// The CPU must have AMX and the process the tile state ([`available`] returned true).
pub(super) unsafe fn configure() {
    let mut cfg = TileConfig {
        palette: 1,
        start_row: 0,
        reserved: [0; 14],
        bytes_per_row: [0; 16],
        rows: [0; 16],
    };
    for t in 0..8 {
        cfg.bytes_per_row[t] = ROW_BYTES as u16;
        cfg.rows[t] = 16;
    }
    // SAFETY: cfg is a valid 64-byte configuration; AMX is available (caller).
    unsafe { asm!("ldtilecfg [{}]", in(reg) &cfg as *const TileConfig, options(nostack)) };
}

/// Releases this thread's tile state (so the OS need not save it on context switches).
///
/// # Safety
/// As [`configure`].
pub(super) unsafe fn release() {
    // SAFETY: AMX is available (caller).
    unsafe { asm!("tilerelease", options(nostack, nomem)) };
}

/// `c[32 x 32] (+)= A . B` over `blocks` K-blocks of 32: `a0`/`a1` are the two 16-row panels
/// of `A`, `b0`/`b1` the two 16-column panels of `B`, each `blocks` tiles of 1 KiB one after
/// the other. `c` has row stride `ldc` floats; its old values are added when `accumulate`.
///
/// # Safety
/// [`configure`] ran on this thread; the panels hold `blocks` tiles; `c` is valid for a 32x32
/// block with row stride `ldc`; `blocks > 0`.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn block_32x32(
    a: [*const u16; 2],
    b: [*const u16; 2],
    blocks: usize,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
) {
    debug_assert!(blocks > 0);
    let stride = ldc * 4;
    // SAFETY: the four 16x16 quarters of the caller's 32x32 block.
    let (c1, c2) = unsafe { (c.add(16), c.add(16 * ldc)) };
    // SAFETY: as c2.
    let c3 = unsafe { c2.add(16) };
    // SAFETY (all blocks): tiles configured (caller); every address is inside the caller's
    // panels and block; the tile registers are ours between these blocks.
    if accumulate {
        unsafe {
            asm!(
                "tileloadd tmm0, [{c0} + {s}*1]",
                "tileloadd tmm1, [{c1} + {s}*1]",
                "tileloadd tmm2, [{c2} + {s}*1]",
                "tileloadd tmm3, [{c3} + {s}*1]",
                c0 = in(reg) c, c1 = in(reg) c1, c2 = in(reg) c2, c3 = in(reg) c3,
                s = in(reg) stride, options(nostack, readonly),
            )
        };
    } else {
        unsafe {
            asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                options(nostack, nomem)
            )
        };
    }
    unsafe {
        asm!(
            "2:",
            "tileloadd tmm4, [{a0} + {s}*1]",
            "tileloadd tmm6, [{b0} + {s}*1]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tileloadd tmm7, [{b1} + {s}*1]",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tileloadd tmm5, [{a1} + {s}*1]",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            "add {a0}, {t}",
            "add {a1}, {t}",
            "add {b0}, {t}",
            "add {b1}, {t}",
            "dec {n}",
            "jnz 2b",
            a0 = inout(reg) a[0] => _, a1 = inout(reg) a[1] => _,
            b0 = inout(reg) b[0] => _, b1 = inout(reg) b[1] => _,
            n = inout(reg) blocks => _, s = in(reg) ROW_BYTES, t = const TILE_BYTES,
            options(nostack, readonly),
        )
    };
    unsafe {
        asm!(
            "tilestored [{c0} + {s}*1], tmm0",
            "tilestored [{c1} + {s}*1], tmm1",
            "tilestored [{c2} + {s}*1], tmm2",
            "tilestored [{c3} + {s}*1], tmm3",
            c0 = in(reg) c, c1 = in(reg) c1, c2 = in(reg) c2, c3 = in(reg) c3,
            s = in(reg) stride, options(nostack),
        )
    };
}
