//! A ready-to-use classifier: model + weights + classes + eval transforms, in eval mode.

use candle_core::{DType, Device, Tensor, D};
use cv_data::transforms::Pipeline;
use cv_models::Model;
use image::RgbImage;

use crate::error::{Result, WeightsError};
use crate::load::LoadReport;
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
        let (_, model, report) = crate::load::load_named(weights, device)?;
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
            out.extend(self.top_classes(&self.logits(&x)?, k)?);
        }
        Ok(out)
    }

    /// Each row's `k` most probable classes (softmax of the logits), most probable first.
    fn top_classes(&self, logits: &Tensor, k: usize) -> Result<Vec<Vec<Prediction>>> {
        let probs = candle_nn::ops::softmax(logits, D::Minus1)?.to_vec2::<f32>()?;
        Ok(probs
            .into_iter()
            .map(|row| {
                let mut order: Vec<usize> = (0..row.len()).collect();
                order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
                order[..k]
                    .iter()
                    .map(|&i| (i, self.classes[i].clone(), row[i]))
                    .collect()
            })
            .collect())
    }

    /// Class activation maps of `images` through the eval transforms (see
    /// [`cv_models::cam`]): each image's top classes, the class explained, the image as the
    /// model saw it (after resize and crop) and its maps.
    pub fn explain(
        &self,
        images: &[RgbImage],
        request: &ExplainRequest,
    ) -> Result<Vec<Explanation>> {
        if request.top_k == 0 {
            return Err(WeightsError::Input("top_k must be at least 1".into()));
        }
        let k = request.top_k.min(self.classes.len());
        let layer = request
            .layer
            .as_deref()
            .unwrap_or(self.model.last_spatial_layer());
        let mut out = Vec::with_capacity(images.len());
        for chunk in images.chunks(CHUNK) {
            let x = self.preprocess(chunk)?;
            let targets = request.class.map(|c| vec![c; chunk.len()]);
            let maps = cv_models::class_activation_maps(
                &self.model,
                &x,
                layer,
                request.method,
                targets.as_deref(),
            )?;
            let top = self.top_classes(&maps.logits, k)?;
            for (i, ((image, raw), map)) in
                chunk.iter().zip(maps.raw).zip(maps.upsampled).enumerate()
            {
                out.push(Explanation {
                    top: top[i].clone(),
                    target: (maps.targets[i], self.classes[maps.targets[i]].clone()),
                    seen: self.transforms.augment(image, 0)?,
                    raw,
                    map,
                });
            }
        }
        Ok(out)
    }
}

/// What [`Classifier::explain`] computes.
#[derive(Clone, Debug)]
pub struct ExplainRequest {
    /// The layer (`None`: the last spatial one, `layer4` / `conv2`).
    pub layer: Option<String>,
    /// How the layer's channels are weighted.
    pub method: cv_models::CamMethod,
    /// The class explained in every image (`None`: each image's top-1).
    pub class: Option<usize>,
    /// How many top classes to report.
    pub top_k: usize,
}

/// One image explained.
#[derive(Clone, Debug)]
pub struct Explanation {
    /// The most probable classes.
    pub top: Vec<Prediction>,
    /// The class the maps explain: index and name.
    pub target: (usize, String),
    /// The image after the eval resize and crop, unnormalised: what the maps lie over.
    pub seen: RgbImage,
    /// The map at the layer's resolution, unscaled.
    pub raw: cv_models::Heatmap,
    /// The map at the input's resolution, scaled to [0, 1].
    pub map: cv_models::Heatmap,
}
