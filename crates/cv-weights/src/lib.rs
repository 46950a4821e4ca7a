//! Pretrained weights by name: a registry of known checkpoints, downloads through the
//! Hugging Face hub cache (shared with Python), offline use, checked loading into
//! `cv-models` networks, and a ready classifier, the way
//! `torchvision.models.resnet18(weights=...)` and `timm.create_model(..., pretrained=True)`
//! work for Python users.
//!
//! Classify an image with torchvision's ImageNet ResNet-18:
//!
//! ```no_run
//! use candle_core::Device;
//! use cv_weights::{resolve, Classifier, ResolveOptions, WeightsSource};
//!
//! let source = WeightsSource::parse("resnet18.tv_in1k")?; // or a path to model.safetensors
//! let options = ResolveOptions { progress: true, ..Default::default() };
//! let weights = resolve(&source, &options)?; // downloads once into ~/.cache/huggingface/hub
//! let classifier = Classifier::load(&weights, &Device::Cpu)?;
//! let image = image::open("dog.jpg").expect("readable image").to_rgb8();
//! for (index, name, p) in &classifier.classify(&[image], 5)?[0] {
//!     println!("{index:4} {name:30} {:5.1}%", 100.0 * p);
//! }
//! # Ok::<(), cv_weights::WeightsError>(())
//! ```
//!
//! Environment (as Python's `huggingface_hub`): `HF_HOME`, `HF_HUB_CACHE`, `HF_ENDPOINT`,
//! `HF_TOKEN`, `HF_HUB_OFFLINE=1` (cache only; a missing file is an error that says how to
//! fetch it). See [`hub::HubConfig`].

pub mod error;
pub mod export;
pub mod hub;
pub mod imagenet;
pub mod load;
pub mod predict;
pub mod quantize;
pub mod registry;
pub mod source;

pub use error::{Result, WeightsError};
pub use export::{export_onnx, export_safetensors, load_state, ExportDtype, ExportReport};
pub use hub::HubConfig;
pub use load::{load_into, LoadReport};
pub use predict::{Classifier, ExplainRequest, Explanation, Prediction};
pub use quantize::{quantize, QuantizeOptions, QuantizeReport};
pub use registry::{find, registry, Pretrained};
pub use source::{resolve, ResolveOptions, ResolvedWeights, WeightsSource};
