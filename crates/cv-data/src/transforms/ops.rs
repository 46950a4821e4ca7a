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

/// torchvision `_blend(a, b, ratio)` on uint8: `ratio * a + (1 - ratio) * b`, clamped to
/// 0..=255, truncated.
fn blend(a: u8, b: f32, ratio: f32, rest: f32) -> u8 {
    (ratio * a as f32 + rest * b).clamp(0.0, 255.0) as u8
}

/// Blend every value of `img` with `other(i)` (the value at the same flat index).
fn blend_with(img: &mut RgbImage, factor: f64, other: impl Fn(usize) -> f32) {
    let (ratio, rest) = (factor as f32, (1.0 - factor) as f32);
    for (i, v) in img.iter_mut().enumerate() {
        *v = blend(*v, other(i), ratio, rest);
    }
}

/// torchvision `rgb_to_grayscale` on uint8, one value per pixel.
fn grayscale(img: &RgbImage) -> Vec<u8> {
    img.pixels()
        .map(|p| (0.2989f32 * p[0] as f32 + 0.587f32 * p[1] as f32 + 0.114f32 * p[2] as f32) as u8)
        .collect()
}

/// `adjust_brightness`: blend with black.
pub fn adjust_brightness(img: &mut RgbImage, factor: f64) {
    blend_with(img, factor, |_| 0.0);
}

/// `adjust_contrast`: blend with the mean of the (truncated) grayscale image.
pub fn adjust_contrast(img: &mut RgbImage, factor: f64) {
    let gray = grayscale(img);
    let sum: u64 = gray.iter().map(|&g| g as u64).sum();
    let mean = (sum as f64 / gray.len().max(1) as f64) as f32;
    blend_with(img, factor, |_| mean);
}

/// `adjust_saturation`: blend with the grayscale image.
pub fn adjust_saturation(img: &mut RgbImage, factor: f64) {
    let gray = grayscale(img);
    blend_with(img, factor, |i| gray[i / 3] as f32);
}

/// `adjust_sharpness`: blend with the image smoothed by `[[1,1,1],[1,5,1],[1,1,1]] / 13`
/// (rounded to u8; the border keeps its values). Images of side <= 2 are returned unchanged.
pub fn adjust_sharpness(img: &mut RgbImage, factor: f64) {
    let (w, h) = (img.width() as usize, img.height() as usize);
    if w <= 2 || h <= 2 {
        return;
    }
    let (side, centre) = (1.0f32 / 13.0, 5.0f32 / 13.0);
    let src = img.as_raw().clone();
    let mut blurred = src.clone();
    let stride = 3 * w;
    for y in 1..h - 1 {
        let rows = [
            &src[(y - 1) * stride..y * stride],
            &src[y * stride..(y + 1) * stride],
            &src[(y + 1) * stride..(y + 2) * stride],
        ];
        let dst = &mut blurred[y * stride..(y + 1) * stride];
        for i in 3..stride - 3 {
            // The 3x3 taps in torch's order, row by row, each added to the running sum.
            let mut s = 0f32;
            for (dy, row) in rows.iter().enumerate() {
                for dx in 0..3 {
                    let k = if dx == 1 && dy == 1 { centre } else { side };
                    s += k * row[i + 3 * dx - 3] as f32;
                }
            }
            dst[i] = round_even(s).clamp(0.0, 255.0) as u8;
        }
    }
    blend_with(img, factor, |i| blurred[i] as f32);
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
    img.iter_mut().for_each(|v| {
        if *v as f64 >= threshold {
            *v = 255 - *v;
        }
    });
}

/// `invert`: `255 - v`.
pub fn invert(img: &mut RgbImage) {
    img.iter_mut().for_each(|v| *v = 255 - *v);
}

/// `autocontrast`: stretch each channel so its minimum becomes 0 and its maximum 255.
pub fn autocontrast(img: &mut RgbImage) {
    for c in 0..3 {
        let channel = img.as_raw().iter().skip(c).step_by(3);
        let lo = channel.clone().copied().min().unwrap_or(0) as f32;
        let hi = channel.copied().max().unwrap_or(0) as f32;
        let (lo, scale) = if hi > lo {
            (lo, 255.0 / (hi - lo))
        } else {
            (0.0, 1.0)
        };
        for v in img.iter_mut().skip(c).step_by(3) {
            *v = ((*v as f32 - lo) * scale).clamp(0.0, 255.0) as u8;
        }
    }
}

/// `equalize`: PIL's histogram equalisation of each channel (torchvision's tensor port).
pub fn equalize(img: &mut RgbImage) {
    for c in 0..3 {
        let mut hist = [0u64; 256];
        for &v in img.as_raw().iter().skip(c).step_by(3) {
            hist[v as usize] += 1;
        }
        let last = hist.iter().rposition(|&n| n > 0).unwrap_or(0);
        let step = (hist.iter().sum::<u64>() - hist[last]) / 255;
        if step == 0 {
            continue;
        }
        let mut lut = [0u8; 256];
        let mut cum = 0u64;
        for (k, entry) in lut.iter_mut().enumerate() {
            // lut[k] = (cumsum(hist)[k - 1] + step / 2) / step, lut[0] = 0.
            *entry = ((cum + step / 2) / step).min(255) as u8;
            cum += hist[k];
        }
        for v in img.iter_mut().skip(c).step_by(3) {
            *v = lut[*v as usize];
        }
    }
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
    let (hw, hh) = (0.5 * w as f32, 0.5 * h as f32);
    let m = matrix.map(|v| v as f32);
    let (ax, bx, cx) = (m[0] / hw, m[1] / hw, m[2] / hw);
    let (ay, by, cy) = (m[3] / hh, m[4] / hh, m[5] / hh);
    let src = img.as_raw();
    let mut out = vec![0u8; src.len()];
    let (wf, hf) = (w as f32, h as f32);
    // `x * a` of every column, computed once: the same f32 products as per pixel.
    let cols: Vec<(f32, f32)> = (0..w)
        .map(|x| {
            let xc = -hw + 0.5 + x as f32;
            (xc * ax, xc * ay)
        })
        .collect();
    for (y, dst_row) in out.chunks_exact_mut(3 * w).enumerate() {
        let yc = -hh + 0.5 + y as f32;
        let (ybx, yby) = (yc * bx, yc * by);
        for (&(xax, xay), d) in cols.iter().zip(dst_row.chunks_exact_mut(3)) {
            let gx = xax + ybx + cx;
            let gy = xay + yby + cy;
            let ix = round_even(((gx + 1.0) * wf - 1.0) / 2.0);
            let iy = round_even(((gy + 1.0) * hf - 1.0) / 2.0);
            if ix >= 0.0 && iy >= 0.0 && ix < wf && iy < hf {
                let s = (iy as usize * w + ix as usize) * 3;
                d.copy_from_slice(&src[s..s + 3]);
            }
        }
    }
    RgbImage::from_raw(w as u32, h as u32, out).expect("buffer sized for the image")
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
