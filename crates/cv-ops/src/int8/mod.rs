//! Post-training int8 inference: u8 activations (affine, one scale and zero point per
//! tensor) times i8 weights (symmetric, one scale per output channel) summed exactly in i32,
//! then requantized with the folded bias, an optional residual and ReLU in one pass
//! ([`conv2d_u8`]); the max-pool on u8 codes ([`max_pool2d_u8`]).
//!
//! Activations are channels-last with a border of zero-point codes ([`QTensor`]), so a
//! convolution is direct: for 6 output pixels and 64 output channels at a time, each tap's
//! 4-channel quads of the input are broadcast against the packed weights, with no im2col copy.
//! Three kernel families do the products, picked once per process from the CPU
//! ([`int8_kernel`]): AVX512-VNNI and AVX-VNNI (`vpdpbusd`: four u8 x i8 products into each
//! i32 lane) and AVX2 (`vpmaddwd` on operands widened to i16, which is exact where
//! `vpmaddubsw` would saturate its i16 pair sums), with a scalar fallback. Their sums are
//! identical, so the logits do not depend on the machine.
//!
//! Why our own: candle has no i8 dtype or integer matmul, and the `gemm` crate multiplies
//! floats only.

mod kernels;
mod pool;
mod quantize;
mod requant;
mod simd;
mod tensor;
#[cfg(target_arch = "x86_64")]
mod x86;

pub use kernels::{int8_kernel, int8_kernels_available, Int8Kernel};
pub use pool::max_pool2d_u8;
pub use quantize::{quantize_weights, QParams};
pub use tensor::{QTensor, OUT_BORDER};

use rayon::prelude::*;

use crate::error::OpsError;
use kernels::{Operands, PackedWeights, Tap, BLOCK, PIXELS};
use requant::TileRows;

/// The largest kernel side: a plan keeps a convolution's taps as the bits of a `u64`.
pub const MAX_KERNEL: usize = 8;

/// A convolution's int8 weights, packed once for the kernels.
#[derive(Debug)]
pub struct QConv {
    out_c: usize,
    in_c: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
    weight: Vec<i8>,
    scale: Vec<f32>,
    bias: Vec<f32>,
    /// Sum of the weight codes of each output channel and tap, `[out_c][kernel * kernel]`
    /// (the zero-point correction of the taps a pixel runs).
    tap_sums: Vec<i32>,
    packed: PackedWeights,
}

impl QConv {
    /// Weights `[out_c, in_c, kernel, kernel]` as i8 codes with one scale per output channel
    /// (`w = scale[o] * q`), the folded f32 bias, and the geometry.
    pub fn new(
        weight: Vec<i8>,
        shape: [usize; 4],
        scale: Vec<f32>,
        bias: Vec<f32>,
        stride: usize,
        padding: usize,
    ) -> Result<QConv, OpsError> {
        let [out_c, in_c, kh, kw] = shape;
        let bad = |message: String| OpsError::Mismatch {
            op: "conv2d_u8",
            message,
        };
        if kh != kw || kh > MAX_KERNEL || shape.contains(&0) || stride == 0 || padding >= kh {
            return Err(bad(format!(
                "weight shape {shape:?}, stride {stride}, padding {padding}: expected a square \
                 kernel of at most {MAX_KERNEL}x{MAX_KERNEL}, no empty dimension, stride >= 1 \
                 and padding below the kernel"
            )));
        }
        if weight.len() != out_c * in_c * kh * kw || scale.len() != out_c || bias.len() != out_c {
            return Err(bad(format!(
                "{} weights, {} scales and {} biases do not fit the shape {shape:?}",
                weight.len(),
                scale.len(),
                bias.len()
            )));
        }
        if let Some(s) = scale.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            return Err(bad(format!(
                "weight scale {s} is not a positive finite number"
            )));
        }
        if let Some(b) = bias.iter().find(|b| !b.is_finite()) {
            return Err(bad(format!("bias {b} is not finite")));
        }
        let tap_sums = (0..out_c * kh * kw)
            .map(|ot| {
                let (o, t) = (ot / (kh * kw), ot % (kh * kw));
                (0..in_c)
                    .map(|c| weight[(o * in_c + c) * kh * kw + t] as i32)
                    .sum()
            })
            .collect();
        let packed = PackedWeights::new(&weight, shape);
        Ok(QConv {
            out_c,
            in_c,
            kernel: kh,
            stride,
            padding,
            weight,
            scale,
            bias,
            tap_sums,
            packed,
        })
    }

    /// `[out_c, in_c, kernel, kernel]`.
    pub fn shape(&self) -> [usize; 4] {
        [self.out_c, self.in_c, self.kernel, self.kernel]
    }

    /// The i8 codes, `[out_c, in_c, kernel, kernel]` row-major.
    pub fn weight(&self) -> &[i8] {
        &self.weight
    }

    /// One scale per output channel.
    pub fn scale(&self) -> &[f32] {
        &self.scale
    }

    /// The f32 bias (BatchNorm folded in).
    pub fn bias(&self) -> &[f32] {
        &self.bias
    }

    /// `(stride, padding)`.
    pub fn geometry(&self) -> (usize, usize) {
        (self.stride, self.padding)
    }

    /// Output side for an input side (`None` when the kernel does not fit).
    pub fn out_side(&self, side: usize) -> Option<usize> {
        (side + 2 * self.padding)
            .checked_sub(self.kernel)
            .map(|s| s / self.stride + 1)
    }
}

