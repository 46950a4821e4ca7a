//! The u8 image operations behind torchvision's augmentation policies (`AutoAugment`,
//! `RandAugment`, `TrivialAugmentWide`) and `ColorJitter`, with the arithmetic of torchvision's
//! tensor implementation (`torchvision.transforms.functional` on uint8 tensors): blends in f32,
//! truncated to u8; grayscale `0.2989 R + 0.587 G + 0.114 B`, truncated; geometry by
//! nearest-neighbour sampling of the inverse affine map, zero outside the image.
//!
//! The `image` crate has none of these with torchvision's rounding, hence this module;
//! `tests/torchvision_ops.rs` compares every operation with torchvision's output.

use image::RgbImage;

/// `x.round_ties_even()` for `|x| < 2^22` without a libm call: x86-64's baseline has no
/// rounding instruction, and a call per pixel cost more than the operations themselves.
/// Adding and subtracting 1.5 * 2^23 rounds in the FPU's round-to-nearest-even mode.
pub(crate) fn round_even(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    (x + MAGIC) - MAGIC
}

/// `x mod 1` for `x` in `[-1, 2)`, as torch's `%` (remainder) computes it; no libm `fmod`.
fn wrap_turn(x: f32) -> f32 {
    if x >= 1.0 {
        x - 1.0
    } else if x < 0.0 {
        x + 1.0
    } else {
        x
    }
}

/// Run `f` compiled for the widest vector instructions the CPU has (pulp's run-time
/// dispatch), so the plain loops below vectorise; built for the x86-64 baseline they stay
/// 4 wide or scalar. Rust never fuses a multiply and an add, so every CPU gets the same
/// values.
#[inline(always)]
fn vectorised<R>(f: impl FnOnce() -> R) -> R {
    pulp::Arch::new().dispatch(f)
}

/// `v` clamped to 0..=255 and truncated, as torch casts a float to uint8 after `clamp` (NaN
/// gives 0). Written as `max`, `min` and an unchecked cast because the compiler makes
/// Rust's saturating float-to-integer casts scalar, and this runs on every value.
#[inline(always)]
pub(crate) fn to_u8(v: f32) -> u8 {
    // Not `clamp`: that keeps a NaN, which the unchecked cast must not see; `max` gives 0.
    #[allow(clippy::manual_clamp)]
    let v = v.max(0.0).min(255.0);
    // SAFETY: `v` is a number in 0..=255, so truncating it fits an i32.
    unsafe { v.to_int_unchecked::<i32>() as u8 }
}

/// torchvision `_blend(a, b, ratio)` on uint8: `ratio * a + (1 - ratio) * b`, clamped to
/// 0..=255, truncated.
#[inline(always)]
fn blend(a: u8, b: f32, ratio: f32, rest: f32) -> u8 {
    to_u8(ratio * a as f32 + rest * b)
}

/// The blend weights `(ratio, 1 - ratio)` of `factor`, in f32 as torch has them.
fn weights(factor: f64) -> (f32, f32) {
    (factor as f32, (1.0 - factor) as f32)
}

/// Blend every value of `img` with the constant `other`.
fn blend_with_constant(img: &mut RgbImage, factor: f64, other: f32) {
    let (ratio, rest) = weights(factor);
    let values: &mut [u8] = img;
    vectorised(
        #[inline(always)]
        move || {
            values
                .iter_mut()
                .for_each(|v| *v = blend(*v, other, ratio, rest))
        },
    );
}

/// torchvision `rgb_to_grayscale` on uint8 of one pixel: `0.2989 R + 0.587 G + 0.114 B`,
/// truncated.
#[inline(always)]
fn gray(r: u8, g: u8, b: u8) -> u8 {
    // At most 254.97: `to_u8` truncates it as the u8 cast would.
    to_u8(0.2989f32 * r as f32 + 0.587f32 * g as f32 + 0.114f32 * b as f32)
}

/// The grayscale value of every pixel.
fn grayscale(img: &RgbImage) -> Vec<u8> {
    let values: &[u8] = img;
    let mut out = vec![0u8; values.len() / 3];
    let dst = &mut out[..];
    vectorised(
        #[inline(always)]
        move || {
            for (g, p) in dst.iter_mut().zip(values.chunks_exact(3)) {
                *g = gray(p[0], p[1], p[2]);
            }
        },
    );
    out
}

