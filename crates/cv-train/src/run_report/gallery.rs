//! The top-loss grid: each of the highest-loss test images as the model saw it (after the
//! eval transforms), beside its Grad-CAM overlay for the predicted class, as inline PNGs.

use base64::Engine;
use candle_core::Tensor;
use cv_models::{class_activation_maps, overlay_rgb, CamMethod};
use image::RgbImage;

use super::ReportInput;
use crate::metrics::SampleOutcome;

/// One cell of the grid.
pub(super) struct Tile {
    /// What the model made of the image.
    pub outcome: SampleOutcome,
    /// The layer the heatmap comes from.
    pub layer: &'static str,
    /// `data:` URL of the transformed image.
    pub seen: String,
    /// `data:` URL of the heatmap over it.
    pub overlay: String,
    /// Pixel width of both.
    pub width: u32,
}

/// The tiles of the `input.top_losses` highest-loss images, highest first.
pub(super) fn tiles(input: &ReportInput) -> Result<Vec<Tile>, String> {
    let layer = input.model.last_spatial_layer();
    input
        .evaluation
        .top_losses(input.top_losses)
        .into_iter()
        .map(|outcome| tile(input, outcome, layer))
        .collect()
}

fn tile(input: &ReportInput, outcome: SampleOutcome, layer: &'static str) -> Result<Tile, String> {
    let failed = |e: &dyn std::fmt::Display| format!("test image {}: {e}", outcome.index);
    let image = input
        .test
        .dataset()
        .images
        .get(outcome.index)
        .ok_or_else(|| failed(&"not in the evaluated data set"))?;
    let pipeline = input.test.pipeline();
    let seen = pipeline.augment(image, 0).map_err(|e| failed(&e))?;
    let (pixels, (w, h)) = pipeline.apply(image, 0).map_err(|e| failed(&e))?;
    let x = Tensor::from_vec(pixels, (1, 3, h, w), input.test.device()).map_err(|e| failed(&e))?;
    let target = [outcome.predicted as usize];
    let maps = class_activation_maps(input.model, &x, layer, CamMethod::GradCam, Some(&target))
        .map_err(|e| failed(&e))?;
    let map = &maps.upsampled[0];
    if (map.width, map.height) != (seen.width() as usize, seen.height() as usize) {
        let (mw, mh, sw, sh) = (map.width, map.height, seen.width(), seen.height());
        return Err(failed(&format!(
            "a {mw}x{mh} heatmap for a {sw}x{sh} image"
        )));
    }
    let overlay = overlay_rgb(seen.as_raw(), map).map_err(|e| failed(&e))?;
    let overlay = RgbImage::from_raw(seen.width(), seen.height(), overlay)
        .ok_or_else(|| failed(&"overlay size differs from the image"))?;
    Ok(Tile {
        outcome,
        layer,
        seen: png_data_url(&seen).map_err(|e| failed(&e))?,
        overlay: png_data_url(&overlay).map_err(|e| failed(&e))?,
        width: seen.width(),
    })
}

/// `data:image/png;base64,...` of `image`.
fn png_data_url(image: &RgbImage) -> Result<String, image::ImageError> {
    let mut png = std::io::Cursor::new(Vec::new());
    image.write_to(&mut png, image::ImageFormat::Png)?;
    let b64 = base64::engine::general_purpose::STANDARD.encode(png.into_inner());
    Ok(format!("data:image/png;base64,{b64}"))
}