/// What follows the convolution's sum, before the result is quantized to `out`.
#[derive(Clone, Copy, Debug)]
pub struct Epilogue<'a> {
    /// Quantization of the output.
    pub out: QParams,
    /// Added, dequantized, before ReLU (same shape as the output).
    pub residual: Option<&'a QTensor>,
    /// ReLU after the bias and the residual.
    pub relu: bool,
}

/// `quantize(relu(conv(x, w) + bias + residual))` on the kernel family of [`int8_kernel`].
pub fn conv2d_u8(x: &QTensor, w: &QConv, epilogue: Epilogue) -> Result<QTensor, OpsError> {
    conv2d_u8_with(int8_kernel(), x, w, epilogue)
}

/// [`conv2d_u8`] on a given kernel family (tests and benchmarks compare them); a family the
/// CPU lacks is refused.
pub fn conv2d_u8_with(
    kernel: Int8Kernel,
    x: &QTensor,
    w: &QConv,
    epilogue: Epilogue,
) -> Result<QTensor, OpsError> {
    if !kernel.available() {
        return Err(OpsError::Unsupported {
            what: format!("the {kernel} int8 kernel"),
            reason: "this CPU lacks its instructions".into(),
        });
    }
    let (oh, ow) = match (w.out_side(x.h), w.out_side(x.w)) {
        (Some(oh), Some(ow)) if x.c == w.in_c && w.padding <= x.border => (oh, ow),
        _ => {
            return Err(OpsError::Shape {
                op: "conv2d_u8",
                what: "input",
                shape: x.dims().to_vec(),
                expected: format!(
                    "[N, {}, H, W] with H, W >= {} - 2 * {}, stored with a border of at least {}",
                    w.in_c, w.kernel, w.padding, w.padding
                ),
            })
        }
    };
    let out = QTensor::for_interior([x.n, w.out_c, oh, ow], OUT_BORDER, epilogue.out);
    if let Some(r) = epilogue.residual {
        if (r.dims(), r.border) != (out.dims(), out.border) {
            return Err(OpsError::Shape {
                op: "conv2d_u8",
                what: "residual",
                shape: r.dims().to_vec(),
                expected: format!("the output's {:?}", out.dims()),
            });
        }
    }
    let plan = Plan::new(x, w, &out);
    let requant = requant::Requant::new(w, x.qp, &epilogue);
    let in_registers = kernels::requantizes_in_registers(kernel, &requant);
    let packed = w.packed.for_kernel(kernel);
    let mut out = out;
    let dst = SharedOut(out.data.as_mut_ptr());
    let groups = plan.pixels.div_ceil(PIXELS);
    let blocks = w.out_c.div_ceil(BLOCK);
    let per_task = (groups * blocks)
        .div_ceil(4 * rayon::current_num_threads())
        .clamp(1, groups);
    let chunks = groups.div_ceil(per_task);
    (0..chunks * blocks).into_par_iter().for_each(|task| {
        let (chunk, block) = (task / blocks, task % blocks);
        let mut acc = [[0i32; BLOCK]; PIXELS];
        let oc0 = block * BLOCK;
        let n = BLOCK.min(w.out_c - oc0);
        for g in chunk * per_task..((chunk + 1) * per_task).min(groups) {
            let first = g * PIXELS;
            let count = PIXELS.min(plan.pixels - first);
            let (at, rows) = plan.offsets(first, count);
            let inputs = at.map(|(input, _)| x.data[input..].as_ptr());
            prefetch_rows(&at[..count], dst, epilogue.residual, oc0);
            let taps = plan.taps_of(g, rows);
            let correction = &taps.correction[oc0..][..n];
            let op = Operands {
                inputs,
                taps: &taps.taps,
                quads: plan.quads,
                weights: packed.block(&w.packed, block),
            };
            if in_registers {
                let rows = TileRows {
                    oc0,
                    n,
                    count,
                    out: at.map(|(_, o)| dst.get().wrapping_add(o + oc0)),
                    residual: epilogue
                        .residual
                        .map(|r| at.map(|(_, o)| r.data.as_ptr().wrapping_add(o + oc0))),
                    correction,
                };
                // SAFETY: as below; each of the first `count` pixels' rows holds channels
                // oc0..oc0+n of its own pixel (in `out` and in the residual, which has the
                // output's layout), written by this task alone.
                unsafe { kernels::tile_requant(kernel, &op, &requant, &rows) };
                continue;
            }
            // SAFETY: every tap of every pixel lies inside `x.data` (the plan's offsets stay in
            // the border), and every tap's quads lie inside the packed block.
            unsafe { kernels::tile(kernel, &op, &mut acc) };
            for (sums, &(_, at)) in acc.iter().zip(&at).take(count) {
                let residual = epilogue.residual.map(|r| &r.data[at + oc0..][..n]);
                // SAFETY: this pixel's channels oc0..oc0+n belong to this task alone.
                let row = unsafe { std::slice::from_raw_parts_mut(dst.get().add(at + oc0), n) };
                requant.store(oc0, &sums[..n], correction, residual, row);
            }
        }
    });
    Ok(out)
}

