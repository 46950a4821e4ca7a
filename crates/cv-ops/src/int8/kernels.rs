//! The int8 kernel families, which one this CPU runs, the weights packed for them, and the
//! portable kernel (the others are in `x86`). A kernel computes one tile: the exact i32 sums
//! of [`PIXELS`] output pixels for [`BLOCK`] output channels.

use std::sync::OnceLock;

use super::requant::{Requant, TileRows};
use super::tensor::stored_channels;

/// Output pixels per tile (6 x 4 zmm accumulators fill AVX-512's 32 registers with room for
/// the 4 weight vectors and the broadcast).
pub(crate) const PIXELS: usize = 6;
/// Output channels per tile (64 i32 lanes: 4 zmm).
pub(crate) const BLOCK: usize = 64;
/// Bytes of packed weights per input quad of one block: 64 channels x 4 codes.
const QUAD_BYTES: usize = BLOCK * 4;

/// The instructions the int8 products run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Int8Kernel {
    /// AVX512-VNNI `vpdpbusd` on zmm (Intel Cascade Lake and later, AMD Zen 4 and later).
    Avx512Vnni,
    /// AVX-VNNI `vpdpbusd` on ymm (Intel Alder Lake and later client CPUs, AMD Zen 5).
    AvxVnni,
    /// AVX2 `vpmaddwd` on operands widened to i16.
    Avx2,
    /// Plain Rust.
    Scalar,
}

impl Int8Kernel {
    /// Every family, fastest first.
    pub const ALL: [Int8Kernel; 4] = [
        Int8Kernel::Avx512Vnni,
        Int8Kernel::AvxVnni,
        Int8Kernel::Avx2,
        Int8Kernel::Scalar,
    ];

    /// The name recorded in `config.json` and logs.
    pub fn name(self) -> &'static str {
        match self {
            Int8Kernel::Avx512Vnni => "avx512-vnni",
            Int8Kernel::AvxVnni => "avx-vnni",
            Int8Kernel::Avx2 => "avx2",
            Int8Kernel::Scalar => "scalar",
        }
    }

    /// Whether this CPU has the family's instructions.
    pub fn available(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        match self {
            Int8Kernel::Avx512Vnni => super::x86::has_avx512_vnni(),
            Int8Kernel::AvxVnni => super::x86::has_avx_vnni(),
            Int8Kernel::Avx2 => super::x86::has_avx2(),
            Int8Kernel::Scalar => true,
        }
        #[cfg(not(target_arch = "x86_64"))]
        matches!(self, Int8Kernel::Scalar)
    }
}

impl std::fmt::Display for Int8Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The fastest family this CPU has (detected once per process).
pub fn int8_kernel() -> Int8Kernel {
    static KERNEL: OnceLock<Int8Kernel> = OnceLock::new();
    *KERNEL.get_or_init(|| {
        Int8Kernel::ALL
            .into_iter()
            .find(|k| k.available())
            .unwrap_or(Int8Kernel::Scalar)
    })
}

/// Every family this CPU has, fastest first.
pub fn int8_kernels_available() -> Vec<Int8Kernel> {
    Int8Kernel::ALL
        .into_iter()
        .filter(|k| k.available())
        .collect()
}

/// Weights in the kernels' order: per block of 64 output channels, per kernel row `ky`, the
/// row's `(kx, channel)` pairs in the input's order (`kx * stored channels + channel`) cut in
/// quads, each quad the 64 output channels' 4 codes (`vpdpbusd`'s operand). Codes of padding
/// channels and past the row's end are zero. With channels a multiple of four, tap `(ky, kx)`
/// starts a quad of its own. The AVX2 kernel's copy (codes widened to i16, each quad split in
/// two pairs) is made the first time it is asked for.
#[derive(Debug)]
pub(crate) struct PackedWeights {
    quads: Vec<i8>,
    pairs: OnceLock<Vec<i16>>,
    per_block: usize,
}

/// Quads of one kernel row of `kernel` pixels of `channels` (stored as the input stores them).
pub(crate) fn quads_per_row(channels: usize, kernel: usize) -> usize {
    (kernel * stored_channels(channels)).div_ceil(4)
}

/// The packed weights of one kernel family.
#[derive(Clone, Copy)]
pub(crate) enum Packed<'a> {
    Quads(&'a [i8]),
    Pairs(&'a [i16]),
}

impl PackedWeights {
    pub(crate) fn new(weight: &[i8], [out_c, in_c, kh, kw]: [usize; 4]) -> PackedWeights {
        let (cp, row) = (stored_channels(in_c), quads_per_row(in_c, kw));
        let per_block = kh * row * QUAD_BYTES;
        let mut quads = vec![0i8; out_c.div_ceil(BLOCK) * per_block];
        for oc in 0..out_c {
            let block = &mut quads[(oc / BLOCK) * per_block..][..per_block];
            for ch in 0..in_c {
                for tap in 0..kh * kw {
                    let at = (tap % kw) * cp + ch;
                    let q = (tap / kw) * row + at / 4;
                    block[q * QUAD_BYTES + (oc % BLOCK) * 4 + at % 4] =
                        weight[(oc * in_c + ch) * kh * kw + tap];
                }
            }
        }
        PackedWeights {
            quads,
            pairs: OnceLock::new(),
            per_block,
        }
    }

    pub(crate) fn for_kernel(&self, kernel: Int8Kernel) -> Packed<'_> {
        match kernel {
            Int8Kernel::Avx2 => Packed::Pairs(self.pairs.get_or_init(|| self.widen())),
            _ => Packed::Quads(&self.quads),
        }
    }

    /// Each quad row `[64][4]` as two pair rows `[64][2]` of i16.
    fn widen(&self) -> Vec<i16> {
        let mut out = vec![0i16; self.quads.len()];
        for (src, dst) in self
            .quads
            .chunks(QUAD_BYTES)
            .zip(out.chunks_mut(QUAD_BYTES))
        {
            for j in 0..BLOCK {
                for e in 0..4 {
                    dst[(e / 2) * 2 * BLOCK + 2 * j + e % 2] = src[4 * j + e] as i16;
                }
            }
        }
        out
    }
}