/// `adjust_brightness`: blend with black.
pub fn adjust_brightness(img: &mut RgbImage, factor: f64) {
    blend_with_constant(img, factor, 0.0);
}

/// `adjust_contrast`: blend with the mean of the (truncated) grayscale image.
pub fn adjust_contrast(img: &mut RgbImage, factor: f64) {
    let gray = grayscale(img);
    // u32 sums of 2^16 values cannot overflow and vectorise; their total is exact.
    let values = &gray[..];
    let sum: u64 = vectorised(
        #[inline(always)]
        move || {
            let chunk = |c: &[u8]| c.iter().map(|&g| g as u32).sum::<u32>() as u64;
            values.chunks(1 << 16).map(chunk).sum()
        },
    );
    let mean = (sum as f64 / gray.len().max(1) as f64) as f32;
    blend_with_constant(img, factor, mean);
}

/// `adjust_saturation`: blend every pixel with its grayscale value.
pub fn adjust_saturation(img: &mut RgbImage, factor: f64) {
    let (ratio, rest) = weights(factor);
    let values: &mut [u8] = img;
    vectorised(
        #[inline(always)]
        move || {
            for p in values.chunks_exact_mut(3) {
                let g = gray(p[0], p[1], p[2]) as f32;
                p[0] = blend(p[0], g, ratio, rest);
                p[1] = blend(p[1], g, ratio, rest);
                p[2] = blend(p[2], g, ratio, rest);
            }
        },
    );
}

/// `adjust_sharpness`: blend with the image smoothed by `[[1,1,1],[1,5,1],[1,1,1]] / 13`
/// (rounded to u8; the border keeps its values). Images of side <= 2 are returned unchanged.
pub fn adjust_sharpness(img: &mut RgbImage, factor: f64) {
    let (w, h) = (img.width() as usize, img.height() as usize);
    if w <= 2 || h <= 2 {
        return;
    }
    let (ratio, rest) = weights(factor);
    let copy = img.as_raw().clone();
    let src = &copy[..];
    let stride = 3 * w;
    let values: &mut [u8] = img;
    // The border blends with itself, as torch blends with a copy whose border is unchanged.
    let edge = move |row: &mut [u8]| {
        row.iter_mut()
            .for_each(|v| *v = blend(*v, *v as f32, ratio, rest))
    };
    edge(&mut values[..stride]);
    edge(&mut values[(h - 1) * stride..]);
    vectorised(
        #[inline(always)]
        move || {
            for y in 1..h - 1 {
                let above = &src[(y - 1) * stride..y * stride];
                let centre = &src[y * stride..(y + 1) * stride];
                let below = &src[(y + 1) * stride..(y + 2) * stride];
                let dst = &mut values[y * stride..(y + 1) * stride];
                edge(&mut dst[..3]);
                edge(&mut dst[stride - 3..]);
                sharpen_row([above, centre, below], &mut dst[3..stride - 3], ratio, rest);
            }
        },
    );
}

/// The interior of one row of [`adjust_sharpness`]: `dst[i]` is the value at `i + 3` of the
/// centre row, blended with its smoothed value.
#[inline(always)]
fn sharpen_row(rows: [&[u8]; 3], dst: &mut [u8], ratio: f32, rest: f32) {
    let (side, middle) = (1.0f32 / 13.0, 5.0f32 / 13.0);
    let n = dst.len();
    // Tap (dy, dx) of output i reads rows[dy][i + 3 * dx]; slices of exactly n values let
    // the loop run without bounds checks.
    let tap = |dy: usize, dx: usize| &rows[dy][3 * dx..3 * dx + n];
    let (a0, a1, a2) = (tap(0, 0), tap(0, 1), tap(0, 2));
    let (b0, b1, b2) = (tap(1, 0), tap(1, 1), tap(1, 2));
    let (c0, c1, c2) = (tap(2, 0), tap(2, 1), tap(2, 2));
    for i in 0..n {
        // The 3x3 taps in torch's order, row by row, each added to the running sum.
        let f = |v: &[u8]| v[i] as f32;
        let mut s = side * f(a0);
        s += side * f(a1);
        s += side * f(a2);
        s += side * f(b0);
        s += middle * f(b1);
        s += side * f(b2);
        s += side * f(c0);
        s += side * f(c1);
        s += side * f(c2);
        let smooth = to_u8(round_even(s));
        dst[i] = blend(b1[i], smooth as f32, ratio, rest);
    }
}

