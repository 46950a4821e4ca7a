//! Winograd F(2x2, 3x3) for 3x3 stride-1 convolutions (Lavin & Gray, arXiv:1509.09308): each
//! 2x2 block of outputs costs 16 multiplies per (input, output) channel pair instead of 36, so
//! the gemm work of ResNet's 3x3 layers drops 2.25-fold for a few adds per tile. Used by the
//! forward kernel, and so by the input gradient, which runs as a forward convolution; its
//! transpose F(3x3, 2x2) computes the weight gradient.
//!
//! Layout: `U[xi][co][ci]` (the transformed kernel), per unit of tiles `V[xi][ci][t]` (the
//! transformed input tiles) and `M[xi][co][t] = U[xi] * V[xi]` (16 gemms), then the output
//! transform writes each tile's 2x2 outputs. Tiles run over (image, tile row, tile column) so
//! small feature maps are batched across images.

use crate::buffers::{grow, SendPtr};
use crate::elem::Elem;
use crate::geom::Geom;
use crate::matmul::{inner_parallelism, threads};
use gemm::Parallelism;
use rayon::prelude::*;
use std::sync::atomic::{AtomicBool, Ordering};

static DISABLED: AtomicBool = AtomicBool::new(false);

/// Turns the Winograd path of [`crate::conv2d`] (and its gradients) off, or back on, for
/// benchmarks that compare it with im2col. Process-wide; on by default.
pub fn set_winograd_enabled(on: bool) {
    DISABLED.store(!on, Ordering::Relaxed);
}

/// Whether `g` runs through Winograd: a 3x3 stride-1 kernel, enough channels for the gemms to
/// dominate the transforms, and maps of at least 7x7. With 64 channels the transforms cost as
/// much as the gemms save on small maps (and the weight gradient loses), so such layers run
/// here only on large maps; these are the bounds where it beats im2col in `xtask bench`
/// (figures in `docs/benchmarks.md`).
pub(crate) fn applies(g: &Geom) -> bool {
    let wide = g.c >= MIN_CHANNELS && g.co >= MIN_CHANNELS;
    let narrow_on_large_map = g.c >= MIN_NARROW_CHANNELS
        && g.co >= MIN_NARROW_CHANNELS
        && g.oh >= MIN_NARROW_MAP
        && g.ow >= MIN_NARROW_MAP;
    !DISABLED.load(Ordering::Relaxed)
        && g.kh == 3
        && g.kw == 3
        && g.stride == 1
        && g.oh >= MIN_MAP
        && g.ow >= MIN_MAP
        && (wide || narrow_on_large_map)
}

/// Channels from which maps of at least [`MIN_NARROW_MAP`] pixels a side run here too.
const MIN_NARROW_CHANNELS: usize = 64;

/// See [`MIN_NARROW_CHANNELS`]: ResNet's layer1 at 224x224 inputs (56x56 maps).
const MIN_NARROW_MAP: usize = 28;

/// Whether the weight gradient of `g` runs through Winograd: [`applies`], and at least 80% of
/// the tiles' outputs inside the map. Below that (512 channels at 7x7 uses 49 of 64 tile
/// outputs) the wasted tile work outweighs the saved multiplies and im2col is faster.
pub(crate) fn weight_grad_applies(g: &Geom) -> bool {
    let tiled = 4 * g.oh.div_ceil(2) * g.ow.div_ceil(2);
    applies(g) && 5 * g.oh * g.ow >= 4 * tiled
}

/// Smaller maps stay on im2col: at 4x4 a tile is mostly padding. 7x7 (ResNet's last stage at
/// 224) still gains with 512 channels.
const MIN_MAP: usize = 7;

/// Tiles per unit at least: fewer make each of the 16 gemms too thin (N = tiles) to amortise
/// packing the transformed kernel (64 is the best for 256 and 512 channels).
const MIN_UNIT_TILES: usize = 64;

/// Fewer channels than this stay on im2col, except on large maps (see [`applies`]).
const MIN_CHANNELS: usize = 128;

/// Bytes of `V` plus `M` per unit that we aim for: about what a core's L2 holds.
const UNIT_BYTES: usize = 1 << 20;

