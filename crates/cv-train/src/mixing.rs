//! MixUp and CutMix, with torchvision's semantics (`transforms.v2.MixUp`, `CutMix`, and
//! `RandomChoice([MixUp, CutMix])` when both are on), as a [`Hook`] on the training batch.
//!
//! Per batch: `lam ~ Beta(alpha, alpha)`; the partner of image `i` is image `i - 1` (the batch
//! rolled by one, as `roll(1, 0)`). MixUp blends whole images, `lam * x + (1 - lam) * partner`;
//! CutMix pastes the partner's box of side `sqrt(1 - lam)` times the image's, centred on a
//! uniform pixel and clipped to the image, then sets `lam` to the share of pixels kept. The
//! soft targets are `lam * one_hot(label) + (1 - lam) * one_hot(partner's label)`, through the
//! loss's label smoothing like any target; the training accuracy counts the dominant label.
//! Every draw comes from `(seed, epoch, batch)`, so a batch stays a pure function of its
//! position, across resumes and replays.

use candle_core::{DType, Tensor};
use rand::Rng;
use rand_distr::{Beta, Distribution};

use crate::error::{Result, TrainError};
use crate::trainer::{Hook, StepContext, TrainBatch};

/// Domain tag of the mixing stream (apart from shuffling and augmentation).
const MIX_STREAM: u64 = 0x4d49_5855;

/// Which mix a batch gets, and its parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mix {
    /// Whole images blended with weight `lam` on the image itself.
    MixUp {
        /// Weight of the image (the partner gets `1 - lam`).
        lam: f64,
    },
    /// The partner's pixels in `x1..x2` x `y1..y2` (half-open), the rest the image's own.
    CutMix {
        /// Left column of the box.
        x1: usize,
        /// Top row.
        y1: usize,
        /// One past the right column.
        x2: usize,
        /// One past the bottom row.
        y2: usize,
    },
}

impl Mix {
    /// CutMix's box as torchvision draws it from `lam` and the centre `(r_x, r_y)`.
    pub fn cutmix_box(lam: f64, r_x: usize, r_y: usize, width: usize, height: usize) -> Mix {
        let r = 0.5 * (1.0 - lam).sqrt();
        let half_w = (r * width as f64) as usize;
        let half_h = (r * height as f64) as usize;
        Mix::CutMix {
            x1: r_x.saturating_sub(half_w),
            y1: r_y.saturating_sub(half_h),
            x2: (r_x + half_w).min(width),
            y2: (r_y + half_h).min(height),
        }
    }

    /// The weight of the image's own label: `lam`, or CutMix's share of pixels kept.
    pub fn lam(&self, width: usize, height: usize) -> f64 {
        match *self {
            Mix::MixUp { lam } => lam,
            Mix::CutMix { x1, y1, x2, y2 } => {
                1.0 - ((x2 - x1) * (y2 - y1)) as f64 / (width * height) as f64
            }
        }
    }
}

/// The MixUp / CutMix hook of a run.
#[derive(Debug, Clone)]
pub struct BatchMixing {
    mixup: Option<Beta<f64>>,
    cutmix: Option<Beta<f64>>,
    classes: usize,
    seed: u64,
}

impl BatchMixing {
    /// MixUp with `Beta(mixup, mixup)`, CutMix with `Beta(cutmix, cutmix)`, one of them per
    /// batch with equal probability when both are given; `None` when neither is.
    pub fn new(
        mixup: Option<f64>,
        cutmix: Option<f64>,
        classes: usize,
        seed: u64,
    ) -> Result<Option<Self>> {
        let beta = |name: &str, alpha: Option<f64>| -> Result<Option<Beta<f64>>> {
            alpha
                .map(|a| {
                    Beta::new(a, a).map_err(|_| {
                        TrainError::Config(format!("{name} alpha must be > 0, got {a}"))
                    })
                })
                .transpose()
        };
        let (mixup, cutmix) = (beta("mixup", mixup)?, beta("cutmix", cutmix)?);
        if mixup.is_none() && cutmix.is_none() {
            return Ok(None);
        }
        Ok(Some(BatchMixing {
            mixup,
            cutmix,
            classes,
            seed,
        }))
    }

