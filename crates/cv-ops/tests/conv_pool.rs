//! `conv_relu_pool2d` against element-by-element loops of PyTorch's
//! `max_pool2d(relu(conv2d(x, w, b)), 2)` and its gradients, against finite differences, on
//! ties, all-negative windows and NaN, and its errors.

use candle_core::{DType, Device, Result, Tensor, Var};

fn values(len: usize, seed: u64) -> Vec<f64> {
    (0..len as u64)
        .map(|i| (((i * 7919 + seed * 104_729) % 1999) as f64 - 999.0) / 333.0)
        .collect()
}

fn tensor(dims: &[usize], seed: u64, dtype: DType) -> Result<Tensor> {
    let len: usize = dims.iter().product();
    Tensor::from_vec(values(len, seed), dims, &Device::Cpu)?.to_dtype(dtype)
}

/// The layer and its gradients by loops, in f64: output, and for `loss = sum(out * r)` the
/// gradients of x, w and b.
struct Reference {
    out: Vec<f64>,
    dx: Vec<f64>,
    dw: Vec<f64>,
    db: Vec<f64>,
}

fn reference(
    x: &[f64],
    xd: [usize; 4],
    w: &[f64],
    wd: [usize; 4],
    b: &[f64],
    r: &[f64],
) -> Reference {
    let [n, c, h, wi] = xd;
    let [co, _, kh, kw] = wd;
    let (oh, ow) = (h - kh + 1, wi - kw + 1);
    let (ph, pw) = (oh / 2, ow / 2);
    let conv = |img: usize, o: usize, y: usize, xx: usize| {
        let mut s = b[o];
        for ci in 0..c {
            for ky in 0..kh {
                for kx in 0..kw {
                    s += w[((o * c + ci) * kh + ky) * kw + kx]
                        * x[((img * c + ci) * h + y + ky) * wi + xx + kx];
                }
            }
        }
        s.max(0.0)
    };
    let mut out = vec![0.0; n * co * ph * pw];
    let mut dpre = vec![0.0; n * co * oh * ow];
    for img in 0..n {
        for o in 0..co {
            for py in 0..ph {
                for px in 0..pw {
                    // PyTorch: first maximum of the ReLU'd window wins.
                    let mut best = (f64::NEG_INFINITY, 0, 0);
                    for dy in 0..2 {
                        for dx in 0..2 {
                            let v = conv(img, o, 2 * py + dy, 2 * px + dx);
                            if v > best.0 {
                                best = (v, dy, dx);
                            }
                        }
                    }
                    let at = ((img * co + o) * ph + py) * pw + px;
                    out[at] = best.0;
                    if best.0 > 0.0 {
                        dpre[((img * co + o) * oh + 2 * py + best.1) * ow + 2 * px + best.2] =
                            r[at];
                    }
                }
            }
        }
    }
    let mut dx = vec![0.0; x.len()];
    let mut dw = vec![0.0; w.len()];
    let mut db = vec![0.0; co];
    for img in 0..n {
        for o in 0..co {
            for y in 0..oh {
                for xx in 0..ow {
                    let g = dpre[((img * co + o) * oh + y) * ow + xx];
                    db[o] += g;
                    for ci in 0..c {
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let wi_ = ((o * c + ci) * kh + ky) * kw + kx;
                                let xi = ((img * c + ci) * h + y + ky) * wi + xx + kx;
                                dw[wi_] += g * x[xi];
                                dx[xi] += g * w[wi_];
                            }
                        }
                    }
                }
            }
        }
    }
    Reference { out, dx, dw, db }
}

fn max_rel(a: &Tensor, b: &[f64]) -> Result<f64> {
    let a = a.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(1e-30f64, |m, v| m.max(v.abs()));
    Ok(a.iter().zip(b).fold(0f64, |m, (x, y)| m.max((x - y).abs())) / scale)
}

/// (input dims, weight dims): the tutorial's two layers, odd conv outputs (the last row and
/// column are not pooled), one image, and a batch that does not split evenly into units.
const CASES: [([usize; 4], [usize; 4]); 5] = [
    ([4, 3, 32, 32], [6, 3, 5, 5]),
    ([9, 6, 14, 14], [16, 6, 5, 5]),
    ([3, 2, 9, 10], [4, 2, 3, 3]),
    ([1, 1, 6, 6], [1, 1, 3, 3]),
    ([7, 2, 5, 5], [3, 2, 2, 2]),
];

