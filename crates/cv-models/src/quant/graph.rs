//! The inference graph of each network as the int8 path sees it, BatchNorm folded: which
//! convolutions run in which order with what stride, padding, ReLU and residual, and the f32
//! head. One walker ([`run`]) drives every executor: the f32 calibration pass, the int8
//! network, and the tests' reference.

use std::collections::HashMap;

use candle_core::{Tensor, D};

use crate::error::{ModelError, Result};
use crate::Architecture;

/// One convolution of the graph: its state-dict prefix and geometry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConvSpec {
    /// torchvision's module name (`conv1`, `layer2.0.downsample.0`).
    pub name: String,
    /// Stride.
    pub stride: usize,
    /// Zero padding on every side.
    pub padding: usize,
}

fn spec(name: impl Into<String>, stride: usize, padding: usize) -> ConvSpec {
    ConvSpec {
        name: name.into(),
        stride,
        padding,
    }
}

/// A residual block: `relu(conv2(relu(conv1(x))) + shortcut(x))`.
struct Block {
    conv1: ConvSpec,
    conv2: ConvSpec,
    downsample: Option<ConvSpec>,
}

fn resnet_blocks() -> Vec<Block> {
    let mut blocks = Vec::new();
    for stage in 1..=4 {
        for b in 0..2 {
            let name = format!("layer{stage}.{b}");
            let stride = if stage > 1 && b == 0 { 2 } else { 1 };
            blocks.push(Block {
                conv1: spec(format!("{name}.conv1"), stride, 1),
                conv2: spec(format!("{name}.conv2"), 1, 1),
                downsample: (stride == 2).then(|| spec(format!("{name}.downsample.0"), 2, 0)),
            });
        }
    }
    blocks
}

/// Every convolution of `arch` in forward order.
pub fn convolutions(arch: Architecture) -> Vec<ConvSpec> {
    match arch {
        Architecture::SimpleCnn => vec![spec("conv1", 1, 0), spec("conv2", 1, 0)],
        Architecture::ResNet18 => {
            let mut out = vec![spec("conv1", 2, 3)];
            for b in resnet_blocks() {
                out.push(b.conv1);
                out.extend(b.downsample);
                out.push(b.conv2);
            }
            out
        }
    }
}

/// The f32 layers after the last convolution, with their state-dict prefixes.
pub fn head_layers(arch: Architecture) -> &'static [&'static str] {
    match arch {
        Architecture::SimpleCnn => &["fc1", "fc2", "fc3"],
        Architecture::ResNet18 => &["fc"],
    }
}

/// The border the quantized input needs: the first convolution's padding.
pub fn input_border(arch: Architecture) -> usize {
    convolutions(arch)[0].padding
}

/// What an executor does at each node of the graph.
pub trait Executor {
    /// Its activations.
    type Act: Clone;
    /// The network's input, `[n, 3, h, w]` f32 as the eval transforms give it.
    fn input(&mut self, x: &Tensor) -> Result<Self::Act>;
    /// `relu?(conv(x) + bias + residual)`.
    fn conv(
        &mut self,
        conv: &ConvSpec,
        x: &Self::Act,
        relu: bool,
        residual: Option<&Self::Act>,
    ) -> Result<Self::Act>;
    /// Max-pool `kernel` x `kernel` with `stride` and `padding`.
    fn max_pool(
        &mut self,
        x: &Self::Act,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Result<Self::Act>;
    /// The activation as f32 NCHW.
    fn to_f32(&mut self, x: &Self::Act) -> Result<Tensor>;
    /// The global average pool, `[n, c]` f32.
    fn pooled(&mut self, x: &Self::Act) -> Result<Tensor>;
}

/// The logits of `x` through `arch`'s graph on `exec`; `head` holds the f32 head's
/// `{layer}.weight` / `{layer}.bias`.
pub fn run<E: Executor>(
    arch: Architecture,
    exec: &mut E,
    head: &HashMap<String, Tensor>,
    x: &Tensor,
) -> Result<Tensor> {
    let a = body(arch, exec, x)?;
    head_of(arch, exec, head, &a)
}

/// The graph from the input to the output of [`Architecture::last_spatial_layer`] (the small
/// CNN's `conv2` after its fused ReLU).
pub fn body<E: Executor>(arch: Architecture, exec: &mut E, x: &Tensor) -> Result<E::Act> {
    let a = exec.input(x)?;
    let convs = convolutions(arch);
    match arch {
        Architecture::SimpleCnn => {
            let a = exec.conv(&convs[0], &a, true, None)?;
            let a = exec.max_pool(&a, 2, 2, 0)?;
            exec.conv(&convs[1], &a, true, None)
        }
        Architecture::ResNet18 => {
            let a = exec.conv(&convs[0], &a, true, None)?;
            let mut a = exec.max_pool(&a, 3, 2, 1)?;
            for block in resnet_blocks() {
                let y = exec.conv(&block.conv1, &a, true, None)?;
                let shortcut = match &block.downsample {
                    Some(d) => exec.conv(d, &a, false, None)?,
                    None => a,
                };
                a = exec.conv(&block.conv2, &y, true, Some(&shortcut))?;
            }
            Ok(a)
        }
    }
}

/// The rest after [`body`]: the small CNN's max-pool, flatten and three linear layers, or
/// ResNet-18's global average pool and `fc`; all in f32 (`head`).
pub fn head_of<E: Executor>(
    arch: Architecture,
    exec: &mut E,
    head: &HashMap<String, Tensor>,
    a: &E::Act,
) -> Result<Tensor> {
    match arch {
        Architecture::SimpleCnn => {
            let a = exec.max_pool(a, 2, 2, 0)?;
            let mut f = exec.to_f32(&a)?.flatten_from(1)?;
            let layers = head_layers(arch);
            for (i, layer) in layers.iter().enumerate() {
                f = linear(head, layer, &f)?;
                if i + 1 < layers.len() {
                    f = f.relu()?;
                }
            }
            Ok(f)
        }
        Architecture::ResNet18 => linear(head, "fc", &exec.pooled(a)?),
    }
}

/// `x W^T + b` with the head's f32 weights.
fn linear(head: &HashMap<String, Tensor>, layer: &str, x: &Tensor) -> Result<Tensor> {
    let get = |k: &str| {
        head.get(&format!("{layer}.{k}"))
            .ok_or_else(|| ModelError::Quantized(format!("the head has no {layer}.{k}")))
    };
    let y = x.matmul(&get("weight")?.t()?)?;
    Ok(y.broadcast_add(&get("bias")?.unsqueeze(0)?)?)
}

/// The f32 layers of the head, taken from a (folded) state.
pub fn head_state(
    arch: Architecture,
    state: &HashMap<String, Tensor>,
) -> Result<HashMap<String, Tensor>> {
    let mut head = HashMap::new();
    for layer in head_layers(arch) {
        for k in ["weight", "bias"] {
            let key = format!("{layer}.{k}");
            let t = state
                .get(&key)
                .ok_or_else(|| ModelError::Quantized(format!("the state has no {key}")))?;
            head.insert(key, t.to_dtype(candle_core::DType::F32)?);
        }
    }
    Ok(head)
}

/// Number of classes of a head.
pub fn head_classes(arch: Architecture, head: &HashMap<String, Tensor>) -> Result<usize> {
    let last = head_layers(arch).last().copied().unwrap_or("fc");
    head.get(&format!("{last}.weight"))
        .ok_or_else(|| ModelError::Quantized(format!("the head has no {last}.weight")))?
        .dim(D::Minus2)
        .map_err(Into::into)
}