    /// The mix of batch `batch` of `epoch` for images of `width` x `height`.
    pub fn draw(&self, epoch: usize, batch: usize, width: usize, height: usize) -> Mix {
        let stream = cv_data::seed::mix(&[MIX_STREAM, self.seed, epoch as u64, batch as u64]);
        let mut rng = cv_data::seed::rng(stream);
        let use_mixup = match (&self.mixup, &self.cutmix) {
            (Some(_), Some(_)) => rng.random_bool(0.5),
            (m, _) => m.is_some(),
        };
        if use_mixup {
            let lam = self.mixup.as_ref().map_or(1.0, |d| d.sample(&mut rng));
            Mix::MixUp { lam }
        } else {
            let lam = self.cutmix.as_ref().map_or(1.0, |d| d.sample(&mut rng));
            let r_x = rng.random_range(0..width);
            let r_y = rng.random_range(0..height);
            Mix::cutmix_box(lam, r_x, r_y, width, height)
        }
    }

    /// `batch` mixed by `mix`: images, soft targets, and the dominant labels.
    pub fn apply(&self, batch: TrainBatch, mix: Mix) -> Result<TrainBatch> {
        let (n, _, h, w) = batch.input.dims4()?;
        let device = batch.input.device();
        let partner: Vec<u32> = (0..n as u32)
            .map(|i| (i + n as u32 - 1) % n as u32)
            .collect();
        let rolled = batch
            .input
            .index_select(&Tensor::new(partner.as_slice(), device)?, 0)?;
        let input = match mix {
            Mix::MixUp { lam } => {
                (batch.input.affine(lam, 0.0)? + rolled.affine(1.0 - lam, 0.0)?)?
            }
            Mix::CutMix { x1, y1, x2, y2 } => {
                let inside: Vec<f32> = (0..h * w)
                    .map(|p| {
                        let (y, x) = (p / w, p % w);
                        f32::from(u8::from((y1..y2).contains(&y) && (x1..x2).contains(&x)))
                    })
                    .collect();
                let mask = Tensor::from_vec(inside, (1, 1, h, w), device)?
                    .to_dtype(batch.input.dtype())?;
                let keep = mask.affine(-1.0, 1.0)?;
                (batch.input.broadcast_mul(&keep)? + rolled.broadcast_mul(&mask)?)?
            }
        };
        let lam = mix.lam(w, h);
        let labels = batch.labels.to_vec1::<u32>()?;
        let mut targets = vec![0f32; n * self.classes];
        let mut dominant = Vec::with_capacity(n);
        for (i, &own) in labels.iter().enumerate() {
            let other = labels[partner[i] as usize];
            for (label, weight) in [(own, lam), (other, 1.0 - lam)] {
                let cell = targets.get_mut(i * self.classes + label as usize).ok_or(
                    TrainError::LabelOutOfRange {
                        label,
                        index: i,
                        num_classes: self.classes,
                    },
                )?;
                *cell += weight as f32;
            }
            dominant.push(if lam >= 0.5 { own } else { other });
        }
        Ok(TrainBatch {
            input,
            labels: Tensor::new(dominant.as_slice(), device)?,
            targets: Some(
                Tensor::from_vec(targets, (n, self.classes), device)?.to_dtype(DType::F32)?,
            ),
        })
    }
}

