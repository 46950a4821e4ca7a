//! Train- and eval-mode BatchNorm against finite differences (f64) and their composed twins.

use candle_core::{DType, Device, Tensor, Var};
use cv_ops::{
    batch_norm_eval, batch_norm_eval_composed, batch_norm_train, batch_norm_train_composed,
    BatchNormEvalParams,
};

mod grad_check;
use grad_check::{max_abs_diff, numeric_grad, random, tensor, to_vec};

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
