//! Mean cross-entropy with PyTorch's label smoothing, through a numerically stable log-softmax,
//! against class indices or against soft targets (what MixUp and CutMix produce).

use candle_core::{DType, Tensor, D};

use crate::error::{Result, TrainError};

/// Mean cross-entropy of `logits` `[B, C]` against class indices `labels` `[B]` (u32).
///
/// With smoothing `eps` this is PyTorch's `F.cross_entropy(..., label_smoothing=eps)`:
/// `(1 - eps) * (-log p[y]) + eps / C * sum_c(-log p[c])`, averaged over the batch.
/// Labels are checked first: an out-of-range label is an error naming its position.
pub fn cross_entropy(logits: &Tensor, labels: &Tensor, label_smoothing: f64) -> Result<Tensor> {
    let (batch, classes) = logits.dims2()?;
    if !(0.0..1.0).contains(&label_smoothing) {
        return Err(TrainError::Config(format!(
            "label smoothing must be in [0, 1), got {label_smoothing}"
        )));
    }
    let labels = labels.to_dtype(DType::U32)?;
    let values = labels.to_vec1::<u32>()?;
    if values.len() != batch {
        return Err(TrainError::Config(format!(
            "{} labels for a batch of {batch} logits",
            values.len()
        )));
    }
    if let Some((index, &label)) = values
        .iter()
        .enumerate()
        .find(|(_, &l)| l as usize >= classes)
    {
        return Err(TrainError::LabelOutOfRange {
            label,
            index,
            num_classes: classes,
        });
    }
    let log_p = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let picked = log_p.gather(&labels.unsqueeze(1)?, 1)?.squeeze(1)?;
    let nll = picked.neg()?.mean_all()?;
    if label_smoothing == 0.0 {
        return Ok(nll);
    }
    let smooth = log_p.neg()?.mean(D::Minus1)?.mean_all()?;
    Ok((nll.affine(1.0 - label_smoothing, 0.0)? + smooth.affine(label_smoothing, 0.0)?)?)
}