/// `U[xi][co][ci] = G g G^T` for every kernel `g = w[co][ci]` (3x3), with
/// `G = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]]`.
fn transform_kernel<T: Elem>(w: &[T], co: usize, ci: usize) -> Vec<T> {
    let mut u = vec![T::ZERO; 16 * co * ci];
    let half = T::HALF;
    for o in 0..co {
        for i in 0..ci {
            let k = &w[(o * ci + i) * 9..(o * ci + i) * 9 + 9];
            // t = G k (4x3), then U = t G^T (4x4).
            let mut t = [[T::ZERO; 3]; 4];
            for c in 0..3 {
                let (a, b, d) = (k[c], k[3 + c], k[6 + c]);
                t[0][c] = a;
                t[1][c] = half * (a + b + d);
                t[2][c] = half * (a - b + d);
                t[3][c] = d;
            }
            for (r, row) in t.iter().enumerate() {
                let (a, b, d) = (row[0], row[1], row[2]);
                let vals = [a, half * (a + b + d), half * (a - b + d), d];
                for (c, v) in vals.into_iter().enumerate() {
                    u[((r * 4 + c) * co + o) * ci + i] = v;
                }
            }
        }
    }
    u
}

/// Per-thread buffers of one unit.
struct Scratch<T> {
    v: Vec<T>,
    m: Vec<T>,
}

/// `y = conv(x, w)` for a geometry where [`applies`] holds; same contract as the im2col forward.
pub(crate) fn forward<T: Elem>(x: &[T], w: &[T], g: &Geom) -> Vec<T> {
    let (c, co) = (g.c, g.co);
    let (th, tw) = (g.oh.div_ceil(2), g.ow.div_ceil(2));
    let tiles = g.n * th * tw;
    let mut y = vec![T::ZERO; g.n * co * g.oh * g.ow];
    if tiles == 0 {
        return y;
    }
    let u = transform_kernel(w, co, c);
    let xp = pad_input(x, g);
    let nt = threads();
    let per_tile = 16 * (c + co) * std::mem::size_of::<T>();
    let mut tb = (UNIT_BYTES / per_tile).clamp(MIN_UNIT_TILES, 512);
    // At least two units per thread where the tiles allow, for balance.
    tb = tb.min(tiles.div_ceil(2 * nt)).max(1);
    let units: Vec<(usize, usize)> = (0..tiles)
        .step_by(tb)
        .map(|t0| (t0, (t0 + tb).min(tiles)))
        .collect();
    let yp = SendPtr(y.as_mut_ptr());
    #[cfg(target_arch = "x86_64")]
    let avx512 = T::IS_F32 && crate::gemm_avx512::available();
    let run = |&(t0, t1): &(usize, usize), s: &mut Scratch<T>, par: Parallelism| {
        let nb = t1 - t0;
        grow(&mut s.v, 16 * c * nb);
        grow(&mut s.m, 16 * co * nb);
        input_tiles(&xp, g, t0, t1, &mut s.v);
        #[cfg(target_arch = "x86_64")]
        if avx512 && matches!(par, Parallelism::None) {
            for xi in 0..16 {
                // SAFETY: T is f32 (IS_F32) and AVX-512 F is there; U[xi] is co x ci, V[xi]
                // ci x nb and M[xi] co x nb, dense and row-major in their buffers; M belongs
                // to this thread.
                unsafe {
                    crate::gemm_avx512::products(
                        f32_rows(u.as_ptr().add(xi * co * c), c),
                        (s.v.as_ptr().add(xi * c * nb).cast(), nb),
                        (s.m.as_mut_ptr().add(xi * co * nb).cast(), nb),
                        [co, c, nb],
                        false,
                    );
                }
            }
            // SAFETY: the tiles t0..t1 cover output pixels that no other unit writes.
            unsafe { output_tiles(&s.m, g, t0, t1, yp.get()) };
            return;
        }
        for xi in 0..16 {
            // SAFETY: U[xi] is co x ci, V[xi] is ci x nb and M[xi] is co x nb, all row-major
            // inside their buffers; M belongs to this thread.
            unsafe {
                gemm::gemm(
                    co,
                    nb,
                    c,
                    s.m.as_mut_ptr().add(xi * co * nb),
                    1,
                    nb as isize,
                    false,
                    u.as_ptr().add(xi * co * c),
                    1,
                    c as isize,
                    s.v.as_ptr().add(xi * c * nb),
                    1,
                    nb as isize,
                    T::ZERO,
                    T::ONE,
                    false,
                    false,
                    false,
                    par,
                );
            }
        }
        // SAFETY: the tiles t0..t1 cover output pixels that no other unit writes.
        unsafe { output_tiles(&s.m, g, t0, t1, yp.get()) };
    };
    if units.len() >= nt && nt > 1 {
        units.par_iter().for_each_init(
            || Scratch {
                v: Vec::new(),
                m: Vec::new(),
            },
            |s, unit| run(unit, s, Parallelism::None),
        );
    } else {
        let mut s = Scratch {
            v: Vec::new(),
            m: Vec::new(),
        };
        let par = inner_parallelism(nt);
        for unit in &units {
            run(unit, &mut s, par);
        }
    }
    y
}

