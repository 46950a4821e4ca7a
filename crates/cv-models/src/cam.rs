//! Class activation maps: where a network looks when it scores a class.
//!
//! Grad-CAM (Selvaraju et al.), Grad-CAM++ (Chattopadhay et al.) and CAM (Zhou et al.) with
//! pytorch-grad-cam's arithmetic, so their maps agree with that package's:
//! - the map is `relu(sum_k w_k A_k)` over the channels `A_k` of a layer's output, where
//!   Grad-CAM's `w_k` is the spatial mean of the target logit's gradient, Grad-CAM++'s the
//!   positive gradients weighted by its closed-form `alpha`, and CAM's the classifier's row;
//! - the map shown over the image is min-max scaled to [0, 1] (`x - min`, then
//!   `/ (max + 1e-7)`), resized bilinearly with half-pixel centres (OpenCV's `INTER_LINEAR`,
//!   PyTorch's `align_corners=False`), clipped at 0 and scaled again, as `BaseCAM` does.
//!
//! The gradient with respect to the layer comes from one backward pass over the rest of the
//! network only: the forward runs up to the layer without a graph
//! ([`Model::activation`]), the layer's output becomes a `Var`, and [`Model::logits_from`]
//! runs the rest of the same network code from it. Any [`CamSource`] works the same way
//! ([`maps_of`]): an int8 network gives its maps at its last spatial layer, after which it
//! runs in f32.

use std::fmt;
use std::str::FromStr;

use candle_core::{DType, Device, Tensor, Var, D};

use crate::error::{ModelError, Result};
use crate::Model;

/// Grad-CAM++'s guard against a zero denominator (pytorch-grad-cam's value).
const PLUS_PLUS_EPS: f32 = 1e-6;
/// The guard of the min-max scaling (pytorch-grad-cam's value).
const SCALE_EPS: f32 = 1e-7;

/// How the channels of the layer are weighted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum CamMethod {
    /// Spatial mean of the gradient (`gradcam`).
    #[default]
    #[serde(rename = "gradcam")]
    GradCam,
    /// Grad-CAM++'s weighting of the positive gradients (`gradcam++`).
    #[serde(rename = "gradcam++")]
    GradCamPlusPlus,
    /// The classifier's weights of the class (`cam`): only for the layer that the global
    /// average pool and the classifier follow directly (ResNet-18's `layer4`).
    #[serde(rename = "cam")]
    Cam,
}

impl CamMethod {
    /// The name on the command line and in JSON.
    pub fn as_str(&self) -> &'static str {
        match self {
            CamMethod::GradCam => "gradcam",
            CamMethod::GradCamPlusPlus => "gradcam++",
            CamMethod::Cam => "cam",
        }
    }
}

impl fmt::Display for CamMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CamMethod {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "gradcam" | "grad-cam" => Ok(CamMethod::GradCam),
            "gradcam++" | "grad-cam++" | "gradcampp" => Ok(CamMethod::GradCamPlusPlus),
            "cam" => Ok(CamMethod::Cam),
            _ => Err(ModelError::Config(format!(
                "unknown CAM method {s:?} (expected gradcam, gradcam++ or cam)"
            ))),
        }
    }
}

/// One image's map.
#[derive(Clone, Debug, PartialEq)]
pub struct Heatmap {
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
    /// Row-major values.
    pub values: Vec<f32>,
}

/// The maps of a batch, with what they explain.
#[derive(Clone, Debug)]
pub struct ClassActivationMaps {
    /// The layer the maps come from.
    pub layer: String,
    /// How its channels were weighted.
    pub method: CamMethod,
    /// The explained class of each image.
    pub targets: Vec<usize>,
    /// The eval-mode logits `[N, classes]` of the batch (f32, CPU).
    pub logits: Tensor,
    /// `relu(sum_k w_k A_k)` at the layer's resolution, unscaled.
    pub raw: Vec<Heatmap>,
    /// At the input's resolution, scaled to [0, 1]: what is drawn over the image.
    pub upsampled: Vec<Heatmap>,
}

/// What class activation maps need of a network: the eval-mode activation at a layer, the
/// rest of the forward pass from it (differentiable in the activation), and the classifier's
/// weights (for CAM). [`Model`] is one; so is the int8 network
/// ([`crate::quant::QuantizedModel`]), whose layers after the last spatial one run in f32.
pub trait CamSource {
    /// Which network this is.
    fn architecture(&self) -> crate::Architecture;
    /// Number of outputs.
    fn num_classes(&self) -> usize;
    /// The layer maps are taken at by default.
    fn last_spatial_layer(&self) -> &'static str;
    /// The eval-mode output of `layer` for `x`.
    fn activation(&self, x: &Tensor, layer: &str) -> Result<Tensor>;
    /// The logits from `a`, the output of `layer`: differentiable in `a`.
    fn logits_from(&self, a: &Tensor, layer: &str) -> Result<Tensor>;
    /// The classifier's weight `[classes, features]`.
    fn classifier_weight(&self) -> Result<Tensor>;
}