impl<'a> Packed<'a> {
    /// The weights of output-channel block `block`.
    pub(crate) fn block(self, weights: &PackedWeights, block: usize) -> Packed<'a> {
        self.slice(block * weights.per_block, weights.per_block)
    }

    fn slice(self, start: usize, len: usize) -> Packed<'a> {
        match self {
            Packed::Quads(q) => Packed::Quads(&q[start..][..len]),
            Packed::Pairs(p) => Packed::Pairs(&p[start..][..len]),
        }
    }
}

/// One tap `(ky, kx)` of a convolution as the kernels walk it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Tap {
    /// Offset of the tap's first channel from a pixel's top-left tap, in the input.
    pub input: usize,
    /// Index of the tap's first quad in the packed weights (`tap index * quads per tap`).
    pub weight: usize,
}

/// What one tile reads: the pixels' top-left taps in the input, the taps and quads they run,
/// and the packed weights of the tile's block of output channels ([`PackedWeights::block`]).
pub(crate) struct Operands<'a> {
    pub inputs: [*const u8; PIXELS],
    pub taps: &'a [Tap],
    pub quads: usize,
    pub weights: Packed<'a>,
}

/// The tile of `op`: `acc[i][j] = sum over the given taps t and quads q of
/// input[i][t.input + 4q + e] * w[j][t, q, e]` (a subset of the taps skips those that read only
/// padding).
///
/// # Safety
/// For every pixel, `inputs[i] + taps[t] + 4 * quads` must stay inside one allocation, and
/// `weights` must be a block of [`PackedWeights::for_kernel`]'s for `kernel`, each tap's
/// `weight` + `quads` within it; `kernel` must be available on this CPU.
pub(crate) unsafe fn tile(kernel: Int8Kernel, op: &Operands, acc: &mut [[i32; BLOCK]; PIXELS]) {
    let Operands {
        inputs,
        taps,
        quads,
        weights,
    } = op;
    // SAFETY: the caller's contract is the kernels'.
    unsafe {
        match (kernel, *weights) {
            #[cfg(target_arch = "x86_64")]
            (Int8Kernel::Avx512Vnni, Packed::Quads(w)) => {
                super::x86::vnni512(inputs, taps, *quads, w.as_ptr(), acc)
            }
            #[cfg(target_arch = "x86_64")]
            (Int8Kernel::AvxVnni, Packed::Quads(w)) => {
                super::x86::avx_vnni(inputs, taps, *quads, w.as_ptr(), acc)
            }
            #[cfg(target_arch = "x86_64")]
            (Int8Kernel::Avx2, Packed::Pairs(w)) => {
                super::x86::avx2(inputs, taps, *quads, w.as_ptr(), acc)
            }
            (_, Packed::Quads(w)) => scalar(inputs, taps, *quads, w, acc),
            (_, Packed::Pairs(_)) => unreachable!("only the AVX2 kernel takes the i16 pairs"),
        }
    }
}

/// Whether `kernel` has a form that requantizes in its registers ([`tile_requant`]).
pub(crate) fn requantizes_in_registers(kernel: Int8Kernel, requant: &Requant) -> bool {
    kernel == Int8Kernel::Avx512Vnni && requant.in_registers()
}

/// [`tile`] with the epilogue applied in the registers and the codes written to `rows`.
///
/// # Safety
/// As [`tile`], with [`requantizes_in_registers`] true for `kernel`, and `rows` as
/// [`TileRows`] says.
pub(crate) unsafe fn tile_requant(
    kernel: Int8Kernel,
    op: &Operands,
    requant: &Requant,
    rows: &TileRows,
) {
    match (kernel, op.weights) {
        // SAFETY: the caller's contract is the kernel's.
        #[cfg(target_arch = "x86_64")]
        (Int8Kernel::Avx512Vnni, Packed::Quads(w)) if requant.in_registers() => unsafe {
            super::x86::vnni512_requant(&op.inputs, op.taps, op.quads, w.as_ptr(), requant, rows)
        },
        _ => unreachable!("only the AVX512-VNNI kernel requantizes in its registers"),
    }
}

/// The portable kernel (and the definition the others are tested against).
///
/// # Safety
/// As [`tile`].
unsafe fn scalar(
    inputs: &[*const u8; PIXELS],
    taps: &[Tap],
    quads: usize,
    w: &[i8],
    acc: &mut [[i32; BLOCK]; PIXELS],
) {
    for (input, sums) in inputs.iter().zip(acc.iter_mut()) {
        *sums = [0; BLOCK];
        for tap in taps {
            for q in 0..quads {
                // SAFETY: the caller keeps every tap of the pixel inside its tensor.
                let a = unsafe { std::slice::from_raw_parts(input.add(tap.input + 4 * q), 4) };
                let wq = &w[(tap.weight + q) * QUAD_BYTES..][..QUAD_BYTES];
                for (s, wj) in sums.iter_mut().zip(wq.chunks_exact(4)) {
                    *s += (0..4).map(|e| a[e] as i32 * wj[e] as i32).sum::<i32>();
                }
            }
        }
    }
}