/// torchvision `_rgb2hsv` of one pixel in 0..1.
fn rgb_to_hsv([r, g, b]: [f32; 3]) -> [f32; 3] {
    let maxc = r.max(g).max(b);
    let minc = r.min(g).min(b);
    let eq = maxc == minc;
    let cr = maxc - minc;
    let s = cr / if eq { 1.0 } else { maxc };
    let div = if eq { 1.0 } else { cr };
    let (rc, gc, bc) = ((maxc - r) / div, (maxc - g) / div, (maxc - b) / div);
    let h = if maxc == r {
        bc - gc
    } else if maxc == g {
        2.0 + rc - bc
    } else {
        4.0 + gc - rc
    };
    [wrap_turn(h / 6.0 + 1.0), s, maxc]
}

/// torchvision `_hsv2rgb` of one pixel.
fn hsv_to_rgb([h, s, v]: [f32; 3]) -> [f32; 3] {
    // h is in [0, 1], so truncation is the floor.
    let i = (h * 6.0) as i32 as f32;
    let f = h * 6.0 - i;
    let p = (v * (1.0 - s)).clamp(0.0, 1.0);
    let q = (v * (1.0 - s * f)).clamp(0.0, 1.0);
    let t = (v * (1.0 - s * (1.0 - f))).clamp(0.0, 1.0);
    match (i as i32).rem_euclid(6) {
        0 => [v, t, p],
        1 => [q, v, p],
        2 => [p, v, t],
        3 => [p, q, v],
        4 => [t, p, v],
        _ => [v, p, q],
    }
}

/// `adjust_hue`: shift the hue by `factor` (in turns, -0.5..=0.5) in HSV space.
pub fn adjust_hue(img: &mut RgbImage, factor: f64) {
    let shift = factor as f32;
    for p in img.pixels_mut() {
        let [h, s, v] = rgb_to_hsv(p.0.map(|c| c as f32 / 255.0));
        let rgb = hsv_to_rgb([wrap_turn(h + shift), s, v]);
        // torchvision's float -> uint8 conversion: `x * (255 + 1 - 1e-3)`, truncated.
        p.0 = rgb.map(|c| (c * 255.999).clamp(0.0, 255.0) as u8);
    }
}

/// `posterize`: keep the top `bits` bits of every value (0 gives black).
pub fn posterize(img: &mut RgbImage, bits: u32) {
    let mask = if bits >= 8 {
        0xFF
    } else {
        !(0xFFu8 >> bits.min(8))
    };
    img.iter_mut().for_each(|v| *v &= mask);
}

/// `solarize`: invert every value `>= threshold`.
pub fn solarize(img: &mut RgbImage, threshold: f64) {
    // The least value at or above the threshold (256: none), so the loop compares integers.
    let first = (0..=255u16).find(|&v| v as f64 >= threshold).unwrap_or(256);
    let values: &mut [u8] = img;
    vectorised(
        #[inline(always)]
        move || {
            values.iter_mut().for_each(|v| {
                let x = *v;
                *v = if x as u16 >= first { 255 - x } else { x };
            })
        },
    );
}

/// `invert`: `255 - v`.
pub fn invert(img: &mut RgbImage) {
    img.iter_mut().for_each(|v| *v = 255 - *v);
}

/// Replace every value of channel `c` by `luts[c][value]`.
fn apply_luts(img: &mut RgbImage, luts: &[[u8; 256]; 3]) {
    for p in img.chunks_exact_mut(3) {
        p[0] = luts[0][p[0] as usize];
        p[1] = luts[1][p[1] as usize];
        p[2] = luts[2][p[2] as usize];
    }
}

/// 16 pixels: a run of interleaved values whose channel pattern repeats, so per-channel work
/// written over it vectorises (value `k` of a run is channel `k % 3`).
const RUN: usize = 48;

/// A per-channel constant repeated over a [`RUN`].
fn per_value<T: Copy>(by_channel: [T; 3]) -> [T; RUN] {
    std::array::from_fn(|k| by_channel[k % 3])
}

