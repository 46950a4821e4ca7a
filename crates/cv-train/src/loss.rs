//! Mean cross-entropy with PyTorch's label smoothing, through a numerically stable log-softmax,
//! against class indices or against soft targets (what MixUp and CutMix produce); and Hinton's
//! distillation loss against a teacher's logits.

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

/// Hinton's knowledge-distillation term: `T^2 * KL(softmax(teacher / T) || softmax(student / T))`
/// summed over classes and averaged over the batch (PyTorch's `F.kl_div(log_softmax(s / T),
/// log_softmax(t / T), log_target=True, reduction="batchmean") * T * T`). The `T^2` keeps
/// the gradient's size independent of `T`. `teacher` gets no gradient.
pub fn distillation_loss(student: &Tensor, teacher: &Tensor, temperature: f64) -> Result<Tensor> {
    let (batch, classes) = student.dims2()?;
    if teacher.dims() != [batch, classes] {
        return Err(TrainError::Config(format!(
            "teacher logits of shape {:?} for student logits of shape [{batch}, {classes}]",
            teacher.dims()
        )));
    }
    if !(temperature.is_finite() && temperature > 0.0) {
        return Err(TrainError::Config(format!(
            "distillation temperature must be positive, got {temperature}"
        )));
    }
    let scale = 1.0 / temperature;
    let log_s = candle_nn::ops::log_softmax(&student.affine(scale, 0.0)?, D::Minus1)?;
    let teacher = teacher.detach().to_dtype(student.dtype())?;
    let log_t = candle_nn::ops::log_softmax(&teacher.affine(scale, 0.0)?, D::Minus1)?;
    let kl = (log_t.exp()? * (log_t - log_s)?)?
        .sum(D::Minus1)?
        .mean_all()?;
    Ok(kl.affine(temperature * temperature, 0.0)?)
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

    /// The distillation term against its definition in f64, and its gradient against
    /// central finite differences.
    #[test]
    fn distillation_matches_the_kl_definition_and_its_gradient() {
        let s = [[1.0f64, -0.5, 2.0], [0.0, 3.0, -1.0]];
        let t = [[2.0f64, 0.0, 1.0], [-1.0, 1.5, 0.5]];
        let temp = 3.0;
        let reference = |s: &[[f64; 3]; 2]| {
            let soft = |row: &[f64; 3]| {
                let z: Vec<f64> = row.iter().map(|v| (v / temp).exp()).collect();
                let sum: f64 = z.iter().sum();
                z.into_iter().map(|v| v / sum).collect::<Vec<f64>>()
            };
            let kl: f64 = (0..2)
                .map(|i| {
                    let (p, q) = (soft(&t[i]), soft(&s[i]));
                    (0..3).map(|c| p[c] * (p[c] / q[c]).ln()).sum::<f64>()
                })
                .sum();
            kl / 2.0 * temp * temp
        };
        let dev = Device::Cpu;
        let student = candle_core::Var::new(&s, &dev).unwrap();
        let teacher = Tensor::new(&t, &dev).unwrap();
        let loss = distillation_loss(student.as_tensor(), &teacher, temp).unwrap();
        let got = loss.to_scalar::<f64>().unwrap();
        assert!((got - reference(&s)).abs() < 1e-12, "{got}");
        let grad = loss.backward().unwrap();
        let g = grad.get(&student).unwrap().to_vec2::<f64>().unwrap();
        for i in 0..2 {
            for c in 0..3 {
                let (mut up, mut down) = (s, s);
                up[i][c] += 1e-5;
                down[i][c] -= 1e-5;
                let numeric = (reference(&up) - reference(&down)) / 2e-5;
                assert!(
                    (g[i][c] - numeric).abs() < 1e-8,
                    "[{i}][{c}] {} vs {numeric}",
                    g[i][c]
                );
            }
        }
        // The same logits: nothing to learn from the teacher.
        let same = distillation_loss(&teacher, &teacher, temp).unwrap();
        assert!(same.to_scalar::<f64>().unwrap().abs() < 1e-12);
        assert!(distillation_loss(&teacher, &teacher, 0.0).is_err());
    }
}