impl Hook for BatchMixing {
    fn on_batch(&mut self, batch: TrainBatch, ctx: &StepContext) -> Result<TrainBatch> {
        let (_, _, h, w) = batch.input.dims4().map_err(|_| {
            TrainError::Config(
                "mixup and cutmix mix images: not cached features (probe mode)".into(),
            )
        })?;
        let mix = self.draw(ctx.epoch, ctx.batch, w, h);
        self.apply(batch, mix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn batch() -> TrainBatch {
        let x: Vec<f32> = (0..3 * 3 * 4 * 4).map(|v| v as f32).collect();
        TrainBatch::new(
            Tensor::from_vec(x, (3, 3, 4, 4), &Device::Cpu).unwrap(),
            Tensor::new(&[0u32, 1, 2], &Device::Cpu).unwrap(),
        )
    }

    fn pixels(t: &Tensor) -> Vec<Vec<Vec<Vec<f32>>>> {
        (0..t.dim(0).unwrap())
            .map(|i| t.get(i).unwrap().to_vec3::<f32>().unwrap())
            .collect()
    }

    #[test]
    fn mixup_blends_each_image_with_the_one_before() {
        let mixing = BatchMixing::new(Some(0.2), None, 3, 0).unwrap().unwrap();
        let b = batch();
        let x = pixels(&b.input);
        let out = mixing.apply(b, Mix::MixUp { lam: 0.7 }).unwrap();
        let y = pixels(&out.input);
        for i in 0..3 {
            let j = (i + 2) % 3;
            let want = 0.7 * x[i][1][2][3] + 0.3 * x[j][1][2][3];
            assert!((y[i][1][2][3] - want).abs() < 1e-4);
        }
        let t = out.targets.unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(t[0], vec![0.7, 0.0, 0.3]);
        assert_eq!(t[1], vec![0.3, 0.7, 0.0]);
        assert_eq!(out.labels.to_vec1::<u32>().unwrap(), vec![0, 1, 2]);
        let low = mixing.apply(batch(), Mix::MixUp { lam: 0.2 }).unwrap();
        assert_eq!(low.labels.to_vec1::<u32>().unwrap(), vec![2, 0, 1]);
    }

    #[test]
    fn cutmix_pastes_the_partner_box_and_weighs_by_area() {
        // torchvision's arithmetic: lam 0.75 on 32x32 -> r 0.25, half side 8, centre (30, 2).
        assert_eq!(
            Mix::cutmix_box(0.75, 30, 2, 32, 32),
            Mix::CutMix {
                x1: 22,
                y1: 0,
                x2: 32,
                y2: 10
            }
        );
        assert!(
            (Mix::cutmix_box(0.75, 30, 2, 32, 32).lam(32, 32) - (1.0 - 100.0 / 1024.0)).abs()
                < 1e-12
        );
        let mixing = BatchMixing::new(None, Some(1.0), 3, 0).unwrap().unwrap();
        let b = batch();
        let x = pixels(&b.input);
        let mix = Mix::CutMix {
            x1: 1,
            y1: 0,
            x2: 3,
            y2: 2,
        };
        let out = mixing.apply(b, mix).unwrap();
        let y = pixels(&out.input);
        for i in 0..3 {
            let j = (i + 2) % 3;
            for r in 0..4 {
                for c in 0..4 {
                    let inside = r < 2 && (1..3).contains(&c);
                    let want = if inside { x[j][2][r][c] } else { x[i][2][r][c] };
                    assert_eq!(y[i][2][r][c], want, "image {i} pixel {r},{c}");
                }
            }
        }
        let t = out.targets.unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(t[2], vec![0.0, 0.25, 0.75]);
    }

    #[test]
    fn draws_are_seeded_by_position_and_choose_both_mixes() {
        let mixing = BatchMixing::new(Some(0.2), Some(1.0), 10, 5)
            .unwrap()
            .unwrap();
        assert_eq!(mixing.draw(1, 2, 32, 32), mixing.draw(1, 2, 32, 32));
        assert_ne!(mixing.draw(1, 2, 32, 32), mixing.draw(1, 3, 32, 32));
        let draws: Vec<Mix> = (0..2000).map(|b| mixing.draw(0, b, 32, 32)).collect();
        let mixups = draws
            .iter()
            .filter(|m| matches!(m, Mix::MixUp { .. }))
            .count();
        assert!((900..1100).contains(&mixups), "{mixups} MixUps of 2000");
        // Beta(a, a) has mean 1/2.
        let mean: f64 = draws
            .iter()
            .filter_map(|m| match m {
                Mix::MixUp { lam } => Some(*lam),
                _ => None,
            })
            .sum::<f64>()
            / mixups as f64;
        assert!((mean - 0.5).abs() < 0.05, "mean lam {mean}");
        assert!(BatchMixing::new(None, None, 10, 0).unwrap().is_none());
        assert!(BatchMixing::new(Some(0.0), None, 10, 0).is_err());
    }
}
