//! Throughput of our conv kernels against candle's, per direction, as JSON lines.
//!
//! `cargo bench -p cv-ops --bench conv [-- FILTER]`; env `REPS` (default 3, best-of),
//! `CV_OPS_TILE_ELEMS` (im2col tile budget override), `SKIP_CANDLE=1`, `WINOGRAD=0` (im2col only),
//! `TAPWISE=0` (im2col on tiny maps too).
//! Not a test: the numbers depend on the machine and its load. `gflops` is wall-clock
//! throughput; `gflops_per_cpu_s` divides by the CPU time all threads used, a figure that
//! other processes on the same cores disturb much less (ideal 2-core throughput is twice it).

use candle_core::{Device, Result, Tensor};
use std::time::Instant;

struct Case {
    name: &'static str,
    n: usize,
    c: usize,
    hw: usize,
    co: usize,
    k: usize,
    stride: usize,
    pad: usize,
}

const CASES: &[Case] = &[
    Case {
        name: "r32 stem 7x7/2 3->64 32x32 b64",
        n: 64,
        c: 3,
        hw: 32,
        co: 64,
        k: 7,
        stride: 2,
        pad: 3,
    },
    Case {
        name: "r32 l1 3x3 64->64 8x8 b64",
        n: 64,
        c: 64,
        hw: 8,
        co: 64,
        k: 3,
        stride: 1,
        pad: 1,
    },
    Case {
        name: "r32 l2a 3x3/2 64->128 8x8 b64",
        n: 64,
        c: 64,
        hw: 8,
        co: 128,
        k: 3,
        stride: 2,
        pad: 1,
    },
    Case {
        name: "r32 l2ds 1x1/2 64->128 8x8 b64",
        n: 64,
        c: 64,
        hw: 8,
        co: 128,
        k: 1,
        stride: 2,
        pad: 0,
    },
    Case {
        name: "r32 l3a 3x3/2 128->256 4x4 b64",
        n: 64,
        c: 128,
        hw: 4,
        co: 256,
        k: 3,
        stride: 2,
        pad: 1,
    },
    Case {
        name: "r32 l4a 3x3/2 256->512 2x2 b64",
        n: 64,
        c: 256,
        hw: 2,
        co: 512,
        k: 3,
        stride: 2,
        pad: 1,
    },
    Case {
        name: "3x3 512->512 1x1 b64",
        n: 64,
        c: 512,
        hw: 1,
        co: 512,
        k: 3,
        stride: 1,
        pad: 1,
    },
    Case {
        name: "3x3 256->256 2x2 b64",
        n: 64,
        c: 256,
        hw: 2,
        co: 256,
        k: 3,
        stride: 1,
        pad: 1,
    },
    Case {
        name: "3x3 128->128 4x4 b64",
        n: 64,
        c: 128,
        hw: 4,
        co: 128,
        k: 3,
        stride: 1,
        pad: 1,
    },
    Case {
        name: "3x3 64->64 56x56 b16",
        n: 16,
        c: 64,
        hw: 56,
        co: 64,
        k: 3,
        stride: 1,
        pad: 1,
    },
    Case {
        name: "3x3 128->128 28x28 b16",
        n: 16,
        c: 128,
        hw: 28,
        co: 128,
        k: 3,
        stride: 1,
        pad: 1,
    },
    Case {
        name: "3x3 256->256 14x14 b16",
        n: 16,
        c: 256,
        hw: 14,
        co: 256,
        k: 3,
        stride: 1,
        pad: 1,
    },
    Case {
        name: "3x3 512->512 7x7 b16",
        n: 16,
        c: 512,
        hw: 7,
        co: 512,
        k: 3,
        stride: 1,
        pad: 1,
    },
    Case {
        name: "3x3 256->256 8x8 b64",
        n: 64,
        c: 256,
        hw: 8,
        co: 256,
        k: 3,
        stride: 1,
        pad: 1,
    },
    Case {
        name: "7x7/2 3->64 224x224 b16",
        n: 16,
        c: 3,
        hw: 224,
        co: 64,
        k: 7,
        stride: 2,
        pad: 3,
    },
    Case {
        name: "3x3/2 128->256 16x16 b64",
        n: 64,
        c: 128,
        hw: 16,
        co: 256,
        k: 3,
        stride: 2,
        pad: 1,
    },
    Case {
        name: "1x1/2 64->128 56x56 b16",
        n: 16,
        c: 64,
        hw: 56,
        co: 128,
        k: 1,
        stride: 2,
        pad: 0,
    },
    Case {
        name: "5x5 6->16 14x14 b100",
        n: 100,
        c: 6,
        hw: 14,
        co: 16,
        k: 5,
        stride: 1,
        pad: 0,
    },
];

