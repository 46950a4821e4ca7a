//! Separable bilinear resampling with PIL/torchvision antialiasing, written straight into
//! normalised planar f32. Written here rather than taken from `image` because that crate's
//! resize neither antialiases like PIL when shrinking nor writes f32 NCHW, and this is the hot
//! path of every training step.

use std::mem::MaybeUninit;

/// Resampling weights along one axis for a run of output indices.
#[derive(Debug, Clone)]
pub(crate) struct Coeffs {
    /// Stride of `weights` per output (the most taps any output may use).
    pub k: usize,
    /// First input index of each output.
    pub start: Vec<usize>,
    /// Number of taps of each output.
    pub len: Vec<usize>,
    /// `weights[i * k + t]`, normalised to sum 1 per output.
    pub weights: Vec<f32>,
}

/// PIL's `precompute_coeffs` for the triangle (bilinear) filter: input `0..in_size` resized to
/// `out_size`, for the output indices `outs`. With `antialias` the filter widens by the
/// shrink factor (PIL, torchvision `antialias=True`); without, it always spans one input pixel
/// each side (PyTorch `interpolate(bilinear, align_corners=False)`).
pub(crate) fn coeffs(
    in_size: usize,
    out_size: usize,
    antialias: bool,
    outs: impl Iterator<Item = usize>,
) -> Coeffs {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = if antialias { scale.max(1.0) } else { 1.0 };
    let support = filterscale; // bilinear support is 1.0
    let inv = 1.0 / filterscale;
    let k = (support.ceil() as usize) * 2 + 1;
    let (lo, _) = outs.size_hint();
    let mut c = Coeffs {
        k,
        start: Vec::with_capacity(lo),
        len: Vec::with_capacity(lo),
        weights: Vec::with_capacity(lo * k),
    };
    let mut w = vec![0f64; k];
    for xx in outs {
        let center = (xx as f64 + 0.5) * scale;
        // `as i64` truncates toward zero, exactly like PIL's C cast.
        let xmin = ((center - support + 0.5) as i64).clamp(0, in_size as i64 - 1) as usize;
        let xmax =
            ((center + support + 0.5) as i64).clamp(xmin as i64 + 1, in_size as i64) as usize;
        let n = (xmax - xmin).min(k);
        let mut total = 0.0;
        for (x, wx) in w.iter_mut().enumerate().take(n) {
            let t = ((x + xmin) as f64 - center + 0.5) * inv;
            *wx = (1.0 - t.abs()).max(0.0);
            total += *wx;
        }
        c.start.push(xmin);
        c.len.push(n);
        for (x, wx) in w.iter().enumerate() {
            let v = if x < n {
                if total > 0.0 {
                    wx / total
                } else if x == 0 {
                    1.0
                } else {
                    0.0
                }
            } else {
                0.0
            };
            c.weights.push(v as f32);
        }
    }
    c
}

/// A source region of an interleaved RGB u8 image.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Region<'a> {
    pub data: &'a [u8],
    /// Row length of the image in pixels.
    pub img_w: usize,
    pub x0: usize,
    pub y0: usize,
    pub w: usize,
    pub h: usize,
}

/// Output plan: resize the region to `out_w` x `out_h`, keep the window
/// `[wx, wx+ww) x [wy, wy+wh)`, mirror horizontally when `flip`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ResizePlan {
    pub out_w: usize,
    pub out_h: usize,
    pub wx: usize,
    pub wy: usize,
    pub ww: usize,
    pub wh: usize,
    pub antialias: bool,
    pub flip: bool,
    /// Write with non-temporal stores (large buffers that are not in the cache).
    pub stream: bool,
}

