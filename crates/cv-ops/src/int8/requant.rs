//! The epilogue of the int8 convolution: exact i32 sums to real values (zero-point
//! correction, scales, folded bias), plus the dequantized residual, ReLU, and quantized to the
//! output's parameters, rounding as [`QParams::quantize`] does.

use super::kernels::BLOCK;
use super::{Epilogue, QConv, QParams};

pub(super) struct Requant {
    /// `zero_point(x) * sum of the channel's weight codes`: what the padding-free sum owes.
    correction: Vec<i32>,
    /// `scale(x) * scale(w[o])`.
    multiplier: Vec<f32>,
    bias: Vec<f32>,
    residual: Option<QParams>,
    relu: bool,
    out: QParams,
    avx2: bool,
}

impl Requant {
    pub(super) fn new(w: &QConv, x: QParams, e: &Epilogue) -> Requant {
        Requant {
            correction: w.row_sums.iter().map(|s| s * x.zero_point).collect(),
            multiplier: w.scale.iter().map(|s| s * x.scale).collect(),
            bias: w.bias.clone(),
            residual: e.residual.map(|r| r.qp),
            relu: e.relu,
            out: e.out,
            #[cfg(target_arch = "x86_64")]
            avx2: is_x86_feature_detected!("avx2"),
            #[cfg(not(target_arch = "x86_64"))]
            avx2: false,
        }
    }

    /// Writes the codes of channels `oc0..oc0 + sums.len()` of one pixel.
    pub(super) fn store(&self, oc0: usize, sums: &[i32], residual: Option<&[u8]>, out: &mut [u8]) {
        #[cfg(target_arch = "x86_64")]
        if self.avx2 {
            // SAFETY: the CPU has AVX2 (checked when `self` was made).
            return unsafe { self.store_avx2(oc0, sums, residual, out) };
        }
        self.store_portable(oc0, sums, residual, out)
    }

    /// The same loops compiled for AVX2 (so they vectorize 8 lanes wide).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn store_avx2(&self, oc0: usize, sums: &[i32], residual: Option<&[u8]>, out: &mut [u8]) {
        self.store_portable(oc0, sums, residual, out)
    }

    #[inline(always)]
    fn store_portable(&self, oc0: usize, sums: &[i32], residual: Option<&[u8]>, out: &mut [u8]) {
        let n = sums.len().min(BLOCK);
        let mut y = [0f32; BLOCK];
        let corr = &self.correction[oc0..][..n];
        let mult = &self.multiplier[oc0..][..n];
        let bias = &self.bias[oc0..][..n];
        for j in 0..n {
            y[j] = (sums[j] - corr[j]) as f32 * mult[j] + bias[j];
        }
        if let (Some(r), Some(qp)) = (residual, self.residual) {
            let zero = qp.zero_point as f32;
            for (yj, &rj) in y.iter_mut().zip(&r[..n]) {
                *yj += qp.scale * (rj as f32 - zero);
            }
        }
        if self.relu {
            for yj in &mut y[..n] {
                *yj = yj.max(0.0);
            }
        }
        let (scale, zero) = (self.out.scale, self.out.zero_point as f32);
        for (o, yj) in out[..n].iter_mut().zip(&y) {
            *o = ((yj / scale).round_ties_even() + zero).clamp(0.0, 255.0) as u8;
        }
    }
}
