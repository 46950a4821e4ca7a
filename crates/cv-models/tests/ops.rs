//! Gradient checks of the custom ops against finite differences (f64) and a naive reference.

use candle_core::{DType, Device, Tensor, Var};
use cv_models::ops::{
    batch_norm_eval, batch_norm_eval_composed, batch_norm_train, batch_norm_train_composed,
    max_pool2d, max_pool2d_composed, BatchNormEvalParams, MaxPool2dConfig,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn random(shape: &[usize], seed: u64) -> Vec<f64> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..shape.iter().product::<usize>())
        .map(|_| rng.random_range(-1.0..1.0))
        .collect()
}

fn tensor(v: &[f64], shape: &[usize]) -> Tensor {
    Tensor::from_slice(v, shape, &Device::Cpu).unwrap()
}

/// Central differences of `f` at `x`, one element at a time.
fn numeric_grad(x: &[f64], f: &dyn Fn(&[f64]) -> f64, eps: f64) -> Vec<f64> {
    let mut x = x.to_vec();
    (0..x.len())
        .map(|i| {
            let orig = x[i];
            x[i] = orig + eps;
            let up = f(&x);
            x[i] = orig - eps;
            let down = f(&x);
            x[i] = orig;
            (up - down) / (2.0 * eps)
        })
        .collect()
}

fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