/// Asks for the cache lines the epilogue of a group will touch (its output rows and the
/// residual's), so they arrive while the products run rather than stall the stores.
fn prefetch_rows(at: &[(usize, usize)], out: SharedOut, residual: Option<&QTensor>, oc0: usize) {
    #[cfg(target_arch = "x86_64")]
    for &(_, o) in at {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let rows = [
            Some(out.get().cast_const()),
            residual.map(|r| r.data.as_ptr()),
        ];
        for row in rows.into_iter().flatten() {
            let p = row.wrapping_add(o + oc0).cast::<i8>();
            // SAFETY: a prefetch only hints the cache; it reads nothing and cannot fault.
            unsafe {
                _mm_prefetch::<_MM_HINT_T0>(p);
                _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(BLOCK - 1));
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (at, out, residual, oc0);
}

/// The output pointer shared by the tasks, each of which writes its own pixels and channels.
#[derive(Clone, Copy)]
struct SharedOut(*mut u8);
// SAFETY: tasks write disjoint elements, and the buffer outlives the parallel loop.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}
impl SharedOut {
    fn get(self) -> *mut u8 {
        self.0
    }
}

/// Output maps of at most this many pixels run position by position (the same pixel of every
/// image together), so a group of pixels shares the taps that read real input and skips those
/// that read only padding: on ResNet-18 at 32x32, layer4's 1x1 maps need 1 tap of 9 and
/// layer3's 2x2 maps 4. Larger maps run image by image (neighbouring pixels share input rows in
/// cache) with each kernel row as one tap, and skip the rows that read only padding (the top
/// and bottom output rows: 1 in 14 of layer3's rows at 224).
const POSITION_MAJOR_PIXELS: usize = 64;

/// The taps a group of pixels runs, and what their zero-point correction is:
/// `zero_point(x) * sum of those taps' weight codes`, per output channel.
struct TapSet {
    taps: Vec<Tap>,
    correction: Vec<i32>,
}

/// Where each output pixel reads and writes, and which taps each group of pixels runs.
struct Plan {
    /// Output pixels of the batch.
    pixels: usize,
    images: usize,
    /// Pixel `p` is image `p % images` at position `p / images` (else image-major).
    position_major: bool,
    /// The distinct tap sets, set 0 every tap. Position-major: `group_sets[g]` indexes them.
    /// Image-major: `row_sets` holds the sets of the kernel rows' masks that groups need.
    sets: Vec<TapSet>,
    group_sets: Vec<usize>,
    /// Image-major: the kernel rows (bit `ky`) that read real input, per output row.
    live_rows: Vec<u64>,
    row_sets: Vec<(u64, usize)>,
    /// Quads (4 codes) per tap: a tap's channels, or a whole kernel row's in image-major plans.
    quads: usize,
    oh: usize,
    ow: usize,
    stride: usize,
    /// Where the top-left tap of output pixel (0, 0) sits in the input's bordered grid.
    start: usize,
    input: [usize; 3],
    output: [usize; 3],
}

impl Plan {
    fn new(x: &QTensor, w: &QConv, out: &QTensor) -> Plan {
        let (cp, wp) = (x.stored_channels(), x.stored_width());
        let k = w.kernel;
        let mut plan = Plan {
            pixels: x.n * out.h * out.w,
            images: x.n,
            // Taps one by one need each to start a quad (not so for dense RGB).
            position_major: out.h * out.w <= POSITION_MAJOR_PIXELS && cp % 4 == 0,
            sets: Vec::new(),
            group_sets: Vec::new(),
            live_rows: Vec::new(),
            row_sets: Vec::new(),
            quads: cp / 4,
            oh: out.h,
            ow: out.w,
            stride: w.stride,
            start: x.border - w.padding,
            input: [x.h + 2 * x.border, wp, cp],
            output: [
                out.h + 2 * out.border,
                out.stored_width(),
                out.stored_channels(),
            ],
        };
        let tap_set = |mask: u64| {
            let live: Vec<usize> = (0..k * k).filter(|t| mask >> t & 1 == 1).collect();
            TapSet {
                taps: live
                    .iter()
                    .map(|&t| Tap {
                        input: ((t / k) * wp + t % k) * cp,
                        weight: t * cp / 4,
                    })
                    .collect(),
                correction: (0..w.out_c)
                    .map(|o| {
                        live.iter().map(|&t| w.tap_sums[o * k * k + t]).sum::<i32>()
                            * x.qp.zero_point
                    })
                    .collect(),
            }
        };
        // Which taps of each position read real input: rows ky with 0 <= oy*s + ky - p < h.
        let live = |o: usize, side: usize| -> u64 {
            (0..k)
                .filter(|&t| {
                    (o * w.stride + t)
                        .checked_sub(w.padding)
                        .is_some_and(|i| i < side)
                })
                .fold(0, |m, t| m | 1 << t)
        };
        if !plan.position_major {
            // A row's taps lie one after the other in the input (channels last) and in the
            // packed weights, so each kernel row is one tap of `k` times the quads (fewer,
            // longer runs of the kernel's inner loop). The sets: every row, then those of
            // one output row and of two adjacent ones (a group spanning more runs them all).
            let full_rows = (1u64 << k) - 1;
            let row_quads = kernels::quads_per_row(x.c, k);
            let row_set = |rows: u64| {
                let mask = (0..k)
                    .filter(|ky| rows >> ky & 1 == 1)
                    .fold(0u64, |m, ky| m | full_rows << (ky * k));
                // The rows' zero-point correction; their taps as whole rows.
                let mut set = tap_set(mask);
                set.taps = (0..k)
                    .filter(|ky| rows >> ky & 1 == 1)
                    .map(|ky| Tap {
                        input: ky * wp * cp,
                        weight: ky * row_quads,
                    })
                    .collect();
                set
            };
            plan.quads = row_quads;
            plan.sets.push(row_set(full_rows));
            plan.live_rows = (0..out.h).map(|oy| live(oy, x.h)).collect();
            let rows = &plan.live_rows;
            for rows in rows
                .iter()
                .copied()
                .chain(rows.windows(2).map(|r| r[0] | r[1]))
            {
                if rows != full_rows && !plan.row_sets.iter().any(|&(r, _)| r == rows) {
                    plan.row_sets.push((rows, plan.sets.len()));
                    plan.sets.push(row_set(rows));
                }
            }
            return plan;
        }
        let position_mask = |pos: usize| {
            let (ys, xs) = (live(pos / out.w, x.h), live(pos % out.w, x.w));
            (0..k)
                .filter(|ky| ys >> ky & 1 == 1)
                .fold(0u64, |m, ky| m | xs << (ky * k))
        };
        let mut masks: Vec<u64> = Vec::new();
        for g in 0..plan.pixels.div_ceil(PIXELS) {
            let last = (g * PIXELS + PIXELS).min(plan.pixels) - 1;
            let mask = (g * PIXELS / x.n..=last / x.n).fold(0, |m, pos| m | position_mask(pos));
            let index = masks.iter().position(|&m| m == mask).unwrap_or_else(|| {
                masks.push(mask);
                masks.len() - 1
            });
            plan.group_sets.push(index);
        }
        plan.sets = masks.into_iter().map(tap_set).collect();
        plan
    }

    /// The taps of group `group`, whose output rows' live kernel rows are `rows`.
    fn taps_of(&self, group: usize, rows: u64) -> &TapSet {
        let set = match self.group_sets.get(group) {
            Some(&set) => set,
            None => self
                .row_sets
                .iter()
                .find(|&&(r, _)| r == rows)
                .map_or(0, |&(_, set)| set),
        };
        &self.sets[set]
    }

    /// Input and output offsets of pixels `first..first + count`, the rest of the group
    /// repeating the last (its sums are not stored), and the union of their live kernel rows
    /// (image-major only): one division per group, then steps.
    fn offsets(&self, first: usize, count: usize) -> ([(usize, usize); PIXELS], u64) {
        let (mut b, mut oy, mut ox) = self.split(first);
        let mut at = [(0, 0); PIXELS];
        let mut rows = 0;
        for (i, a) in at.iter_mut().enumerate() {
            *a = (self.input_offset(b, oy, ox), self.output_offset(b, oy, ox));
            rows |= self.live_rows.get(oy).copied().unwrap_or(0);
            if i + 1 < count {
                self.step(&mut b, &mut oy, &mut ox);
            }
        }
        (at, rows)
    }

    /// The pixel after `(b, oy, ox)` in the plan's order: position-major runs the image
    /// fastest, then x, then y; image-major x, then y, then the image.
    fn step(&self, b: &mut usize, oy: &mut usize, ox: &mut usize) {
        let (fast, fast_end, middle, middle_end, slow) = if self.position_major {
            (b, self.images, ox, self.ow, oy)
        } else {
            (ox, self.ow, oy, self.oh, b)
        };
        *fast += 1;
        if *fast == fast_end {
            *fast = 0;
            *middle += 1;
            if *middle == middle_end {
                *middle = 0;
                *slow += 1;
            }
        }
    }

    fn split(&self, p: usize) -> (usize, usize, usize) {
        let per_image = self.oh * self.ow;
        let (b, pos) = if self.position_major {
            (p % self.images, p / self.images)
        } else {
            (p / per_image, p % per_image)
        };
        (b, pos / self.ow, pos % self.ow)
    }

    fn input_offset(&self, b: usize, oy: usize, ox: usize) -> usize {
        let [hp, wp, cp] = self.input;
        let (y, x) = (self.start + oy * self.stride, self.start + ox * self.stride);
        ((b * hp + y) * wp + x) * cp
    }

    fn output_offset(&self, b: usize, oy: usize, ox: usize) -> usize {
        let [hp, wp, cp] = self.output;
        ((b * hp + oy + OUT_BORDER) * wp + ox + OUT_BORDER) * cp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in [-1, 1).
    fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(7);
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s % 2000) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    struct Case {
        n: usize,
        c: usize,
        side: usize,
        oc: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        residual: bool,
        relu: bool,
    }

    /// The f64 definition: dequantized codes convolved, bias, residual, ReLU, quantized.
    fn reference(x: &QTensor, w: &QConv, e: &Epilogue) -> Vec<u8> {
        let [n, c, h, wd] = x.dims();
        let [oc, _, k, _] = w.shape();
        let (s, p) = w.geometry();
        let (oh, ow) = (w.out_side(h).unwrap(), w.out_side(wd).unwrap());
        let mut out = Vec::new();
        for b in 0..n {
            for o in 0..oc {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut sum = 0f64;
                        for ch in 0..c {
                            for ky in 0..k {
                                for kx in 0..k {
                                    let (iy, ix) = (
                                        (oy * s + ky) as isize - p as isize,
                                        (ox * s + kx) as isize - p as isize,
                                    );
                                    if iy < 0 || ix < 0 || iy >= h as isize || ix >= wd as isize {
                                        continue;
                                    }
                                    let xv =
                                        x.qp.dequantize(x.code(b, ch, iy as usize, ix as usize))
                                            as f64;
                                    let wv = w.weight[((o * c + ch) * k + ky) * k + kx] as f64
                                        * w.scale[o] as f64;
                                    sum += xv * wv;
                                }
                            }
                        }
                        let mut y = sum + w.bias[o] as f64;
                        if let Some(r) = e.residual {
                            y += r.qp.dequantize(r.code(b, o, oy, ox)) as f64;
                        }
                        if e.relu {
                            y = y.max(0.0);
                        }
                        let q = (y / e.out.scale as f64).round() + e.out.zero_point as f64;
                        out.push(q.clamp(0.0, 255.0) as u8);
                    }
                }
            }
        }
        out
    }

    fn codes(t: &QTensor) -> Vec<u8> {
        let [n, c, h, w] = t.dims();
        let mut out = Vec::new();
        for b in 0..n {
            for ch in 0..c {
                for y in 0..h {
                    for x in 0..w {
                        out.push(t.code(b, ch, y, x));
                    }
                }
            }
        }
        out
    }

    /// Every kernel family of this CPU gives the scalar kernel's codes, and those are the f64
    /// definition's (but for the odd f32 rounding at a code boundary: at most one code off),
    /// on the geometries of ResNet-18 and the small CNN and their remainders: channels not a
    /// multiple of 4 or 64, a short last pixel group, residual and ReLU.
    #[test]
    fn every_kernel_matches_the_f64_definition() {
        let cases = [
            Case {
                n: 2,
                c: 3,
                side: 19,
                oc: 64,
                kernel: 7,
                stride: 2,
                padding: 3,
                residual: false,
                relu: true,
            },
            Case {
                n: 1,
                c: 64,
                side: 9,
                oc: 64,
                kernel: 3,
                stride: 1,
                padding: 1,
                residual: true,
                relu: true,
            },
            Case {
                n: 3,
                c: 6,
                side: 14,
                oc: 16,
                kernel: 5,
                stride: 1,
                padding: 0,
                residual: false,
                relu: true,
            },
            Case {
                n: 2,
                c: 70,
                side: 7,
                oc: 130,
                kernel: 1,
                stride: 2,
                padding: 0,
                residual: false,
                relu: false,
            },
            Case {
                n: 1,
                c: 5,
                side: 5,
                oc: 3,
                kernel: 3,
                stride: 2,
                padding: 1,
                residual: true,
                relu: false,
            },
            // Small maps run position by position, skipping taps that read only padding.
            Case {
                n: 7,
                c: 64,
                side: 1,
                oc: 64,
                kernel: 3,
                stride: 1,
                padding: 1,
                residual: true,
                relu: true,
            },
            Case {
                n: 5,
                c: 32,
                side: 2,
                oc: 70,
                kernel: 3,
                stride: 2,
                padding: 1,
                residual: false,
                relu: true,
            },
            Case {
                n: 8,
                c: 12,
                side: 4,
                oc: 20,
                kernel: 3,
                stride: 1,
                padding: 1,
                residual: true,
                relu: false,
            },
        ];
        let kernels = int8_kernels_available();
        for kernel in Int8Kernel::ALL.iter().filter(|k| !kernels.contains(k)) {
            eprintln!("skipping the {kernel} int8 kernel: this CPU lacks its instructions");
        }
        for (i, case) in cases.iter().enumerate() {
            let dims = [case.n, case.c, case.side, case.side];
            let xin = values(dims.iter().product(), i as u64);
            let xq = QTensor::from_nchw(
                &xin,
                dims,
                QParams::from_range(-0.7, 1.0).unwrap(),
                case.padding.max(OUT_BORDER),
            )
            .unwrap();
            let wf = values(case.oc * case.c * case.kernel * case.kernel, 100 + i as u64);
            let (wq, ws) = quantize_weights(&wf, case.oc).unwrap();
            let bias: Vec<f32> = values(case.oc, 200 + i as u64)
                .iter()
                .map(|b| b * 0.5)
                .collect();
            let conv = QConv::new(
                wq,
                [case.oc, case.c, case.kernel, case.kernel],
                ws,
                bias,
                case.stride,
                case.padding,
            )
            .unwrap();
            let oside = conv.out_side(case.side).unwrap();
            let odims = [case.n, case.oc, oside, oside];
            let res = QTensor::from_nchw(
                &values(odims.iter().product(), 300 + i as u64),
                odims,
                QParams::from_range(-1.0, 1.0).unwrap(),
                OUT_BORDER,
            )
            .unwrap();
            let fan = (case.c * case.kernel * case.kernel) as f32;
            let e = Epilogue {
                out: QParams::from_range(if case.relu { 0.0 } else { -fan.sqrt() }, fan.sqrt())
                    .unwrap(),
                residual: case.residual.then_some(&res),
                relu: case.relu,
            };
            let want = reference(&xq, &conv, &e);
            let scalar = conv2d_u8_with(Int8Kernel::Scalar, &xq, &conv, e).unwrap();
            let got = codes(&scalar);
            let off: Vec<usize> = (0..want.len()).filter(|&j| want[j] != got[j]).collect();
            assert!(
                off.iter().all(|&j| want[j].abs_diff(got[j]) == 1),
                "case {i}: more than one code off"
            );
            assert!(
                off.len() * 1000 <= want.len(),
                "case {i}: {} of {} codes off",
                off.len(),
                want.len()
            );
            assert!(
                got.iter().any(|&q| q != scalar.qp.zero_point as u8),
                "case {i}: all zero"
            );
            for &kernel in &kernels {
                let fast = conv2d_u8_with(kernel, &xq, &conv, e).unwrap();
                assert_eq!(fast, scalar, "case {i}: {kernel} differs from scalar");
            }
        }
    }

    #[test]
    fn mismatched_inputs_are_refused() {
        let qp = QParams::from_range(0.0, 1.0).unwrap();
        let conv = QConv::new(
            vec![1; 4 * 3 * 9],
            [4, 3, 3, 3],
            vec![0.1; 4],
            vec![0.0; 4],
            1,
            1,
        )
        .unwrap();
        let e = Epilogue {
            out: qp,
            residual: None,
            relu: true,
        };
        let wrong_c = QTensor::from_nchw(&[0.5; 2 * 16], [1, 2, 4, 4], qp, 1).unwrap();
        assert!(conv2d_u8(&wrong_c, &conv, e).is_err());
        let no_border = QTensor::from_nchw(&[0.5; 3 * 16], [1, 3, 4, 4], qp, 0).unwrap();
        assert!(conv2d_u8(&no_border, &conv, e).is_err());
        assert!(QConv::new(vec![1; 10], [4, 3, 3, 3], vec![0.1; 4], vec![0.0; 4], 1, 1).is_err());
        assert!(QConv::new(vec![1; 108], [4, 3, 3, 3], vec![0.0; 4], vec![0.0; 4], 1, 1).is_err());
        let too_wide = QConv::new(vec![1; 81], [1, 1, 9, 9], vec![0.1], vec![0.0], 1, 4);
        assert!(too_wide.is_err_and(|e| e.to_string().contains("at most 8x8")));
        let bad_res = QTensor::from_nchw(&[0.5; 16], [1, 1, 4, 4], qp, 1).unwrap();
        let x = QTensor::from_nchw(&[0.5; 3 * 16], [1, 3, 4, 4], qp, 1).unwrap();
        assert!(conv2d_u8(
            &x,
            &conv,
            Epilogue {
                residual: Some(&bad_res),
                ..e
            }
        )
        .is_err());
    }

    #[test]
    fn max_pool_takes_the_largest_code_in_range() {
        let qp = QParams::from_range(-1.0, 1.0).unwrap();
        let v = values(2 * 5 * 7 * 7, 9);
        let x = QTensor::from_nchw(&v, [2, 5, 7, 7], qp, 1).unwrap();
        let y = max_pool2d_u8(&x, 3, 2, 1).unwrap();
        assert_eq!(y.dims(), [2, 5, 4, 4]);
        for b in 0..2 {
            for c in 0..5 {
                for oy in 0..4usize {
                    for ox in 0..4usize {
                        let mut m = 0u8;
                        for iy in (2 * oy).saturating_sub(1)..(2 * oy + 2).min(7) {
                            for ix in (2 * ox).saturating_sub(1)..(2 * ox + 2).min(7) {
                                m = m.max(x.code(b, c, iy, ix));
                            }
                        }
                        assert_eq!(y.code(b, c, oy, ox), m);
                    }
                }
            }
        }
        assert!(max_pool2d_u8(&x, 3, 2, 2).is_err());
    }
}
