//! ResNet-18 with torchvision's module layout and state-dict names.

use candle_core::{Module, ModuleT, Result as CResult, Tensor};
use candle_nn::{Linear, VarBuilder};

use crate::batch_norm::{batch_norm2d, BatchNorm2d, BatchNormConfig};
use crate::conv::{conv2d_no_bias, dense, detach_linear, Conv2d};
use crate::error::{ModelError, Result};
use cv_ops::{max_pool2d, MaxPool2dConfig};

/// Smallest input side accepted (CIFAR-10's).
pub const MIN_INPUT_SIZE: usize = 32;
/// Width of the pooled features fed to `fc`.
pub const FEATURE_DIM: usize = 512;

/// The stem's 3x3/2 max-pool with padding 1.
const STEM_POOL: MaxPool2dConfig = MaxPool2dConfig {
    kernel: 3,
    stride: 2,
    padding: 1,
};

/// The modules whose output [`ResNet::activation`] returns (torchvision's names): the stem
/// (ending in `maxpool`), each stage, and each block of a stage (`layer4` = `layer4.1`).
pub const LAYERS: [&str; 13] = [
    "maxpool", "layer1", "layer1.0", "layer1.1", "layer2", "layer2.0", "layer2.1", "layer3",
    "layer3.0", "layer3.1", "layer4", "layer4.0", "layer4.1",
];

/// How many blocks run between the stem and the cut after `layer`.
fn blocks_before_cut(layer: &str) -> Result<usize> {
    let unknown = || ModelError::UnknownLayer {
        model: "resnet18",
        layer: layer.to_string(),
        known: LAYERS.join(", "),
    };
    if layer == "maxpool" {
        return Ok(0);
    }
    let rest = layer.strip_prefix("layer").ok_or_else(unknown)?;
    let (stage, block) = match rest.split_once('.') {
        Some((s, b)) => (s, b.parse::<usize>().map_err(|_| unknown())?),
        None => (rest, 1),
    };
    let stage = stage.parse::<usize>().map_err(|_| unknown())?;
    if !(1..=4).contains(&stage) || block > 1 {
        return Err(unknown());
    }
    Ok(2 * (stage - 1) + block + 1)
}

/// torchvision's `BasicBlock`: 3x3 conv, BN, ReLU, 3x3 conv, BN, plus the shortcut
/// (identity, or `downsample` = 1x1 strided conv + BN), then ReLU.
#[derive(Clone, Debug)]
pub struct BasicBlock {
    conv1: Conv2d,
    bn1: BatchNorm2d,
    conv2: Conv2d,
    bn2: BatchNorm2d,
    downsample: Option<(Conv2d, BatchNorm2d)>,
}

impl BasicBlock {
    fn new(in_c: usize, out_c: usize, stride: usize, vb: VarBuilder) -> CResult<Self> {
        let bn = BatchNormConfig::default();
        let downsample = if stride != 1 || in_c != out_c {
            let d = vb.pp("downsample");
            Some((
                conv2d_no_bias(in_c, out_c, 1, stride, 0, d.pp("0"))?,
                batch_norm2d(out_c, bn, d.pp("1"))?,
            ))
        } else {
            None
        };
        Ok(Self {
            conv1: conv2d_no_bias(in_c, out_c, 3, stride, 1, vb.pp("conv1"))?,
            bn1: batch_norm2d(out_c, bn, vb.pp("bn1"))?,
            conv2: conv2d_no_bias(out_c, out_c, 3, 1, 1, vb.pp("conv2"))?,
            bn2: batch_norm2d(out_c, bn, vb.pp("bn2"))?,
            downsample,
        })
    }

    fn detached(&self) -> Self {
        Self {
            conv1: self.conv1.detached(),
            bn1: self.bn1.detached(),
            conv2: self.conv2.detached(),
            bn2: self.bn2.detached(),
            downsample: self
                .downsample
                .as_ref()
                .map(|(c, b)| (c.detached(), b.detached())),
        }
    }
}

