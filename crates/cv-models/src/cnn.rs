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
        let x = conv_relu_pool(&self.conv2, &x)?;
        // The linear layers run in their weights' dtype (f32 under bf16 mixed precision).
        let x = x.flatten_from(1)?.to_dtype(self.fc1.weight().dtype())?;
        let x = dense(&self.fc1, &x, true)?;
        Ok(dense(&self.fc2, &x, true)?)
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
        _ => Ok(max_pool2d(
            &conv.forward(x)?.relu()?,
            MaxPool2dConfig::default(),
        )?),
    }
}

impl ModuleT for SimpleCnn {
    fn forward_t(&self, x: &Tensor, _train: bool) -> CResult<Tensor> {
        self.forward(x).map_err(ModelError::into_candle)
    }
}
