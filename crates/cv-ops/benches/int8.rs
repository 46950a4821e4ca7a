//! Throughput of the int8 convolution per kernel family against our f32 convolution, on
//! ResNet-18's layer geometries, as JSON lines.
//!
//! `cargo bench -p cv-ops --bench int8`; env `REPS` (default 3, best-of). Not a test: the
//! numbers depend on the machine and its load (name the CPU beside them).

use candle_core::{Device, Tensor};
use cv_ops::int8::{
    conv2d_u8_with, int8_kernels_available, quantize_weights, Epilogue, QConv, QParams, QTensor,
};
use std::time::Instant;

/// (name, batch, in channels, side, out channels, kernel, stride, padding)
type Case = (
    &'static str,
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
);

const CASES: &[Case] = &[
    ("224 stem 7x7/2 3->64 b16", 16, 3, 224, 64, 7, 2, 3),
    ("224 l1 3x3 64->64 56x56 b16", 16, 64, 56, 64, 3, 1, 1),
    ("224 l2a 3x3/2 64->128 b16", 16, 64, 56, 128, 3, 2, 1),
    ("224 l3 3x3 256->256 14x14 b16", 16, 256, 14, 256, 3, 1, 1),
    ("224 l4 3x3 512->512 7x7 b16", 16, 512, 7, 512, 3, 1, 1),
    ("32 l4 3x3 512->512 1x1 b64", 64, 512, 1, 512, 3, 1, 1),
];

fn best<F: FnMut()>(reps: usize, mut f: F) -> f64 {
    f();
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() -> candle_core::Result<()> {
    cv_ops::leave_threads_to_rayon();
    let reps: usize = std::env::var("REPS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    for &(name, n, c, side, oc, k, s, p) in CASES {
        let x: Vec<f32> = (0..n * c * side * side)
            .map(|i| ((i * 7919) % 255) as f32 / 255.0)
            .collect();
        let w: Vec<f32> = (0..oc * c * k * k)
            .map(|i| ((i * 104_729) % 201) as f32 / 100.0 - 1.0)
            .collect();
        let o = (side + 2 * p - k) / s + 1;
        let gop = 2.0 * (n * oc * o * o * c * k * k) as f64 / 1e9;
        let xt = Tensor::from_vec(x.clone(), (n, c, side, side), &Device::Cpu)?;
        let wt = Tensor::from_vec(w.clone(), (oc, c, k, k), &Device::Cpu)?;
        let f32_s = best(reps, || {
            cv_ops::conv2d(&xt, &wt, p, s).expect("f32 conv");
        });
        let qp = QParams::from_range(0.0, 1.0).expect("range");
        let xq = QTensor::from_nchw(&x, [n, c, side, side], qp, p.max(1)).expect("input");
        let (wq, ws) = quantize_weights(&w, oc).expect("weights");
        let conv = QConv::new(wq, [oc, c, k, k], ws, vec![0.0; oc], s, p).expect("conv");
        let e = Epilogue {
            out: qp,
            residual: None,
            relu: true,
        };
        for kernel in int8_kernels_available() {
            let t = best(reps, || {
                conv2d_u8_with(kernel, &xq, &conv, e).expect("int8 conv");
            });
            println!(
                "{{\"case\":\"{name}\",\"kernel\":\"{kernel}\",\"gops\":{:.1},\"f32_gflops\":{:.1},\"speedup_vs_f32\":{:.2}}}",
                gop / t,
                gop / f32_s,
                f32_s / t
            );
        }
    }
    Ok(())
}
