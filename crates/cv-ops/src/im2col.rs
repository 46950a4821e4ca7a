//! im2col (gather a unit's receptive fields into a `k x cols` matrix) and its adjoint col2im
//! (scatter-add such a matrix back onto the input), both straight from NCHW.

use crate::elem::Elem;
use crate::geom::{Geom, Unit};

/// Output columns `[lo, hi)` of a row whose input column `ox*stride + kx - pw` lies inside the
/// image; outside it the padded input is zero.
fn valid_cols(g: &Geom, kx: usize) -> (usize, usize) {
    let s = g.stride;
    let lo = if g.pw > kx {
        (g.pw - kx).div_ceil(s)
    } else {
        0
    };
    let hi = if g.w + g.pw > kx {
        (g.w + g.pw - kx).div_ceil(s)
    } else {
        0
    };
    (lo.min(g.ow), hi.min(g.ow).max(lo.min(g.ow)))
}

/// Calls `f(row_offset_in_unit_row, image, oy, ox0, ox1)` for each run of output pixels of the
/// unit that lie on one output row.
#[inline]
fn for_each_run(g: &Geom, u: &Unit, mut f: impl FnMut(usize, usize, usize, usize, usize)) {
    let mut j = 0;
    for img in u.n0..u.n1 {
        let mut p = u.p0;
        while p < u.p1 {
            let oy = p / g.ow;
            let ox0 = p % g.ow;
            let ox1 = g.ow.min(ox0 + (u.p1 - p));
            f(j, img, oy, ox0, ox1);
            j += ox1 - ox0;
            p += ox1 - ox0;
        }
    }
}

/// `dst[i] = src[2 * i]`, written so that it vectorises (pairs, then the odd last element).
#[inline]
fn gather_stride2<T: Elem>(dst: &mut [T], src: &[T]) {
    let n = dst.len();
    let pairs = n.min(src.len() / 2);
    for (d, pair) in dst[..pairs].iter_mut().zip(src.chunks_exact(2)) {
        *d = pair[0];
    }
    for i in pairs..n {
        dst[i] = src[2 * i];
    }
}

/// `dst[2 * i] += src[i]`, the adjoint of [`gather_stride2`].
#[inline]
fn scatter_add_stride2<T: Elem>(dst: &mut [T], src: &[T]) {
    let n = src.len();
    let pairs = n.min(dst.len() / 2);
    for (pair, v) in dst.chunks_exact_mut(2).zip(&src[..pairs]) {
        pair[0] += *v;
    }
    for i in pairs..n {
        dst[2 * i] += src[i];
    }
}

/// Output rows at most this wide use the offset table ([`Taps`]): their runs are a few pixels
/// long, and the per-run bookkeeping of the run-based path costs more than the copies
/// (ResNet-18 on 32x32 images: 8x8 down to 1x1 maps).
const SMALL_OW: usize = 8;

/// For small maps: the offset in its input plane that each (tap, output pixel) reads, or
/// `None` in the padding. `offsets[(ky * kw + kx) * P + p]`.
struct Taps {
    offsets: Vec<Option<u32>>,
}

