//! What a training run is: [`TrainConfig`], every hyper-parameter (the recipe) in one serde
//! struct with its defaults in one place; and [`RunSettings`], how this process runs it
//! (progress bar, device, prefetch), which changes nothing the run computes. Both are written
//! into the checkpoint's `config.json`, apart, so a run can be replayed from its recipe.

use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};
use crate::schedule::Schedule;

/// Which optimizer to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// SGD with momentum ([`crate::optim::Sgd`]).
    Sgd,
    /// AdamW ([`crate::optim::AdamW`]).
    #[serde(alias = "adam_w")]
    AdamW,
}

/// What a fine-tuning run trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrainMode {
    /// Every parameter trains, BatchNorm in train mode.
    Full,
    /// The backbone is frozen (BatchNorm in eval mode, no gradient); only the head trains.
    Head,
    /// Linear probe: backbone features are computed once (eval transforms, no augmentation)
    /// and cached; a linear head is trained on the cache. The fast path on a CPU.
    Probe,
}

/// The augmentation recipe of the training split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Augment {
    /// RandomCrop(image_size, padding image_size/8) + horizontal flip.
    Cifar,
    /// RandomResizedCrop(image_size) + horizontal flip.
    Imagenet,
    /// Resize to image_size only.
    None,
}

/// An automatic augmentation policy (torchvision's), applied per image after the crop and
/// flip of [`Augment`], as torchvision's reference recipes order them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AutoAugmentKind {
    /// TrivialAugmentWide: one operation at a random magnitude.
    Trivial,
    /// RandAugment with `randaugment_ops` operations at bin `randaugment_magnitude`.
    Rand,
    /// AutoAugment with the ImageNet policy.
    Auto,
}

/// Arithmetic of the training forward/backward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Everything in f32.
    #[default]
    F32,
    /// Mixed precision as PyTorch's autocast: convolutions and matrix products in bf16 with
    /// f32 sums; f32 weights, optimizer, BatchNorm and loss ([`crate::autocast`]). On the CPU
    /// (AMX-BF16 or AVX512-BF16) for training, evaluation and the probe's features; on CUDA
    /// for training.
    Bf16,
}

/// Hyper-parameters of one training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Number of passes over the training split.
    pub epochs: usize,
    /// Images per optimizer step.
    pub batch_size: usize,
    /// `sgd` or `adamw`.
    pub optimizer: OptimizerKind,
    /// Base learning rate (the head's; the backbone gets `lr * backbone_lr_scale`).
    pub lr: f64,
    /// SGD momentum (ignored by AdamW).
    pub momentum: f64,
    /// Weight decay: L2 added to the gradient for SGD, decoupled for AdamW. Never applied to
    /// biases and BatchNorm parameters.
    pub weight_decay: f64,
    /// Nesterov momentum for SGD.
    pub nesterov: bool,
    /// AdamW's first-moment decay.
    pub adam_beta1: f64,
    /// AdamW's second-moment decay.
    pub adam_beta2: f64,
    /// AdamW's epsilon.
    pub adam_eps: f64,
    /// Learning-rate schedule, evaluated every optimizer step.
    pub schedule: Schedule,
    /// Label smoothing of the training loss (PyTorch's formula); evaluation uses none.
    pub label_smoothing: f64,
    /// `full`, `head` or `probe`.
    pub mode: TrainMode,
    /// Gradual unfreezing: train in `head` mode for this many epochs, then everything
    /// (`full`). `None` keeps `mode` for the whole run. Not used with `probe`.
    pub unfreeze_after: Option<usize>,
    /// Learning-rate multiplier of the backbone (everything but the head) in `full` mode,
    /// e.g. 0.1 when fine-tuning pretrained weights (discriminative rates).
    pub backbone_lr_scale: f64,
    /// Training augmentation: `cifar`, `imagenet` or `none`.
    pub augment: Augment,
    /// Side of the square model input; images are resized to it (e.g. 64 for CIFAR on a
    /// pretrained ResNet-18). CIFAR from scratch uses 32.
    pub image_size: usize,
    /// Seed of the model initialisation, data order and augmentation.
    pub seed: u64,
    /// Evaluate on the test split every this many epochs (and always after the last).
    pub eval_every: usize,
    /// Drop the last incomplete training batch (keeps BatchNorm away from tiny batches).
    pub drop_last: bool,
    /// `f32` or `bf16` (mixed precision, CUDA only) for the training passes.
    pub precision: Precision,
    /// MixUp's `alpha` (`lam ~ Beta(alpha, alpha)`), or none ([`crate::mixing`]).
    pub mixup_alpha: Option<f64>,
    /// CutMix's `alpha`, or none; with MixUp, one of the two per batch.
    pub cutmix_alpha: Option<f64>,
    /// Hold out this stratified, seeded fraction of the training images as a validation
    /// split: evaluated every epoch beside the test split, and what model selection and
    /// early stopping use.
    pub val_split: Option<f64>,
    /// Loader batches per optimizer step: gradients of `accum_steps` consecutive batches are
    /// summed, weighted by their share of the images, so a step equals one on a batch
    /// `accum_steps` times larger (BatchNorm still sees each batch alone, as in PyTorch).
    pub accum_steps: usize,
    /// Stop after this many epochs without a better selection accuracy
    /// ([`crate::selection`]), or never.
    pub early_stop: Option<usize>,
    /// ColorJitter strengths (brightness, contrast, saturation, hue) after the crop and flip,
    /// or none.
    pub color_jitter: Option<[f64; 4]>,
    /// An automatic augmentation policy after the crop, flip and colour jitter, or none.
    pub auto_augment: Option<AutoAugmentKind>,
    /// RandAugment's operations per image.
    pub randaugment_ops: usize,
    /// RandAugment's magnitude bin, of 31.
    pub randaugment_magnitude: usize,
    /// RandomErasing's probability, applied to the normalised images last, or none.
    pub random_erasing: Option<f64>,
    /// Keep an exponential moving average of the weights with this decay per optimizer
    /// step ([`crate::ema`]): it is what each epoch evaluates and `model.safetensors` holds.
    pub ema_decay: Option<f64>,
    /// Knowledge distillation from a trained teacher ([`crate::distill`]), or none.
    pub distill: Option<Distill>,
}

