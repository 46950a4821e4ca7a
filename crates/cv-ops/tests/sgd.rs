//! `sgd_update` against PyTorch's SGD arithmetic written out per element, over several steps,
//! for small parameters and for ones large enough to be updated in parallel chunks.

use candle_core::{DType, Device, Tensor};
use cv_ops::{sgd_update, sgd_update_applies, SgdStep};

/// PyTorch's `torch.optim.SGD` step for one element: returns the new (param, buffer).
fn reference(p: f32, g: f32, buf: Option<f32>, s: &SgdStep) -> (f32, Option<f32>) {
    let d = if s.weight_decay != 0.0 {
        g + p * s.weight_decay
    } else {
        g
    };
    if s.momentum == 0.0 {
        return (p - d * s.lr, None);
    }
    let b = match buf {
        None => d,
        Some(b) => b * s.momentum + d * (1.0 - s.dampening),
    };
    let step = if s.nesterov { d + b * s.momentum } else { b };
    (p - step * s.lr, Some(b))
}

fn values(len: usize, seed: usize) -> Vec<f32> {
    (0..len)
        .map(|i| (((i * 7919 + seed * 104_729) % 2001) as f32 - 1000.0) / 517.0)
        .collect()
}

#[test]
fn sgd_update_follows_pytorch_over_steps() -> candle_core::Result<()> {
    let steps = [
        (0.0, 0.0, 0.0, false),
        (0.9, 0.0, 0.0, false),
        (0.9, 0.1, 0.0, false),
        (0.9, 0.0, 0.01, true),
        (0.5, 0.0, 0.1, false),
    ];
    for len in [5, (1 << 16) * 2 + 3] {
        for (momentum, dampening, weight_decay, nesterov) in steps {
            let s = SgdStep {
                lr: 0.1,
                momentum,
                dampening,
                weight_decay,
                nesterov,
            };
            let mut want_p = values(len, 1);
            let mut want_b: Vec<Option<f32>> = vec![None; len];
            let param = Tensor::new(want_p.as_slice(), &Device::Cpu)?;
            let mut buf = None;
            for step in 0..3 {
                let g = values(len, 2 + step);
                let grad = Tensor::new(g.as_slice(), &Device::Cpu)?;
                assert!(sgd_update_applies(&[&param, &grad]));
                buf = sgd_update(&param, &grad, buf.as_ref(), s)?;
                for i in 0..len {
                    (want_p[i], want_b[i]) = reference(want_p[i], g[i], want_b[i], &s);
                }
                assert_eq!(param.to_vec1::<f32>()?, want_p, "{s:?} len {len}");
                let got_b = buf.as_ref().map(|b| b.to_vec1::<f32>()).transpose()?;
                let want: Option<Vec<f32>> = want_b.iter().copied().collect();
                assert_eq!(got_b, want, "{s:?} len {len}: buffer");
            }
        }
    }
    Ok(())
}

#[test]
fn sgd_update_takes_contiguous_cpu_f32_only() -> candle_core::Result<()> {
    let p = Tensor::zeros((3, 4), DType::F32, &Device::Cpu)?;
    assert!(sgd_update_applies(&[&p]));
    assert!(!sgd_update_applies(&[&p.to_dtype(DType::F64)?]));
    assert!(!sgd_update_applies(&[&p.t()?]));
    Ok(())
}