impl Taps {
    fn new(g: &Geom) -> Self {
        let p = g.p();
        let mut offsets = Vec::with_capacity(g.kh * g.kw * p);
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                for q in 0..p {
                    let (oy, ox) = (q / g.ow, q % g.ow);
                    let iy = (oy * g.stride + ky).checked_sub(g.ph).filter(|&v| v < g.h);
                    let ix = (ox * g.stride + kx).checked_sub(g.pw).filter(|&v| v < g.w);
                    offsets.push(match (iy, ix) {
                        (Some(iy), Some(ix)) => Some((iy * g.w + ix) as u32),
                        _ => None,
                    });
                }
            }
        }
        Self { offsets }
    }

    fn use_for(g: &Geom) -> bool {
        g.ow <= SMALL_OW && g.h * g.w <= u32::MAX as usize
    }

    /// Calls `f(k, j, plane_base, offset)` for every element of the unit's im2col matrix that
    /// lies inside the image (row `k`, column `j`, input index `plane_base + offset`).
    #[inline]
    fn for_each(&self, g: &Geom, u: &Unit, mut f: impl FnMut(usize, usize, usize, usize)) {
        let (p, taps, plane) = (g.p(), g.kh * g.kw, g.h * g.w);
        for ci in 0..g.c {
            for t in 0..taps {
                let k = ci * taps + t;
                let offs = &self.offsets[t * p..(t + 1) * p];
                let mut j = 0;
                for img in u.n0..u.n1 {
                    let base = (img * g.c + ci) * plane;
                    for &o in &offs[u.p0..u.p1] {
                        if let Some(o) = o {
                            f(k, j, base, o as usize);
                        }
                        j += 1;
                    }
                }
            }
        }
    }
}

/// Fills `col` (row-major `k x u.cols()`, row `(ci*kh + ky)*kw + kx`) with the unit's patches.
pub(crate) fn im2col<T: Elem>(x: &[T], g: &Geom, u: &Unit, col: &mut [T]) {
    if g.stride == 1 && g.oh == g.h && g.ow == g.w {
        im2col_same(x, g, u, col);
        return;
    }
    let tc = u.cols();
    if Taps::use_for(g) {
        col[..g.k() * tc].fill(T::ZERO);
        Taps::new(g).for_each(g, u, |k, j, base, o| col[k * tc + j] = x[base + o]);
        return;
    }
    let (h, w, s) = (g.h, g.w, g.stride);
    for ci in 0..g.c {
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                let k = (ci * g.kh + ky) * g.kw + kx;
                let row = &mut col[k * tc..(k + 1) * tc];
                let (lo_all, hi_all) = valid_cols(g, kx);
                for_each_run(g, u, |j, img, oy, ox0, ox1| {
                    let seg = &mut row[j..j + (ox1 - ox0)];
                    let iy = (oy * s + ky) as isize - g.ph as isize;
                    if iy < 0 || iy as usize >= h {
                        seg.fill(T::ZERO);
                        return;
                    }
                    let base = ((img * g.c + ci) * h + iy as usize) * w;
                    let xrow = &x[base..base + w];
                    let lo = lo_all.clamp(ox0, ox1);
                    let hi = hi_all.clamp(lo, ox1);
                    seg[..lo - ox0].fill(T::ZERO);
                    seg[hi - ox0..].fill(T::ZERO);
                    let mid = &mut seg[lo - ox0..hi - ox0];
                    if lo < hi {
                        // ix = ox*s + kx - pw >= 0 for ox >= lo.
                        let ix0 = lo * s + kx - g.pw;
                        if s == 1 {
                            mid.copy_from_slice(&xrow[ix0..ix0 + (hi - lo)]);
                        } else if s == 2 {
                            gather_stride2(mid, &xrow[ix0..]);
                        } else {
                            for (d, v) in mid.iter_mut().zip(xrow[ix0..].iter().step_by(s)) {
                                *d = *v;
                            }
                        }
                    }
                });
            }
        }
    }
}

