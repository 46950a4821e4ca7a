//! The small CNN's fused layers (`conv_relu_pool2d`) at the tutorial's batch of 100: forward
//! and backward per call, as JSON lines.
//!
//! `cargo bench -p cv-ops --bench conv_pool`; env `REPS` (default 20, best-of). Not a test: the
//! figures depend on the machine and its load; `us_per_image_cpu` divides the CPU time all
//! threads used by the images, steadier on a shared machine than wall-clock time.

use candle_core::{DType, Device, Result, Tensor, Var};
use std::time::Instant;

/// (name, input dims, weight dims, whether the input needs a gradient as in the network).
const CASES: [(&str, [usize; 4], [usize; 4], bool); 2] = [
    (
        "conv1 3->6 k5 32x32 b100",
        [100, 3, 32, 32],
        [6, 3, 5, 5],
        false,
    ),
    (
        "conv2 6->16 k5 14x14 b100",
        [100, 6, 14, 14],
        [16, 6, 5, 5],
        true,
    ),
];

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut u: libc_rusage = unsafe { std::mem::zeroed() };
    unsafe { getrusage(0, &mut u) };
    let t = |s: i64, us: i64| s as f64 + us as f64 * 1e-6;
    t(u.utime_s, u.utime_us) + t(u.stime_s, u.stime_us)
}

#[repr(C)]
struct libc_rusage {
    utime_s: i64,
    utime_us: i64,
    stime_s: i64,
    stime_us: i64,
    rest: [i64; 14],
}

extern "C" {
    fn getrusage(who: i32, usage: *mut libc_rusage) -> i32;
    fn mallopt(param: i32, value: i32) -> i32;
}

/// As `cv_data::keep_freed_memory` does for the trainer (glibc): freed batch-sized buffers
/// stay in the heap instead of being unmapped and faulted in again, so the figures show the
/// kernels rather than page faults.
fn keep_freed_memory() {
    // SAFETY: mallopt only changes allocator settings. M_TRIM_THRESHOLD = -1,
    // M_MMAP_THRESHOLD = -3.
    unsafe {
        mallopt(-3, 1 << 30);
        mallopt(-1, i32::MAX);
    }
}

fn main() -> Result<()> {
    let reps: usize = std::env::var("REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    keep_freed_memory();
    let dev = Device::Cpu;
    for (name, xd, wd, x_grad) in CASES {
        let x0 = Tensor::randn(0f32, 1.0, &xd, &dev)?;
        let x = Var::from_tensor(&x0)?;
        let w = Var::from_tensor(&(Tensor::randn(0f32, 1.0, &wd, &dev)? * 0.1)?)?;
        let b = Var::from_tensor(&Tensor::zeros(wd[0], DType::F32, &dev)?)?;
        let xin = if x_grad {
            x.as_tensor().clone()
        } else {
            x0.clone()
        };
        let (mut fwd, mut bwd, mut fwd_cpu, mut bwd_cpu) = (f64::MAX, f64::MAX, f64::MAX, f64::MAX);
        for _ in 0..reps + 2 {
            let (t0, c0) = (Instant::now(), cpu_seconds());
            let y = cv_ops::conv_relu_pool2d(&xin, &w, &b)?;
            let (t1, c1) = (Instant::now(), cpu_seconds());
            // A plain sum: a weighted one would add a batch-sized product to the timing.
            let loss = y.sum_all()?;
            let (t2, c2) = (Instant::now(), cpu_seconds());
            let g = loss.backward()?;
            let (t3, c3) = (Instant::now(), cpu_seconds());
            std::hint::black_box(g);
            fwd = fwd.min((t1 - t0).as_secs_f64());
            bwd = bwd.min((t3 - t2).as_secs_f64());
            fwd_cpu = fwd_cpu.min(c1 - c0);
            bwd_cpu = bwd_cpu.min(c3 - c2);
        }
        let per = |s: f64| s * 1e6 / xd[0] as f64;
        println!(
            "{{\"case\": \"{name}\", \"fwd_ms\": {:.3}, \"bwd_ms\": {:.3}, \"fwd_us_per_image_cpu\": {:.2}, \"bwd_us_per_image_cpu\": {:.2}}}",
            fwd * 1e3, bwd * 1e3, per(fwd_cpu), per(bwd_cpu)
        );
    }
    Ok(())
}
