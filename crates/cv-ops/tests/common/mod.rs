//! Helpers shared by this crate's integration tests.

use candle_core::{DType, Device, Result, Tensor};

/// Deterministic values in about `[-999, 999] / scale`, varying with `seed`.
pub fn tensor(dims: &[usize], seed: u64, dtype: DType, scale: f64) -> Result<Tensor> {
    let len: usize = dims.iter().product();
    let v: Vec<f64> = (0..len as u64)
        .map(|i| (((i * 7919 + seed * 104_729) % 1999) as f64 - 999.0) / scale)
        .collect();
    Tensor::from_vec(v, dims, &Device::Cpu)?.to_dtype(dtype)
}

/// Largest absolute difference of `a` and `b`, relative to `b`'s largest magnitude.
pub fn max_rel(a: &Tensor, b: &Tensor) -> Result<f64> {
    let a = a.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    let b = b.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(1e-30f64, |m, v| m.max(v.abs()));
    Ok(a.iter()
        .zip(&b)
        .fold(0f64, |m, (x, y)| m.max((x - y).abs()))
        / scale)
}
