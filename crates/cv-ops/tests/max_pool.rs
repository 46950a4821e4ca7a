//! `max_pool2d` against finite differences (f64), a naive reference with PyTorch's semantics
//! (ties, padding, NaN) and its composed twin.

use candle_core::{DType, Device, Tensor, Var};
use cv_ops::{max_pool2d, max_pool2d_composed, MaxPool2dConfig};

mod grad_check;
use grad_check::{max_abs_diff, numeric_grad, random, tensor, to_vec};

/// PyTorch's semantics written naively: output and the gradient of sum(out * r).
fn naive_pool(
    x: &[f64],
    (n, c, h, w): (usize, usize, usize, usize),
    cfg: MaxPool2dConfig,
    r: &[f64],
) -> (Vec<f64>, Vec<f64>) {
    let (k, s, p) = (
        cfg.kernel as isize,
        cfg.stride as isize,
        cfg.padding as isize,
    );
    let oh = (h as isize + 2 * p - k) / s + 1;
    let ow = (w as isize + 2 * p - k) / s + 1;
    let mut out = vec![];
    let mut grad = vec![0.0; x.len()];
    for plane in 0..n * c {
        for oy in 0..oh {
            for ox in 0..ow {
                let mut best: Option<(usize, f64)> = None;
                for ky in 0..k {
                    for kx in 0..k {
                        let (y, xx) = (oy * s - p + ky, ox * s - p + kx);
                        if y < 0 || xx < 0 || y >= h as isize || xx >= w as isize {
                            continue;
                        }
                        let i = plane * h * w + y as usize * w + xx as usize;
                        if best.is_none_or(|(_, b)| x[i] > b) {
                            best = Some((i, x[i]));
                        }
                    }
                }
                let (i, v) = best.unwrap();
                grad[i] += r[out.len()];
                out.push(v);
            }
        }
    }
    (out, grad)
}

const POOLS: [MaxPool2dConfig; 3] = [
    MaxPool2dConfig {
        kernel: 3,
        stride: 2,
        padding: 1,
    },
    MaxPool2dConfig {
        kernel: 2,
        stride: 2,
        padding: 0,
    },
    MaxPool2dConfig {
        kernel: 3,
        stride: 1,
        padding: 1,
    },
];

fn pool_grad(
    x: &[f64],
    shape: &[usize],
    cfg: MaxPool2dConfig,
    r: &Tensor,
    composed: bool,
) -> (Vec<f64>, Vec<f64>) {
    let var = Var::from_tensor(&tensor(x, shape)).unwrap();
    let y = if composed {
        max_pool2d_composed(var.as_tensor(), cfg).unwrap()
    } else {
        max_pool2d(var.as_tensor(), cfg).unwrap()
    };
    let loss = (&y * r).unwrap().sum_all().unwrap();
    let g = loss.backward().unwrap();
    (to_vec(&y), to_vec(g.get(var.as_tensor()).unwrap()))
}

#[test]
fn max_pool_gradient_matches_finite_differences() {
    let shape = [2usize, 3, 7, 8];
    let x = random(&shape, 1);
    for cfg in POOLS {
        let out_shape = {
            let (oh, ow) = cfg.output_size(7, 8).unwrap();
            [2, 3, oh, ow]
        };
        let r = tensor(&random(&out_shape, 2), &out_shape);
        let (_, analytic) = pool_grad(&x, &shape, cfg, &r, false);
        let f = |v: &[f64]| {
            let y = max_pool2d(&tensor(v, &shape), cfg).unwrap();
            (y * &r)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        };
        let numeric = numeric_grad(&x, &f, 1e-6);
        let d = max_abs_diff(&analytic, &numeric);
        assert!(
            d < 1e-8,
            "{cfg:?}: gradient differs from finite differences by {d}"
        );
    }
}