/// Hinton distillation: the loss is `(1 - alpha) * CE(labels) + alpha * T^2 *
/// KL(teacher_T || student_T)` with both outputs softened by the temperature `T`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Distill {
    /// The teacher's checkpoint folder (`model.safetensors` and `config.json`, as train and
    /// finetune write them); it runs in eval mode and never trains.
    pub teacher: std::path::PathBuf,
    /// The softening temperature `T` (> 0).
    pub temperature: f64,
    /// The weight of the distillation term, in [0, 1]; the hard-label loss gets `1 - alpha`.
    pub alpha: f64,
}

/// RandAugment's number of magnitude bins (torchvision's default).
pub const RANDAUGMENT_BINS: usize = 31;

/// How this process runs a job: nothing here changes the weights a run computes, so these
/// may differ between a run, its resume and its replay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunSettings {
    /// No progress bar (for scripts and tests).
    pub quiet: bool,
    /// The device asked for: `cpu`, `cuda`, `cuda:N` or `metal` (the CLI turns it into
    /// `TrainJob::device` with `cv_models::device::select`, which falls back to the CPU).
    pub device: String,
    /// Batches prepared ahead by the loader's background thread.
    pub prefetch: usize,
}

impl Default for RunSettings {
    fn default() -> Self {
        RunSettings {
            quiet: false,
            device: "cpu".into(),
            prefetch: 2,
        }
    }
}

/// The [`RunSettings`] fields that configs written before the split held in the recipe.
pub(crate) const MOVED_TO_RUN_SETTINGS: [&str; 3] = ["quiet", "device", "prefetch"];

/// Serde's `deserialize_with` for a recipe stored in a file: [`TrainConfig::from_json`].
pub(crate) fn deserialize_recipe<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<TrainConfig, D::Error> {
    let value = serde_json::Value::deserialize(d)?;
    TrainConfig::from_json(value).map_err(serde::de::Error::custom)
}

impl TrainConfig {
    /// Reads a recipe from JSON, ignoring the run-time fields older configs held in it.
    pub fn from_json(mut value: serde_json::Value) -> serde_json::Result<Self> {
        if let Some(fields) = value.as_object_mut() {
            for key in MOVED_TO_RUN_SETTINGS {
                fields.remove(key);
            }
        }
        serde_json::from_value(value)
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            epochs: 10,
            batch_size: 64,
            optimizer: OptimizerKind::Sgd,
            lr: 0.01,
            momentum: 0.9,
            weight_decay: 5e-4,
            nesterov: false,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_eps: 1e-8,
            schedule: Schedule::Cosine {
                warmup_steps: 0,
                min_lr: 0.0,
            },
            label_smoothing: 0.0,
            mode: TrainMode::Full,
            unfreeze_after: None,
            backbone_lr_scale: 1.0,
            augment: Augment::Cifar,
            image_size: 32,
            seed: 0,
            eval_every: 1,
            drop_last: false,
            precision: Precision::F32,
            mixup_alpha: None,
            cutmix_alpha: None,
            val_split: None,
            accum_steps: 1,
            early_stop: None,
            color_jitter: None,
            auto_augment: None,
            randaugment_ops: 2,
            randaugment_magnitude: 9,
            random_erasing: None,
            ema_decay: None,
            distill: None,
        }
    }
}