fn to_vec(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

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

fn bn_loss_and_grads(
    x: &[f64],
    w: &[f64],
    b: &[f64],
    shape: &[usize],
    r: &Tensor,
) -> (f64, [Vec<f64>; 3]) {
    let c = shape[1];
    let xv = Var::from_tensor(&tensor(x, shape)).unwrap();
    let wv = Var::from_tensor(&tensor(w, &[c])).unwrap();
    let bv = Var::from_tensor(&tensor(b, &[c])).unwrap();
    let (y, _) = batch_norm_train(xv.as_tensor(), wv.as_tensor(), bv.as_tensor(), 1e-5).unwrap();
    let loss = (&y * r).unwrap().sum_all().unwrap();
    let g = loss.backward().unwrap();
    let grads = [&xv, &wv, &bv].map(|v| to_vec(g.get(v.as_tensor()).unwrap()));
    (loss.to_scalar::<f64>().unwrap(), grads)
}

#[test]
fn batch_norm_train_gradient_matches_finite_differences() {
    let shape = [3usize, 4, 5, 3];
    let c = shape[1];
    let x = random(&shape, 5);
    let w: Vec<f64> = random(&[c], 6).iter().map(|v| 1.0 + 0.5 * v).collect();
    let b = random(&[c], 7);
    let r = tensor(&random(&shape, 8), &shape);
    let (_, [gx, gw, gb]) = bn_loss_and_grads(&x, &w, &b, &shape, &r);
    let eps = 1e-6;
    let nx = numeric_grad(&x, &|v| bn_loss_and_grads(v, &w, &b, &shape, &r).0, eps);
    let nw = numeric_grad(&w, &|v| bn_loss_and_grads(&x, v, &b, &shape, &r).0, eps);
    let nb = numeric_grad(&b, &|v| bn_loss_and_grads(&x, &w, v, &shape, &r).0, eps);
    for (what, a, n) in [("x", &gx, &nx), ("weight", &gw, &nw), ("bias", &gb, &nb)] {
        let d = max_abs_diff(a, n);
        assert!(
            d < 1e-7,
            "batch norm d/d{what} differs from finite differences by {d}"
        );
    }
}

#[test]
fn batch_norm_train_output_is_normalised_and_returns_stats() {
    let shape = [4usize, 3, 6, 6];
    let x: Vec<f64> = random(&shape, 9).iter().map(|v| 3.0 * v + 2.0).collect();
    let xt = tensor(&x, &shape).to_dtype(DType::F32).unwrap();
    let w = Tensor::new(&[1f32, 2.0, 0.5], &Device::Cpu).unwrap();
    let b = Tensor::new(&[0f32, -1.0, 3.0], &Device::Cpu).unwrap();
    let (y, stats) = batch_norm_train(&xt, &w, &b, 1e-5).unwrap();
    let mean = to_vec(&y.mean((0, 2, 3)).unwrap());
    let std = to_vec(
        &y.broadcast_sub(&y.mean_keepdim((0, 2, 3)).unwrap())
            .unwrap()
            .sqr()
            .unwrap()
            .mean((0, 2, 3))
            .unwrap()
            .sqrt()
            .unwrap(),
    );
    for ch in 0..3 {
        assert!(
            (mean[ch] - [0.0, -1.0, 3.0][ch]).abs() < 1e-5,
            "mean {mean:?}"
        );
        assert!((std[ch] - [1.0, 2.0, 0.5][ch]).abs() < 1e-3, "std {std:?}");
    }
    let want_mean = to_vec(&xt.mean((0, 2, 3)).unwrap());
    assert!(max_abs_diff(&to_vec(&stats.mean), &want_mean) < 1e-5);
    assert_eq!(stats.var.dims(), &[3]);
    let one_value = Tensor::zeros((1, 3, 1, 1), DType::F32, &Device::Cpu).unwrap();
    assert!(batch_norm_train(&one_value, &w, &b, 1e-5).is_err());
}

#[test]
fn batch_norm_kernel_agrees_with_composed_path() {
    let shape = [4usize, 3, 5, 6];
    let x = random(&shape, 10);
    let w = random(&[3], 11);
    let b = random(&[3], 12);
    let r = tensor(&random(&shape, 13), &shape);
    let run = |composed: bool| {
        let xv = Var::from_tensor(&tensor(&x, &shape)).unwrap();
        let wv = Var::from_tensor(&tensor(&w, &[3])).unwrap();
        let bv = Var::from_tensor(&tensor(&b, &[3])).unwrap();
        let f = if composed {
            batch_norm_train_composed
        } else {
            batch_norm_train
        };
        let (y, stats) = f(xv.as_tensor(), wv.as_tensor(), bv.as_tensor(), 1e-5).unwrap();
        let g = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let mut all = to_vec(&y);
        all.extend(to_vec(&stats.mean));
        all.extend(to_vec(&stats.var));
        for v in [&xv, &wv, &bv] {
            all.extend(to_vec(g.get(v.as_tensor()).unwrap()));
        }
        all
    };
    assert!(max_abs_diff(&run(false), &run(true)) < 1e-10);
}

/// Random eval-BN inputs: x, residual and (weight, bias, mean, var) with var > 0.
fn eval_bn_inputs(shape: &[usize], dtype: DType) -> (Tensor, Tensor, [Tensor; 4]) {
    let c = shape[1];
    let t = |v: Vec<f64>, s: &[usize]| tensor(&v, s).to_dtype(dtype).unwrap();
    let var: Vec<f64> = random(&[c], 24).iter().map(|v| v + 1.5).collect();
    (
        t(random(shape, 20), shape),
        t(random(shape, 21), shape),
        [
            t(random(&[c], 22), &[c]),
            t(random(&[c], 23), &[c]),
            t(random(&[c], 25), &[c]),
            t(var, &[c]),
        ],
    )
}

#[test]
fn batch_norm_eval_kernel_agrees_with_composed_path() {
    // 1x1 planes (ResNet layer4 at 32x32) and larger ones, f32 and f64.
    for (shape, dtype, tol) in [
        ([3usize, 5, 7, 9], DType::F32, 1e-6),
        ([2, 700, 1, 1], DType::F32, 1e-6),
        ([3, 5, 7, 9], DType::F64, 1e-12),
        ([1, 3, 200, 200], DType::F32, 1e-6),
    ] {
        let (x, r, [w, b, m, v]) = eval_bn_inputs(&shape, dtype);
        let p = BatchNormEvalParams {
            weight: &w,
            bias: &b,
            running_mean: &m,
            running_var: &v,
            eps: 1e-5,
        };
        for residual in [None, Some(&r)] {
            for relu in [false, true] {
                let fused = batch_norm_eval(&x, &p, residual, relu).unwrap();
                let composed = batch_norm_eval_composed(&x, &p, residual, relu).unwrap();
                assert_eq!(fused.dtype(), dtype);
                assert_eq!(fused.dims(), &shape);
                let (f, c) = (to_vec(&fused), to_vec(&composed));
                // Same roundings as the composed ops: the same bits.
                assert_eq!(f, c, "{shape:?} {dtype:?}");
                let d = max_abs_diff(&f, &c);
                assert!(
                    d < tol,
                    "{shape:?} {dtype:?} residual {} relu {relu}: {d}",
                    residual.is_some()
                );
                if relu {
                    assert!(f.iter().all(|&v| v >= 0.0));
                    assert!(f.iter().any(|&v| v > 0.0));
                } else {
                    assert!(f.iter().any(|&v| v < 0.0));
                }
            }
        }
        // Hand-computed element: (x - m) / sqrt(v + eps) * w + b + r.
        let hw = shape[2] * shape[3];
        let i = hw + 1;
        let at = |t: &Tensor| to_vec(t)[i];
        let ch = |t: &Tensor| to_vec(t)[(i / hw) % shape[1]];
        let want = (at(&x) - ch(&m)) / (ch(&v) + 1e-5).sqrt() * ch(&w) + ch(&b) + at(&r);
        let got = at(&batch_norm_eval(&x, &p, Some(&r), false).unwrap());
        assert!((got - want).abs() < tol * 10.0, "{got} vs {want}");
    }
}

#[test]
fn batch_norm_eval_rejects_mismatched_shapes_and_keeps_gradients() {
    let (x, r, [w, b, m, v]) = eval_bn_inputs(&[2, 3, 4, 4], DType::F64);
    let short = tensor(&[1.0, 2.0], &[2]);
    let p = BatchNormEvalParams {
        weight: &w,
        bias: &b,
        running_mean: &m,
        running_var: &v,
        eps: 1e-5,
    };
    let bad_w = BatchNormEvalParams {
        weight: &short,
        ..p
    };
    assert!(batch_norm_eval(&x, &bad_w, None, true).is_err());
    let bad_r = r.narrow(3, 0, 2).unwrap();
    assert!(batch_norm_eval(&x, &p, Some(&bad_r), true).is_err());

    // Inputs that record a graph take the differentiable path: gradients reach x, the
    // weight, the bias and the residual, and equal those of the composed ops.
    let grads = |f: fn(
        &Tensor,
        &BatchNormEvalParams,
        Option<&Tensor>,
        bool,
    ) -> candle_core::Result<Tensor>| {
        let (xv, wv, bv, rv) = (
            Var::from_tensor(&x).unwrap(),
            Var::from_tensor(&w).unwrap(),
            Var::from_tensor(&b).unwrap(),
            Var::from_tensor(&r).unwrap(),
        );
        let p = BatchNormEvalParams {
            weight: wv.as_tensor(),
            bias: bv.as_tensor(),
            ..p
        };
        let y = f(xv.as_tensor(), &p, Some(rv.as_tensor()), true).unwrap();
        let g = (&y * &x).unwrap().sum_all().unwrap().backward().unwrap();
        let mut all = to_vec(&y);
        for v in [&xv, &wv, &bv, &rv] {
            all.extend(to_vec(g.get(v.as_tensor()).expect("a gradient")));
        }
        all
    };
    let (fused, composed) = (grads(batch_norm_eval), grads(batch_norm_eval_composed));
    assert!(max_abs_diff(&fused, &composed) < 1e-12);
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