/// Mean cross-entropy of `logits` `[B, C]` against soft targets `targets` `[B, C]` (rows of
/// probabilities): `sum_c(-t[c] * log p[c])`, averaged over the batch. Smoothing `eps` blends
/// the targets with the uniform distribution first, as PyTorch does for probability targets.
pub fn soft_cross_entropy(
    logits: &Tensor,
    targets: &Tensor,
    label_smoothing: f64,
) -> Result<Tensor> {
    let (batch, classes) = logits.dims2()?;
    if targets.dims() != [batch, classes] {
        return Err(TrainError::Config(format!(
            "soft targets of shape {:?} for logits of shape [{batch}, {classes}]",
            targets.dims()
        )));
    }
    if !(0.0..1.0).contains(&label_smoothing) {
        return Err(TrainError::Config(format!(
            "label smoothing must be in [0, 1), got {label_smoothing}"
        )));
    }
    let targets = targets
        .to_dtype(logits.dtype())?
        .affine(1.0 - label_smoothing, label_smoothing / classes as f64)?;
    let log_p = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    Ok((targets * log_p)?.sum(D::Minus1)?.neg()?.mean_all()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn reference(logits: &[Vec<f64>], labels: &[usize], eps: f64) -> f64 {
        let mut total = 0.0;
        for (row, &y) in logits.iter().zip(labels) {
            let m = row.iter().cloned().fold(f64::MIN, f64::max);
            let lse = m + row.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
            let logp: Vec<f64> = row.iter().map(|v| v - lse).collect();
            let c = row.len() as f64;
            total += (1.0 - eps) * -logp[y] + eps / c * logp.iter().map(|v| -v).sum::<f64>();
        }
        total / labels.len() as f64
    }

    #[test]
    fn matches_formula_with_and_without_smoothing() {
        let rows = vec![
            vec![1.0, 2.0, 0.5, -1.0],
            vec![0.0, 0.0, 0.0, 0.0],
            vec![3.0, -2.0, 1.0, 0.25],
        ];
        let labels = [1usize, 3, 0];
        let flat: Vec<f32> = rows.iter().flatten().map(|&v| v as f32).collect();
        let logits = Tensor::from_vec(flat, (3, 4), &Device::Cpu).unwrap();
        let y = Tensor::new(&[1u32, 3, 0], &Device::Cpu).unwrap();
        for eps in [0.0, 0.1, 0.3] {
            let got = cross_entropy(&logits, &y, eps)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap() as f64;
            let want = reference(&rows, &labels, eps);
            assert!((got - want).abs() < 1e-6, "eps {eps}: {got} vs {want}");
        }
    }

    #[test]
    fn stable_for_huge_logits() {
        let logits = Tensor::new(&[[1000f32, -1000.0, 0.0]], &Device::Cpu).unwrap();
        let y = Tensor::new(&[1u32], &Device::Cpu).unwrap();
        let loss = cross_entropy(&logits, &y, 0.0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!((loss - 2000.0).abs() < 1e-3, "{loss}");
    }

    #[test]
    fn out_of_range_label_is_an_error() {
        let logits = Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap();
        let y = Tensor::new(&[0u32, 3], &Device::Cpu).unwrap();
        let err = cross_entropy(&logits, &y, 0.0).unwrap_err();
        assert!(matches!(
            err,
            TrainError::LabelOutOfRange {
                label: 3,
                index: 1,
                num_classes: 3
            }
        ));
    }

    #[test]
    fn gradient_is_softmax_minus_onehot() {
        let v = candle_core::Var::new(&[[0.5f32, -0.25, 1.0]], &Device::Cpu).unwrap();
        let y = Tensor::new(&[2u32], &Device::Cpu).unwrap();
        let loss = cross_entropy(v.as_tensor(), &y, 0.0).unwrap();
        let grads = loss.backward().unwrap();
        let g = grads.get(v.as_tensor()).unwrap().to_vec2::<f32>().unwrap();
        let e: Vec<f64> = [0.5f64, -0.25, 1.0].iter().map(|x| x.exp()).collect();
        let s: f64 = e.iter().sum();
        for (c, got) in g[0].iter().enumerate() {
            let want = e[c] / s - if c == 2 { 1.0 } else { 0.0 };
            assert!((*got as f64 - want).abs() < 1e-6);
        }
    }

    #[test]
    fn soft_targets_of_one_hot_rows_equal_class_indices() {
        let logits = Tensor::new(&[[1f32, 2., 0.5], [0., -1., 3.]], &Device::Cpu).unwrap();
        let y = Tensor::new(&[1u32, 2], &Device::Cpu).unwrap();
        let one_hot = Tensor::new(&[[0f32, 1., 0.], [0., 0., 1.]], &Device::Cpu).unwrap();
        for eps in [0.0, 0.2] {
            let hard = cross_entropy(&logits, &y, eps)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            let soft = soft_cross_entropy(&logits, &one_hot, eps)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!((hard - soft).abs() < 1e-6, "eps {eps}: {hard} vs {soft}");
        }
        // A half/half target is the mean of the two hard losses.
        let mixed = Tensor::new(&[[0.5f32, 0.5, 0.]], &Device::Cpu).unwrap();
        let row = logits.narrow(0, 0, 1).unwrap();
        let soft = soft_cross_entropy(&row, &mixed, 0.0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let a = cross_entropy(&row, &Tensor::new(&[0u32], &Device::Cpu).unwrap(), 0.0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let b = cross_entropy(&row, &Tensor::new(&[1u32], &Device::Cpu).unwrap(), 0.0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!((soft - (a + b) / 2.0).abs() < 1e-6);
        assert!(soft_cross_entropy(&row, &one_hot, 0.0).is_err());
    }
}
