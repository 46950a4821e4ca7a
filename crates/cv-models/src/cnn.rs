//! The PyTorch CIFAR-10 tutorial's small CNN (`Net`), with its state-dict names.

use candle_core::{Module, ModuleT, Result as CResult, Tensor};
use candle_nn::{Linear, VarBuilder};

use crate::conv::{conv2d, dense, detach_linear, Conv2d};
use crate::error::{ModelError, Result};
use cv_ops::{max_pool2d, MaxPool2dConfig};

/// Input side the network is built for: the fc1 width (16*5*5 = 400) fixes it.
pub const INPUT_SIZE: usize = 32;
/// Width of the penultimate layer (`fc2`), what [`SimpleCnn::features`] returns.
pub const FEATURE_DIM: usize = 84;

/// conv1 3->6 k5, pool 2, conv2 6->16 k5, pool 2, flatten (C,H,W: 400), fc1 400->120,
/// fc2 120->84, fc3 84->classes, ReLU between. Input must be `[N, 3, 32, 32]`.
#[derive(Clone, Debug)]
pub struct SimpleCnn {
    conv1: Conv2d,
    conv2: Conv2d,
    fc1: Linear,
    fc2: Linear,
    fc3: Linear,
    num_classes: usize,
}

/// Builds the small CNN with `num_classes` outputs from `vb` (keys `conv1.weight`, ...,
/// `fc3.bias`). With a `VarMap`-backed `vb`, call [`crate::init::initialise`] for PyTorch's
/// initialisation.
pub fn simple_cnn(num_classes: usize, vb: VarBuilder) -> Result<SimpleCnn> {
    if num_classes == 0 {
        return Err(ModelError::Config("num_classes must be at least 1".into()));
    }
    Ok(SimpleCnn {
        conv1: conv2d(3, 6, 5, vb.pp("conv1"))?,
        conv2: conv2d(6, 16, 5, vb.pp("conv2"))?,
        fc1: candle_nn::linear(16 * 5 * 5, 120, vb.pp("fc1"))?,
        fc2: candle_nn::linear(120, 84, vb.pp("fc2"))?,
        fc3: candle_nn::linear(FEATURE_DIM, num_classes, vb.pp("fc3"))?,
        num_classes,
    })
}

impl SimpleCnn {
    /// Refuses anything but `[N, 3, 32, 32]` with N >= 1.
    pub fn check_input(&self, x: &Tensor) -> Result<()> {
        let d = x.dims();
        if d.len() != 4 || d[0] == 0 || d[1] != 3 || d[2] != INPUT_SIZE || d[3] != INPUT_SIZE {
            return Err(ModelError::InputShape {
                model: "cnn",
                expected: format!("[N, 3, {INPUT_SIZE}, {INPUT_SIZE}] with N >= 1"),
                found: d.to_vec(),
            });
        }
        Ok(())
    }

    /// The 84-wide penultimate activations (after fc2 + ReLU): what a linear probe on this
    /// network trains on. `train` is unused (no BatchNorm or dropout) but kept for symmetry.
    pub fn features(&self, x: &Tensor, _train: bool) -> Result<Tensor> {
        self.check_input(x)?;
        let x = conv_relu_pool(&self.conv1, x)?;
        self.fc_features(&conv_relu_pool(&self.conv2, &x)?)
    }

    /// fc1 and fc2 (with their ReLUs) over the pooled conv2 maps `[N, 16, 5, 5]`.
    fn fc_features(&self, pooled: &Tensor) -> Result<Tensor> {
        // The linear layers run in their weights' dtype (f32 under bf16 mixed precision).
        let x = pooled
            .flatten_from(1)?
            .to_dtype(self.fc1.weight().dtype())?;
        let x = dense(&self.fc1, &x, true)?;
        Ok(dense(&self.fc2, &x, true)?)
    }

    /// The output of `layer` ([`LAYERS`]: `conv1` or `conv2`, before their ReLU, as
    /// PyTorch's forward hooks on `Net.conv1`/`Net.conv2` see it).
    pub fn activation(&self, x: &Tensor, layer: &str) -> Result<Tensor> {
        self.check_input(x)?;
        let a = self.conv1.forward(x)?;
        match cut(layer)? {
            Cut::Conv1 => Ok(a),
            Cut::Conv2 => Ok(self.conv2.forward(&relu_pool(&a)?)?),
        }
    }

    /// The logits from `a`, the activation at `layer` that [`SimpleCnn::activation`]
    /// returns: the rest of the forward pass, differentiable in `a`.
    pub fn logits_from(&self, a: &Tensor, layer: &str) -> Result<Tensor> {
        let mut y = relu_pool(a)?;
        if cut(layer)? == Cut::Conv1 {
            y = conv_relu_pool(&self.conv2, &y)?;
        }
        Ok(dense(&self.fc3, &self.fc_features(&y)?, false)?)
    }

    /// Logits `[N, num_classes]`, with this crate's error type.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let f = self.features(x, false)?;
        Ok(dense(&self.fc3, &f, false)?)
    }

    /// The classifier head, `fc3`.
    pub fn fc(&self) -> &Linear {
        &self.fc3
    }

    /// Number of outputs.
    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// The same network over detached weights sharing storage with this one: evaluating it
    /// records no graph, and it sees every later optimizer step. Use it for eval/predict.
    pub fn detached(&self) -> Self {
        Self {
            conv1: self.conv1.detached(),
            conv2: self.conv2.detached(),
            fc1: detach_linear(&self.fc1),
            fc2: detach_linear(&self.fc2),
            fc3: detach_linear(&self.fc3),
            num_classes: self.num_classes,
        }
    }
}

/// The layers whose output [`SimpleCnn::activation`] returns (the two convolutions).
pub const LAYERS: [&str; 2] = ["conv1", "conv2"];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Cut {
    Conv1,
    Conv2,
}

fn cut(layer: &str) -> Result<Cut> {
    match layer {
        "conv1" => Ok(Cut::Conv1),
        "conv2" => Ok(Cut::Conv2),
        _ => Err(ModelError::UnknownLayer {
            model: "cnn",
            layer: layer.to_string(),
            known: LAYERS.join(", "),
        }),
    }
}

/// `max_pool2d(relu(a), 2)`: what follows each conv.
fn relu_pool(a: &Tensor) -> Result<Tensor> {
    Ok(max_pool2d(&cv_ops::relu(a)?, MaxPool2dConfig::default())?)
}

/// `max_pool2d(relu(conv(x)), 2)`: on the CPU in f32/f64 one fused op
/// ([`cv_ops::conv_relu_pool2d`]: a few images at a time through conv, bias, ReLU and pool
/// while they are in cache, instead of a pass per op over a batch-sized buffer; see
/// `docs/benchmarks.md`); elsewhere (GPU, bf16) the separate ops.
fn conv_relu_pool(conv: &Conv2d, x: &Tensor) -> Result<Tensor> {
    let w = conv.weight().to_dtype(x.dtype())?;
    let plain = conv.config().stride == 1 && conv.config().padding == 0;
    match conv.bias() {
        Some(b) if plain && cv_ops::uses_fast_path(x, &w) => {
            Ok(cv_ops::conv_relu_pool2d(x, &w, &b.to_dtype(x.dtype())?)?)
        }
        _ => relu_pool(&conv.forward(x)?),
    }
}

impl ModuleT for SimpleCnn {
    fn forward_t(&self, x: &Tensor, _train: bool) -> CResult<Tensor> {
        self.forward(x).map_err(ModelError::into_candle)
    }
}
