//! `linear` against candle's matmul + broadcast_add (+ relu): values and all three gradients,
//! f32 and f64, with and without ReLU; NaN and shape errors.

use candle_core::{DType, Device, Result, Tensor, Var};

mod common;

fn tensor(dims: &[usize], seed: u64, dtype: DType) -> Result<Tensor> {
    common::tensor(dims, seed, dtype, 999.0)
}

use common::max_rel;

#[test]
fn values_and_gradients_match_candle() -> Result<()> {
    for (dtype, tol) in [(DType::F32, 1e-5), (DType::F64, 1e-13)] {
        // The small CNN's head at batch 100, a single row, and a size past the threading cutoff.
        for (n, i, o) in [(100, 400, 120), (1, 7, 3), (256, 512, 300)] {
            for relu in [true, false] {
                let x = Var::from_tensor(&tensor(&[n, i], 1, dtype)?)?;
                let w = Var::from_tensor(&(tensor(&[o, i], 2, dtype)? * 0.1)?)?;
                let b = Var::from_tensor(&tensor(&[o], 3, dtype)?)?;
                let r = tensor(&[n, o], 4, dtype)?;
                let ours = cv_ops::linear(&x, &w, &b, relu)?;
                let mut reference = x.matmul(&w.t()?)?.broadcast_add(&b)?;
                if relu {
                    reference = reference.relu()?;
                    let zeros = reference
                        .eq(0.0)?
                        .to_dtype(DType::F64)?
                        .sum_all()?
                        .to_scalar::<f64>()?;
                    assert!(zeros > 0.0, "the ReLU must cut something");
                }
                let ctx = format!("{dtype:?} {n}x{i}->{o} relu {relu}");
                assert!(max_rel(&ours, &reference)? <= tol, "{ctx}: values");
                let g_ours = (ours * &r)?.sum_all()?.backward()?;
                let g_ref = (reference * &r)?.sum_all()?.backward()?;
                for (v, what) in [(&x, "dx"), (&w, "dw"), (&b, "db")] {
                    let a = g_ours.get(v).expect("our gradient");
                    let e = g_ref.get(v).expect("candle's gradient");
                    assert!(max_rel(a, e)? <= tol, "{ctx}: {what}");
                }
            }
        }
    }
    Ok(())
}

#[test]
fn input_gradient_is_skipped_for_constants_and_nan_propagates() -> Result<()> {
    let x = tensor(&[4, 5], 1, DType::F32)?;
    let w = Var::from_tensor(&tensor(&[3, 5], 2, DType::F32)?)?;
    let b = Var::from_tensor(&tensor(&[3], 3, DType::F32)?)?;
    let grads = cv_ops::linear(&x, &w, &b, true)?.sum_all()?.backward()?;
    assert!(grads.get(&x).is_none() && grads.get(&w).is_some() && grads.get(&b).is_some());

    let mut v = x.flatten_all()?.to_vec1::<f32>()?;
    v[0] = f32::NAN;
    let x = Tensor::from_vec(v, (4, 5), &Device::Cpu)?;
    let y = cv_ops::linear(&x, &w, &b, true)?.to_vec2::<f32>()?;
    assert!(y[0].iter().all(|v| v.is_nan()), "{:?}", y[0]);
    assert!(y[1].iter().all(|v| !v.is_nan()));
    Ok(())
}

#[test]
fn bad_shapes_are_errors() -> Result<()> {
    let x = tensor(&[4, 5], 1, DType::F32)?;
    let err = |w: &[usize], b: &[usize]| -> Result<String> {
        Ok(cv_ops::linear(
            &x,
            &tensor(w, 2, DType::F32)?,
            &tensor(b, 3, DType::F32)?,
            false,
        )
        .unwrap_err()
        .to_string())
    };
    let e = err(&[3, 6], &[3])?;
    assert!(e.contains("weight") && e.contains("[out, 5]"), "{e}");
    let e = err(&[3, 5], &[4])?;
    assert!(e.contains("bias") && e.contains("[3]"), "{e}");
    Ok(())
}
