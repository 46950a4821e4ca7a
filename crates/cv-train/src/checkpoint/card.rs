//! The model card: the part of a checkpoint folder's `config.json` that says how to use the
//! weights (architecture, classes, input size and eval transforms). The trainer writes it
//! flattened into [`super::CheckpointConfig`] beside the recipe, which this reader ignores,
//! so inference code (`cv-weights`) reads a run folder without knowing about training.

use std::path::{Path, PathBuf};

use cv_data::transforms::Pipeline;
use cv_models::Architecture;
use serde::{Deserialize, Serialize};

use super::CONFIG_FILE;
use crate::atomic;
use crate::error::{Result, TrainError};

/// How to use a checkpoint's weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelCard {
    /// The network (`"cnn"` or `"resnet18"`).
    pub architecture: Architecture,
    /// Class names; logit `i` is `classes[i]`.
    pub classes: Vec<String>,
    /// Side of the square input the model was trained on.
    pub image_size: usize,
    /// What to do to an image before the model sees it (includes mean and std).
    pub eval_transforms: Pipeline,
    /// Where the starting weights came from (a registry name or a path), if fine-tuned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights_from: Option<String>,
    /// Set for an int8 checkpoint (made by `cv quantize`): what it is and how it was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantization: Option<Quantization>,
}

/// How an int8 checkpoint was made (`config.json` key `quantization`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Quantization {
    /// `"int8-static"`: i8 weights symmetric per output channel, u8 activations affine per
    /// tensor, BatchNorm folded, ReLU and the residual add fused, the head in f32.
    pub scheme: String,
    /// How the activation ranges were taken (`min-max`, `percentile 99.99`).
    pub observer: String,
    /// Calibration images (from the training split).
    pub calibration_images: usize,
    /// The int8 kernel family of the machine that quantized it (any machine runs the file).
    pub kernel: String,
    /// The f32 weights it was made from.
    pub quantized_from: String,
}

/// `dir/config.json` for a folder, the path itself otherwise.
fn config_path(dir_or_file: &Path) -> PathBuf {
    if dir_or_file.is_dir() {
        dir_or_file.join(CONFIG_FILE)
    } else {
        dir_or_file.to_path_buf()
    }
}

impl ModelCard {
    /// Reads a card from a checkpoint folder or a `config.json`, ignoring unknown fields.
    pub fn read(dir_or_file: &Path) -> Result<ModelCard> {
        let path = config_path(dir_or_file);
        let text = std::fs::read_to_string(&path).map_err(|e| TrainError::io(&path, e))?;
        let card: ModelCard = serde_json::from_str(&text).map_err(|e| TrainError::Card {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        card.check()
            .map_err(|reason| TrainError::Card { path, reason })?;
        Ok(card)
    }

    /// Writes the card as `config.json` into a folder (or to the file given), through a
    /// temporary file and a rename so a crash never leaves half a config.
    pub fn write(&self, dir_or_file: &Path) -> Result<PathBuf> {
        let path = config_path(dir_or_file);
        let text = serde_json::to_string_pretty(self).map_err(|e| TrainError::Card {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        atomic::write_bytes(&path, text.as_bytes())?;
        Ok(path)
    }

    /// Sanity checks that serde cannot express.
    fn check(&self) -> std::result::Result<(), String> {
        if self.classes.is_empty() {
            return Err("\"classes\" is empty".into());
        }
        if self.image_size == 0 {
            return Err("\"image_size\" is 0".into());
        }
        if self
            .eval_transforms
            .std
            .iter()
            .any(|s| !(s.is_finite() && *s > 0.0))
        {
            return Err(format!(
                "eval_transforms.std {:?} must be positive",
                self.eval_transforms.std
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn card() -> ModelCard {
        ModelCard {
            architecture: Architecture::ResNet18,
            classes: vec!["cat".into(), "dog".into()],
            image_size: 224,
            eval_transforms: Pipeline::eval(256, 224),
            weights_from: Some("resnet18.tv_in1k".into()),
            quantization: None,
        }
    }

    #[test]
    fn round_trip_through_a_folder() {
        let dir = tempfile::tempdir().unwrap();
        let written = card().write(dir.path()).unwrap();
        assert_eq!(written, dir.path().join(CONFIG_FILE));
        assert_eq!(ModelCard::read(dir.path()).unwrap(), card());
        assert_eq!(ModelCard::read(&written).unwrap(), card());
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            names,
            vec![std::ffi::OsString::from(CONFIG_FILE)],
            "no temp file left"
        );
    }

    #[test]
    fn ignores_unknown_fields_like_cv_train_hyper_parameters() {
        let mut v = serde_json::to_value(card()).unwrap();
        v["lr"] = serde_json::json!(0.01);
        v["epochs"] = serde_json::json!(3);
        v["optimizer"] = serde_json::json!({"kind": "sgd", "momentum": 0.9});
        v.as_object_mut().unwrap().remove("weights_from");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(CONFIG_FILE), v.to_string()).unwrap();
        let read = ModelCard::read(dir.path()).unwrap();
        assert_eq!(read.weights_from, None);
        assert_eq!(read.classes, card().classes);
        let arch = serde_json::to_value(card()).unwrap()["architecture"].clone();
        assert_eq!(arch, serde_json::json!("resnet18"));
    }

    #[test]
    fn bad_cards_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CONFIG_FILE);
        std::fs::write(&path, r#"{"architecture": "vgg", "classes": ["a"]}"#).unwrap();
        let e = ModelCard::read(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains(&path.display().to_string()) && e.contains("vgg"),
            "{e}"
        );
        let mut empty = card();
        empty.classes.clear();
        std::fs::write(&path, serde_json::to_string(&empty).unwrap()).unwrap();
        let e = ModelCard::read(&path).unwrap_err().to_string();
        assert!(e.contains("classes"), "{e}");
        let e = ModelCard::read(&dir.path().join("nope.json"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope.json"), "{e}");
    }
}