/// Tiles per unit of the weight gradient's transforms, for `c + co` channels: about
/// [`WG_UNIT_BYTES`] of transformed input and gradient, at least [`MIN_UNIT_TILES`].
fn wg_unit_tiles<T>(c: usize, co: usize) -> usize {
    (WG_UNIT_BYTES / (16 * (c + co) * std::mem::size_of::<T>())).max(MIN_UNIT_TILES)
}

/// Bytes of `V` plus `E` per weight-gradient unit: each unit's 16 gemms read and write the
/// whole `16 x co x c` accumulator, so units are larger than the forward's.
const WG_UNIT_BYTES: usize = 4 << 20;

/// `dw = conv weight gradient(x, dy)` for a geometry where [`weight_grad_applies`] holds, `[co, c, 3, 3]`,
/// through Winograd F(3x3, 2x2), the forward's transpose: per 2x2 output tile, the input patch
/// transformed as in the forward (`V = B^T d B`) and the output gradient as `E = A e A^T`;
/// `M[xi] = sum over tiles of E[xi] V[xi]^T` (16 gemms of `co x c`, the tiles as the inner
/// dimension), then `dw = G^T M G`. 16 multiplies per tile and channel pair instead of 36.
pub(crate) fn weight_grad<T: Elem>(x: &[T], dy: &[T], g: &Geom) -> Vec<T> {
    let (c, co) = (g.c, g.co);
    let (th, tw) = (g.oh.div_ceil(2), g.ow.div_ceil(2));
    let tiles = g.n * th * tw;
    let mut dw = vec![T::ZERO; co * c * 9];
    if tiles == 0 {
        return dw;
    }
    let xp = pad_input(x, g);
    let nt = threads();
    let tb = wg_unit_tiles::<T>(c, co).min(tiles.div_ceil(nt)).max(1);
    let units: Vec<(usize, usize)> = (0..tiles)
        .step_by(tb)
        .map(|t0| (t0, (t0 + tb).min(tiles)))
        .collect();
    // On AVX-512 the parallel path keeps `M^T[xi][i][o]` (see `winograd_avx512`).
    #[cfg(target_arch = "x86_64")]
    let by_channel = T::IS_F32
        && crate::gemm_avx512::available()
        && units.len() >= nt
        && nt > 1
        && 16 * g.oh * g.ow <= i32::MAX as usize;
    #[cfg(not(target_arch = "x86_64"))]
    let by_channel = false;
    let run = |m: &mut [T], (t0, t1): (usize, usize), s: &mut Scratch<T>, par: Parallelism| {
        let nb = t1 - t0;
        grow(&mut s.v, 16 * c * nb);
        grow(&mut s.m, 16 * co * nb);
        input_tiles(&xp, g, t0, t1, &mut s.v);
        #[cfg(target_arch = "x86_64")]
        if by_channel {
            // SAFETY: T is f32 and AVX-512 F is there, and 16 planes of dy index below 2^31
            // (by_channel); E[xi] is nb x co in s.m (16 * co * nb values), V[xi] c x nb in
            // s.v and M^T[xi] this task's c x co accumulator.
            unsafe {
                let e = s.m.as_mut_ptr().cast::<f32>();
                crate::winograd_avx512::grad_tiles_by_channel(dy.as_ptr().cast(), g, (t0, t1), e);
                for xi in 0..16 {
                    crate::gemm_avx512::products(
                        f32_rows(s.v.as_ptr().add(xi * c * nb), nb),
                        (s.m.as_ptr().add(xi * co * nb).cast(), co),
                        (m.as_mut_ptr().add(xi * co * c).cast(), co),
                        [c, nb, co],
                        true,
                    );
                }
            }
            return;
        }
        grad_tiles(dy, g, t0, t1, &mut s.m);
        for xi in 0..16 {
            // SAFETY: E[xi] is co x nb and V[xi] is c x nb (read transposed), row-major in
            // their buffers; M[xi] is this task's own co x c accumulator.
            unsafe {
                crate::matmul::matmul(
                    co,
                    c,
                    nb,
                    (m.as_mut_ptr().add(xi * co * c), c, 1),
                    true,
                    (s.m.as_ptr().add(xi * co * nb), nb, 1),
                    (s.v.as_ptr().add(xi * c * nb), 1, nb),
                    par,
                    crate::autocast::Precision::Full,
                );
            }
        }
    };
    let new_scratch = || Scratch {
        v: Vec::new(),
        m: Vec::new(),
    };
    let m = if units.len() >= nt && nt > 1 {
        // Contiguous runs of units, one accumulator each, summed at the end.
        let per = units.len().div_ceil(nt);
        let partials: Vec<Vec<T>> = units
            .par_chunks(per)
            .map(|chunk| {
                let mut m = vec![T::ZERO; 16 * co * c];
                let mut s = new_scratch();
                for &u in chunk {
                    run(&mut m, u, &mut s, Parallelism::None);
                }
                m
            })
            .collect();
        let mut it = partials.into_iter();
        let mut m = it.next().unwrap_or_else(|| vec![T::ZERO; 16 * co * c]);
        for part in it {
            m.par_iter_mut()
                .zip(part.par_iter())
                .with_min_len(1 << 14)
                .for_each(|(a, b)| *a += *b);
        }
        m
    } else {
        let mut m = vec![T::ZERO; 16 * co * c];
        let mut s = new_scratch();
        for &u in &units {
            run(&mut m, u, &mut s, inner_parallelism(nt));
        }
        m
    };
    // dw[o][i] = G^T M[.][o][i] G, with G^T = [[1, 1/2, 1/2, 0], [0, 1/2, -1/2, 0],
    // [0, 1/2, 1/2, 1]].
    let half = T::HALF;
    // Where (o, i) = (oi / c, oi % c) lies in M: `M^T[i][o]` on the channel-major path.
    let at = |oi: usize| if by_channel { oi % c * co + oi / c } else { oi };
    dw.par_chunks_mut(9).enumerate().for_each(|(oi, out)| {
        let oi = at(oi);
        let mm = |xi: usize| m[xi * co * c + oi];
        // t = G^T M (3x4), one column q at a time.
        let col = |q: usize| {
            let (a, b, cc, d) = (mm(q), mm(4 + q), mm(8 + q), mm(12 + q));
            [a + half * (b + cc), half * (b - cc), half * (b + cc) + d]
        };
        let cols = [col(0), col(1), col(2), col(3)];
        let t: [[T; 4]; 3] = std::array::from_fn(|r| std::array::from_fn(|q| cols[q][r]));
        for (r, tr) in t.iter().enumerate() {
            out[r * 3] = tr[0] + half * (tr[1] + tr[2]);
            out[r * 3 + 1] = half * (tr[1] - tr[2]);
            out[r * 3 + 2] = half * (tr[1] + tr[2]) + tr[3];
        }
    });
    dw
}