thread_local! {
    /// Per-thread scratch for the horizontal pass, reused across samples (every element read
    /// is written first, so it is never cleared).
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Resample the source rows the window needs horizontally (planar `tmp[c][row][x]`, rows
/// from source row `ymin`), then hand `vertical` the rows and the vertical weights.
fn resample_rows<R>(
    src: Region<'_>,
    plan: ResizePlan,
    vertical: impl FnOnce(&[f32], usize, &Coeffs, usize) -> R,
) -> R {
    let ww = plan.ww;
    let hc = if plan.flip {
        coeffs(
            src.w,
            plan.out_w,
            plan.antialias,
            (plan.wx..plan.wx + ww).rev(),
        )
    } else {
        coeffs(src.w, plan.out_w, plan.antialias, plan.wx..plan.wx + ww)
    };
    let vc = coeffs(
        src.h,
        plan.out_h,
        plan.antialias,
        plan.wy..plan.wy + plan.wh,
    );
    let ymin = vc.start.iter().copied().min().unwrap_or(0);
    let ymax = vc
        .start
        .iter()
        .zip(&vc.len)
        .map(|(s, n)| s + n)
        .max()
        .unwrap_or(0);
    let nrows = ymax - ymin;
    let plane = nrows * ww;
    // Taps actually used (2 when enlarging, about 2x the shrink factor when reducing).
    let taps = hc.len.iter().copied().max().unwrap_or(1);
    // One source row as f32, padded with zero pixels so every output reads exactly `taps`
    // pixels (weights past an output's own taps are zero), which lets the tap loop be
    // fixed-length.
    let row_len = (src.w + taps) * 3;

    SCRATCH.with(|cell| {
        let mut scratch = cell.borrow_mut();
        let need = 3 * plane + row_len;
        if scratch.len() < need {
            scratch.resize(need, 0.0);
        }
        let (tmp, rowf) = scratch[..need].split_at_mut(3 * plane);
        rowf[src.w * 3..].fill(0.0);

        for r in 0..nrows {
            let off = ((src.y0 + ymin + r) * src.img_w + src.x0) * 3;
            for (d, &s) in rowf.iter_mut().zip(&src.data[off..off + src.w * 3]) {
                *d = s as f32;
            }
            let (t0, rest) = tmp.split_at_mut(plane);
            let (t1, t2) = rest.split_at_mut(plane);
            let rows = [
                &mut t0[r * ww..][..ww],
                &mut t1[r * ww..][..ww],
                &mut t2[r * ww..][..ww],
            ];
            match taps {
                1 => horizontal_row::<1>(rows, rowf, &hc),
                2 => horizontal_row::<2>(rows, rowf, &hc),
                3 => horizontal_row::<3>(rows, rowf, &hc),
                4 => horizontal_row::<4>(rows, rowf, &hc),
                _ => horizontal_row_any(rows, rowf, &hc, taps),
            }
        }
        vertical(tmp, plane, &vc, ymin)
    })
}

/// Output row `i` of channel `c` from the horizontally resampled rows, as `v * scale + bias`
/// (`weights` is scratch of `vc.k` values).
#[allow(clippy::too_many_arguments)]
fn output_row(
    dst: &mut [MaybeUninit<f32>],
    (tmp, plane, vc, ymin): (&[f32], usize, &Coeffs, usize),
    c: usize,
    i: usize,
    weights: &mut [f32],
    scale: f32,
    bias: f32,
    stream: bool,
) {
    let ww = dst.len();
    let n = vc.len[i];
    for (d, &s) in weights.iter_mut().zip(&vc.weights[i * vc.k..i * vc.k + n]) {
        *d = s * scale;
    }
    let s = c * plane + (vc.start[i] - ymin) * ww;
    vertical_row(dst, &tmp[s..s + n * ww], ww, &weights[..n], bias, stream);
}

/// Resize `src` by `plan` into planar `out` (`3 * wh * ww`), each value `v * scale[c] + bias[c]`
/// where `v` is on the 0..255 scale. Writes every element of `out` (which may be uninitialised).
pub(crate) fn resize_into(
    src: Region<'_>,
    plan: ResizePlan,
    scale: [f32; 3],
    bias: [f32; 3],
    out: &mut [MaybeUninit<f32>],
) {
    let (ww, wh) = (plan.ww, plan.wh);
    assert_eq!(out.len(), 3 * wh * ww, "resize output size");
    resample_rows(src, plan, |tmp, plane, vc, ymin| {
        // Vertical pass, fused with normalisation, straight into the output planes.
        let mut weights = vec![0f32; vc.k];
        for c in 0..3 {
            for i in 0..wh {
                let dst = &mut out[(c * wh + i) * ww..(c * wh + i + 1) * ww];
                let rows = (tmp, plane, vc, ymin);
                output_row(
                    dst,
                    rows,
                    c,
                    i,
                    &mut weights,
                    scale[c],
                    bias[c],
                    plan.stream,
                );
            }
        }
        if plan.stream {
            flush_streams();
        }
    });
}

/// Resize `src` by `plan` into interleaved RGB u8 (`3 * wh * ww`), rounded half up as PIL
/// rounds between steps: the values [`resize_into`] gives with scale 1 and bias 0, rounded.
pub(crate) fn resize_to_rgb8(src: Region<'_>, plan: ResizePlan) -> Vec<u8> {
    let ww = plan.ww;
    let mut out = vec![0u8; 3 * ww * plan.wh];
    resample_rows(src, plan, |tmp, plane, vc, ymin| {
        for (i, dst) in out.chunks_exact_mut(3 * ww).enumerate() {
            let n = vc.len[i];
            let s = (vc.start[i] - ymin) * ww;
            let taps = [0, 1, 2].map(|c| &tmp[c * plane + s..c * plane + s + n * ww]);
            vertical_rgb8(taps, ww, &vc.weights[i * vc.k..i * vc.k + n], dst);
        }
    });
    out
}

/// One output row as interleaved u8: channel `c` of pixel `x` is
/// `sum_t taps[c][t * stride + x] * w[t]` (summed as [`vertical_row`] does, bias 0), rounded
/// half up.
fn vertical_rgb8(taps: [&[f32]; 3], stride: usize, w: &[f32], dst: &mut [u8]) {
    let ww = dst.len() / 3;
    assert!(!w.is_empty() && taps.iter().all(|t| t.len() >= (w.len() - 1) * stride + ww));
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if super::rows::avx2() {
        // SAFETY: AVX2 was detected; the sizes were checked above.
        done = unsafe { vertical_rgb8_avx2(taps, stride, w, dst) };
    }
    for x in done..ww {
        for (c, t) in taps.iter().enumerate() {
            let mut acc = t[x] * w[0] + 0.0;
            for (k, &wt) in w.iter().enumerate().skip(1) {
                acc += t[k * stride + x] * wt;
            }
            dst[3 * x + c] = super::rows::round_u8(acc);
        }
    }
}

/// [`vertical_rgb8`] in blocks of 8 pixels; returns how many leading pixels it wrote.
///
/// # Safety
/// The CPU must have AVX2; every `taps[c]` holds `(w.len() - 1) * stride + dst.len() / 3`
/// values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn vertical_rgb8_avx2(taps: [&[f32]; 3], stride: usize, w: &[f32], dst: &mut [u8]) -> usize {
    use std::arch::x86_64::*;
    let ww = dst.len() / 3;
    let mut spill = [0u8; 32];
    let mut x = 0;
    while x + 8 <= ww {
        let [r, g, b] = taps.map(|t| {
            // SAFETY: reads t[k * stride + x .. + 8] with x + 8 <= ww and k < w.len(), in
            // bounds by the caller's guarantee.
            let acc = unsafe {
                let p = t.as_ptr().add(x);
                let mut acc = _mm256_add_ps(
                    _mm256_mul_ps(_mm256_loadu_ps(p), _mm256_set1_ps(w[0])),
                    _mm256_setzero_ps(),
                );
                for (k, &wt) in w.iter().enumerate().skip(1) {
                    acc = _mm256_add_ps(
                        acc,
                        _mm256_mul_ps(_mm256_loadu_ps(p.add(k * stride)), _mm256_set1_ps(wt)),
                    );
                }
                acc
            };
            super::rows::round_u8_avx2(acc)
        });
        let words = _mm256_or_si256(
            r,
            _mm256_or_si256(_mm256_slli_epi32(g, 8), _mm256_slli_epi32(b, 16)),
        );
        let at = 3 * x;
        // A block writes 28 bytes; the last blocks of a row go through `spill`.
        // SAFETY: AVX2 is enabled; either 28 bytes from `at` lie in `dst` or `spill` has 32.
        unsafe {
            if at + 28 <= dst.len() {
                super::rows::pack_rgb_words(words, dst.as_mut_ptr().add(at));
            } else {
                super::rows::pack_rgb_words(words, spill.as_mut_ptr());
                dst[at..at + 24].copy_from_slice(&spill[..24]);
            }
        }
        x += 8;
    }
    x
}

/// One row of the horizontal pass with a compile-time tap count (unrolled).
#[inline]
fn horizontal_row<const T: usize>(rows: [&mut [f32]; 3], rowf: &[f32], hc: &Coeffs) {
    let [t0, t1, t2] = rows;
    for j in 0..t0.len() {
        let wts = &hc.weights[j * hc.k..j * hc.k + T];
        let px = &rowf[hc.start[j] * 3..(hc.start[j] + T) * 3];
        let (mut a, mut b, mut c) = (0f32, 0f32, 0f32);
        for t in 0..T {
            a += wts[t] * px[3 * t];
            b += wts[t] * px[3 * t + 1];
            c += wts[t] * px[3 * t + 2];
        }
        t0[j] = a;
        t1[j] = b;
        t2[j] = c;
    }
}

/// The horizontal pass for wide filters (strong shrinking).
fn horizontal_row_any(rows: [&mut [f32]; 3], rowf: &[f32], hc: &Coeffs, taps: usize) {
    let [t0, t1, t2] = rows;
    for j in 0..t0.len() {
        let wts = &hc.weights[j * hc.k..j * hc.k + taps];
        let px = &rowf[hc.start[j] * 3..(hc.start[j] + taps) * 3];
        let (mut a, mut b, mut c) = (0f32, 0f32, 0f32);
        for (p, &wt) in px.chunks_exact(3).zip(wts) {
            a += wt * p[0];
            b += wt * p[1];
            c += wt * p[2];
        }
        t0[j] = a;
        t1[j] = b;
        t2[j] = c;
    }
}

/// `dst[x] = ((src[x]*w[0] + b) + src[ww+x]*w[1]) + ...`, the same association in every code
/// path so results never depend on alignment or thread placement.
#[inline]
fn vertical_row(
    dst: &mut [MaybeUninit<f32>],
    src: &[f32],
    stride: usize,
    w: &[f32],
    b: f32,
    stream: bool,
) {
    #[cfg(target_arch = "x86_64")]
    {
        if super::rows::avx2() {
            // SAFETY: AVX2 was detected.
            unsafe { vertical_row_avx2(dst, src, stride, w, b, stream) };
        } else {
            vertical_row_sse(dst, src, stride, w, b, stream);
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = stream;
        vertical_row_scalar(dst, src, stride, w, b, 0..dst.len());
    }
}

#[inline]
fn vertical_row_scalar(
    dst: &mut [MaybeUninit<f32>],
    src: &[f32],
    stride: usize,
    w: &[f32],
    b: f32,
    range: std::ops::Range<usize>,
) {
    for x in range {
        let mut acc = src[x] * w[0] + b;
        for (t, &wt) in w.iter().enumerate().skip(1) {
            acc += src[t * stride + x] * wt;
        }
        dst[x] = MaybeUninit::new(acc);
    }
}

/// SSE (part of the x86-64 baseline, so no run-time detection). With `stream`, non-temporal
/// stores: a batch buffer is far larger than the caches and written once, so streaming avoids
/// reading every destination line first.
#[cfg(target_arch = "x86_64")]
#[inline]
fn vertical_row_sse(
    dst: &mut [MaybeUninit<f32>],
    src: &[f32],
    stride: usize,
    w: &[f32],
    b: f32,
    stream: bool,
) {
    use std::arch::x86_64::*;
    let len = dst.len();
    assert!(!w.is_empty() && src.len() >= (w.len() - 1) * stride + len);
    let head = dst.as_ptr().align_offset(16).min(len);
    let body_end = head + (len - head) / 4 * 4;
    vertical_row_scalar(dst, src, stride, w, b, 0..head);
    // SAFETY: SSE is always present on x86-64. Every load reads src[t*stride + x .. +4] with
    // x + 4 <= len and t < w.len(), in bounds by the assert above; every store writes
    // dst[x .. x+4] with x + 4 <= body_end <= len, and dst + x is 16-byte aligned because
    // x - head is a multiple of 4 and dst + head is aligned.
    unsafe {
        let bv = _mm_set1_ps(b);
        let sp = src.as_ptr();
        let dp = dst.as_mut_ptr().cast::<f32>();
        let mut x = head;
        while x < body_end {
            let mut acc = _mm_add_ps(_mm_mul_ps(_mm_loadu_ps(sp.add(x)), _mm_set1_ps(w[0])), bv);
            for (t, &wt) in w.iter().enumerate().skip(1) {
                acc = _mm_add_ps(
                    acc,
                    _mm_mul_ps(_mm_loadu_ps(sp.add(t * stride + x)), _mm_set1_ps(wt)),
                );
            }
            if stream {
                _mm_stream_ps(dp.add(x), acc);
            } else {
                _mm_store_ps(dp.add(x), acc);
            }
            x += 4;
        }
    }
    vertical_row_scalar(dst, src, stride, w, b, body_end..len);
}

/// [`vertical_row_sse`] 8 values at a time (the same operations in the same order). A
/// streamed block is stored as two aligned 4-value halves, so rows need only 16-byte
/// alignment as in the SSE path.
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn vertical_row_avx2(
    dst: &mut [MaybeUninit<f32>],
    src: &[f32],
    stride: usize,
    w: &[f32],
    b: f32,
    stream: bool,
) {
    use std::arch::x86_64::*;
    let len = dst.len();
    assert!(!w.is_empty() && src.len() >= (w.len() - 1) * stride + len);
    let head = dst.as_ptr().align_offset(16).min(len);
    let body_end = head + (len - head) / 8 * 8;
    vertical_row_scalar(dst, src, stride, w, b, 0..head);
    let (sp, dp) = (src.as_ptr(), dst.as_mut_ptr().cast::<f32>());
    let bv = _mm256_set1_ps(b);
    let mut x = head;
    while x < body_end {
        // SAFETY: loads read src[t*stride + x .. +8] with x + 8 <= len and t < w.len(), in
        // bounds by the assert; stores write dst[x .. x+8], x + 8 <= body_end <= len, and
        // dst + x is 16-byte aligned (x - head is a multiple of 8, dst + head is aligned).
        unsafe {
            let mut acc = _mm256_add_ps(
                _mm256_mul_ps(_mm256_loadu_ps(sp.add(x)), _mm256_set1_ps(w[0])),
                bv,
            );
            for (t, &wt) in w.iter().enumerate().skip(1) {
                let v = _mm256_loadu_ps(sp.add(t * stride + x));
                acc = _mm256_add_ps(acc, _mm256_mul_ps(v, _mm256_set1_ps(wt)));
            }
            if stream {
                _mm_stream_ps(dp.add(x), _mm256_castps256_ps128(acc));
                _mm_stream_ps(dp.add(x + 4), _mm256_extractf128_ps::<1>(acc));
            } else {
                _mm256_storeu_ps(dp.add(x), acc);
            }
        }
        x += 8;
    }
    vertical_row_scalar(dst, src, stride, w, b, body_end..len);
}

/// Order the non-temporal stores before the buffer is handed to another thread.
#[inline]
fn flush_streams() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: SSE is always present on x86-64; a fence has no other effect.
    unsafe {
        std::arch::x86_64::_mm_sfence();
    }
}

/// `dst.copy_from_slice(src)`, with non-temporal stores when `stream` (see
/// [`vertical_row_sse`]).
fn store_row(dst: &mut [MaybeUninit<f32>], src: &[f32], stream: bool) {
    assert_eq!(dst.len(), src.len());
    #[cfg(target_arch = "x86_64")]
    if stream {
        use std::arch::x86_64::*;
        let len = dst.len();
        let head = dst.as_ptr().align_offset(16).min(len);
        let body_end = head + (len - head) / 4 * 4;
        for x in (0..head).chain(body_end..len) {
            dst[x].write(src[x]);
        }
        // SAFETY: SSE is always present on x86-64; loads read src[x..x+4] and stores write
        // dst[x..x+4] with x + 4 <= body_end <= len = src.len(); dst + x is 16-byte aligned
        // as x - head is a multiple of 4 and dst + head is aligned.
        unsafe {
            let (sp, dp) = (src.as_ptr(), dst.as_mut_ptr().cast::<f32>());
            for x in (head..body_end).step_by(4) {
                _mm_stream_ps(dp.add(x), _mm_loadu_ps(sp.add(x)));
            }
        }
        return;
    }
    let _ = stream;
    for (d, &v) in dst.iter_mut().zip(src) {
        d.write(v);
    }
}

/// Copy a (possibly out-of-bounds, zero-padded) crop of an image into planar `out`
/// (`3 * h * w`), optionally mirrored, each value `v * scale[c] + bias[c]`. Writes every element
/// of `out` (which may be uninitialised).
#[allow(clippy::too_many_arguments)]
pub(crate) fn crop_into(
    data: &[u8],
    img_w: usize,
    img_h: usize,
    x0: i64,
    y0: i64,
    w: usize,
    h: usize,
    flip: bool,
    scale: [f32; 3],
    bias: [f32; 3],
    out: &mut [MaybeUninit<f32>],
    stream: bool,
) {
    let plane = w * h;
    assert_eq!(out.len(), 3 * plane, "crop output size");
    // Output columns whose source column lies inside the image.
    let src_x = |x: usize| -> i64 {
        if flip {
            x0 + (w - 1 - x) as i64
        } else {
            x0 + x as i64
        }
    };
    let cols_in = x0 >= 0 && x0 as usize + w <= img_w;
    let mut scratch = vec![0f32; if cols_in { 3 * w } else { 0 }];
    for y in 0..h {
        let sy = y0 + y as i64;
        let row_in = sy >= 0 && (sy as usize) < img_h;
        if row_in && cols_in {
            // The whole row inside the image: one pass over its pixels, no bounds per pixel.
            let start = (sy as usize * img_w + x0 as usize) * 3;
            let src = &data[start..start + 3 * w];
            let (r, rest) = scratch.split_at_mut(w);
            let (g, b) = rest.split_at_mut(w);
            super::rows::to_planar(src, [r, g, b], flip, scale, bias);
            for c in 0..3 {
                let dst = &mut out[c * plane + y * w..c * plane + (y + 1) * w];
                store_row(dst, &scratch[c * w..(c + 1) * w], stream);
            }
            continue;
        }
        for c in 0..3 {
            let dst = &mut out[c * plane + y * w..c * plane + (y + 1) * w];
            if !row_in {
                dst.fill(MaybeUninit::new(bias[c]));
                continue;
            }
            let row = &data[sy as usize * img_w * 3..(sy as usize + 1) * img_w * 3];
            let (sc, b) = (scale[c], bias[c]);
            for (x, d) in dst.iter_mut().enumerate() {
                let sx = src_x(x);
                *d = MaybeUninit::new(if sx >= 0 && (sx as usize) < img_w {
                    row[sx as usize * 3 + c] as f32 * sc + b
                } else {
                    b
                });
            }
        }
    }
    if stream {
        flush_streams();
    }
}

/// A (possibly out-of-bounds, zero-padded) crop of an image as interleaved RGB u8, mirrored
/// when `flip`: what [`crop_into`] gives with scale 1 and bias 0, without the floats.
#[allow(clippy::too_many_arguments)]
pub(crate) fn crop_to_rgb8(
    data: &[u8],
    img_w: usize,
    img_h: usize,
    x0: i64,
    y0: i64,
    w: usize,
    h: usize,
    flip: bool,
) -> Vec<u8> {
    let mut out = vec![0u8; 3 * w * h];
    // The output columns whose source column lies inside the image.
    let first = (-x0).clamp(0, w as i64) as usize;
    let end = (img_w as i64 - x0).clamp(first as i64, w as i64) as usize;
    for (y, dst) in out.chunks_exact_mut(3 * w).enumerate() {
        let sy = y0 + y as i64;
        if sy < 0 || sy as usize >= img_h || first == end {
            continue;
        }
        let row = &data[sy as usize * img_w * 3..][..img_w * 3];
        let src = &row[3 * (x0 + first as i64) as usize..3 * (x0 + end as i64) as usize];
        if flip {
            // Output column x shows crop column w - 1 - x.
            let mirrored = &mut dst[3 * (w - end)..3 * (w - first)];
            for (d, s) in mirrored.chunks_exact_mut(3).zip(src.chunks_exact(3).rev()) {
                d.copy_from_slice(s);
            }
        } else {
            dst[3 * first..3 * end].copy_from_slice(src);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_sum_to_one_and_stay_in_range() {
        for (i, o) in [
            (32, 224),
            (224, 32),
            (10, 7),
            (7, 10),
            (5, 5),
            (1, 9),
            (9, 1),
        ] {
            for aa in [true, false] {
                let c = coeffs(i, o, aa, 0..o);
                for j in 0..o {
                    let s: f32 = c.weights[j * c.k..j * c.k + c.len[j]].iter().sum();
                    assert!((s - 1.0).abs() < 1e-5, "{i}->{o} aa={aa} j={j} sum {s}");
                    assert!(c.start[j] + c.len[j] <= i);
                }
            }
        }
    }

    #[test]
    fn vertical_rows_match_the_scalar_definition() {
        let src: Vec<f32> = (0..4 * 300).map(|i| (i * 37 % 256) as f32).collect();
        for len in [1, 3, 4, 7, 8, 9, 17, 224] {
            for offset in 0..4 {
                for taps in 1..=3 {
                    let w = &[0.25, 0.5, 0.125][..taps];
                    for stream in [false, true] {
                        let mut want = vec![0f32; len + 4];
                        let mut got = want.clone();
                        let dst = &mut crate::buffer::as_uninit(&mut want)[offset..offset + len];
                        vertical_row_scalar(dst, &src, 300, w, -1.5, 0..len);
                        let dst = &mut crate::buffer::as_uninit(&mut got)[offset..offset + len];
                        vertical_row(dst, &src, 300, w, -1.5, stream);
                        flush_streams();
                        assert_eq!(got, want, "len {len} offset {offset} taps {taps}");
                    }
                }
            }
        }
    }

    #[test]
    fn rgb8_rows_match_the_scalar_definition() {
        // Values around every rounding edge, below 0 and above 255.
        let src: Vec<f32> = (0..3 * 2 * 300)
            .map(|i| (i % 700) as f32 * 0.5 - 20.0)
            .collect();
        for ww in [1, 7, 8, 9, 10, 16, 17, 33, 224] {
            for taps in 1..=2 {
                let w = &[0.75, 0.25][..taps];
                let planes: Vec<&[f32]> = src.chunks_exact(2 * 300).collect();
                let mut got = vec![7u8; 3 * ww];
                vertical_rgb8([planes[0], planes[1], planes[2]], 300, w, &mut got);
                for x in 0..ww {
                    for c in 0..3 {
                        let mut acc = planes[c][x] * w[0] + 0.0;
                        if taps == 2 {
                            acc += planes[c][300 + x] * w[1];
                        }
                        let want = (acc + 0.5).clamp(0.0, 255.0) as u8;
                        assert_eq!(got[3 * x + c], want, "ww {ww} taps {taps} x {x} c {c}");
                    }
                }
            }
        }
    }

    #[test]
    fn same_size_is_identity() {
        let c = coeffs(6, 6, true, 0..6);
        for j in 0..6 {
            let w = &c.weights[j * c.k..j * c.k + c.len[j]];
            let idx = (0..w.len()).max_by(|&a, &b| w[a].total_cmp(&w[b])).unwrap();
            assert_eq!(c.start[j] + idx, j);
            assert!((w[idx] - 1.0).abs() < 1e-6);
        }
    }

    #[test]
    fn halving_with_antialias_averages_pairs() {
        // PIL: 4 -> 2 with the widened triangle gives weights 1/8, 3/8, 3/8, 1/8 over 4 pixels,
        // clipped at the border and renormalised.
        let c = coeffs(4, 2, true, 0..2);
        let w0 = &c.weights[..c.len[0]];
        assert_eq!(c.start[0], 0);
        let expect = [3.0 / 7.0, 3.0 / 7.0, 1.0 / 7.0];
        for (a, b) in w0.iter().zip(expect) {
            assert!((a - b).abs() < 1e-6, "{w0:?}");
        }
    }
}
