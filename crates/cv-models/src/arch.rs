//! Which network, by name, and one type over both.

use std::fmt;
use std::str::FromStr;

use candle_core::{ModuleT, Result as CResult, Tensor};
use candle_nn::{Linear, VarBuilder};

use crate::cnn::{self, simple_cnn, SimpleCnn};
use crate::error::{ModelError, Result};
use crate::resnet::{self, resnet18, ResNet};

/// The networks this crate builds. Serde, `FromStr` and `Display` use `"cnn"` / `"resnet18"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Architecture {
    /// The PyTorch CIFAR-10 tutorial's `Net` (32x32 input only).
    #[serde(rename = "cnn")]
    SimpleCnn,
    /// torchvision's ResNet-18 (any input from 32x32 up).
    #[serde(rename = "resnet18")]
    ResNet18,
}

impl Architecture {
    /// The last spatial layer by its torchvision name, where class activation maps are taken
    /// by default: `conv2` for the small CNN, `layer4` for ResNet-18.
    pub fn last_spatial_layer(self) -> &'static str {
        match self {
            Architecture::SimpleCnn => "conv2",
            Architecture::ResNet18 => "layer4",
        }
    }

    /// The name used in configs and on the command line.
    pub fn as_str(&self) -> &'static str {
        match self {
            Architecture::SimpleCnn => "cnn",
            Architecture::ResNet18 => "resnet18",
        }
    }

    /// The classifier head's state-dict prefix: `fc3` for the small CNN, `fc` for ResNet-18.
    pub fn head_module(&self) -> &'static str {
        match self {
            Architecture::ResNet18 => "fc",
            Architecture::SimpleCnn => "fc3",
        }
    }

    /// Whether `name` is a parameter or buffer of the classifier head.
    pub fn is_head_param(&self, name: &str) -> bool {
        name.strip_prefix(self.head_module())
            .is_some_and(|rest| rest.starts_with('.'))
    }

    /// The one check of the square input side a network takes: the small CNN only
    /// [`cnn::INPUT_SIZE`] (its fc1 width fixes it), ResNet-18 anything from
    /// [`resnet::MIN_INPUT_SIZE`] up (five halvings must leave at least one pixel).
    pub fn check_image_size(&self, side: usize) -> Result<()> {
        let fits = match self {
            Architecture::SimpleCnn => side == cnn::INPUT_SIZE,
            Architecture::ResNet18 => side >= resnet::MIN_INPUT_SIZE,
        };
        if fits {
            return Ok(());
        }
        Err(ModelError::ImageSize {
            model: *self,
            side,
            expected: match self {
                Architecture::SimpleCnn => format!(
                    "{0}x{0} only (its fc1 expects 16x5x5 = 400 features; use resnet18 for other sizes)",
                    cnn::INPUT_SIZE
                ),
                Architecture::ResNet18 => format!("at least {0}x{0}", resnet::MIN_INPUT_SIZE),
            },
        })
    }
}

impl fmt::Display for Architecture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Architecture {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "cnn" => Ok(Architecture::SimpleCnn),
            "resnet18" | "resnet-18" => Ok(Architecture::ResNet18),
            _ => Err(ModelError::UnknownArchitecture(s.to_string())),
        }
    }
}

/// Either network, so callers can pick one at run time.
#[derive(Clone, Debug)]
pub enum Model {
    /// The small CNN.
    SimpleCnn(SimpleCnn),
    /// ResNet-18.
    ResNet18(ResNet),
}

impl Model {
    /// Builds `arch` with `num_classes` outputs from `vb` (torchvision key names).
    pub fn new(arch: Architecture, num_classes: usize, vb: VarBuilder) -> Result<Self> {
        Ok(match arch {
            Architecture::SimpleCnn => Model::SimpleCnn(simple_cnn(num_classes, vb)?),
            Architecture::ResNet18 => Model::ResNet18(resnet18(num_classes, vb)?),
        })
    }

    /// Which network this is.
    pub fn architecture(&self) -> Architecture {
        match self {
            Model::SimpleCnn(_) => Architecture::SimpleCnn,
            Model::ResNet18(_) => Architecture::ResNet18,
        }
    }

    /// Logits `[N, num_classes]`; `train` selects BatchNorm's batch statistics (and updates
    /// its running statistics). A refused input shape is [`ModelError::InputShape`].
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        match self {
            Model::SimpleCnn(m) => m.forward(x),
            Model::ResNet18(m) => m.forward(x, train),
        }
    }

    /// Penultimate features, the input of [`Model::head`]: 512-wide pooled features for
    /// ResNet-18, the 84-wide fc2 activations (after ReLU) for the small CNN.
    pub fn features(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        match self {
            Model::SimpleCnn(m) => m.features(x, train),
            Model::ResNet18(m) => m.features(x, train),
        }
    }

    /// The layers [`Model::activation`] can stop at (torchvision's module names).
    pub fn layers(&self) -> &'static [&'static str] {
        match self {
            Model::SimpleCnn(_) => &cnn::LAYERS,
            Model::ResNet18(_) => &resnet::LAYERS,
        }
    }

    /// The last spatial layer, where class activation maps are taken by default: `conv2` for
    /// the small CNN, `layer4` for ResNet-18.
    pub fn last_spatial_layer(&self) -> &'static str {
        self.architecture().last_spatial_layer()
    }

    /// The eval-mode output of `layer` (one of [`Model::layers`]) for the input `x`.
    pub fn activation(&self, x: &Tensor, layer: &str) -> Result<Tensor> {
        match self {
            Model::SimpleCnn(m) => m.activation(x, layer),
            Model::ResNet18(m) => m.activation(x, layer),
        }
    }

    /// The eval-mode logits from `a`, the output of `layer`: the rest of the forward pass,
    /// so `logits_from(&activation(x, l)?, l)` equals `forward_t(x, false)`, and a `Var`
    /// passed as `a` gets the logits' gradient with respect to that layer.
    pub fn logits_from(&self, a: &Tensor, layer: &str) -> Result<Tensor> {
        match self {
            Model::SimpleCnn(m) => m.logits_from(a, layer),
            Model::ResNet18(m) => m.logits_from(a, layer),
        }
    }

    /// Width of [`Model::features`].
    pub fn feature_dim(&self) -> usize {
        match self {
            Model::SimpleCnn(_) => cnn::FEATURE_DIM,
            Model::ResNet18(_) => resnet::FEATURE_DIM,
        }
    }

    /// The classifier head (`fc3` / `fc`): `logits = head(features)`.
    pub fn head(&self) -> &Linear {
        match self {
            Model::SimpleCnn(m) => m.fc(),
            Model::ResNet18(m) => m.fc(),
        }
    }

    /// Number of outputs.
    pub fn num_classes(&self) -> usize {
        match self {
            Model::SimpleCnn(m) => m.num_classes(),
            Model::ResNet18(m) => m.num_classes(),
        }
    }

    /// The same model over detached weights that share storage with this one: evaluating it
    /// records no autograd graph (candle has no no-grad mode and `Var`s always record), and it
    /// sees every later optimizer step or load, so build it once. Eval mode only.
    pub fn detached(&self) -> Self {
        match self {
            Model::SimpleCnn(m) => Model::SimpleCnn(m.detached()),
            Model::ResNet18(m) => Model::ResNet18(m.detached()),
        }
    }
}

impl ModuleT for Model {
    fn forward_t(&self, x: &Tensor, train: bool) -> CResult<Tensor> {
        Model::forward_t(self, x, train).map_err(ModelError::into_candle)
    }
}