/// `autocontrast`: stretch each channel so its minimum becomes 0 and its maximum 255.
pub fn autocontrast(img: &mut RgbImage) {
    let values: &mut [u8] = img;
    let (lo, hi) = channel_range(values);
    let mut offset = [0f32; 3];
    let mut scale = [1f32; 3];
    for c in 0..3 {
        let (lo, hi) = (lo[c] as f32, hi[c] as f32);
        if hi > lo {
            (offset[c], scale[c]) = (lo, 255.0 / (hi - lo));
        }
    }
    let (offset, scale) = (per_value(offset), per_value(scale));
    vectorised(
        #[inline(always)]
        move || {
            let stretch = |v: &mut u8, k: usize| *v = to_u8((*v as f32 - offset[k]) * scale[k]);
            let mut runs = values.chunks_exact_mut(RUN);
            for run in &mut runs {
                run.iter_mut().enumerate().for_each(|(k, v)| stretch(v, k));
            }
            let rest = runs.into_remainder();
            rest.iter_mut().enumerate().for_each(|(k, v)| stretch(v, k));
        },
    );
}

/// The smallest and largest value of each channel (255 and 0 for an empty image).
fn channel_range(values: &[u8]) -> ([u8; 3], [u8; 3]) {
    vectorised(
        #[inline(always)]
        move || {
            let (mut lo, mut hi) = ([255u8; RUN], [0u8; RUN]);
            let mut runs = values.chunks_exact(RUN);
            for run in &mut runs {
                for k in 0..RUN {
                    lo[k] = lo[k].min(run[k]);
                    hi[k] = hi[k].max(run[k]);
                }
            }
            for (k, &v) in runs.remainder().iter().enumerate() {
                lo[k] = lo[k].min(v);
                hi[k] = hi[k].max(v);
            }
            let (mut l, mut h) = ([255u8; 3], [0u8; 3]);
            for k in 0..RUN {
                l[k % 3] = l[k % 3].min(lo[k]);
                h[k % 3] = h[k % 3].max(hi[k]);
            }
            (l, h)
        },
    )
}

/// Per-channel histograms. Two sets, for even and odd pixels, so runs of equal neighbours
/// do not make every increment wait for the previous one.
fn histograms(values: &[u8]) -> [[u64; 256]; 3] {
    let mut hist = [[[0u32; 256]; 3]; 2];
    let mut pairs = values.chunks_exact(6);
    for p in &mut pairs {
        for c in 0..3 {
            hist[0][c][p[c] as usize] += 1;
            hist[1][c][p[c + 3] as usize] += 1;
        }
    }
    for (k, &v) in pairs.remainder().iter().enumerate() {
        hist[0][k % 3][v as usize] += 1;
    }
    std::array::from_fn(|c| std::array::from_fn(|v| hist[0][c][v] as u64 + hist[1][c][v] as u64))
}

/// `equalize`: PIL's histogram equalisation of each channel (torchvision's tensor port).
pub fn equalize(img: &mut RgbImage) {
    let hist = histograms(img);
    let mut luts = [[0u8; 256]; 3];
    for c in 0..3 {
        let hist = hist[c];
        let lut = &mut luts[c];
        let last = hist.iter().rposition(|&n| n > 0).unwrap_or(0);
        let step = (hist.iter().sum::<u64>() - hist[last]) / 255;
        if step == 0 {
            // This channel stays as it is.
            *lut = std::array::from_fn(|k| k as u8);
            continue;
        }
        let mut cum = 0u64;
        for (k, entry) in lut.iter_mut().enumerate() {
            // lut[k] = (cumsum(hist)[k - 1] + step / 2) / step, lut[0] = 0.
            *entry = ((cum + step / 2) / step).min(255) as u8;
            cum += hist[k];
        }
    }
    apply_luts(img, &luts);
}

/// torchvision `_get_inverse_affine_matrix`: the map from output to input coordinates (both
/// relative to the image centre) of a rotation by `angle` degrees, then `shear` (degrees, x
/// and y), `scale` and `translate`, about `center`.
pub fn inverse_affine_matrix(
    center: [f64; 2],
    angle: f64,
    translate: [f64; 2],
    scale: f64,
    shear: [f64; 2],
) -> [f64; 6] {
    let rot = angle.to_radians();
    let (sx, sy) = (shear[0].to_radians(), shear[1].to_radians());
    let ([cx, cy], [tx, ty]) = (center, translate);
    let a = (rot - sy).cos() / sy.cos();
    let b = -(rot - sy).cos() * sx.tan() / sy.cos() - rot.sin();
    let c = (rot - sy).sin() / sy.cos();
    let d = -(rot - sy).sin() * sx.tan() / sy.cos() + rot.cos();
    let mut m = [d, -b, 0.0, -c, a, 0.0].map(|v| v / scale);
    m[2] += m[0] * (-cx - tx) + m[1] * (-cy - ty);
    m[5] += m[3] * (-cx - tx) + m[4] * (-cy - ty);
    m[2] += cx;
    m[5] += cy;
    m
}

