//! Knowledge distillation (Hinton et al., 2015) as a [`Hook`]: a trained teacher, in eval
//! mode, sees every training batch the student sees (after the batch hooks: MixUp and CutMix
//! included), and the step's loss becomes `(1 - alpha) * CE + alpha * T^2 * KL(teacher_T ||
//! student_T)` ([`crate::loss::distillation_loss`]). The recipe's `distill` field turns it on
//! (`cv distill`); it goes into `config.json`, so a replay distils again.
//!
//! The teacher is a checkpoint folder with its own input: its normalisation and image size
//! may differ from the student's (an ImageNet-normalised ResNet-18 fine-tuned at 64 teaching a
//! CIFAR-normalised CNN at 32), so each batch is renormalised per channel and resized
//! (bilinear) to the teacher's size before its forward.

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use cv_models::Model;

use crate::checkpoint::{ModelCard, MODEL_FILE};
use crate::config::Distill;
use crate::error::{Result, TrainError};
use crate::loss::distillation_loss;
use crate::trainer::{load_weights, Hook, StepContext, TrainBatch};

/// A trained network that only runs forward, in eval mode.
pub struct Teacher {
    model: Model,
    card: ModelCard,
    /// Keeps the weights `model` reads.
    _vars: VarMap,
}

/// The teacher's `config.json`, checked against the student's `classes` (the same names in
/// the same order: logit `i` must mean the same class for both).
pub fn teacher_card(config: &Distill, classes: &[String]) -> Result<ModelCard> {
    let card = ModelCard::read(&config.teacher)?;
    if card.classes != classes {
        return Err(TrainError::Config(format!(
            "teacher {}: its {} classes {:?} are not the training data's {} classes {:?} (same names, same order)",
            config.teacher.display(),
            card.classes.len(),
            card.classes,
            classes.len(),
            classes
        )));
    }
    Ok(card)
}

impl Teacher {
    /// The network of the checkpoint folder `config.teacher` (its `config.json` and
    /// `model.safetensors`) on `device`, checked as a pretrained start is.
    pub fn load(config: &Distill, classes: &[String], device: &Device) -> Result<Teacher> {
        let card = teacher_card(config, classes)?;
        let path = config.teacher.join(MODEL_FILE);
        let vars = VarMap::new();
        let vb = VarBuilder::from_varmap(&vars, DType::F32, device);
        let model = Model::new(card.architecture, card.classes.len(), vb)?;
        load_weights(&vars, card.architecture, &path, card.classes.len(), device)?;
        Ok(Teacher {
            model: model.detached(),
            card,
            _vars: vars,
        })
    }

    /// Its logits for a batch of the student's `images` `[N, 3, H, W]`, normalised with
    /// `mean`/`std`: renormalised to the teacher's statistics and resized to its image size.
    pub fn logits(&self, images: &Tensor, mean: [f32; 3], std: [f32; 3]) -> Result<Tensor> {
        let (_, channels, h, w) = images.dims4().map_err(|_| {
            TrainError::Config(format!(
                "the teacher needs images [N, 3, H, W], got a batch of shape {:?}",
                images.dims()
            ))
        })?;
        let tf = &self.card.eval_transforms;
        // x_t = (x_s * std_s + mean_s - mean_t) / std_t, per channel.
        let per_channel =
            |v: [f32; 3]| Tensor::from_vec(v.to_vec(), (1, channels, 1, 1), images.device());
        let scale: [f32; 3] = std::array::from_fn(|c| std[c] / tf.std[c]);
        let shift: [f32; 3] = std::array::from_fn(|c| (mean[c] - tf.mean[c]) / tf.std[c]);
        let x = images
            .detach()
            .broadcast_mul(&per_channel(scale)?)?
            .broadcast_add(&per_channel(shift)?)?;
        let size = self.card.image_size;
        let x = if (h, w) == (size, size) {
            x
        } else {
            x.upsample_bilinear2d(size, size, false)?
        };
        Ok(self.model.forward_t(&x, false)?.detach())
    }
}