/// [`im2col`] for stride-1 convs whose output is the input's size ("same" padding, ResNet's
/// 3x3 convs): at tap `(ky, kx)` the row is the flattened input plane shifted by
/// `(ky - ph) * w + (kx - pw)`, so each (channel, tap, image) is one contiguous copy plus zeros
/// where the shift leaves the plane or wraps into the neighbouring row. The general paths copy
/// one output row (8-56 values) or one value at a time.
fn im2col_same<T: Elem>(x: &[T], g: &Geom, u: &Unit, col: &mut [T]) {
    let (w, plane, tc) = (g.w, g.h * g.w, u.cols());
    let (p0, p1) = (u.p0, u.p1);
    let span = p1 - p0;
    for ci in 0..g.c {
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                let k = (ci * g.kh + ky) * g.kw + kx;
                let dx = kx as isize - g.pw as isize;
                let d = (ky as isize - g.ph as isize) * w as isize + dx;
                // Output positions j whose source j + d lies in the plane.
                let lo = (p0 as isize).max(-d).min(p1 as isize) as usize;
                let hi = ((plane as isize - d).min(p1 as isize)).max(lo as isize) as usize;
                let row = &mut col[k * tc..(k + 1) * tc];
                for (gi, img) in (u.n0..u.n1).enumerate() {
                    let seg = &mut row[gi * span..(gi + 1) * span];
                    let xp = &x[(img * g.c + ci) * plane..(img * g.c + ci + 1) * plane];
                    seg[..lo - p0].fill(T::ZERO);
                    if hi > lo {
                        let s0 = (lo as isize + d) as usize;
                        seg[lo - p0..hi - p0].copy_from_slice(&xp[s0..s0 + (hi - lo)]);
                    }
                    seg[hi - p0..].fill(T::ZERO);
                    // Columns whose source wrapped into the row above or below.
                    let shift = dx.unsigned_abs().min(w);
                    let cols = if dx < 0 { 0..shift } else { w - shift..w };
                    for ox in cols {
                        let mut j = (p0 / w) * w + ox;
                        if j < p0 {
                            j += w;
                        }
                        while j < p1 {
                            seg[j - p0] = T::ZERO;
                            j += w;
                        }
                    }
                }
            }
        }
    }
}