impl CamSource for Model {
    fn architecture(&self) -> crate::Architecture {
        Model::architecture(self)
    }
    fn num_classes(&self) -> usize {
        Model::num_classes(self)
    }
    fn last_spatial_layer(&self) -> &'static str {
        Model::last_spatial_layer(self)
    }
    fn activation(&self, x: &Tensor, layer: &str) -> Result<Tensor> {
        Model::activation(self, x, layer)
    }
    fn logits_from(&self, a: &Tensor, layer: &str) -> Result<Tensor> {
        Model::logits_from(self, a, layer)
    }
    fn classifier_weight(&self) -> Result<Tensor> {
        Ok(self.head().weight().clone())
    }
}

/// The maps of `method` at `layer` for the batch `x` (`[N, 3, H, W]`, transformed as the
/// model expects), explaining `targets` (one class per image), or each image's top-1 class
/// when `targets` is `None`. The model runs in eval mode.
pub fn class_activation_maps(
    model: &Model,
    x: &Tensor,
    layer: &str,
    method: CamMethod,
    targets: Option<&[usize]>,
) -> Result<ClassActivationMaps> {
    maps_of(&model.detached(), x, layer, method, targets)
}

/// [`class_activation_maps`] for any [`CamSource`] (an f32 model must be detached).
pub fn maps_of(
    model: &impl CamSource,
    x: &Tensor,
    layer: &str,
    method: CamMethod,
    targets: Option<&[usize]>,
) -> Result<ClassActivationMaps> {
    let (n, _, in_h, in_w) = x.dims4()?;
    if method == CamMethod::Cam && !feeds_the_pool(model.architecture(), layer) {
        return Err(ModelError::Config(format!(
            "CAM weights the channels by the classifier, so it needs the layer that the global \
             average pool and the classifier follow; {} {layer} is not one (use gradcam)",
            model.architecture()
        )));
    }
    let a = Var::from_tensor(&model.activation(x, layer)?)?;
    let logits = model.logits_from(a.as_tensor(), layer)?;
    let targets = match targets {
        Some(t) => check_targets(t, n, model.num_classes())?,
        None => logits.argmax(D::Minus1)?.to_vec1::<u32>()?,
    };
    let index = Tensor::new(targets.as_slice(), logits.device())?.unsqueeze(1)?;
    let scores = logits.gather(&index, 1)?.sum_all()?;
    let grads = scores.backward()?;
    let grad = grads
        .get(a.as_tensor())
        .ok_or_else(|| ModelError::Config(format!("no gradient reached {layer}")))?;
    let activations = Channels::of(a.as_tensor())?;
    let gradients = Channels::of(grad)?;
    let targets: Vec<usize> = targets.iter().map(|&t| t as usize).collect();
    let head = model
        .classifier_weight()?
        .to_dtype(DType::F32)?
        .to_device(&Device::Cpu)?;
    let mut raw = Vec::with_capacity(n);
    for (i, &t) in targets.iter().enumerate() {
        let weights = match method {
            CamMethod::GradCam => gradients.image(i).map(mean).collect(),
            CamMethod::GradCamPlusPlus => activations
                .image(i)
                .zip(gradients.image(i))
                .map(|(a, g)| plus_plus_weight(a, g))
                .collect(),
            CamMethod::Cam => head.get(t)?.to_vec1::<f32>()?,
        };
        raw.push(weighted_sum(&activations, i, &weights));
    }
    let upsampled = raw.iter().map(|m| overlay_map(m, in_h, in_w)).collect();
    Ok(ClassActivationMaps {
        layer: layer.to_string(),
        method,
        targets,
        logits: logits
            .detach()
            .to_dtype(DType::F32)?
            .to_device(&Device::Cpu)?,
        raw,
        upsampled,
    })
}

/// Whether the global average pool and the classifier follow `layer` directly (where CAM
/// applies): ResNet-18's last block. The small CNN flattens instead of pooling.
fn feeds_the_pool(arch: crate::Architecture, layer: &str) -> bool {
    arch == crate::Architecture::ResNet18 && matches!(layer, "layer4" | "layer4.1")
}