/// The distillation hook: the teacher's softened outputs as an extra loss term, the hard
/// labels' loss scaled by `1 - alpha`.
pub struct Distillation {
    teacher: Teacher,
    temperature: f64,
    alpha: f64,
    mean: [f32; 3],
    std: [f32; 3],
}

impl Distillation {
    /// Loads the teacher of `config` for a student whose images are normalised with
    /// `mean`/`std` and whose classes are `classes` (the teacher's must be the same, in order).
    pub fn new(
        config: &Distill,
        classes: &[String],
        mean: [f32; 3],
        std: [f32; 3],
        device: &Device,
    ) -> Result<Distillation> {
        let teacher = Teacher::load(config, classes, device)?;
        log::info!(
            "distilling from {} ({}, trained at {}), temperature {}, alpha {}",
            config.teacher.display(),
            teacher.card.architecture,
            teacher.card.image_size,
            config.temperature,
            config.alpha
        );
        Ok(Distillation {
            teacher,
            temperature: config.temperature,
            alpha: config.alpha,
            mean,
            std,
        })
    }
}

impl Hook for Distillation {
    fn extra_loss(
        &mut self,
        batch: &TrainBatch,
        logits: &Tensor,
        _ctx: &StepContext,
    ) -> Result<Option<Tensor>> {
        if self.alpha == 0.0 {
            return Ok(None);
        }
        let teacher = self.teacher.logits(&batch.input, self.mean, self.std)?;
        let kd = distillation_loss(logits, &teacher, self.temperature)?;
        Ok(Some(kd.affine(self.alpha, 0.0)?))
    }

    fn hard_loss_weight(&self) -> f64 {
        1.0 - self.alpha
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    use cv_data::transforms::Pipeline;
    use cv_models::Architecture;

    /// A teacher with its own normalisation and size sees the student's batch as it would
    /// see the same pixels through its own eval transforms: renormalised, then resized.
    #[test]
    fn the_teacher_sees_the_students_pixels_in_its_own_normalisation_and_size() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| TrainError::io(Path::new("tmp"), e))?;
        let classes: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let vars = VarMap::new();
        let vb = VarBuilder::from_varmap(&vars, DType::F32, &Device::Cpu);
        let model = Model::new(Architecture::ResNet18, 3, vb)?;
        cv_models::init::initialise(&vars, Architecture::ResNet18, 5)?;
        let state = cv_models::state::state_dict(&vars)?;
        crate::atomic::write_safetensors(&dir.path().join(MODEL_FILE), &state)?;
        let (mean_t, std_t) = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]);
        ModelCard {
            architecture: Architecture::ResNet18,
            classes: classes.clone(),
            image_size: 40,
            eval_transforms: Pipeline::none(mean_t, std_t),
            weights_from: None,
            quantization: None,
        }
        .write(dir.path())?;
        let config = Distill {
            teacher: dir.path().to_path_buf(),
            temperature: 2.0,
            alpha: 0.5,
        };
        let teacher = Teacher::load(&config, &classes, &Device::Cpu)?;

        let pixels = Tensor::rand(0f32, 1.0, (2, 3, 32, 32), &Device::Cpu)?;
        let normalise = |mean: [f32; 3], std: [f32; 3]| -> Result<Tensor> {
            let m = Tensor::from_vec(mean.to_vec(), (1, 3, 1, 1), &Device::Cpu)?;
            let s = Tensor::from_vec(std.to_vec(), (1, 3, 1, 1), &Device::Cpu)?;
            Ok(pixels.broadcast_sub(&m)?.broadcast_div(&s)?)
        };
        let (mean_s, std_s) = ([0.4914, 0.4822, 0.4465], [0.247, 0.2435, 0.2616]);
        let got = teacher.logits(&normalise(mean_s, std_s)?, mean_s, std_s)?;
        let own = normalise(mean_t, std_t)?.upsample_bilinear2d(40, 40, false)?;
        let want = model.detached().forward_t(&own, false)?;
        let diff = (got - want)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f32>()?;
        assert!(diff < 1e-4, "{diff}");

        let other = ["a", "c", "b"].map(String::from).to_vec();
        let err = Teacher::load(&config, &other, &Device::Cpu)
            .err()
            .map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("same names, same order")));
        Ok(())
    }
}