/// Adds `col` (laid out as [`im2col`] writes it) onto `dx`, which holds images `u.n0..` of the
/// input gradient starting at image `first_image`.
pub(crate) fn col2im_add<T: Elem>(col: &[T], g: &Geom, u: &Unit, dx: &mut [T], first_image: usize) {
    let tc = u.cols();
    if Taps::use_for(g) {
        let shift = first_image * g.c * g.h * g.w;
        Taps::new(g).for_each(g, u, |k, j, base, o| {
            dx[base - shift + o] += col[k * tc + j]
        });
        return;
    }
    let (h, w, s) = (g.h, g.w, g.stride);
    for ci in 0..g.c {
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                let k = (ci * g.kh + ky) * g.kw + kx;
                let row = &col[k * tc..(k + 1) * tc];
                let (lo_all, hi_all) = valid_cols(g, kx);
                for_each_run(g, u, |j, img, oy, ox0, ox1| {
                    let iy = (oy * s + ky) as isize - g.ph as isize;
                    if iy < 0 || iy as usize >= h {
                        return;
                    }
                    let lo = lo_all.clamp(ox0, ox1);
                    let hi = hi_all.clamp(lo, ox1);
                    if lo >= hi {
                        return;
                    }
                    let base = (((img - first_image) * g.c + ci) * h + iy as usize) * w;
                    let xrow = &mut dx[base..base + w];
                    let src = &row[j + (lo - ox0)..j + (hi - ox0)];
                    let ix0 = lo * s + kx - g.pw;
                    if s == 1 {
                        for (d, v) in xrow[ix0..ix0 + (hi - lo)].iter_mut().zip(src) {
                            *d += *v;
                        }
                    } else if s == 2 {
                        scatter_add_stride2(&mut xrow[ix0..], src);
                    } else {
                        for (d, v) in xrow[ix0..].iter_mut().step_by(s).zip(src) {
                            *d += *v;
                        }
                    }
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The obvious definition, element by element.
    fn naive(x: &[f64], g: &Geom, u: &Unit) -> Vec<f64> {
        let tc = u.cols();
        let mut col = vec![0.0; g.k() * tc];
        for ci in 0..g.c {
            for ky in 0..g.kh {
                for kx in 0..g.kw {
                    let k = (ci * g.kh + ky) * g.kw + kx;
                    let mut j = 0;
                    for img in u.n0..u.n1 {
                        for p in u.p0..u.p1 {
                            let (oy, ox) = (p / g.ow, p % g.ow);
                            let iy = (oy * g.stride + ky) as isize - g.ph as isize;
                            let ix = (ox * g.stride + kx) as isize - g.pw as isize;
                            if iy >= 0 && ix >= 0 && (iy as usize) < g.h && (ix as usize) < g.w {
                                col[k * tc + j] =
                                    x[((img * g.c + ci) * g.h + iy as usize) * g.w + ix as usize];
                            }
                            j += 1;
                        }
                    }
                }
            }
        }
        col
    }

    fn geoms() -> Vec<Geom> {
        vec![
            Geom::new(3, 2, 7, 6, 1, 3, 3, 1, 1, 1).unwrap(),
            Geom::new(2, 2, 9, 8, 1, 3, 3, 2, 1, 1).unwrap(),
            Geom::new(2, 3, 11, 11, 1, 7, 7, 2, 3, 3).unwrap(),
            Geom::new(2, 2, 6, 7, 1, 1, 1, 2, 0, 0).unwrap(),
            Geom::new(2, 1, 8, 8, 1, 5, 5, 1, 0, 0).unwrap(),
            Geom::new(1, 1, 2, 2, 1, 3, 3, 2, 2, 2).unwrap(),
            // Wider than SMALL_OW: the run-based path.
            Geom::new(2, 2, 19, 21, 1, 3, 3, 1, 1, 1).unwrap(),
            Geom::new(2, 2, 23, 20, 1, 3, 3, 2, 1, 1).unwrap(),
            Geom::new(2, 3, 30, 29, 1, 7, 7, 2, 3, 3).unwrap(),
            Geom::new(2, 2, 12, 31, 1, 1, 1, 3, 0, 0).unwrap(),
            // "Same" padding, stride 1: the shifted-plane path (5x5 pad 2, a 1x3 map, 8x8).
            Geom::new(2, 2, 9, 11, 1, 5, 5, 1, 2, 2).unwrap(),
            Geom::new(3, 2, 1, 3, 1, 3, 3, 1, 1, 1).unwrap(),
            Geom::new(2, 3, 8, 8, 1, 3, 3, 1, 1, 1).unwrap(),
        ]
    }

    #[test]
    fn im2col_matches_naive_and_col2im_is_its_adjoint() {
        let gs = geoms();
        assert!(gs.iter().any(Taps::use_for) && !gs.iter().all(Taps::use_for));
        for g in gs {
            let len = g.n * g.c * g.h * g.w;
            let x: Vec<f64> = (0..len).map(|i| ((i * 37) % 101) as f64 - 50.0).collect();
            let units = [
                Unit {
                    n0: 0,
                    n1: 1,
                    p0: 1,
                    p1: g.p() - 1,
                },
                Unit {
                    n0: 0,
                    n1: g.n,
                    p0: 0,
                    p1: g.p(),
                },
            ];
            for u in units {
                let want = naive(&x, &g, &u);
                let mut got = vec![f64::NAN; want.len()];
                im2col(&x, &g, &u, &mut got);
                assert_eq!(got, want, "{g:?} {u:?}");
                // <im2col(x), c> == <x, col2im(c)> for any c.
                let c: Vec<f64> = (0..want.len())
                    .map(|i| ((i * 13) % 7) as f64 - 3.0)
                    .collect();
                let mut back = vec![0.0; len];
                col2im_add(&c, &g, &u, &mut back, 0);
                let lhs: f64 = want.iter().zip(&c).map(|(a, b)| a * b).sum();
                let rhs: f64 = x.iter().zip(&back).map(|(a, b)| a * b).sum();
                assert_eq!(lhs, rhs, "{g:?} {u:?}");
            }
        }
    }
}