/// CPU time of all this process's threads (ns), from Linux's per-thread schedstat: unlike wall
/// time it barely moves when other processes share the cores.
fn cpu_ns() -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    dir.filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// Best wall time and best CPU time (ms) over `reps` runs after a warm-up, and the last output.
fn best_ms(reps: usize, mut f: impl FnMut() -> Result<Tensor>) -> Result<((f64, f64), Tensor)> {
    let mut out = f()?; // warm-up
    let (mut wall, mut cpu) = (f64::INFINITY, f64::INFINITY);
    for _ in 0..reps {
        let (t, c) = (Instant::now(), cpu_ns());
        out = f()?;
        wall = wall.min(t.elapsed().as_secs_f64() * 1e3);
        cpu = cpu.min((cpu_ns() - c) as f64 / 1e6);
    }
    Ok(((wall, cpu), out))
}

fn max_rel_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    let scale = b.abs()?.max_all()?.to_scalar::<f32>()?.max(1e-30);
    Ok((a - b)?.abs()?.max_all()?.to_scalar::<f32>()? / scale)
}

fn main() -> Result<()> {
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let reps: usize = std::env::var("REPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let skip_candle = std::env::var("SKIP_CANDLE").is_ok_and(|s| s == "1");
    if let Some(e) = std::env::var("CV_OPS_TILE_ELEMS")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        cv_ops::set_tile_elems(e);
    }
    if std::env::var("WINOGRAD").is_ok_and(|s| s == "0") {
        cv_ops::set_winograd_enabled(false);
    }
    if std::env::var("PADDED_DIRECT").is_ok_and(|s| s == "0") {
        cv_ops::set_padded_direct_enabled(false);
    }
    if std::env::var("TAPWISE").is_ok_and(|s| s == "0") {
        cv_ops::set_tapwise_enabled(false);
    }
    let dev = Device::Cpu;
    for case in CASES {
        if filter.as_deref().is_some_and(|f| !case.name.contains(f)) {
            continue;
        }
        let Case {
            n,
            c,
            hw,
            co,
            k,
            stride,
            pad,
            ..
        } = *case;
        let x = Tensor::randn(0f32, 1.0, (n, c, hw, hw), &dev)?;
        let w = Tensor::randn(0f32, 0.1, (co, c, k, k), &dev)?;
        let o = (hw + 2 * pad - k) / stride + 1;
        let dy = Tensor::randn(0f32, 1.0, (n, co, o, o), &dev)?;
        let gflop = 2.0 * (n * co * o * o * c * k * k) as f64 / 1e9;
        let report = |imp: &str, dir: &str, (ms, cpu_ms): (f64, f64), diff: Option<f32>| {
            let diff = diff.map_or("null".to_string(), |d| format!("{d:.2e}"));
            println!(
                "{{\"impl\":\"{imp}\",\"shape\":\"{}\",\"dir\":\"{dir}\",\"ms\":{ms:.2},\"gflops\":{:.1},\"cpu_ms\":{cpu_ms:.2},\"gflops_per_cpu_s\":{:.1},\"max_rel_diff_vs_candle\":{diff}}}",
                case.name,
                gflop / (ms / 1e3),
                gflop / (cpu_ms / 1e3),
            );
        };
        let (f_ms, f_out) = best_ms(reps, || cv_ops::conv2d(&x, &w, stride, pad))?;
        let (d_ms, d_out) = best_ms(reps, || {
            cv_ops::conv2d_input_grad(&dy, &w, (hw, hw), stride, pad)
        })?;
        let (w_ms, w_out) = best_ms(reps, || {
            cv_ops::conv2d_weight_grad(&x, &dy, (k, k), stride, pad)
        })?;
        if skip_candle {
            report("cv-ops", "fwd", f_ms, None);
            report("cv-ops", "input_grad", d_ms, None);
            report("cv-ops", "weight_grad", w_ms, None);
            continue;
        }
        // candle's paths, exactly as its backprop.rs runs them.
        let (cf_ms, cf) = best_ms(reps, || x.conv2d(&w, pad, stride, 1, 1))?;
        let out_pad = hw - ((o - 1) * stride + k - 2 * pad);
        let (cd_ms, cd) = best_ms(reps, || dy.conv_transpose2d(&w, pad, out_pad, stride, 1))?;
        let (cw_ms, cw) = best_ms(reps, || {
            x.transpose(0, 1)?
                .conv2d(&dy.transpose(0, 1)?, pad, 1, stride, 1)?
                .transpose(0, 1)?
                .narrow(2, 0, k)?
                .narrow(3, 0, k)
        })?;
        report("cv-ops", "fwd", f_ms, Some(max_rel_diff(&f_out, &cf)?));
        report(
            "cv-ops",
            "input_grad",
            d_ms,
            Some(max_rel_diff(&d_out, &cd)?),
        );
        report(
            "cv-ops",
            "weight_grad",
            w_ms,
            Some(max_rel_diff(&w_out, &cw)?),
        );
        report("candle", "fwd", cf_ms, None);
        report("candle", "input_grad", cd_ms, None);
        report("candle", "weight_grad", cw_ms, None);
    }
    Ok(())
}
