//! Known pretrained checkpoints and everything needed to use them: where they live on the
//! hub, the architecture, the classes, the input normalisation and eval transforms, the
//! licence and the published accuracy.

use cv_data::transforms::Pipeline;
use cv_models::Architecture;

use crate::error::{Result, WeightsError};
use crate::imagenet;

/// ImageNet's per-channel mean (RGB, on 0..1 pixels), used by every torchvision/timm model.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet's per-channel standard deviation (RGB).
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// One pretrained checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct Pretrained {
    /// Name users type, timm's `model.tag` form (`resnet18.tv_in1k`).
    pub name: &'static str,
    /// One line for `cv weights list`.
    pub description: &'static str,
    /// The network the weights fit.
    pub architecture: Architecture,
    /// Hugging Face hub repository.
    pub repo: &'static str,
    /// Branch, tag or commit in the repository.
    pub revision: &'static str,
    /// The weights file inside the repository.
    pub file: &'static str,
    /// Number of outputs of the head.
    pub num_classes: usize,
    /// Input normalisation mean (RGB).
    pub mean: [f32; 3],
    /// Input normalisation std (RGB).
    pub std: [f32; 3],
    /// Eval transforms: shorter side resized to this...
    pub resize: u32,
    /// ...then centre-cropped to this square.
    pub crop: u32,
    /// Licence of the weights (SPDX id).
    pub licence: &'static str,
    /// Published ImageNet-1k validation top-1 accuracy, percent.
    pub top1: f32,
    /// Published top-5 accuracy, percent, when published.
    pub top5: Option<f32>,
    /// Approximate size of the weights file in bytes (for `cv weights list`; not a checksum).
    pub approx_bytes: u64,
}

impl Pretrained {
    /// The class names, index `i` is logit `i`.
    pub fn classes(&self) -> Vec<String> {
        imagenet::class_names()
    }

    /// The eval transforms these weights were evaluated with (resize, centre crop, normalise).
    pub fn eval_transforms(&self) -> Pipeline {
        let mut p = Pipeline::eval(self.resize, self.crop);
        p.mean = self.mean;
        p.std = self.std;
        p
    }
}

static REGISTRY: [Pretrained; 2] = [
    Pretrained {
        name: "resnet18.tv_in1k",
        description:
            "torchvision's original ImageNet ResNet-18 (resnet18(pretrained=True), IMAGENET1K_V1)",
        architecture: Architecture::ResNet18,
        repo: "timm/resnet18.tv_in1k",
        revision: "main",
        file: "model.safetensors",
        num_classes: imagenet::NUM_CLASSES,
        mean: IMAGENET_MEAN,
        std: IMAGENET_STD,
        resize: 256,
        crop: 224,
        licence: "BSD-3-Clause",
        top1: 69.76,
        top5: Some(89.08),
        approx_bytes: 46_800_000,
    },
    Pretrained {
        name: "resnet18.a1_in1k",
        description: "timm's ResNet-18 trained with the 'ResNet strikes back' A1 recipe",
        architecture: Architecture::ResNet18,
        repo: "timm/resnet18.a1_in1k",
        revision: "main",
        file: "model.safetensors",
        num_classes: imagenet::NUM_CLASSES,
        mean: IMAGENET_MEAN,
        std: IMAGENET_STD,
        // timm: crop_pct 0.95 at 224 -> shorter side floor(224 / 0.95) = 235.
        resize: 235,
        crop: 224,
        licence: "Apache-2.0",
        top1: 71.5,
        top5: None,
        approx_bytes: 46_800_000,
    },
];

/// Every known checkpoint.
pub fn registry() -> &'static [Pretrained] {
    &REGISTRY
}

/// The checkpoint called `name` (exact, case-insensitive).
pub fn find(name: &str) -> Result<&'static Pretrained> {
    REGISTRY
        .iter()
        .find(|p| p.name.eq_ignore_ascii_case(name.trim()))
        .ok_or_else(|| WeightsError::UnknownName {
            name: name.to_string(),
            known: REGISTRY
                .iter()
                .map(|p| p.name)
                .collect::<Vec<_>>()
                .join(", "),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_both_resnets() {
        let tv = find("resnet18.tv_in1k").unwrap();
        assert_eq!(tv.repo, "timm/resnet18.tv_in1k");
        assert_eq!(tv.file, "model.safetensors");
        assert_eq!(tv.architecture, Architecture::ResNet18);
        assert_eq!(tv.classes().len(), 1000);
        assert_eq!(tv.classes()[207], "golden retriever");
        assert!((tv.top1 - 69.76).abs() < 1e-4);
        let a1 = find("ResNet18.A1_IN1K").unwrap();
        assert_eq!(a1.repo, "timm/resnet18.a1_in1k");
        assert!(a1.top1 > tv.top1);
        for p in registry() {
            assert!((40_000_000..60_000_000).contains(&p.approx_bytes));
            assert_eq!(p.mean, IMAGENET_MEAN);
            assert_eq!(p.std, IMAGENET_STD);
        }
    }

    #[test]
    fn eval_transforms_resize_crop_and_normalise() {
        let t = find("resnet18.tv_in1k").unwrap().eval_transforms();
        assert_eq!(t.mean, IMAGENET_MEAN);
        assert_eq!(t.std, IMAGENET_STD);
        assert_eq!(t, {
            let mut p = Pipeline::eval(256, 224);
            p.mean = IMAGENET_MEAN;
            p.std = IMAGENET_STD;
            p
        });
    }

    #[test]
    fn unknown_name_lists_the_known_ones() {
        let e = find("resnet50.tv_in1k").unwrap_err().to_string();
        assert!(
            e.contains("resnet50.tv_in1k")
                && e.contains("resnet18.tv_in1k")
                && e.contains("resnet18.a1_in1k"),
            "{e}"
        );
    }
}