#[test]
fn max_pool_ties_and_padding_follow_pytorch() {
    let shape = [2usize, 2, 6, 7];
    // Few distinct values: many ties, and negative values next to the -inf padding.
    let x: Vec<f64> = random(&shape, 3)
        .iter()
        .map(|v| (v * 2.0).round() / 2.0 - 0.5)
        .collect();
    for cfg in POOLS {
        let (oh, ow) = cfg.output_size(6, 7).unwrap();
        let out_shape = [2, 2, oh, ow];
        let rv = random(&out_shape, 4);
        let r = tensor(&rv, &out_shape);
        let (want_y, want_g) = naive_pool(&x, (2, 2, 6, 7), cfg, &rv);
        for composed in [false, true] {
            let (y, g) = pool_grad(&x, &shape, cfg, &r, composed);
            assert_eq!(y, want_y, "{cfg:?} composed={composed}: values");
            assert!(
                max_abs_diff(&g, &want_g) < 1e-12,
                "{cfg:?} composed={composed}: gradient"
            );
        }
        // f32 gives the same as f64 on these exactly representable values.
        let y32 = max_pool2d(&tensor(&x, &shape).to_dtype(DType::F32).unwrap(), cfg).unwrap();
        assert_eq!(to_vec(&y32), want_y);
    }
    // candle's own pool disagrees on ties, which is why this op exists.
    let cfg = MaxPool2dConfig::default();
    let ones =
        Var::from_tensor(&Tensor::ones((1, 1, 2, 2), DType::F64, &Device::Cpu).unwrap()).unwrap();
    let g = max_pool2d(ones.as_tensor(), cfg)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    assert_eq!(
        to_vec(g.get(ones.as_tensor()).unwrap()),
        vec![1.0, 0.0, 0.0, 0.0]
    );
}

#[test]
fn max_pool_rejects_bad_configs() {
    let x = Tensor::zeros((1, 1, 4, 4), DType::F32, &Device::Cpu).unwrap();
    let bad = MaxPool2dConfig {
        kernel: 2,
        stride: 2,
        padding: 2,
    };
    assert!(max_pool2d(&x, bad).is_err());
    let too_big = MaxPool2dConfig {
        kernel: 5,
        stride: 1,
        padding: 0,
    };
    assert!(max_pool2d(&x, too_big).is_err());
    let zero = MaxPool2dConfig {
        kernel: 2,
        stride: 0,
        padding: 0,
    };
    assert!(max_pool2d(&x, zero).is_err());
}

#[test]
fn max_pool_forward_matches_naive_on_odd_sizes_and_propagates_nan() {
    // Odd and uneven sides (partial windows at the right and bottom), a 1x1 output plane,
    // and 3x4 planes grouped many to a task.
    for (shape, cfg) in [
        ([2usize, 3, 17, 19], POOLS[0]),
        ([2, 3, 17, 19], POOLS[1]),
        ([1, 2, 9, 10], POOLS[2]),
        (
            [1, 2, 3, 3],
            MaxPool2dConfig {
                kernel: 3,
                stride: 3,
                padding: 0,
            },
        ),
        ([2, 2, 3, 3], POOLS[0]),
        ([4, 600, 3, 4], POOLS[0]),
    ] {
        let (n, c, h, w) = (shape[0], shape[1], shape[2], shape[3]);
        let clean = random(&shape, 30);
        let (oh, ow) = cfg.output_size(h, w).unwrap();
        let (mut want, _) = naive_pool(&clean, (n, c, h, w), cfg, &vec![0.0; n * c * oh * ow]);
        // A NaN at (plane 0, row 1, column 2) wins every window of plane 0 that holds it.
        let mut x = clean.clone();
        x[w + 2] = f64::NAN;
        let covers = |o: usize, at: usize| {
            let start = (o * cfg.stride) as isize - cfg.padding as isize;
            (start..start + cfg.kernel as isize).contains(&(at as isize))
        };
        for oy in 0..oh {
            for ox in 0..ow {
                if covers(oy, 1) && covers(ox, 2) {
                    want[oy * ow + ox] = f64::NAN;
                }
            }
        }
        for dtype in [DType::F64, DType::F32] {
            let got =
                to_vec(&max_pool2d(&tensor(&x, &shape).to_dtype(dtype).unwrap(), cfg).unwrap());
            assert_eq!(got.len(), want.len());
            let mut nans = 0;
            for (i, (g, v)) in got.iter().zip(&want).enumerate() {
                if v.is_nan() {
                    nans += 1;
                    assert!(
                        g.is_nan(),
                        "{shape:?} {cfg:?} {dtype:?} at {i}: {g}, want NaN"
                    );
                } else {
                    let v = if dtype == DType::F32 {
                        *v as f32 as f64
                    } else {
                        *v
                    };
                    assert_eq!(*g, v, "{shape:?} {cfg:?} {dtype:?} at {i}");
                }
            }
            assert!(nans > 0, "{shape:?} {cfg:?}: the NaN reached no window");
        }
    }
}