impl ModuleT for BasicBlock {
    fn forward_t(&self, x: &Tensor, train: bool) -> CResult<Tensor> {
        if !train {
            // Eval: each BN fused with what follows it (ReLU; residual add + ReLU).
            let y = self
                .bn1
                .forward_eval_fused(&self.conv1.forward(x)?, None, true)?;
            let shortcut = match &self.downsample {
                Some((conv, bn)) => bn.forward_eval_fused(&conv.forward(x)?, None, false)?,
                None => x.clone(),
            };
            return self
                .bn2
                .forward_eval_fused(&self.conv2.forward(&y)?, Some(&shortcut), true);
        }
        let y = cv_ops::relu(&self.bn1.forward_t(&self.conv1.forward(x)?, train)?)?;
        let y = self.bn2.forward_t(&self.conv2.forward(&y)?, train)?;
        let shortcut = match &self.downsample {
            Some((conv, bn)) => bn.forward_t(&conv.forward(x)?, train)?,
            None => x.clone(),
        };
        cv_ops::add_relu(&y, &shortcut)
    }
}

/// Every stage's output of one forward pass (what the parity tests compare).
#[derive(Clone, Debug)]
pub struct Stages {
    /// After conv1, bn1, ReLU and the max-pool.
    pub stem: Tensor,
    /// After layer1 .. layer4.
    pub layers: [Tensor; 4],
    /// Pooled and flattened, `[N, 512]`.
    pub features: Tensor,
    /// `fc(features)`, `[N, classes]`.
    pub logits: Tensor,
}

/// ResNet-18: stem (7x7/2 conv, BN, ReLU, 3x3/2 max-pool), four stages of two
/// [`BasicBlock`]s (64, 128, 256, 512 channels), global average pool, `fc`.
#[derive(Clone, Debug)]
pub struct ResNet {
    conv1: Conv2d,
    bn1: BatchNorm2d,
    layers: [Vec<BasicBlock>; 4],
    fc: Linear,
    num_classes: usize,
}

/// Builds ResNet-18 with `num_classes` outputs from `vb` (torchvision keys). With a
/// `VarMap`-backed `vb`, call [`crate::init::initialise`] for PyTorch's initialisation.
pub fn resnet18(num_classes: usize, vb: VarBuilder) -> Result<ResNet> {
    if num_classes == 0 {
        return Err(ModelError::Config("num_classes must be at least 1".into()));
    }
    let widths = [64, 128, 256, 512];
    let mut in_c = 64;
    let mut layers: [Vec<BasicBlock>; 4] = Default::default();
    for (i, &w) in widths.iter().enumerate() {
        let vb_l = vb.pp(format!("layer{}", i + 1));
        let stride = if i == 0 { 1 } else { 2 };
        layers[i].push(BasicBlock::new(in_c, w, stride, vb_l.pp("0"))?);
        layers[i].push(BasicBlock::new(w, w, 1, vb_l.pp("1"))?);
        in_c = w;
    }
    Ok(ResNet {
        conv1: conv2d_no_bias(3, 64, 7, 2, 3, vb.pp("conv1"))?,
        bn1: batch_norm2d(64, BatchNormConfig::default(), vb.pp("bn1"))?,
        layers,
        fc: candle_nn::linear(FEATURE_DIM, num_classes, vb.pp("fc"))?,
        num_classes,
    })
}

impl ResNet {
    /// Refuses anything but `[N, 3, H, W]` with N >= 1 and H, W >= 32.
    pub fn check_input(&self, x: &Tensor) -> Result<()> {
        let d = x.dims();
        if d.len() != 4 || d[0] == 0 || d[1] != 3 || d[2] < MIN_INPUT_SIZE || d[3] < MIN_INPUT_SIZE
        {
            return Err(ModelError::InputShape {
                model: "resnet18",
                expected: format!("[N, 3, H, W] with N >= 1 and H, W >= {MIN_INPUT_SIZE}"),
                found: d.to_vec(),
            });
        }
        Ok(())
    }