fn check_targets(targets: &[usize], n: usize, classes: usize) -> Result<Vec<u32>> {
    if targets.len() != n {
        return Err(ModelError::Config(format!(
            "{} target classes for {n} images",
            targets.len()
        )));
    }
    if let Some(&bad) = targets.iter().find(|&&t| t >= classes) {
        return Err(ModelError::Config(format!(
            "target class {bad} out of range: the model has {classes} classes"
        )));
    }
    Ok(targets.iter().map(|&t| t as u32).collect())
}

/// A `[N, C, h, w]` tensor on the CPU as f32, read channel by channel.
struct Channels {
    values: Vec<f32>,
    channels: usize,
    height: usize,
    width: usize,
}

impl Channels {
    fn of(t: &Tensor) -> Result<Self> {
        let (_, channels, height, width) = t.dims4()?;
        let values = t
            .to_dtype(DType::F32)?
            .to_device(&Device::Cpu)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        Ok(Self {
            values,
            channels,
            height,
            width,
        })
    }

    /// Image `i`'s channels, each `height * width` values.
    fn image(&self, i: usize) -> std::slice::ChunksExact<'_, f32> {
        let plane = self.height * self.width;
        let start = i * self.channels * plane;
        self.values[start..start + self.channels * plane].chunks_exact(plane)
    }
}

fn mean(v: &[f32]) -> f32 {
    v.iter().sum::<f32>() / v.len() as f32
}

/// Grad-CAM++'s channel weight: `sum_ij relu(g_ij) * alpha_ij` with
/// `alpha = g^2 / (2 g^2 + sum(A) g^3 + eps)`, and 0 where `g` is 0.
fn plus_plus_weight(a: &[f32], g: &[f32]) -> f32 {
    let sum_a: f32 = a.iter().sum();
    g.iter()
        .filter(|&&g| g != 0.0)
        .map(|&g| {
            let g2 = g * g;
            let alpha = g2 / (2.0 * g2 + sum_a * g2 * g + PLUS_PLUS_EPS);
            g.max(0.0) * alpha
        })
        .sum()
}

/// `relu(sum_k w_k A_k)` of image `i`.
fn weighted_sum(a: &Channels, i: usize, weights: &[f32]) -> Heatmap {
    let mut values = vec![0f32; a.height * a.width];
    for (plane, &w) in a.image(i).zip(weights) {
        for (v, &x) in values.iter_mut().zip(plane) {
            *v += w * x;
        }
    }
    values.iter_mut().for_each(|v| *v = v.max(0.0));
    Heatmap {
        height: a.height,
        width: a.width,
        values,
    }
}

/// The map drawn over an image of `height x width`: scaled, resized, clipped, scaled again.
pub fn overlay_map(raw: &Heatmap, height: usize, width: usize) -> Heatmap {
    let mut m = resize_bilinear(&scaled(raw), height, width);
    m.values.iter_mut().for_each(|v| *v = v.max(0.0));
    scaled(&m)
}

/// `(x - min) / (max(x - min) + 1e-7)`.
fn scaled(m: &Heatmap) -> Heatmap {
    let min = m.values.iter().copied().fold(f32::INFINITY, f32::min);
    let shifted: Vec<f32> = m.values.iter().map(|v| v - min).collect();
    let max = shifted.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    Heatmap {
        values: shifted.iter().map(|v| v / (SCALE_EPS + max)).collect(),
        ..*m
    }
}

/// Bilinear resize with half-pixel centres, edges clamped.
pub fn resize_bilinear(m: &Heatmap, height: usize, width: usize) -> Heatmap {
    let rows: Vec<(usize, usize, f32)> = (0..height).map(|y| taps(y, m.height, height)).collect();
    let cols: Vec<(usize, usize, f32)> = (0..width).map(|x| taps(x, m.width, width)).collect();
    let at = |y: usize, x: usize| m.values[y * m.width + x];
    let mut values = Vec::with_capacity(height * width);
    for &(y0, y1, fy) in &rows {
        for &(x0, x1, fx) in &cols {
            let top = at(y0, x0) * (1.0 - fx) + at(y0, x1) * fx;
            let bottom = at(y1, x0) * (1.0 - fx) + at(y1, x1) * fx;
            values.push(top * (1.0 - fy) + bottom * fy);
        }
    }
    Heatmap {
        height,
        width,
        values,
    }
}