/// Resample `img` through the inverse affine `matrix` (output centre-relative coordinates to
/// input ones) with nearest-neighbour sampling and zero fill: torchvision's `affine_grid` +
/// `grid_sample(mode="nearest", align_corners=False)`, in its f32 arithmetic.
pub fn warp_nearest(img: &RgbImage, matrix: [f64; 6]) -> RgbImage {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let grid = Grid::new(w, h, matrix);
    let src = img.as_raw();
    let mut out = vec![0u8; src.len()];
    for (y, dst_row) in out.chunks_exact_mut(3 * w).enumerate() {
        let mut done = 0;
        #[cfg(target_arch = "x86_64")]
        if super::rows::avx2() && src.len() < i32::MAX as usize {
            // SAFETY: AVX2 was detected; `src` is the `w` x `h` image, `dst_row` one row of
            // the output, and offsets into `src` fit an i32.
            done = unsafe { grid.row_avx2(src, y, dst_row) };
        }
        for x in done..w {
            if let Some(s) = grid.source(x, y) {
                dst_row[3 * x..3 * x + 3].copy_from_slice(&src[3 * s..3 * s + 3]);
            }
        }
    }
    RgbImage::from_raw(w as u32, h as u32, out).expect("buffer sized for the image")
}

/// torchvision's sampling grid of one warp: output pixel (x, y) reads the input pixel whose
/// normalised coordinates are `cols.0[x] + y' * bx + cx` and `cols.1[x] + y' * by + cy`.
struct Grid {
    w: usize,
    h: usize,
    cols: (Vec<f32>, Vec<f32>),
    /// `[bx, cx, by, cy]`.
    rows: [f32; 4],
    hh: f32,
}

impl Grid {
    fn new(w: usize, h: usize, matrix: [f64; 6]) -> Self {
        let (hw, hh) = (0.5 * w as f32, 0.5 * h as f32);
        let m = matrix.map(|v| v as f32);
        Self {
            w,
            h,
            // `x * a` of every column, computed once: the same f32 products as per pixel.
            cols: (0..w)
                .map(|x| {
                    let xc = -hw + 0.5 + x as f32;
                    (xc * (m[0] / hw), xc * (m[3] / hh))
                })
                .unzip(),
            rows: [m[1] / hw, m[2] / hw, m[4] / hh, m[5] / hh],
            hh,
        }
    }

    /// The centre-relative coordinate of row `y`, times `bx` and `by`.
    fn row_terms(&self, y: usize) -> (f32, f32) {
        let yc = -self.hh + 0.5 + y as f32;
        (yc * self.rows[0], yc * self.rows[2])
    }

    /// The input pixel (flat index) output pixel (x, y) takes, if it lies in the image.
    fn source(&self, x: usize, y: usize) -> Option<usize> {
        let (ybx, yby) = self.row_terms(y);
        let (wf, hf) = (self.w as f32, self.h as f32);
        let gx = self.cols.0[x] + ybx + self.rows[1];
        let gy = self.cols.1[x] + yby + self.rows[3];
        let ix = round_even(((gx + 1.0) * wf - 1.0) / 2.0);
        let iy = round_even(((gy + 1.0) * hf - 1.0) / 2.0);
        let inside = ix >= 0.0 && iy >= 0.0 && ix < wf && iy < hf;
        inside.then(|| iy as usize * self.w + ix as usize)
    }

