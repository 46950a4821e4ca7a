//! `relu` and `add_relu` against PyTorch's definitions built from candle ops (forward
//! `max(x, 0)`, gradient `g * (y > 0)`), f32 and f64; finite differences; NaN, zeros and the
//! fallbacks.

use candle_core::{DType, Device, Result, Tensor, Var};

mod common;

use common::max_rel;

fn tensor(dims: &[usize], seed: u64, dtype: DType) -> Result<Tensor> {
    common::tensor(dims, seed, dtype, 333.0)
}

/// `g` where `s > 0`, else 0: PyTorch's `threshold_backward(g, s, 0)`.
fn masked(g: &Tensor, s: &Tensor) -> Result<Tensor> {
    g * s.gt(&s.zeros_like()?)?.to_dtype(g.dtype())?
}

#[test]
fn relu_matches_pytorch_definition() -> Result<()> {
    for dtype in [DType::F32, DType::F64] {
        // Large enough for several rayon tasks; the values include exact zeros.
        for dims in [vec![2usize, 3, 5, 7], vec![3, 64, 20, 20], vec![1]] {
            let x = Var::from_tensor(&tensor(&dims, 1, dtype)?)?;
            let weights = tensor(&dims, 2, dtype)?;
            let y = cv_ops::relu(x.as_tensor())?;
            assert_eq!(
                max_rel(&y, &x.as_tensor().relu()?)?,
                0.0,
                "{dtype:?} {dims:?}"
            );
            let grads = (&y * &weights)?.sum_all()?.backward()?;
            let got = grads.get(x.as_tensor()).expect("gradient of x");
            let want = masked(&weights, x.as_tensor())?;
            assert_eq!(max_rel(got, &want)?, 0.0, "{dtype:?} {dims:?} gradient");
        }
    }
    Ok(())
}

#[test]
fn add_relu_matches_pytorch_definition() -> Result<()> {
    for dtype in [DType::F32, DType::F64] {
        for dims in [vec![2usize, 3, 5, 7], vec![3, 64, 20, 20]] {
            let a = Var::from_tensor(&tensor(&dims, 1, dtype)?)?;
            let b = Var::from_tensor(&tensor(&dims, 3, dtype)?)?;
            let weights = tensor(&dims, 2, dtype)?;
            let sum = (a.as_tensor() + b.as_tensor())?;
            let y = cv_ops::add_relu(a.as_tensor(), b.as_tensor())?;
            assert_eq!(max_rel(&y, &sum.relu()?)?, 0.0, "{dtype:?} {dims:?}");
            let grads = (&y * &weights)?.sum_all()?.backward()?;
            let want = masked(&weights, &sum)?;
            for v in [&a, &b] {
                let got = grads.get(v.as_tensor()).expect("gradient");
                assert_eq!(max_rel(got, &want)?, 0.0, "{dtype:?} {dims:?} gradient");
            }
        }
    }
    Ok(())
}

#[test]
fn gradients_match_finite_differences() -> Result<()> {
    // Values away from the kink so a step of 1e-6 never crosses it.
    let xs = [-1.5f64, -0.25, 0.3, 2.0, -3.0, 0.7];
    let x = Var::from_tensor(&Tensor::new(&xs, &Device::Cpu)?)?;
    let b = Tensor::new(&[0.2f64, 0.1, -0.5, -2.5, 3.5, 0.05], &Device::Cpu)?;
    let w = Tensor::new(&[1.0f64, -2.0, 0.5, 3.0, -1.0, 2.5], &Device::Cpu)?;
    let f = |x: &Tensor| -> Result<Tensor> {
        let r = (cv_ops::relu(x)? * &w)?.sum_all()?;
        let s = (cv_ops::add_relu(x, &b)? * &w)?.sum_all()?;
        r + s
    };
    let grads = f(x.as_tensor())?.backward()?;
    let got = grads
        .get(x.as_tensor())
        .expect("gradient")
        .to_vec1::<f64>()?;
    let h = 1e-6;
    for i in 0..xs.len() {
        let mut up = xs;
        let mut down = xs;
        up[i] += h;
        down[i] -= h;
        let fu = f(&Tensor::new(&up, &Device::Cpu)?)?.to_scalar::<f64>()?;
        let fd = f(&Tensor::new(&down, &Device::Cpu)?)?.to_scalar::<f64>()?;
        let numeric = (fu - fd) / (2.0 * h);
        assert!(
            (got[i] - numeric).abs() < 1e-6,
            "x[{i}]: {} vs {numeric}",
            got[i]
        );
    }
    Ok(())
}

#[test]
fn nan_passes_through_and_zero_gets_no_gradient() -> Result<()> {
    let x = Var::from_tensor(&Tensor::new(
        &[f32::NAN, 0.0, -0.0, -1.0, 1.0],
        &Device::Cpu,
    )?)?;
    let y = cv_ops::relu(x.as_tensor())?;
    let v = y.to_vec1::<f32>()?;
    assert!(v[0].is_nan(), "NaN must not be hidden by the ReLU: {v:?}");
    assert_eq!(&v[1..], &[0.0, 0.0, 0.0, 1.0]);
    let grads = y.sum_all()?.backward()?;
    let g = grads
        .get(x.as_tensor())
        .expect("gradient")
        .to_vec1::<f32>()?;
    // PyTorch: NaN > 0 is false but NaN <= 0 is false too, so the gradient passes.
    assert_eq!(g, vec![1.0, 0.0, 0.0, 0.0, 1.0]);
    Ok(())
}

#[test]
fn only_variables_get_gradients() -> Result<()> {
    let a = Var::from_tensor(&tensor(&[2, 3, 4, 4], 1, DType::F32)?)?;
    let b = tensor(&[2, 3, 4, 4], 3, DType::F32)?;
    let grads = cv_ops::add_relu(a.as_tensor(), &b)?.sum_all()?.backward()?;
    assert!(grads.get(a.as_tensor()).is_some());
    assert!(grads.get(&b).is_none());
    Ok(())
}

#[test]
fn other_dtypes_and_shapes_fall_back_to_candle() -> Result<()> {
    let x = tensor(&[2, 3, 4, 4], 1, DType::F16)?;
    let ours = cv_ops::relu(&x)?;
    assert_eq!(max_rel(&ours, &x.relu()?)?, 0.0);
    let y = tensor(&[2, 3, 4, 4], 2, DType::F16)?;
    assert_eq!(
        max_rel(&cv_ops::add_relu(&x, &y)?, &(&x + &y)?.relu()?)?,
        0.0
    );
    // Different shapes: candle's own error, not a panic.
    let a = tensor(&[2, 3], 1, DType::F32)?;
    let b = tensor(&[3, 2], 1, DType::F32)?;
    assert!(cv_ops::add_relu(&a, &b).is_err());
    // A non-contiguous input is made contiguous first.
    let t = tensor(&[3, 5], 4, DType::F32)?.t()?;
    assert_eq!(max_rel(&cv_ops::relu(&t)?, &t.relu()?)?, 0.0);
    Ok(())
}
