//! Direct (no im2col) f32 convolution kernels for layers with few channels, on AVX2 + FMA.
//!
//! Why: for the small CNN's 3->6 and 6->16 5x5 convolutions, im2col writes 25x the input and
//! gemm then packs it again; with so few channels the copies cost more than the arithmetic
//! (im2col alone is a large share of the small CNN's training step). These kernels read the image in place.
//!
//! The trick is the *flattened* output: for a stride-1, unpadded conv of an `h x w` plane, the
//! output at flat position `j = oy * w + ox` is `sum_t wt[t] * x[j + ky * w + kx]`, so every
//! tap is one contiguous, shifted run of the input. Positions with `ox >= ow` are computed too
//! and ignored (a waste of `(w - ow) / w`), which turns the conv into long, unit-stride vector
//! FMAs with the accumulators in registers. The input gradient is the same kernel on the
//! zero-padded output gradient with the flipped, transposed weights.
//!
//! Everything here works on raw pointers with documented read/write extents; callers size and
//! pad their buffers by [`BLOCK`]. Elsewhere than on x86-64 only [`available`] (false) and the
//! sizes are compiled, and the callers keep to their gemm paths.
#![cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// f32 lanes of one AVX2 vector.
const LANES: usize = 8;
/// Vectors of output one register block covers.
const V: usize = 2;
/// Output positions one forward block computes: callers round lengths up to this.
pub(crate) const BLOCK: usize = V * LANES;
/// Output channels kept in registers at once (forward): `CG * V` accumulators.
const MAX_CG: usize = 6;

/// Whether this CPU runs the kernels (AVX2 and FMA, detected once).
pub(crate) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static HAS: OnceLock<bool> = OnceLock::new();
        *HAS.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Sizes of one flattened convolution: `cin` input planes `in_stride` apart, each read with
/// row width `row_w`, a `k x k` kernel; `cout` output rows of `blocks * BLOCK` positions.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Flat {
    pub cin: usize,
    pub in_stride: usize,
    pub row_w: usize,
    pub k: usize,
    pub cout: usize,
    pub blocks: usize,
    /// Positions of each input plane that may be non-zero; kernel rows that read only zeros
    /// outside it are skipped (the input gradient's zero border, a large part of its taps
    /// for the small CNN's conv2). `(0, usize::MAX)` reads everything.
    pub nonzero: (usize, usize),
}

impl Flat {
    /// Taps per input plane.
    fn taps(&self) -> usize {
        self.k * self.k
    }

    /// Elements of `inp` a call reads: `(cin - 1) * in_stride + reach`.
    pub(crate) fn input_extent(&self) -> usize {
        (self.cin - 1) * self.in_stride + self.reach()
    }

    /// Elements of one input plane a call reads from its start: the last block's end shifted
    /// by the farthest tap.
    pub(crate) fn reach(&self) -> usize {
        self.blocks * BLOCK + (self.k - 1) * (self.row_w + 1)
    }
}