/// `E[xi][o][t - t0] = (A e A^T)[xi]` for the 2x2 output-gradient patch `e` of each tile (zero
/// past the map's edge), with `A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]`.
fn grad_tiles<T: Elem>(dy: &[T], g: &Geom, t0: usize, t1: usize, e_out: &mut [T]) {
    let (co, oh, ow) = (g.co, g.oh, g.ow);
    let nb = t1 - t0;
    #[cfg(target_arch = "x86_64")]
    let simd = T::IS_F32 && crate::winograd_avx2::available();
    for o in 0..co {
        for (img, ty, tx0, len, j0) in runs(g, t0, t1, LANES) {
            let plane = &dy[(img * co + o) * oh * ow..(img * co + o + 1) * oh * ow];
            #[cfg(target_arch = "x86_64")]
            if simd {
                // SAFETY: T is f32 and AVX2 is there; the tiles' gradients are columns
                // 2tx0..min(2tx0 + 2len, ow) of rows 2ty and, when inside the map, 2ty + 1 of
                // the plane; E[xi][o][j0..j0 + len] lies inside e_out for every xi.
                unsafe {
                    let rows = plane.as_ptr().add(2 * ty * ow + 2 * tx0).cast::<f32>();
                    let out = e_out.as_mut_ptr().add(o * nb + j0).cast::<f32>();
                    let cols = (2 * len).min(ow - 2 * tx0);
                    crate::winograd_avx2::grad_tiles8(
                        rows,
                        ow,
                        oh - 2 * ty,
                        cols,
                        out,
                        co * nb,
                        len,
                    );
                }
                continue;
            }
            // e[r][q][lane]: gradient (r, q) of tile tx0 + lane.
            let mut e = [[[T::ZERO; LANES]; 2]; 2];
            for (r, er) in e.iter_mut().enumerate() {
                let oy = 2 * ty + r;
                if oy >= oh {
                    continue;
                }
                let row = &plane[oy * ow..(oy + 1) * ow];
                for lane in 0..len {
                    for (q, eq) in er.iter_mut().enumerate() {
                        if let Some(&v) = row.get(2 * (tx0 + lane) + q) {
                            eq[lane] = v;
                        }
                    }
                }
            }
            // Rows first (f = A e, 4x2), then columns (f A^T, 4x4).
            for r in 0..4 {
                let mut f = [[T::ZERO; LANES]; 2];
                for (q, fq) in f.iter_mut().enumerate() {
                    for lane in 0..LANES {
                        let (a, b) = (e[0][q][lane], e[1][q][lane]);
                        fq[lane] = match r {
                            0 => a,
                            1 => a + b,
                            2 => a - b,
                            _ => T::ZERO - b,
                        };
                    }
                }
                let mut vals = [[T::ZERO; LANES]; 4];
                for lane in 0..LANES {
                    let (a, b) = (f[0][lane], f[1][lane]);
                    vals[0][lane] = a;
                    vals[1][lane] = a + b;
                    vals[2][lane] = a - b;
                    vals[3][lane] = T::ZERO - b;
                }
                for (q, vq) in vals.iter().enumerate() {
                    let at = ((r * 4 + q) * co + o) * nb + j0;
                    copy_lanes(&mut e_out[at..at + len], &vq[..len]);
                }
            }
        }
    }
}

