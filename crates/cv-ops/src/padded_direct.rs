//! Stride-1, zero-padded f32 convolutions with few channels on large maps through the direct
//! kernels of [`crate::direct`], no im2col; the input gradient of such a layer is one too (see
//! `kernels::input_grad`), so both directions use it. `kernels::forward` tries Winograd first,
//! which is faster still for the 3x3 layers of 64 channels it takes (ResNet's layer1 at
//! 224x224); this path keeps other kernel sizes and narrower layers off im2col. Only on x86-64
//! (elsewhere [`applies`] is never asked).
#![cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
//!
//! Why: with 64 channels, im2col + gemm copies the input 9x and gemm packs it again, and
//! Winograd's transforms cost as much as they save. Here a band of rows of every input plane
//! is copied once into a
//! zero-padded buffer whose rows are `w + 2 * pad` wide; the convolution over the *flattened*
//! band is then a run of unit-stride vector FMAs (the `2 * pad` columns of each row past the
//! output's width are computed and dropped) and the valid columns are copied out. A band is
//! sized so its input and output stay in L2 while every output channel is computed from it.

#[cfg(target_arch = "x86_64")]
use crate::buffers::{grow, SendPtr};
use crate::direct;
#[cfg(target_arch = "x86_64")]
use crate::direct::{Flat, BLOCK};
use crate::geom::Geom;
#[cfg(target_arch = "x86_64")]
use rayon::prelude::*;
use std::sync::atomic::{AtomicBool, Ordering};

static DISABLED: AtomicBool = AtomicBool::new(false);

/// Turns the padded direct path of [`crate::conv2d`] (and its input gradient) off, or back on,
/// for benchmarks and tests that compare it with the other paths. Process-wide; on by default.
pub fn set_padded_direct_enabled(on: bool) {
    DISABLED.store(!on, Ordering::Relaxed);
}

/// Output pixels per image below which the gemm paths stay: the weights are re-read for every
/// band, so small maps with many channels are bound by reading them.
const MIN_PIXELS: usize = 28 * 28;

/// Channels (in plus out) above which the gemm paths stay: from 128 channels on 28x28 maps
/// im2col and Winograd are faster than this path.
const MAX_CHANNELS: usize = 128;

#[cfg(target_arch = "x86_64")]
/// Bytes of one band's padded input plus its output that we aim for: about half of a core's
/// L2, leaving room for the weights of the output channels in flight.
const BAND_BYTES: usize = 160 * 1024;

/// Whether `g` runs here: f32 on an AVX2+FMA CPU (checked by the caller's dtype and
/// [`direct::available`]), a square stride-1 kernel with padding below its size.
pub(crate) fn applies(g: &Geom) -> bool {
    !DISABLED.load(Ordering::Relaxed)
        && direct::available()
        && g.stride == 1
        && g.kh == g.kw
        && g.kh > 1
        && g.ph == g.pw
        && g.ph < g.kh
        && g.c + g.co <= MAX_CHANNELS
        && g.oh * g.ow >= MIN_PIXELS
}

/// Sizes of the bands of one layer.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy, Debug)]
struct Band {
    /// Output rows per band (the last band may have fewer).
    rows: usize,
    /// Width of a padded input row, and so the flattened output's row pitch.
    row_w: usize,
}

#[cfg(target_arch = "x86_64")]
impl Band {
    fn new(g: &Geom) -> Self {
        let row_w = g.w + 2 * g.pw;
        let per_row = (g.c + g.co) * row_w * std::mem::size_of::<f32>();
        let rows = (BAND_BYTES / per_row).clamp(1, g.oh);
        Self { rows, row_w }
    }

    /// The flattened convolution of a band of `rows` output rows, and its plane length.
    fn flat(&self, g: &Geom, rows: usize) -> (Flat, usize) {
        let positions = (rows - 1) * self.row_w + g.ow;
        let blocks = positions.div_ceil(BLOCK);
        let mut f = Flat {
            cin: g.c,
            in_stride: 0,
            row_w: self.row_w,
            k: g.kh,
            cout: g.co,
            blocks,
            nonzero: (0, usize::MAX),
        };
        let plane = f.reach().max((rows + g.kh - 1) * self.row_w);
        f.in_stride = plane;
        (f, plane)
    }
}