/// `out[o][j] = sum_{i, ky, kx} wt[o][(i * k + ky) * k + kx] * inp[i * in_stride + j + ky * row_w + kx]`
/// for `j < blocks * BLOCK`; `out` rows are `out_stride` apart.
///
/// # Safety
/// [`available`] must be true; `inp` readable for [`Flat::input_extent`] elements, `wt` for
/// `cout * cin * k * k`, `out` writable for `(cout - 1) * out_stride + blocks * BLOCK`, and
/// not overlapping the inputs.
#[cfg(target_arch = "x86_64")]
pub(crate) unsafe fn conv(
    f: &Flat,
    inp: *const f32,
    wt: *const f32,
    out: *mut f32,
    out_stride: usize,
) {
    let wrow = f.cin * f.taps();
    let mut o = 0;
    while o < f.cout {
        let cg = (f.cout - o).min(MAX_CG);
        // SAFETY: rows o..o+cg of wt and out, within the extents the caller guarantees.
        unsafe {
            let (w, y) = (wt.add(o * wrow), out.add(o * out_stride));
            match cg {
                6 => conv_group::<6>(f, inp, w, y, out_stride),
                5 => conv_group::<5>(f, inp, w, y, out_stride),
                4 => conv_group::<4>(f, inp, w, y, out_stride),
                3 => conv_group::<3>(f, inp, w, y, out_stride),
                2 => conv_group::<2>(f, inp, w, y, out_stride),
                _ => conv_group::<1>(f, inp, w, y, out_stride),
            }
        }
        o += cg;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn conv_group<const CG: usize>(
    f: &Flat,
    inp: *const f32,
    wt: *const f32,
    out: *mut f32,
    out_stride: usize,
) {
    let (taps, wrow) = (f.taps(), f.cin * f.taps());
    for b in 0..f.blocks {
        let j0 = b * BLOCK;
        // Kernel row ky reads positions [j0 + ky*row_w, j0 + ky*row_w + k - 1 + BLOCK).
        let (lo, hi) = f.nonzero;
        let span = f.k - 1 + BLOCK;
        let ky0 = (lo + 1)
            .saturating_sub(j0 + span)
            .div_ceil(f.row_w)
            .min(f.k);
        let ky1 = if hi > j0 {
            (hi - j0).div_ceil(f.row_w).min(f.k)
        } else {
            0
        };
        let mut acc = [[_mm256_setzero_ps(); V]; CG];
        for i in 0..f.cin {
            // SAFETY: reads stay within input_extent (see Flat::reach) and the weight rows.
            unsafe {
                let ip = inp.add(i * f.in_stride + j0);
                let wp = wt.add(i * taps);
                for ky in ky0..ky1.max(ky0) {
                    let rp = ip.add(ky * f.row_w);
                    for kx in 0..f.k {
                        let src = rp.add(kx);
                        let x0 = _mm256_loadu_ps(src);
                        let x1 = _mm256_loadu_ps(src.add(LANES));
                        let t = ky * f.k + kx;
                        for (g, a) in acc.iter_mut().enumerate() {
                            let wv = _mm256_broadcast_ss(&*wp.add(g * wrow + t));
                            a[0] = _mm256_fmadd_ps(wv, x0, a[0]);
                            a[1] = _mm256_fmadd_ps(wv, x1, a[1]);
                        }
                    }
                }
            }
        }
        for (g, a) in acc.iter().enumerate() {
            // SAFETY: positions j0..j0+BLOCK of row g, within the caller's out extent.
            unsafe {
                let y = out.add(g * out_stride + j0);
                _mm256_storeu_ps(y, a[0]);
                _mm256_storeu_ps(y.add(LANES), a[1]);
            }
        }
    }
}

/// Output channels and taps of one weight-gradient register block: 10 accumulators, two
/// gradient vectors and one input vector fit AVX2's 16 registers (3 x 4 spills), and
/// five taps are one kernel row of a 5x5 conv.
const DW_CG: usize = 2;
const DW_TG: usize = 5;

/// `dw[o][(i * k + ky) * k + kx] += sum_{img, j} d[img][o][j] * inp[img][i * in_stride + j + ky * row_w + kx]`
/// for `j < blocks * BLOCK`, over `images` images: inputs `img_stride` apart, output-gradient
/// rows `d_stride` apart within an image and `d_img` apart between images (`f.cout` rows).
///
/// # Safety
/// [`available`] must be true; each image's input readable for [`Flat::input_extent`]
/// elements, each `d` row for `blocks * BLOCK`, `dw` writable for `cout * cin * k * k`.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn weight_grad(
    f: &Flat,
    images: usize,
    inp: *const f32,
    img_stride: usize,
    d: *const f32,
    d_stride: usize,
    d_img: usize,
    dw: *mut f32,
) {
    let taps = f.taps();
    let mut o = 0;
    while o < f.cout {
        let cg = (f.cout - o).min(DW_CG);
        for i in 0..f.cin {
            let mut t = 0;
            while t < taps {
                let tg = (taps - t).min(DW_TG);
                let blk = DwBlock {
                    f,
                    images,
                    inp,
                    img_stride,
                    d: d.wrapping_add(o * d_stride),
                    d_stride,
                    d_img,
                    plane: i,
                    t0: t,
                    dw: dw.wrapping_add(o * f.cin * taps + i * taps + t),
                    dw_stride: f.cin * taps,
                };
                // SAFETY: forwarded from the caller; rows o..o+cg, taps t..t+tg.
                unsafe {
                    match (cg, tg) {
                        (2, 5) => dw_block::<2, 5>(&blk),
                        (2, 4) => dw_block::<2, 4>(&blk),
                        (2, 3) => dw_block::<2, 3>(&blk),
                        (2, 2) => dw_block::<2, 2>(&blk),
                        (2, _) => dw_block::<2, 1>(&blk),
                        (_, 5) => dw_block::<1, 5>(&blk),
                        (_, 4) => dw_block::<1, 4>(&blk),
                        (_, 3) => dw_block::<1, 3>(&blk),
                        (_, 2) => dw_block::<1, 2>(&blk),
                        _ => dw_block::<1, 1>(&blk),
                    }
                }
                t += tg;
            }
        }
        o += cg;
    }
}

/// One weight-gradient register block: `CG` (1 or 2) output channels by `TG` taps of one input
/// plane.
struct DwBlock<'a> {
    f: &'a Flat,
    images: usize,
    inp: *const f32,
    img_stride: usize,
    d: *const f32,
    d_stride: usize,
    d_img: usize,
    plane: usize,
    t0: usize,
    dw: *mut f32,
    dw_stride: usize,
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dw_block<const CG: usize, const TG: usize>(b: &DwBlock) {
    let f = b.f;
    let mut offs = [0usize; TG];
    for (tt, o) in offs.iter_mut().enumerate() {
        let t = b.t0 + tt;
        *o = b.plane * f.in_stride + (t / f.k) * f.row_w + t % f.k;
    }
    // Separate, flat accumulator arrays and one walking pointer per stream keep LLVM from
    // shuffling a 2-D accumulator array through spare registers (moves and spills).
    let mut acc0 = [_mm256_setzero_ps(); TG];
    let mut acc1 = [_mm256_setzero_ps(); TG];
    let steps = f.blocks * BLOCK / LANES;
    for img in 0..b.images {
        // SAFETY: the image's input and output-gradient rows, within the caller's extents.
        unsafe {
            let ip = b.inp.add(img * b.img_stride);
            let mut xs = [ip; TG];
            for (x, &o) in xs.iter_mut().zip(&offs) {
                *x = ip.add(o);
            }
            let mut d0 = b.d.add(img * b.d_img);
            let mut d1 = d0.add(if CG > 1 { b.d_stride } else { 0 });
            for _ in 0..steps {
                let v0 = _mm256_loadu_ps(d0);
                let v1 = _mm256_loadu_ps(d1);
                for tt in 0..TG {
                    let xv = _mm256_loadu_ps(xs[tt]);
                    acc0[tt] = _mm256_fmadd_ps(v0, xv, acc0[tt]);
                    if CG > 1 {
                        acc1[tt] = _mm256_fmadd_ps(v1, xv, acc1[tt]);
                    }
                    xs[tt] = xs[tt].add(LANES);
                }
                d0 = d0.add(LANES);
                d1 = d1.add(LANES);
            }
        }
    }
    for tt in 0..TG {
        // SAFETY: elements (0 or 1, t0 + tt) of the caller's dw block.
        unsafe {
            *b.dw.add(tt) += hsum(acc0[tt]);
            if CG > 1 {
                *b.dw.add(b.dw_stride + tt) += hsum(acc1[tt]);
            }
        }
    }
}

/// The sum of a vector's eight lanes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}

/// Bias, ReLU and 2x2/2 max-pool of one pair of conv-output rows into `windows` pooled values,
/// with the mask bytes of `crate::conv_pool` when `mask` is not null: window `i` is
/// `r0[2i], r0[2i+1], r1[2i], r1[2i+1]`, the first maximum wins and NaN beats numbers.
///
/// # Safety
/// [`available`] must be true; `r0` and `r1` readable for `16 * windows.div_ceil(8)` elements
/// (the last group of eight windows is computed whole), `out` and a non-null `mask` writable
/// for `windows`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn pool_rows(
    r0: *const f32,
    r1: *const f32,
    bias: f32,
    windows: usize,
    out: *mut f32,
    mask: *mut u8,
) {
    let bias = _mm256_set1_ps(bias);
    let zero = _mm256_setzero_ps();
    // Even and odd lanes of 16 consecutive values, in order.
    let split = |p: *const f32| {
        // SAFETY: the caller makes 16 values at p readable.
        let (lo, hi) = unsafe { (_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(LANES))) };
        let fix =
            |v: __m256| _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(v), 0b11_01_10_00));
        (
            _mm256_add_ps(fix(_mm256_shuffle_ps(lo, hi, 0b10_00_10_00)), bias),
            _mm256_add_ps(fix(_mm256_shuffle_ps(lo, hi, 0b11_01_11_01)), bias),
        )
    };
    let mut w0 = 0;
    while w0 < windows {
        let n = (windows - w0).min(LANES);
        // SAFETY: windows w0..w0+8 read 16 values from 2*w0 on each row (see above).
        let ((a, b), (c, d)) = unsafe { (split(r0.add(2 * w0)), split(r1.add(2 * w0))) };
        let (mut m, mut at) = (a, _mm256_setzero_si256());
        for (v, i) in [(b, 1), (c, 2), (d, 3)] {
            let take = _mm256_or_ps(
                _mm256_cmp_ps(v, m, _CMP_GT_OQ),
                _mm256_cmp_ps(v, v, _CMP_UNORD_Q),
            );
            m = _mm256_blendv_ps(m, v, take);
            at = _mm256_blendv_epi8(at, _mm256_set1_epi32(i), _mm256_castps_si256(take));
        }
        let passed = _mm256_cmp_ps(m, zero, _CMP_GT_OQ);
        let keep = _mm256_or_ps(passed, _mm256_cmp_ps(m, m, _CMP_UNORD_Q));
        let y = _mm256_blendv_ps(zero, m, keep);
        let code = _mm256_and_si256(
            _mm256_or_si256(at, _mm256_set1_epi32(4)),
            _mm256_castps_si256(passed),
        );
        let mut ys = [0f32; LANES];
        let mut cs = [0i32; LANES];
        // SAFETY: plain stores into local arrays of eight.
        unsafe {
            _mm256_storeu_ps(ys.as_mut_ptr(), y);
            _mm256_storeu_si256(cs.as_mut_ptr().cast(), code);
        }
        for i in 0..n {
            // SAFETY: window w0 + i < windows, within the caller's out and mask.
            unsafe {
                *out.add(w0 + i) = ys[i];
                if !mask.is_null() {
                    *mask.add(w0 + i) = cs[i] as u8;
                }
            }
        }
        w0 += n;
    }
}