#[test]
fn values_and_gradients_match_loops() -> Result<()> {
    // Outputs the ReLU cut to zero, over all cases: their windows must get no gradient.
    let mut clipped = 0;
    // f32 twice: the direct kernels (where the CPU has AVX2) and im2col + gemm; f64 always
    // takes the latter. Other tests may run meanwhile on either path: both are exact enough.
    let runs = [
        (DType::F32, true, 2e-5),
        (DType::F32, false, 2e-5),
        (DType::F64, true, 1e-12),
    ];
    for (dtype, direct, tol) in runs {
        cv_ops::set_direct_conv_enabled(direct);
        for (i, (xd, wd)) in CASES.into_iter().enumerate() {
            let seed = i as u64 * 10;
            let x = Var::from_tensor(&tensor(&xd, seed + 1, dtype)?)?;
            let w = Var::from_tensor(&(tensor(&wd, seed + 2, dtype)? * 0.2)?)?;
            let b = Var::from_tensor(&(tensor(&[wd[0]], seed + 3, dtype)? * 0.5)?)?;
            let out = cv_ops::conv_relu_pool2d(x.as_tensor(), w.as_tensor(), &b)?;
            let r = tensor(out.dims(), seed + 4, dtype)?;
            let f64s = |t: &Tensor| t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>();
            let want = reference(
                &f64s(x.as_tensor())?,
                xd,
                &f64s(w.as_tensor())?,
                wd,
                &f64s(b.as_tensor())?,
                &f64s(&r)?,
            );
            let ctx = format!("{dtype:?} direct {direct} x {xd:?} w {wd:?}");
            assert!(
                want.out.iter().any(|&v| v > 0.0),
                "{ctx}: nothing passed the ReLU"
            );
            clipped += want.out.iter().filter(|&&v| v == 0.0).count();
            assert!(max_rel(&out, &want.out)? <= tol, "{ctx}: output");
            let grads = (out * &r)?.sum_all()?.backward()?;
            for (var, want, what) in [
                (&x, &want.dx, "dx"),
                (&w, &want.dw, "dw"),
                (&b, &want.db, "db"),
            ] {
                let got = grads.get(var.as_tensor()).expect("a gradient");
                assert_eq!(got.dims(), var.dims(), "{ctx}: {what}");
                assert!(max_rel(got, want)? <= tol, "{ctx}: {what}");
            }
        }
    }
    cv_ops::set_direct_conv_enabled(true);
    assert!(clipped > 100, "only {clipped} outputs were cut by the ReLU");
    Ok(())
}

#[test]
fn gradients_match_finite_differences() -> Result<()> {
    let (xd, wd) = ([2usize, 2, 7, 7], [3usize, 2, 3, 3]);
    let x = Var::from_tensor(&tensor(&xd, 5, DType::F64)?)?;
    let w = Var::from_tensor(&(tensor(&wd, 6, DType::F64)? * 0.3)?)?;
    let b = Var::from_tensor(&(tensor(&[3], 7, DType::F64)? * 0.1)?)?;
    let r = tensor(&[2, 3, 2, 2], 8, DType::F64)?;
    let loss = |x: &Tensor, w: &Tensor, b: &Tensor| -> Result<f64> {
        (cv_ops::conv_relu_pool2d(x, w, b)? * &r)?
            .sum_all()?
            .to_scalar::<f64>()
    };
    let grads = (cv_ops::conv_relu_pool2d(x.as_tensor(), w.as_tensor(), &b)? * &r)?
        .sum_all()?
        .backward()?;
    let eps = 1e-6;
    for (which, var) in [&x, &w, &b].into_iter().enumerate() {
        let base = var.as_tensor().flatten_all()?.to_vec1::<f64>()?;
        let analytic = grads
            .get(var.as_tensor())
            .expect("a gradient")
            .flatten_all()?
            .to_vec1::<f64>()?;
        for i in (0..base.len()).step_by(3) {
            let at = |delta: f64| -> Result<f64> {
                let mut v = base.clone();
                v[i] += delta;
                let t = Tensor::from_vec(v, var.dims(), &Device::Cpu)?;
                match which {
                    0 => loss(&t, w.as_tensor(), b.as_tensor()),
                    1 => loss(x.as_tensor(), &t, b.as_tensor()),
                    _ => loss(x.as_tensor(), w.as_tensor(), &t),
                }
            };
            let numeric = (at(eps)? - at(-eps)?) / (2.0 * eps);
            assert!(
                (numeric - analytic[i]).abs() <= 1e-6 * (1.0 + numeric.abs()),
                "argument {which} element {i}: numeric {numeric} analytic {}",
                analytic[i]
            );
        }
    }
    Ok(())
}

