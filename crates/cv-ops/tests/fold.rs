//! `fold_batchnorm` against the unfolded conv + eval-mode BatchNorm.

use candle_core::{Device, Result, Tensor};

fn bn_eval(
    y: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    mean: &Tensor,
    var: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    let c = gamma.dims1()?;
    let r = |t: &Tensor| t.reshape((1, c, 1, 1));
    let xhat = y
        .broadcast_sub(&r(mean)?)?
        .broadcast_div(&r(&(var + eps)?.sqrt()?)?)?;
    xhat.broadcast_mul(&r(gamma)?)?.broadcast_add(&r(beta)?)
}

#[test]
fn folded_conv_equals_conv_then_batchnorm() -> Result<()> {
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 1.0, (2, 3, 9, 9), &dev)?;
    let w = Tensor::randn(0f32, 0.3, (5, 3, 3, 3), &dev)?;
    let gamma = Tensor::randn(1f32, 0.2, 5, &dev)?;
    let beta = Tensor::randn(0f32, 0.2, 5, &dev)?;
    let mean = Tensor::randn(0f32, 0.5, 5, &dev)?;
    let var = Tensor::rand(0.5f32, 2.0, 5, &dev)?;
    let bias = Tensor::randn(0f32, 0.5, 5, &dev)?;
    let eps = 1e-5;
    for b in [None, Some(&bias)] {
        let mut y = cv_ops::conv2d(&x, &w, 2, 1)?;
        if let Some(b) = b {
            y = y.broadcast_add(&b.reshape((1, 5, 1, 1))?)?;
        }
        let want = bn_eval(&y, &gamma, &beta, &mean, &var, eps)?;
        let (w2, b2) = cv_ops::fold_batchnorm(&w, b, &gamma, &beta, &mean, &var, eps)?;
        let got = cv_ops::conv2d(&x, &w2, 2, 1)?.broadcast_add(&b2.reshape((1, 5, 1, 1))?)?;
        let scale = want.abs()?.max_all()?.to_scalar::<f32>()?;
        let err = (got - &want)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(
            err < 1e-5 * scale,
            "bias {:?}: {err} vs scale {scale}",
            b.is_some()
        );
    }
    let e = cv_ops::fold_batchnorm(&w, None, &gamma.narrow(0, 0, 4)?, &beta, &mean, &var, eps)
        .unwrap_err()
        .to_string();
    assert!(e.contains("gamma"), "{e}");
    Ok(())
}
