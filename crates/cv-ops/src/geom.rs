//! Convolution geometry and the split of the work into units ("tiles") that one thread runs
//! with a single-threaded gemm call.

use crate::autocast::Precision;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Sizes of one NCHW convolution: input `[n, c, h, w]`, weight `[co, c, kh, kw]`,
/// output `[n, co, oh, ow]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Geom {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub co: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub ph: usize,
    pub pw: usize,
    pub oh: usize,
    pub ow: usize,
}

impl Geom {
    /// The geometry of a convolution, or `None` when the kernel does not fit the padded input.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        n: usize,
        c: usize,
        h: usize,
        w: usize,
        co: usize,
        kh: usize,
        kw: usize,
        stride: usize,
        ph: usize,
        pw: usize,
    ) -> Option<Self> {
        if stride == 0 || kh == 0 || kw == 0 || h + 2 * ph < kh || w + 2 * pw < kw {
            return None;
        }
        let oh = (h + 2 * ph - kh) / stride + 1;
        let ow = (w + 2 * pw - kw) / stride + 1;
        Some(Self {
            n,
            c,
            h,
            w,
            co,
            kh,
            kw,
            stride,
            ph,
            pw,
            oh,
            ow,
        })
    }

    /// Rows of the im2col matrix: `c * kh * kw`.
    pub fn k(&self) -> usize {
        self.c * self.kh * self.kw
    }

    /// Output pixels per image.
    pub fn p(&self) -> usize {
        self.oh * self.ow
    }

    /// A 1x1, stride-1, unpadded conv reads the input as the im2col matrix itself.
    pub fn is_pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.ph == 0 && self.pw == 0
    }
}

/// One unit of work: images `n0..n1` and, within each, output pixels `p0..p1`. Either the unit
/// covers a single image (`n1 == n0 + 1`, any pixel range) or whole images (`p0 == 0, p1 == P`):
/// small feature maps are batched across images so each gemm call stays large.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Unit {
    pub n0: usize,
    pub n1: usize,
    pub p0: usize,
    pub p1: usize,
}

impl Unit {
    /// Columns of this unit's im2col tile.
    pub fn cols(&self) -> usize {
        (self.n1 - self.n0) * (self.p1 - self.p0)
    }

    /// Whether the unit's columns are pixels of one image (so its output rows are strided views).
    pub fn single_image(&self) -> bool {
        self.n1 == self.n0 + 1
    }
}

/// Elements of one im2col tile we aim for (the tile is `k x cols`); 0 means the default.
static TILE_ELEMS: AtomicUsize = AtomicUsize::new(0);
const DEFAULT_TILE_ELEMS: usize = 96 * 1024;
const MIN_COLS: usize = 64;
const MAX_COLS: usize = 1024;

/// Overrides the im2col tile budget (elements); 0 restores the default (see `crate::set_tile_elems`).
pub(crate) fn set_tile_elems(elems: usize) {
    TILE_ELEMS.store(elems, Ordering::Relaxed);
}

/// The tile budget for products in `prec`: bf16 tiles are twice as wide (their gemm packs `B`
/// at half the bytes, and wider products amortise each block's `A` loads).
fn tile_elems(prec: Precision) -> usize {
    let base = match TILE_ELEMS.load(Ordering::Relaxed) {
        0 => DEFAULT_TILE_ELEMS,
        e => e,
    };
    match prec {
        Precision::Full => base,
        Precision::Bf16(_) => 2 * base,
    }
}

/// Splits `n` images of `p` output pixels (im2col height `k`) into units for `threads` threads,
/// tiles sized for products in `prec`.
pub(crate) fn plan(n: usize, p: usize, k: usize, threads: usize, prec: Precision) -> Vec<Unit> {
    if n == 0 || p == 0 {
        return Vec::new();
    }
    let target = (tile_elems(prec) / k.max(1)).clamp(MIN_COLS, MAX_COLS);
    let mut units = Vec::new();
    if p >= target / 2 || n == 1 {
        // Tiles inside each image, all of (nearly) equal width.
        let tiles = p.div_ceil(target).max(1);
        let width = p.div_ceil(tiles);
        for i in 0..n {
            let mut p0 = 0;
            while p0 < p {
                let p1 = (p0 + width).min(p);
                units.push(Unit {
                    n0: i,
                    n1: i + 1,
                    p0,
                    p1,
                });
                p0 = p1;
            }
        }
    } else {
        // Groups of whole images, keeping at least two units per thread when the batch allows.
        let mut g = (target / p).max(1);
        let min_units = 2 * threads.max(1);
        if n.div_ceil(g) < min_units {
            g = n.div_ceil(min_units).max(1);
        }
        let mut n0 = 0;
        while n0 < n {
            let n1 = (n0 + g).min(n);
            units.push(Unit {
                n0,
                n1,
                p0: 0,
                p1: p,
            });
            n0 = n1;
        }
    }
    units
}

#[cfg(test)]
mod tests {
    use super::*;

    fn covers(units: &[Unit], n: usize, p: usize) -> bool {
        let mut seen = vec![0u8; n * p];
        for u in units {
            assert!(u.single_image() || (u.p0 == 0 && u.p1 == p));
            for i in u.n0..u.n1 {
                for q in u.p0..u.p1 {
                    seen[i * p + q] += 1;
                }
            }
        }
        seen.iter().all(|&s| s == 1)
    }

    #[test]
    fn plans_cover_every_pixel_once() {
        for &(n, p, k) in &[
            (16, 3136, 576),
            (64, 64, 2304),
            (64, 16, 4608),
            (1, 1, 4608),
            (3, 100, 25),
            (16, 12544, 147),
            (5, 7, 9),
        ] {
            let units = plan(n, p, k, 2, Precision::Full);
            assert!(covers(&units, n, p), "n={n} p={p} k={k}: {units:?}");
        }
    }

    #[test]
    fn geometry_matches_pytorch_formula() {
        let g = Geom::new(2, 3, 224, 224, 64, 7, 7, 2, 3, 3).unwrap();
        assert_eq!((g.oh, g.ow), (112, 112));
        let g = Geom::new(2, 64, 56, 56, 128, 1, 1, 2, 0, 0).unwrap();
        assert_eq!((g.oh, g.ow), (28, 28));
        assert!(Geom::new(1, 1, 2, 2, 1, 5, 5, 1, 0, 0).is_none());
    }
}