/// The recipe `cv train` starts from: training `arch` from scratch on 32x32 CIFAR-style images
/// (SGD momentum 0.9, cosine schedule, random crop + flip). Flags override single fields.
pub fn recipe_scratch(arch: cv_models::Architecture) -> TrainConfig {
    let base = TrainConfig::default();
    match arch {
        cv_models::Architecture::SimpleCnn => base,
        cv_models::Architecture::ResNet18 => TrainConfig {
            batch_size: 128,
            lr: 0.05,
            ..base
        },
    }
}

/// The recipe `cv finetune` starts from, chosen so that it gives a useful model on a laptop
/// CPU in well under an hour: a linear probe on ResNet-18 features of 64x64 images
/// (each image goes through the frozen backbone once; the head then trains on the cache).
pub fn recipe_finetune() -> TrainConfig {
    TrainConfig {
        epochs: 10,
        batch_size: 128,
        lr: finetune_lr(TrainMode::Probe),
        weight_decay: 1e-4,
        mode: TrainMode::Probe,
        backbone_lr_scale: 0.1,
        augment: Augment::Cifar,
        image_size: 64,
        ..TrainConfig::default()
    }
}

/// The peak learning rate (the head's) of [`recipe_finetune`] in `mode`. Chosen by
/// measurement on the generated learnable set (`docs/benchmarks.md`, 2026-12-03): with the
/// backbone training too, 0.01 ties 0.1 on 1,000 images (100% test accuracy, 3 seeds each)
/// and on 10 images per class at 10 epochs of batch 128, and beats it in every other few-shot
/// setting tried (4 or 10 images per class, 10 or 30 epochs, batch 128 or 16, with and without
/// the augmentation kit). A probe or a frozen backbone keeps 0.1 (not measured here).
pub fn finetune_lr(mode: TrainMode) -> f64 {
    match mode {
        TrainMode::Full => 0.01,
        TrainMode::Head | TrainMode::Probe => 0.1,
    }
}