    /// Output row `y` in blocks of 8 pixels with the same f32 operations as [`Grid::source`],
    /// 4-byte gathers and zero outside; returns how many leading pixels it wrote.
    ///
    /// # Safety
    /// The CPU must have AVX2; `src` holds the `w` x `h` image (`src.len() < i32::MAX`) and
    /// `dst.len() == 3 * w`.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn row_avx2(&self, src: &[u8], y: usize, dst: &mut [u8]) -> usize {
        use std::arch::x86_64::*;
        let (ybx, yby) = self.row_terms(y);
        let (wf, hf) = (_mm256_set1_ps(self.w as f32), _mm256_set1_ps(self.h as f32));
        let (one, half, zero) = (
            _mm256_set1_ps(1.0),
            _mm256_set1_ps(0.5),
            _mm256_setzero_ps(),
        );
        let magic = _mm256_set1_ps(12_582_912.0);
        let round = |v: __m256| _mm256_sub_ps(_mm256_add_ps(v, magic), magic);
        let coord = |g: __m256, size: __m256| {
            round(_mm256_mul_ps(
                _mm256_sub_ps(_mm256_mul_ps(_mm256_add_ps(g, one), size), one),
                half,
            ))
        };
        let in_range = |v: __m256, size: __m256| {
            _mm256_and_ps(
                _mm256_cmp_ps::<_CMP_GE_OQ>(v, zero),
                _mm256_cmp_ps::<_CMP_LT_OQ>(v, size),
            )
        };
        // The last pixel's 4-byte gather would read one byte past the image: it is left out
        // of the gather and copied afterwards.
        let last = src.len() as i32 - 3;
        let mut x = 0;
        while 3 * x + 28 <= dst.len() {
            // SAFETY: `x + 8 <= w`, the length of both column tables.
            let (xa, xb) = unsafe {
                (
                    _mm256_loadu_ps(self.cols.0.as_ptr().add(x)),
                    _mm256_loadu_ps(self.cols.1.as_ptr().add(x)),
                )
            };
            let gx = _mm256_add_ps(
                _mm256_add_ps(xa, _mm256_set1_ps(ybx)),
                _mm256_set1_ps(self.rows[1]),
            );
            let gy = _mm256_add_ps(
                _mm256_add_ps(xb, _mm256_set1_ps(yby)),
                _mm256_set1_ps(self.rows[3]),
            );
            let (ix, iy) = (coord(gx, wf), coord(gy, hf));
            let inside = _mm256_castps_si256(_mm256_and_ps(in_range(ix, wf), in_range(iy, hf)));
            let pixel = _mm256_add_epi32(
                _mm256_mullo_epi32(_mm256_cvttps_epi32(iy), _mm256_set1_epi32(self.w as i32)),
                _mm256_cvttps_epi32(ix),
            );
            let offset = _mm256_mullo_epi32(pixel, _mm256_set1_epi32(3));
            let is_last =
                _mm256_and_si256(inside, _mm256_cmpeq_epi32(offset, _mm256_set1_epi32(last)));
            let gather = _mm256_andnot_si256(is_last, inside);
            // SAFETY: only lanes inside the image and before its last pixel are read, 4 bytes
            // at `offset < src.len() - 3`; the block's 28 written bytes lie in `dst`.
            unsafe {
                let words = _mm256_mask_i32gather_epi32::<1>(
                    _mm256_setzero_si256(),
                    src.as_ptr().cast(),
                    offset,
                    gather,
                );
                super::rows::pack_rgb_words(words, dst.as_mut_ptr().add(3 * x));
            }
            let lanes = _mm256_movemask_ps(_mm256_castsi256_ps(is_last));
            for lane in (0..8).filter(|l| lanes & (1 << l) != 0) {
                let d = 3 * (x + lane);
                dst[d..d + 3].copy_from_slice(&src[src.len() - 3..]);
            }
            x += 8;
        }
        x
    }
}

/// `rotate(img, angle)` about the centre, counter-clockwise in degrees, same size.
pub fn rotate(img: &RgbImage, angle: f64) -> RgbImage {
    warp_nearest(
        img,
        inverse_affine_matrix([0.0; 2], -angle, [0.0; 2], 1.0, [0.0; 2]),
    )
}

/// `affine(img, translate=[dx, dy])` by whole pixels.
pub fn translate(img: &RgbImage, dx: f64, dy: f64) -> RgbImage {
    warp_nearest(
        img,
        inverse_affine_matrix([0.0; 2], 0.0, [dx, dy], 1.0, [0.0; 2]),
    )
}

