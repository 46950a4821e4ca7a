//! `add_channel_bias` against candle's `broadcast_add`: values and both gradients, f32 and f64,
//! plus its errors.

use candle_core::{DType, Result, Tensor, Var};

mod common;

fn tensor(dims: &[usize], seed: u64, dtype: DType) -> Result<Tensor> {
    common::tensor(dims, seed, dtype, 333.0)
}

use common::max_rel;

#[test]
fn values_and_gradients_match_broadcast_add() -> Result<()> {
    for (dtype, tol) in [(DType::F32, 1e-6), (DType::F64, 1e-14)] {
        for dims in [[3usize, 5, 7, 6], [1, 1, 1, 1], [4, 16, 2, 3]] {
            let y = Var::from_tensor(&tensor(&dims, 1, dtype)?)?;
            let b = Var::from_tensor(&tensor(&[dims[1]], 2, dtype)?)?;
            // A weighting makes every output's gradient different.
            let weights = tensor(&dims, 3, dtype)?;

            let ours = cv_ops::add_channel_bias(y.as_tensor(), b.as_tensor())?;
            let reference = y
                .as_tensor()
                .broadcast_add(&b.as_tensor().reshape((1, dims[1], 1, 1))?)?;
            assert!(max_rel(&ours, &reference)? <= tol, "{dtype:?} {dims:?}");

            let g_ours = (ours * &weights)?.sum_all()?.backward()?;
            let g_ref = (reference * &weights)?.sum_all()?.backward()?;
            for v in [&y, &b] {
                let a = g_ours.get(v.as_tensor()).expect("gradient of ours");
                let r = g_ref.get(v.as_tensor()).expect("gradient of the reference");
                assert!(max_rel(a, r)? <= tol, "{dtype:?} {dims:?} gradient");
            }
        }
    }
    Ok(())
}

#[test]
fn bad_bias_shapes_and_dtypes_are_errors() -> Result<()> {
    let y = tensor(&[2, 3, 4, 4], 1, DType::F32)?;
    let wrong = tensor(&[4], 2, DType::F32)?;
    let err = cv_ops::add_channel_bias(&y, &wrong)
        .unwrap_err()
        .to_string();
    assert!(err.contains("bias"), "{err}");
    let f64_bias = tensor(&[3], 2, DType::F64)?;
    assert!(cv_ops::add_channel_bias(&y, &f64_bias).is_err());
    // Other dtypes go through candle's broadcast_add.
    let h = y.to_dtype(DType::F16)?;
    let hb = tensor(&[3], 2, DType::F16)?;
    let out = cv_ops::add_channel_bias(&h, &hb)?;
    assert_eq!(out.dims(), &[2, 3, 4, 4]);
    Ok(())
}