/// `p` as f32 rows `stride` apart, for the AVX-512 products (callers check that T is f32).
#[cfg(target_arch = "x86_64")]
fn f32_rows<T>(p: *const T, stride: usize) -> crate::gemm_avx512::Strided {
    crate::gemm_avx512::Strided {
        ptr: p.cast(),
        row: stride,
        col: 1,
    }
}

/// Tiles handled together, one per SIMD lane (the transforms are written lane-wise so the
/// compiler vectorises them).
const LANES: usize = 8;

/// The input zero-padded so that every tile's 4x4 patch lies inside: `[n, c, 2*th+2, 2*tw+2]`,
/// tile `(ty, tx)` reading rows `2ty..2ty+4` and columns `2tx..2tx+4`.
struct Padded<T> {
    data: Vec<T>,
    hp: usize,
    wp: usize,
}

fn pad_input<T: Elem>(x: &[T], g: &Geom) -> Padded<T> {
    let (th, tw) = (g.oh.div_ceil(2), g.ow.div_ceil(2));
    let (hp, wp) = (2 * th + 2, 2 * tw + 2);
    let (h, w) = (g.h, g.w);
    let mut data = vec![T::ZERO; g.n * g.c * hp * wp];
    data.par_chunks_mut(hp * wp)
        .zip(x.par_chunks(h * w))
        .for_each(|(dst, src)| {
            // Padded row py holds input row py - ph (when inside), columns shifted by pw.
            for py in 0..hp {
                let Some(iy) = py.checked_sub(g.ph).filter(|&v| v < h) else {
                    continue;
                };
                let x_lo = g.pw.min(wp);
                let n = w.min(wp - x_lo);
                dst[py * wp + x_lo..py * wp + x_lo + n].copy_from_slice(&src[iy * w..iy * w + n]);
            }
        });
    Padded { data, hp, wp }
}

/// `dst.copy_from_slice(src)` for at most [`LANES`] values, without a `memcpy` call for the
/// common full run (a library call per 8 values is a visible cost of the 64-channel layers).
#[inline(always)]
fn copy_lanes<T: Elem>(dst: &mut [T], src: &[T]) {
    if let (Ok(d), Ok(s)) = (
        <&mut [T; LANES]>::try_from(&mut *dst),
        <&[T; LANES]>::try_from(src),
    ) {
        *d = *s;
    } else {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = *s;
        }
    }
}