    fn stem(&self, x: &Tensor, train: bool) -> CResult<Tensor> {
        let c = self.conv1.forward(x)?;
        let y = if train {
            cv_ops::relu(&self.bn1.forward_t(&c, true)?)?
        } else {
            self.bn1.forward_eval_fused(&c, None, true)?
        };
        max_pool2d(&y, STEM_POOL)
    }

    fn layer(&self, i: usize, x: &Tensor, train: bool) -> CResult<Tensor> {
        let mut y = x.clone();
        for block in &self.layers[i] {
            y = block.forward_t(&y, train)?;
        }
        Ok(y)
    }

    /// Global average pool in the head's dtype (f32 even for a bf16 input, so the head and
    /// loss stay in f32), `[N, 512]`.
    fn pool(&self, y: &Tensor) -> CResult<Tensor> {
        y.to_dtype(self.fc.weight().dtype())?.mean((2, 3))
    }

    /// Pooled 512-wide features (before `fc`): what a linear probe trains on.
    pub fn features(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.check_input(x)?;
        let y = self.run_blocks(self.stem(x, train)?, 0, train)?;
        Ok(self.pool(&y)?)
    }

    /// Logits `[N, num_classes]`, with this crate's error type.
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let f = self.features(x, train)?;
        Ok(dense(&self.fc, &f, false)?)
    }

    /// One forward pass keeping every stage's output.
    pub fn forward_stages(&self, x: &Tensor, train: bool) -> Result<Stages> {
        self.check_input(x)?;
        let stem = self.stem(x, train)?;
        let l1 = self.layer(0, &stem, train)?;
        let l2 = self.layer(1, &l1, train)?;
        let l3 = self.layer(2, &l2, train)?;
        let l4 = self.layer(3, &l3, train)?;
        let features = self.pool(&l4)?;
        let logits = dense(&self.fc, &features, false)?;
        Ok(Stages {
            stem,
            layers: [l1, l2, l3, l4],
            features,
            logits,
        })
    }

    /// The blocks in forward order, from the `start`-th on, applied to `y`.
    fn run_blocks(&self, mut y: Tensor, start: usize, train: bool) -> CResult<Tensor> {
        for block in self.layers.iter().flatten().skip(start) {
            y = block.forward_t(&y, train)?;
        }
        Ok(y)
    }

    /// The eval-mode activation at `layer` ([`LAYERS`]: torchvision's module names).
    pub fn activation(&self, x: &Tensor, layer: &str) -> Result<Tensor> {
        self.check_input(x)?;
        let end = blocks_before_cut(layer)?;
        let mut y = self.stem(x, false)?;
        for block in self.layers.iter().flatten().take(end) {
            y = block.forward_t(&y, false)?;
        }
        Ok(y)
    }

    /// The eval-mode logits from `a`, the activation at `layer` that
    /// [`ResNet::activation`] returns: the rest of the forward pass, differentiable in `a`.
    pub fn logits_from(&self, a: &Tensor, layer: &str) -> Result<Tensor> {
        let y = self.run_blocks(a.clone(), blocks_before_cut(layer)?, false)?;
        Ok(dense(&self.fc, &self.pool(&y)?, false)?)
    }

    /// The classifier head.
    pub fn fc(&self) -> &Linear {
        &self.fc
    }

    /// Number of outputs.
    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// The same network over detached weights sharing storage with this one: evaluating it
    /// records no graph, and it sees every later optimizer step. Eval only (train mode needs
    /// the running statistics as `Var`s).
    pub fn detached(&self) -> Self {
        Self {
            conv1: self.conv1.detached(),
            bn1: self.bn1.detached(),
            layers: self
                .layers
                .clone()
                .map(|l| l.iter().map(BasicBlock::detached).collect()),
            fc: detach_linear(&self.fc),
            num_classes: self.num_classes,
        }
    }
}

impl ModuleT for ResNet {
    fn forward_t(&self, x: &Tensor, train: bool) -> CResult<Tensor> {
        self.forward(x, train).map_err(ModelError::into_candle)
    }
}