#[test]
fn ties_negative_windows_and_nan_follow_pytorch() -> Result<()> {
    // A constant image and kernel: every window is a four-way tie; the first element wins.
    let x = Var::from_tensor(&Tensor::ones((1, 1, 5, 5), DType::F32, &Device::Cpu)?)?;
    let w = Var::from_tensor(&Tensor::ones((2, 1, 2, 2), DType::F32, &Device::Cpu)?)?;
    // Channel 0 positive, channel 1 pushed below zero: output 0 and no gradient at all.
    let b = Var::from_tensor(&Tensor::new(&[1f32, -10.0], &Device::Cpu)?)?;
    let out = cv_ops::conv_relu_pool2d(x.as_tensor(), w.as_tensor(), &b)?;
    assert_eq!(
        out.flatten_all()?.to_vec1::<f32>()?,
        [5., 5., 5., 5., 0., 0., 0., 0.]
    );
    let grads = out.sum_all()?.backward()?;
    let dx = grads
        .get(x.as_tensor())
        .expect("dx")
        .flatten_all()?
        .to_vec1::<f32>()?;
    // Winners are the windows' top-left conv outputs (0,0), (0,2), (2,0), (2,2); each spreads
    // its gradient over the 2x2 input patch under it.
    let mut want = [0f32; 25];
    for (oy, ox) in [(0, 0), (0, 2), (2, 0), (2, 2)] {
        for (ky, kx) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
            want[(oy + ky) * 5 + ox + kx] += 1.0;
        }
    }
    assert_eq!(dx, want);
    let db = grads.get(b.as_tensor()).expect("db").to_vec1::<f32>()?;
    assert_eq!(db, [4.0, 0.0]);

    // A NaN in the input reaches the output (so a trainer sees a NaN loss) instead of vanishing.
    let mut v = vec![0.5f32; 25];
    v[0] = f32::NAN;
    let x = Tensor::from_vec(v, (1, 1, 5, 5), &Device::Cpu)?;
    let out = cv_ops::conv_relu_pool2d(&x, w.as_tensor(), b.as_tensor())?;
    let out = out.flatten_all()?.to_vec1::<f32>()?;
    assert!(
        out[0].is_nan() && out[4].is_nan() && out[1] == 3.0,
        "{out:?}"
    );
    Ok(())
}

#[test]
fn without_gradients_the_output_is_the_same() -> Result<()> {
    let (xd, wd) = CASES[1];
    let x = tensor(&xd, 1, DType::F32)?;
    let w = Var::from_tensor(&(tensor(&wd, 2, DType::F32)? * 0.2)?)?;
    let b = tensor(&[wd[0]], 3, DType::F32)?;
    let tracked = cv_ops::conv_relu_pool2d(&x, w.as_tensor(), &b)?;
    let plain = cv_ops::conv_relu_pool2d(&x, &w.as_tensor().detach(), &b)?;
    assert_eq!(
        tracked.flatten_all()?.to_vec1::<f32>()?,
        plain.flatten_all()?.to_vec1::<f32>()?
    );
    // Only the weight tracks: its gradient comes back, the input's is not computed.
    let grads = tracked.sum_all()?.backward()?;
    assert!(grads.get(w.as_tensor()).is_some() && grads.get(&x).is_none());
    Ok(())
}

#[test]
fn bad_shapes_are_errors() -> Result<()> {
    let x = tensor(&[2, 3, 8, 8], 1, DType::F32)?;
    let w = tensor(&[4, 3, 3, 3], 2, DType::F32)?;
    let err = |x: &Tensor, w: &Tensor, b: &Tensor| {
        cv_ops::conv_relu_pool2d(x, w, b).unwrap_err().to_string()
    };
    let e = err(&x, &w, &tensor(&[3], 3, DType::F32)?);
    assert!(e.contains("bias") && e.contains("[4]"), "{e}");
    let e = err(
        &x,
        &tensor(&[4, 2, 3, 3], 2, DType::F32)?,
        &tensor(&[4], 3, DType::F32)?,
    );
    assert!(e.contains("channels"), "{e}");
    let e = err(
        &x,
        &tensor(&[4, 3, 8, 8], 2, DType::F32)?,
        &tensor(&[4], 3, DType::F32)?,
    );
    assert!(e.contains("pool"), "{e}");
    Ok(())
}