/// Runs of consecutive tiles of `t0..t1` on one tile row: `(image, ty, tx0, len, j0)` with
/// `len <= lanes` and `j0` the first tile's index within the unit.
fn runs(
    g: &Geom,
    t0: usize,
    t1: usize,
    lanes: usize,
) -> impl Iterator<Item = (usize, usize, usize, usize, usize)> {
    let (th, tw) = (g.oh.div_ceil(2), g.ow.div_ceil(2));
    let mut t = t0;
    std::iter::from_fn(move || {
        if t >= t1 {
            return None;
        }
        let img = t / (th * tw);
        let (ty, tx) = ((t / tw) % th, t % tw);
        let len = (tw - tx).min(t1 - t).min(lanes);
        let run = (img, ty, tx, len, t - t0);
        t += len;
        Some(run)
    })
}

/// `V[xi][ci][t - t0] = (B^T d B)[xi]` for the 4x4 input patch `d` of each tile, with
/// `B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]`.
fn input_tiles<T: Elem>(xp: &Padded<T>, g: &Geom, t0: usize, t1: usize, v: &mut [T]) {
    let c = g.c;
    let (hp, wp) = (xp.hp, xp.wp);
    let nb = t1 - t0;
    #[cfg(target_arch = "x86_64")]
    let simd = T::IS_F32 && crate::winograd_avx2::available();
    #[cfg(target_arch = "x86_64")]
    let wide = T::IS_F32 && crate::gemm_avx512::available();
    #[cfg(not(target_arch = "x86_64"))]
    let wide = false;
    let lanes = if wide { 2 * LANES } else { LANES };
    // Channel outer, tiles inner: each of the 16 rows written for a channel is contiguous.
    for ci in 0..c {
        for (img, ty, tx0, len, j0) in runs(g, t0, t1, lanes) {
            let plane = &xp.data[(img * c + ci) * hp * wp..(img * c + ci + 1) * hp * wp];
            #[cfg(target_arch = "x86_64")]
            if wide {
                // SAFETY: T is f32 and AVX-512 F is there; as for the AVX2 kernel below, with
                // up to 16 tiles per run.
                unsafe {
                    let rows = plane.as_ptr().add(2 * ty * wp + 2 * tx0).cast::<f32>();
                    let out = v.as_mut_ptr().add(ci * nb + j0).cast::<f32>();
                    crate::winograd_avx512::input_tiles16(rows, wp, out, c * nb, len);
                }
                continue;
            }
            #[cfg(target_arch = "x86_64")]
            if simd {
                // SAFETY: T is f32 (IS_F32) and AVX2 is there; the tiles' patches are rows
                // 2ty..2ty+4, columns 2tx0..2tx0+2len+2 of the padded plane (wp = 2tw + 2 and
                // tx0 + len <= tw); V[xi][ci][j0..j0 + len] lies inside v for every xi.
                unsafe {
                    let rows = plane.as_ptr().add(2 * ty * wp + 2 * tx0).cast::<f32>();
                    let out = v.as_mut_ptr().add(ci * nb + j0).cast::<f32>();
                    crate::winograd_avx2::input_tiles8(rows, wp, out, c * nb, len);
                }
                continue;
            }
            // d[r][q][lane]: patch value (r, q) of tile tx0 + lane.
            let mut d = [[[T::ZERO; LANES]; 4]; 4];
            for (r, dr) in d.iter_mut().enumerate() {
                let row = &plane[(2 * ty + r) * wp + 2 * tx0..(2 * ty + r + 1) * wp];
                for lane in 0..len {
                    for (q, dq) in dr.iter_mut().enumerate() {
                        dq[lane] = row[2 * lane + q];
                    }
                }
            }
            // Columns first (e = B^T d), then rows (e B).
            let mut e = [[[T::ZERO; LANES]; 4]; 4];
            for q in 0..4 {
                for lane in 0..LANES {
                    let (d0, d1, d2, d3) =
                        (d[0][q][lane], d[1][q][lane], d[2][q][lane], d[3][q][lane]);
                    e[0][q][lane] = d0 - d2;
                    e[1][q][lane] = d1 + d2;
                    e[2][q][lane] = d2 - d1;
                    e[3][q][lane] = d1 - d3;
                }
            }
            for (r, er) in e.iter().enumerate() {
                let mut vals = [[T::ZERO; LANES]; 4];
                for lane in 0..LANES {
                    let (a, b, cc, dd) = (er[0][lane], er[1][lane], er[2][lane], er[3][lane]);
                    vals[0][lane] = a - cc;
                    vals[1][lane] = b + cc;
                    vals[2][lane] = cc - b;
                    vals[3][lane] = b - dd;
                }
                for (q, vq) in vals.iter().enumerate() {
                    let at = ((r * 4 + q) * c + ci) * nb + j0;
                    copy_lanes(&mut v[at..at + len], &vq[..len]);
                }
            }
        }
    }
}

