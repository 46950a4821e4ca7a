//! A ready-to-use classifier: model + weights + classes + eval transforms, in eval mode.

use candle_core::{DType, Device, Tensor, D};
use candle_nn::{VarBuilder, VarMap};
use cv_data::transforms::Pipeline;
use cv_models::Model;
use image::RgbImage;

use crate::error::{Result, WeightsError};
use crate::load::{load_into, LoadReport};
use crate::source::ResolvedWeights;

/// One answer: class index, class name, probability (softmax over all classes).
pub type Prediction = (usize, String, f32);

/// Images are transformed and run through the model this many at a time.
const CHUNK: usize = 32;

/// A model loaded for inference.
#[derive(Debug)]
pub struct Classifier {
    /// Detached view of the weights: evaluating it records no autograd graph.
    model: Model,
    classes: Vec<String>,
    transforms: Pipeline,
    device: Device,
    report: LoadReport,
}

impl Classifier {
    /// Builds the architecture, loads and checks the weights, and keeps the classes and
    /// eval transforms of `weights`.
    pub fn load(weights: &ResolvedWeights, device: &Device) -> Result<Classifier> {
        let num_classes = weights.classes.len();
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, device);
        let model = Model::new(weights.architecture, num_classes, vb)?;
        let report = load_into(
            &varmap,
            weights.architecture,
            &weights.path,
            num_classes,
            device,
        )?;
        if let Some(h) = &report.head_replaced {
            return Err(WeightsError::Mismatch {
                path: weights.path.clone(),
                architecture: weights.architecture.to_string(),
                detail: format!(
                    "{} classes are named ({}) but the head {} has {} outputs",
                    h.to_classes, weights.origin, h.module, h.from_classes
                ),
            });
        }
        Ok(Classifier {
            model: model.detached(),
            classes: weights.classes.clone(),
            transforms: weights.eval_transforms.clone(),
            device: device.clone(),
            report,
        })
    }

    /// Class names; logit `i` is `classes()[i]`.
    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// The eval transforms applied by [`Classifier::classify`].
    pub fn transforms(&self) -> &Pipeline {
        &self.transforms
    }

    /// What loading the weights did.
    pub fn load_report(&self) -> &LoadReport {
        &self.report
    }

    /// The model (eval mode only: its weights are detached).
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Logits `[N, classes]` for an already transformed batch `[N, 3, H, W]`, eval mode.
    pub fn logits(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.to_device(&self.device)?.to_dtype(DType::F32)?;
        Ok(self.model.forward_t(&x, false)?)
    }

    /// Applies the eval transforms: `[N, 3, H, W]` f32 on the classifier's device.
    pub fn preprocess(&self, images: &[RgbImage]) -> Result<Tensor> {
        if images.is_empty() {
            return Err(WeightsError::Input("no image to classify".into()));
        }
        let refs: Vec<&RgbImage> = images.iter().collect();
        let seeds = vec![0u64; images.len()]; // eval transforms draw nothing random
        let (buf, (w, h)) = self.transforms.apply_batch(&refs, &seeds)?;
        Ok(Tensor::from_vec(
            buf,
            (images.len(), 3, h, w),
            &self.device,
        )?)
    }

    /// The `top_k` most probable classes of each image, most probable first.
    pub fn classify(&self, images: &[RgbImage], top_k: usize) -> Result<Vec<Vec<Prediction>>> {
        if top_k == 0 {
            return Err(WeightsError::Input("top_k must be at least 1".into()));
        }
        let k = top_k.min(self.classes.len());
        let mut out = Vec::with_capacity(images.len());
        for chunk in images.chunks(CHUNK) {
            let x = self.preprocess(chunk)?;
            let probs = candle_nn::ops::softmax(&self.logits(&x)?, D::Minus1)?.to_vec2::<f32>()?;
            for row in probs {
                let mut order: Vec<usize> = (0..row.len()).collect();
                order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
                out.push(
                    order[..k]
                        .iter()
                        .map(|&i| (i, self.classes[i].clone(), row[i]))
                        .collect(),
                );
            }
        }
        Ok(out)
    }
}
