//! Folding an eval-mode BatchNorm into the convolution before it, so inference runs one op.

use candle_core::{Result, Tensor};

/// Returns `(w', b')` such that `conv(x, w') + b'` equals
/// `gamma * (conv(x, w) + bias - mean) / sqrt(var + eps) + beta` (BatchNorm in eval mode).
///
/// `w` is `[co, ci, kh, kw]`; `bias` (absent for ResNet's convs), `gamma`, `beta`, `mean` and
/// `var` are `[co]`. `b'` is `[co]`; add it with `broadcast_add` on `[1, co, 1, 1]`.
pub fn fold_batchnorm(
    w: &Tensor,
    bias: Option<&Tensor>,
    gamma: &Tensor,
    beta: &Tensor,
    mean: &Tensor,
    var: &Tensor,
    eps: f64,
) -> Result<(Tensor, Tensor)> {
    let (co, _, _, _) = w.dims4()?;
    for (name, t) in [
        ("gamma", gamma),
        ("beta", beta),
        ("mean", mean),
        ("var", var),
    ]
    .into_iter()
    .chain(bias.map(|b| ("bias", b)))
    {
        if t.dims() != [co] {
            candle_core::bail!(
                "fold_batchnorm: {name} has shape {:?}, expected [{co}] (the conv's output channels)",
                t.dims()
            );
        }
    }
    let scale = (gamma / (var + eps)?.sqrt()?)?;
    let w2 = w.broadcast_mul(&scale.reshape((co, 1, 1, 1))?)?;
    let shifted = match bias {
        Some(b) => (b - mean)?,
        None => mean.neg()?,
    };
    let b2 = ((shifted * &scale)? + beta)?;
    Ok((w2, b2))
}
