//! The small CNN and ResNet-18 with torchvision parameter names, training-mode BatchNorm and
//! correct pooling gradients.
//!
//! Build a model from a `VarMap` so every parameter is a trainable `Var`, initialise or load
//! it, train it with `forward_t(x, true)`:
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use candle_nn::{VarBuilder, VarMap};
//! use cv_models::{init, Architecture, Model};
//!
//! let varmap = VarMap::new();
//! let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
//! let model = Model::new(Architecture::SimpleCnn, 10, vb)?;
//! init::initialise(&varmap, Architecture::SimpleCnn, 0)?;
//! let x = Tensor::zeros((2, 3, 32, 32), DType::F32, &Device::Cpu)?;
//! assert_eq!(model.forward_t(&x, true)?.dims(), &[2, 10]);
//! # Ok::<(), cv_models::ModelError>(())
//! ```
//!
//! Names: every key is torchvision's (`conv1.weight`, `bn1.running_mean`,
//! `layer2.0.downsample.1.weight`, `fc.bias`, ...), so a torchvision/timm
//! `model.safetensors` loads with [`state::load_state_dict`] and [`state::state_dict`] loads
//! back into PyTorch with `strict=True`.
//!
//! Evaluation: candle has no no-grad mode, and a forward over `Var`s records the autograd
//! graph even when the input is detached. For eval / predict / feature extraction, build
//! `model.detached()` once (it shares storage with the `Var`s, so it always sees the current
//! weights) and run it with `train = false`; calling `.detach()` on the outputs of the
//! trainable model is also correct, only slower.
//!
//! Buffers (`running_mean`, `running_var`, `num_batches_tracked`) live in the `VarMap` but must
//! never reach an optimizer: use [`params::trainable_vars`] (or filter with
//! [`params::is_buffer`]); weight decay should skip [`params::is_no_decay`].

pub mod arch;
pub mod batch_norm;
pub mod cam;
pub mod cnn;
pub mod conv;
pub mod device;
pub mod error;
pub mod fold;
pub mod init;
pub mod onnx;
pub mod params;
pub mod quant;
pub mod resnet;
pub mod state;

pub use arch::{Architecture, Model};
pub use batch_norm::{batch_norm2d, BatchNorm2d, BatchNormConfig};
pub use cam::{
    class_activation_maps, maps_of, overlay_rgb, CamMethod, CamSource, ClassActivationMaps, Heatmap,
};
pub use cnn::{simple_cnn, SimpleCnn};
pub use error::{ModelError, Result};
pub use params::Trainable;
pub use resnet::{resnet18, ResNet, Stages};