#[cfg(target_arch = "x86_64")]
/// `y = conv(x, w)` for an `applies` geometry: x `[n, c, h, w]`, w `[co, c, kh, kw]`.
pub(crate) fn forward(x: &[f32], w: &[f32], g: &Geom) -> Vec<f32> {
    let band = Band::new(g);
    let bands = g.oh.div_ceil(band.rows);
    let plane_out = g.oh * g.ow;
    let mut y = vec![0f32; g.n * g.co * plane_out];
    let yp = SendPtr(y.as_mut_ptr());
    let units: Vec<(usize, usize)> = (0..g.n)
        .flat_map(|img| (0..bands).map(move |b| (img, b)))
        .collect();
    units.par_iter().for_each_init(
        || (Vec::new(), Vec::new()),
        |(inp, out), &(img, b)| {
            let r0 = b * band.rows;
            let rows = band.rows.min(g.oh - r0);
            let (f, plane) = band.flat(g, rows);
            let inp = grow(inp, g.c * plane);
            fill_band(
                &x[img * g.c * g.h * g.w..(img + 1) * g.c * g.h * g.w],
                g,
                band.row_w,
                r0,
                rows,
                plane,
                inp,
            );
            let out_stride = f.blocks * BLOCK;
            let out = grow(out, g.co * out_stride);
            // SAFETY: `available` holds (`applies`); inp has cin planes of `plane >= reach`
            // elements, w has cout * cin * k * k, out cout rows of blocks * BLOCK.
            unsafe { direct::conv(&f, inp.as_ptr(), w.as_ptr(), out.as_mut_ptr(), out_stride) };
            for o in 0..g.co {
                for r in 0..rows {
                    let src = &out[o * out_stride + r * band.row_w..][..g.ow];
                    // SAFETY: row r0 + r of channel o of image img: this unit's alone.
                    unsafe {
                        let dst = yp.get().add((img * g.co + o) * plane_out + (r0 + r) * g.ow);
                        std::ptr::copy_nonoverlapping(src.as_ptr(), dst, g.ow);
                    }
                }
            }
        },
    );
    y
}

#[cfg(target_arch = "x86_64")]
/// Copies input rows `r0 - pad .. r0 + rows + k - 1 - pad` of every plane of one image into
/// `inp` (planes `plane` apart, rows `row_w` wide), zero where they fall outside the image
/// and past the band.
fn fill_band(
    x: &[f32],
    g: &Geom,
    row_w: usize,
    r0: usize,
    rows: usize,
    plane: usize,
    inp: &mut [f32],
) {
    let in_rows = rows + g.kh - 1;
    for i in 0..g.c {
        let src = &x[i * g.h * g.w..(i + 1) * g.h * g.w];
        let dst = &mut inp[i * plane..(i + 1) * plane];
        for pr in 0..in_rows {
            let row = &mut dst[pr * row_w..(pr + 1) * row_w];
            match (r0 + pr).checked_sub(g.ph).filter(|&iy| iy < g.h) {
                Some(iy) => {
                    row[..g.pw].fill(0.0);
                    row[g.pw..g.pw + g.w].copy_from_slice(&src[iy * g.w..(iy + 1) * g.w]);
                    row[g.pw + g.w..].fill(0.0);
                }
                None => row.fill(0.0),
            }
        }
        dst[in_rows * row_w..].fill(0.0);
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;
    use crate::test_data::data;

    /// Deterministic values in about [-0.5, 0.5].
    fn values(n: usize, seed: usize) -> Vec<f32> {
        data(n, seed)
            .into_iter()
            .map(|v| (v / 4.0) as f32)
            .collect()
    }

    #[test]
    fn matches_im2col_forward() {
        if !direct::available() {
            eprintln!("skipped: no AVX2+FMA on this CPU");
            return;
        }
        // (n, c, hw, co, k, pad): ResNet's shape, odd sizes, several bands, 5x5, pad 0.
        for &(n, c, h, w, co, k, pad) in &[
            (2, 64, 56, 56, 64, 3, 1),
            (3, 5, 30, 29, 7, 3, 1),
            (1, 3, 40, 33, 13, 5, 2),
            (2, 4, 31, 28, 6, 3, 0),
            (1, 200, 28, 28, 9, 3, 1),
        ] {
            let g = Geom::new(n, c, h, w, co, k, k, 1, pad, pad).unwrap();
            let x = values(n * c * h * w, 1);
            let wt = values(co * c * k * k, 2);
            let want =
                crate::im2col_gemm::forward_im2col(&x, &wt, &g, crate::autocast::Precision::Full);
            let got = forward(&x, &wt, &g);
            assert_eq!(got.len(), want.len());
            let worst = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs() / (1.0 + b.abs()))
                .fold(0f32, f32::max);
            assert!(worst < 1e-5, "{g:?}: worst relative difference {worst}");
        }
    }
}