/// The two source indices of output `i` (of `dst`) over `src` samples, and the second's weight.
fn taps(i: usize, src: usize, dst: usize) -> (usize, usize, f32) {
    let pos = ((i as f32 + 0.5) * src as f32 / dst as f32 - 0.5).max(0.0);
    let lo = (pos.floor() as usize).min(src - 1);
    let hi = (lo + 1).min(src - 1);
    (lo, hi, pos - lo as f32)
}

/// OpenCV's `COLORMAP_JET` at `level` (0 = dark blue, 255 = dark red) as RGB, from the
/// piecewise-linear jet curves (within one level of OpenCV's table; a test checks it).
pub fn jet(level: u8) -> [u8; 3] {
    let x = level as f32 / 255.0;
    let curve =
        |centre: f32| ((1.5 - (4.0 * x - centre).abs()).clamp(0.0, 1.0) * 255.0).round() as u8;
    [curve(3.0), curve(2.0), curve(1.0)]
}

/// The map over the image, as pytorch-grad-cam's `show_cam_on_image(img, map, use_rgb=True)`
/// draws it: jet colours of `map` blended half and half with `rgb` (row-major RGB bytes of the
/// map's size), then scaled so the brightest channel is 255.
pub fn overlay_rgb(rgb: &[u8], map: &Heatmap) -> Result<Vec<u8>> {
    if rgb.len() != 3 * map.values.len() {
        return Err(ModelError::Config(format!(
            "overlay: {} bytes of RGB for a {}x{} map",
            rgb.len(),
            map.height,
            map.width
        )));
    }
    let mut blend: Vec<f32> = Vec::with_capacity(rgb.len());
    for (px, &v) in rgb.chunks_exact(3).zip(&map.values) {
        // np.uint8(255 * mask) truncates.
        let colour = jet((255.0 * v.clamp(0.0, 1.0)) as u8);
        for (c, &p) in colour.iter().zip(px) {
            blend.push(0.5 * (*c as f32 / 255.0) + 0.5 * (p as f32 / 255.0));
        }
    }
    let max = blend
        .iter()
        .copied()
        .fold(0.0f32, f32::max)
        .max(f32::MIN_POSITIVE);
    Ok(blend.iter().map(|v| (255.0 * v / max) as u8).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(height: usize, width: usize, values: Vec<f32>) -> Heatmap {
        Heatmap {
            height,
            width,
            values,
        }
    }

    #[test]
    fn resize_keeps_the_samples_and_interpolates_between_them() {
        let m = resize_bilinear(&map(1, 2, vec![0.0, 1.0]), 1, 4);
        assert_eq!(m.values, vec![0.0, 0.25, 0.75, 1.0]);
        let same = resize_bilinear(&map(2, 2, vec![1.0, 2.0, 3.0, 4.0]), 2, 2);
        assert_eq!(same.values, vec![1.0, 2.0, 3.0, 4.0]);
    }

    #[test]
    fn overlay_map_spans_zero_to_one() {
        let m = overlay_map(&map(2, 2, vec![1.0, 3.0, 2.0, 5.0]), 8, 8);
        let max = m.values.iter().copied().fold(0.0, f32::max);
        let min = m.values.iter().copied().fold(1.0, f32::min);
        assert_eq!(min, 0.0);
        assert!((max - 1.0).abs() < 1e-6, "{max}");
    }

    #[test]
    fn plus_plus_ignores_zero_gradients() {
        assert_eq!(plus_plus_weight(&[1.0, 2.0], &[0.0, 0.0]), 0.0);
        let w = plus_plus_weight(&[1.0, 1.0], &[1.0, -1.0]);
        // alpha = 1 / (2 + 2 + eps) for the positive gradient; the negative one is clipped.
        assert!((w - 0.25).abs() < 1e-6, "{w}");
    }

    #[test]
    fn overlay_of_a_flat_map_is_the_blend_with_jets_blue() {
        let m = map(1, 2, vec![0.0, 0.0]);
        let out = overlay_rgb(&[255, 255, 255, 0, 0, 0], &m).unwrap();
        // jet(0) = (0, 0, 128): white blends to (0.5, 0.5, 0.75), then 255 / 0.75 scales it.
        assert_eq!(out, vec![169, 169, 255, 0, 0, 85]);
        assert!(overlay_rgb(&[0; 3], &m).is_err());
    }

    #[test]
    fn method_names_round_trip() {
        for m in [
            CamMethod::GradCam,
            CamMethod::GradCamPlusPlus,
            CamMethod::Cam,
        ] {
            assert_eq!(m.as_str().parse::<CamMethod>().unwrap(), m);
        }
        assert!("lime".parse::<CamMethod>().is_err());
    }
}