/// The policies' `ShearX`/`ShearY`: `affine(shear=degrees(atan(magnitude)), center=[0, 0])`,
/// a shear of `magnitude` pixels per pixel about the top-left corner.
pub fn shear(img: &RgbImage, magnitude_x: f64, magnitude_y: f64) -> RgbImage {
    let (w, h) = (img.width() as f64, img.height() as f64);
    let degrees = |m: f64| m.atan().to_degrees();
    warp_nearest(
        img,
        inverse_affine_matrix(
            [-0.5 * w, -0.5 * h],
            0.0,
            [0.0; 2],
            1.0,
            [degrees(magnitude_x), degrees(magnitude_y)],
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 9) as u8, (y * 7) as u8, 200]))
    }

    #[test]
    fn translate_moves_whole_pixels_and_fills_zero() {
        let img = ramp(8, 6);
        let t = translate(&img, 2.0, -1.0);
        assert_eq!(t.get_pixel(2, 0), img.get_pixel(0, 1));
        assert_eq!(t.get_pixel(7, 4), img.get_pixel(5, 5));
        assert_eq!(t.get_pixel(1, 2).0, [0, 0, 0]);
        assert_eq!(t.get_pixel(4, 5).0, [0, 0, 0]);
    }

    #[test]
    fn warped_rows_match_the_per_pixel_definition() {
        // 180 degrees sends the first pixel to the last one (left out of the gathers).
        for (w, h) in [(9, 5), (37, 29), (224, 224)] {
            let img = RgbImage::from_fn(w, h, |x, y| {
                image::Rgb([(x * 7 + y) as u8, (y * 5 + x * 3) as u8, (x ^ y) as u8])
            });
            let centre = [0.0; 2];
            for m in [
                inverse_affine_matrix(centre, 180.0, [0.0; 2], 1.0, [0.0; 2]),
                inverse_affine_matrix(centre, -33.3, [0.0; 2], 1.0, [0.0; 2]),
                inverse_affine_matrix(centre, 0.0, [-4.0, 3.0], 1.0, [0.0; 2]),
                inverse_affine_matrix([-0.5 * w as f64, 0.0], 0.0, [0.0; 2], 1.0, [21.0, -9.0]),
            ] {
                let warped = warp_nearest(&img, m);
                let grid = Grid::new(w as usize, h as usize, m);
                for (x, y, px) in warped.enumerate_pixels() {
                    let want = grid.source(x as usize, y as usize).map_or([0; 3], |s| {
                        img.as_raw()[3 * s..3 * s + 3].try_into().unwrap()
                    });
                    assert_eq!(px.0, want, "{w}x{h} {m:?} at ({x}, {y})");
                }
            }
        }
    }

    #[test]
    fn rotate_by_a_quarter_turn_is_a_transpose_mirror() {
        let img = ramp(6, 6);
        let r = rotate(&img, 90.0);
        // Counter-clockwise: the top-right corner goes to the top-left.
        assert_eq!(r.get_pixel(0, 0), img.get_pixel(5, 0));
        assert_eq!(r.get_pixel(0, 5), img.get_pixel(0, 0));
        assert_eq!(rotate(&img, 0.0), img);
    }

    #[test]
    fn posterize_and_solarize_and_invert() {
        let mut img = ramp(4, 4);
        posterize(&mut img, 2);
        assert!(img.iter().all(|v| v & 0x3F == 0));
        let mut img = ramp(4, 4);
        solarize(&mut img, 128.0);
        assert!(img.iter().all(|&v| v < 128 || v == 255 - 200));
        let mut img = ramp(4, 4);
        invert(&mut img);
        assert_eq!(img.get_pixel(0, 0).0, [255, 255, 55]);
    }

    #[test]
    fn autocontrast_stretches_and_keeps_flat_channels() {
        let mut img = ramp(5, 5);
        autocontrast(&mut img);
        let red: Vec<u8> = img.iter().step_by(3).copied().collect();
        assert_eq!((red.iter().min(), red.iter().max()), (Some(&0), Some(&255)));
        assert!(img.iter().skip(2).step_by(3).all(|&v| v == 200));
    }

    #[test]
    fn hue_round_trip_and_factor_one_blends_are_identity() {
        let img = ramp(7, 5);
        for op in [
            adjust_brightness,
            adjust_contrast,
            adjust_saturation,
            adjust_sharpness,
        ] {
            let mut same = img.clone();
            op(&mut same, 1.0);
            assert_eq!(same, img);
        }
        let mut turned = img.clone();
        adjust_hue(&mut turned, 0.0);
        let diff = turned
            .iter()
            .zip(img.iter())
            .map(|(a, b)| a.abs_diff(*b))
            .max();
        assert!(diff <= Some(1), "{diff:?}");
    }
}