/// Writes `Y = A^T m A` (2x2, clipped at the map's edge) of every tile and output channel,
/// with `A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]`.
///
/// # Safety
/// `y` must point to the `[n, co, oh, ow]` output, and no other thread may write the pixels of
/// tiles `t0..t1`.
unsafe fn output_tiles<T: Elem>(m: &[T], g: &Geom, t0: usize, t1: usize, y: *mut T) {
    let (co, oh, ow) = (g.co, g.oh, g.ow);
    let nb = t1 - t0;
    #[cfg(target_arch = "x86_64")]
    let simd = T::IS_F32 && crate::winograd_avx2::available();
    for o in 0..co {
        for (img, ty, tx0, len, j0) in runs(g, t0, t1, LANES) {
            #[cfg(target_arch = "x86_64")]
            if simd {
                // SAFETY: T is f32 and AVX2 is there; M[xi][o][j0..j0 + len] lies inside m; the
                // tiles' outputs are columns 2tx0..min(2tx0 + 2len, ow) of rows 2ty and, when
                // inside the map, 2ty + 1 of this channel: this unit's alone.
                unsafe {
                    let mp = m.as_ptr().add(o * nb + j0).cast::<f32>();
                    let out = y
                        .add(((img * co + o) * oh + 2 * ty) * ow + 2 * tx0)
                        .cast::<f32>();
                    let cols = (2 * len).min(ow - 2 * tx0);
                    crate::winograd_avx2::output_tiles8(
                        mp,
                        co * nb,
                        len,
                        out,
                        ow,
                        oh - 2 * ty,
                        cols,
                    );
                }
                continue;
            }
            // mm[xi][lane]
            let mut mm = [[T::ZERO; LANES]; 16];
            for (xi, row) in mm.iter_mut().enumerate() {
                let at = (xi * co + o) * nb + j0;
                copy_lanes(&mut row[..len], &m[at..at + len]);
            }
            // Rows first (r = A^T m), then columns.
            let mut r = [[[T::ZERO; LANES]; 4]; 2];
            for q in 0..4 {
                for lane in 0..LANES {
                    let (a, b, c, d) = (
                        mm[q][lane],
                        mm[4 + q][lane],
                        mm[8 + q][lane],
                        mm[12 + q][lane],
                    );
                    r[0][q][lane] = a + b + c;
                    r[1][q][lane] = b - c - d;
                }
            }
            for (dy, rr) in r.iter().enumerate() {
                let oy = 2 * ty + dy;
                if oy >= oh {
                    continue;
                }
                let mut out = [[T::ZERO; LANES]; 2];
                for lane in 0..LANES {
                    out[0][lane] = rr[0][lane] + rr[1][lane] + rr[2][lane];
                    out[1][lane] = rr[1][lane] - rr[2][lane] - rr[3][lane];
                }
                let row = ((img * co + o) * oh + oy) * ow;
                for lane in 0..len {
                    for (dx, od) in out.iter().enumerate() {
                        let ox = 2 * (tx0 + lane) + dx;
                        if ox < ow {
                            // SAFETY: in bounds of the output; this tile's pixel (caller's
                            // contract).
                            unsafe { *y.add(row + ox) = od[lane] };
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_data::data;

    /// Fails unless every value of `got` is within `tol` times `want`'s largest magnitude.
    fn assert_close<T: Elem + Into<f64>>(got: &[T], want: &[T], tol: f64, what: &str) {
        assert_eq!(got.len(), want.len(), "{what}");
        let scale = want.iter().fold(0f64, |m, &v| m.max(v.into().abs()));
        let err = want
            .iter()
            .zip(got)
            .fold(0f64, |m, (&a, &b)| m.max((a.into() - b.into()).abs()));
        assert!(err <= tol * scale, "{what}: {err} vs {scale}");
    }

    /// Winograd's forward and weight gradient of `g` against im2col's, on deterministic data
    /// converted by `cast`, within `tol` of the largest magnitude.
    fn check_against_im2col<T: Elem + Into<f64>>(g: &Geom, tol: f64, cast: fn(f64) -> T) {
        let make = |len, seed| data(len, seed).into_iter().map(cast).collect::<Vec<T>>();
        let x = make(g.n * g.c * g.h * g.w, 1);
        let k = make(g.co * g.c * 9, 2);
        let dy = make(g.n * g.co * g.oh * g.ow, 3);
        let want = crate::im2col_gemm::forward_im2col(&x, &k, g, crate::autocast::Precision::Full);
        assert_close(&forward(&x, &k, g), &want, tol, &format!("forward {g:?}"));
        let want =
            crate::im2col_gemm::weight_grad_im2col(&x, &dy, g, crate::autocast::Precision::Full);
        let what = format!("weight gradient {g:?}");
        assert_close(&weight_grad(&x, &dy, g), &want, tol, &what);
    }

    #[test]
    fn forward_and_weight_grad_match_im2col() {
        for &(n, c, h, w, co, pad) in &[
            (2, 128, 8, 8, 128, 1),
            (3, 129, 9, 11, 131, 1),
            (1, 128, 10, 13, 128, 0),
            (2, 130, 8, 9, 128, 2),
            (5, 128, 14, 14, 136, 1),
            (4, 128, 7, 7, 128, 1),
            (4, 128, 7, 7, 136, 1),
        ] {
            let g = Geom::new(n, c, h, w, co, 3, 3, 1, pad, pad).unwrap();
            assert!(applies(&g), "{g:?}");
            check_against_im2col(&g, 1e-12, |v| v);
        }
    }

    /// f32 runs the AVX2 transforms: full runs of eight tiles, shorter runs (masked) and tiles
    /// clipped by odd map sizes.
    #[test]
    fn f32_matches_im2col_with_and_without_simd_runs() {
        for &(n, c, h, w, co) in &[
            (2, 128, 20, 21, 128),
            (1, 128, 16, 16, 136),
            (1, 128, 17, 35, 128),
            (3, 128, 7, 7, 128),
            (2, 128, 14, 13, 128),
            (1, 64, 28, 30, 64),
        ] {
            let g = Geom::new(n, c, h, w, co, 3, 3, 1, 1, 1).unwrap();
            check_against_im2col(&g, 2e-5, |v| v as f32);
        }
    }

    /// With several threads the forward and weight gradient split the tiles into units, the
    /// path where f32 runs the AVX-512 products and channel-major gradient tiles (where the
    /// CPU has them): odd maps, channel counts that are not multiples of 16 or 6.
    #[test]
    fn f32_matches_im2col_when_units_run_in_parallel() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        pool.install(|| {
            for &(n, c, h, w, co) in &[
                (2, 128, 20, 21, 128),
                (3, 70, 29, 31, 67),
                (4, 131, 9, 8, 136),
            ] {
                let g = Geom::new(n, c, h, w, co, 3, 3, 1, 1, 1).unwrap();
                assert!(applies(&g), "{g:?}");
                check_against_im2col(&g, 2e-5, |v| v as f32);
            }
        });
    }

    #[test]
    fn weight_grad_skips_maps_that_waste_tiles() {
        let g = |hw| Geom::new(16, 512, hw, hw, 512, 3, 3, 1, 1, 1).unwrap();
        assert!(!weight_grad_applies(&g(7)));
        assert!(weight_grad_applies(&g(8)));
        assert!(weight_grad_applies(&g(15)));
    }

    #[test]
    fn small_or_strided_convolutions_stay_on_im2col() {
        assert!(!applies(
            &Geom::new(1, 256, 4, 4, 256, 3, 3, 1, 1, 1).unwrap()
        ));
        assert!(!applies(
            &Geom::new(1, 256, 6, 6, 256, 3, 3, 1, 1, 1).unwrap()
        ));
        assert!(!applies(
            &Geom::new(1, 256, 16, 16, 256, 3, 3, 2, 1, 1).unwrap()
        ));
        assert!(!applies(
            &Geom::new(1, 64, 16, 16, 64, 3, 3, 1, 1, 1).unwrap()
        ));
        assert!(!applies(
            &Geom::new(1, 32, 56, 56, 64, 3, 3, 1, 1, 1).unwrap()
        ));
        assert!(applies(
            &Geom::new(1, 64, 56, 56, 64, 3, 3, 1, 1, 1).unwrap()
        ));
        assert!(!applies(
            &Geom::new(1, 256, 32, 32, 256, 5, 5, 1, 2, 2).unwrap()
        ));
    }
}