impl TrainConfig {
    /// Rejects values that cannot train, naming the field.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(TrainError::Config(m));
        if self.epochs == 0 {
            return bad("epochs must be at least 1".into());
        }
        if self.batch_size == 0 {
            return bad("batch_size must be at least 1".into());
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad(format!("lr must be a positive number, got {}", self.lr));
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return bad(format!("momentum must be in [0, 1), got {}", self.momentum));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad(format!(
                "weight_decay must be >= 0, got {}",
                self.weight_decay
            ));
        }
        if self.nesterov && self.momentum == 0.0 {
            return bad("nesterov needs a momentum > 0".into());
        }
        if !(0.0..1.0).contains(&self.label_smoothing) {
            return bad(format!(
                "label_smoothing must be in [0, 1), got {}",
                self.label_smoothing
            ));
        }
        if !(self.backbone_lr_scale.is_finite() && self.backbone_lr_scale >= 0.0) {
            return bad(format!(
                "backbone_lr_scale must be >= 0, got {}",
                self.backbone_lr_scale
            ));
        }
        if self.eval_every == 0 {
            return bad("eval_every must be at least 1".into());
        }
        if self.mode == TrainMode::Probe && self.unfreeze_after.is_some() {
            return bad("unfreeze_after cannot be combined with probe mode".into());
        }
        for (name, alpha) in [("mixup", self.mixup_alpha), ("cutmix", self.cutmix_alpha)] {
            if let Some(a) = alpha {
                if !(a.is_finite() && a > 0.0) {
                    return bad(format!("{name} alpha must be a positive number, got {a}"));
                }
                if self.mode == TrainMode::Probe {
                    return bad(format!(
                        "{name} mixes images, and probe mode trains on cached features: use mode head or full"
                    ));
                }
            }
        }
        self.validate_policies()?;
        if let Some(f) = self.val_split {
            if !(f > 0.0 && f < 1.0) {
                return bad(format!("val_split must be a fraction in (0, 1), got {f}"));
            }
        }
        if let Some(d) = self.ema_decay {
            if !(d > 0.0 && d < 1.0) {
                return bad(format!("ema_decay must be in (0, 1), got {d}"));
            }
        }
        if let Some(d) = &self.distill {
            if !(d.temperature.is_finite() && d.temperature > 0.0) {
                return bad(format!(
                    "distill.temperature must be positive, got {}",
                    d.temperature
                ));
            }
            if !(0.0..=1.0).contains(&d.alpha) {
                return bad(format!("distill.alpha must be in [0, 1], got {}", d.alpha));
            }
            if self.mode == TrainMode::Probe {
                return bad(
                    "distillation shows the teacher the training images, and probe mode trains on cached features: use mode head or full"
                        .into(),
                );
            }
        }
        if self.accum_steps == 0 {
            return bad("accum_steps must be at least 1".into());
        }
        if self.early_stop == Some(0) {
            return bad("early_stop must be at least 1 epoch".into());
        }
        if self.unfreeze_after.is_some() && self.mode == TrainMode::Head {
            return bad("unfreeze_after starts in head mode by itself: use mode full".into());
        }
        Ok(())
    }

    /// The per-image policies: sane values, and never with a probe (it trains on features of
    /// the eval transforms).
    fn validate_policies(&self) -> Result<()> {
        let bad = |m: String| Err(TrainError::Config(m));
        let used = [
            ("color_jitter", self.color_jitter.is_some()),
            ("auto_augment", self.auto_augment.is_some()),
            ("random_erasing", self.random_erasing.is_some()),
        ];
        for (name, on) in used {
            if on && self.mode == TrainMode::Probe {
                return bad(format!(
                    "{name} augments training images, and probe mode trains on cached features of the eval transforms: use mode head or full"
                ));
            }
        }
        if let Some([b, c, s, h]) = self.color_jitter {
            let j = cv_data::transforms::Jitter {
                brightness: b,
                contrast: c,
                saturation: s,
                hue: h,
            };
            j.validate().map_err(TrainError::Config)?;
        }
        if self.randaugment_magnitude >= RANDAUGMENT_BINS {
            return bad(format!(
                "randaugment_magnitude must be below {RANDAUGMENT_BINS}, got {}",
                self.randaugment_magnitude
            ));
        }
        if let Some(p) = self.random_erasing {
            if !(p > 0.0 && p <= 1.0) {
                return bad(format!(
                    "random_erasing must be a probability in (0, 1], got {p}"
                ));
            }
        }
        Ok(())
    }

    /// Optimizer steps in an epoch of `batches` loader batches.
    pub fn optimizer_steps(&self, batches: usize) -> usize {
        batches.div_ceil(self.accum_steps.max(1))
    }

    /// The mode of 0-based epoch `epoch`, after gradual unfreezing.
    pub fn mode_at(&self, epoch: usize) -> TrainMode {
        match self.unfreeze_after {
            Some(n) if epoch < n => TrainMode::Head,
            _ => self.mode,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_round_trip() {
        let c = TrainConfig::default();
        c.validate().unwrap();
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<TrainConfig>(&json).unwrap(), c);
        // Partial JSON takes the defaults for the rest.
        let p: TrainConfig =
            serde_json::from_str(r#"{"epochs": 3, "optimizer": "adamw", "mode": "probe"}"#)
                .unwrap();
        assert_eq!(p.epochs, 3);
        assert_eq!(p.optimizer, OptimizerKind::AdamW);
        assert_eq!(p.mode, TrainMode::Probe);
        assert_eq!(p.batch_size, c.batch_size);
        assert!(serde_json::from_str::<TrainConfig>(r#"{"epoch": 3}"#).is_err());
        // Older configs held the run-time settings in the recipe: read, and dropped.
        let old = serde_json::json!({"epochs": 2, "quiet": true, "device": "cuda", "prefetch": 4});
        assert_eq!(TrainConfig::from_json(old).unwrap().epochs, 2);
        assert!(TrainConfig::from_json(serde_json::json!({"epoch": 2})).is_err());
    }

    #[test]
    fn rejects_bad_values_and_unfreezes() {
        let mut c = TrainConfig {
            lr: -1.0,
            ..Default::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("lr"));
        c.lr = 0.1;
        c.unfreeze_after = Some(2);
        c.validate().unwrap();
        assert_eq!(c.mode_at(0), TrainMode::Head);
        assert_eq!(c.mode_at(1), TrainMode::Head);
        assert_eq!(c.mode_at(2), TrainMode::Full);
        c.mode = TrainMode::Probe;
        assert!(c.validate().is_err());
    }
}
