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

/// The network behind a [`Classifier`].
#[derive(Debug)]
enum Network {
    /// Detached view of f32 weights: evaluating it records no autograd graph.
    Float(Model),
    /// An int8 checkpoint (CPU only).
    Int8(cv_models::quant::QuantizedModel),
}

/// A model loaded for inference: f32 weights or an int8 checkpoint made by `cv quantize`.
#[derive(Debug)]
pub struct Classifier {
    network: Network,
    classes: Vec<String>,
    transforms: Pipeline,
    device: Device,
    report: LoadReport,
}

impl Classifier {
    /// Builds the architecture, loads and checks the weights, and keeps the classes and
    /// eval transforms of `weights`.
    /// An int8 checkpoint runs on the CPU only.
    pub fn load(weights: &ResolvedWeights, device: &Device) -> Result<Classifier> {
        if weights.int8 {
            return Classifier::load_int8(weights, device);
        }
        let (_, model, report) = crate::load::load_named(weights, device, "the classifier")?;
        Ok(Classifier {
            network: Network::Float(model.detached()),
            classes: weights.classes.clone(),
            transforms: weights.eval_transforms.clone(),
            device: device.clone(),
            report,
        })
    }

    fn load_int8(weights: &ResolvedWeights, device: &Device) -> Result<Classifier> {
        let path = &weights.path;
        if !device.is_cpu() {
            return Err(WeightsError::Input(format!(
                "{}: int8 checkpoints run on the CPU; pass --device cpu",
                path.display()
            )));
        }
        let bytes = std::fs::read(path).map_err(|e| WeightsError::io(path, e))?;
        let model = cv_models::quant::QuantizedModel::from_safetensors(&bytes).map_err(|e| {
            WeightsError::Corrupt {
                path: path.clone(),
                reason: e.to_string(),
            }
        })?;
        let mismatch = |detail: String| WeightsError::Mismatch {
            path: path.clone(),
            architecture: weights.architecture.to_string(),
            detail,
        };
        if model.architecture() != weights.architecture {
            return Err(mismatch(format!(
                "the file holds an int8 {}",
                model.architecture()
            )));
        }
        if model.num_classes() != weights.classes.len() {
            return Err(mismatch(format!(
                "{} classes are named ({}) but the head has {} outputs",
                weights.classes.len(),
                weights.origin,
                model.num_classes()
            )));
        }
        log::info!(
            "{}: int8 {} on the {} kernels",
            path.display(),
            model.architecture(),
            cv_models::quant::int8_kernel()
        );
        Ok(Classifier {
            network: Network::Int8(model),
            classes: weights.classes.clone(),
            transforms: weights.eval_transforms.clone(),
            device: device.clone(),
            report: LoadReport {
                path: path.clone(),
                architecture: weights.architecture,
                loaded: 0,
                converted: Vec::new(),
                checkpoint_classes: weights.classes.len(),
                head_replaced: None,
            },
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

    /// The f32 model (eval mode only: its weights are detached); `None` for an int8
    /// checkpoint.
    pub fn model(&self) -> Option<&Model> {
        match &self.network {
            Network::Float(m) => Some(m),
            Network::Int8(_) => None,
        }
    }

    /// The layer class activation maps are taken at by default (`layer4`, `conv2`).
    pub fn last_spatial_layer(&self) -> &'static str {
        use cv_models::CamSource;
        match &self.network {
            Network::Float(m) => m.last_spatial_layer(),
            Network::Int8(m) => m.last_spatial_layer(),
        }
    }

    /// Whether this is an int8 checkpoint.
    pub fn is_int8(&self) -> bool {
        matches!(self.network, Network::Int8(_))
    }

    /// The f32 model, or an error saying that `what` needs one.
    pub fn float_model(&self, what: &str) -> Result<&Model> {
        self.model().ok_or_else(|| WeightsError::NeedsFloat {
            path: self.report.path.clone(),
            needs: what.into(),
        })
    }

    /// Logits `[N, classes]` for an already transformed batch `[N, 3, H, W]`, eval mode.
    pub fn logits(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.to_device(&self.device)?.to_dtype(DType::F32)?;
        match &self.network {
            Network::Float(m) => Ok(m.forward_t(&x, false)?),
            Network::Int8(m) => Ok(m.forward(&x)?),
        }
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
            .unwrap_or(self.last_spatial_layer());
        let mut out = Vec::with_capacity(images.len());
        for chunk in images.chunks(CHUNK) {
            let x = self.preprocess(chunk)?;
            let targets = request.class.map(|c| vec![c; chunk.len()]);
            let (method, targets) = (request.method, targets.as_deref());
            let maps = match &self.network {
                Network::Float(m) => {
                    cv_models::class_activation_maps(m, &x, layer, method, targets)?
                }
                Network::Int8(m) => cv_models::maps_of(m, &x, layer, method, targets)?,
            };
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
