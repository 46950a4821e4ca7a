//! Post-training static int8 networks: BatchNorm folded into the convolutions, weights
//! quantized symmetric per output channel, activations affine per tensor with ranges from
//! calibration images ([`calibrate`]), ReLU and the residual add fused into the convolution
//! that precedes them, the max-pool on codes, and the head (global pool and `fc`, or the small
//! CNN's three linear layers) in f32: under 1% of ResNet-18's multiply-adds.
//!
//! ```no_run
//! # use std::collections::HashMap;
//! # use candle_core::Tensor;
//! use cv_models::quant::{Calibration, Observer, QuantizedModel};
//! use cv_models::Architecture;
//! # fn demo(state: HashMap<String, Tensor>, batches: Vec<Tensor>, x: Tensor) -> cv_models::Result<()> {
//! let folded = cv_models::fold::fold_batch_norm(Architecture::ResNet18, &state)?;
//! let mut calibration = Calibration::new(Observer::MinMax)?;
//! for batch in &batches {
//!     calibration.observe(Architecture::ResNet18, &folded, batch)?;
//! }
//! let int8 = QuantizedModel::quantize(Architecture::ResNet18, &folded, &calibration)?;
//! let logits = int8.forward(&x)?;
//! # Ok(()) }
//! ```

pub mod calibrate;
pub mod graph;
mod state;

pub use calibrate::{Calibration, Observer};
pub use cv_ops::int8::{int8_kernel, Int8Kernel};
pub use graph::{convolutions, ConvSpec, Executor};
pub use state::FORMAT;

use std::collections::HashMap;

use candle_core::{DType, Device, Storage, Tensor};
use cv_ops::int8::{conv2d_u8, max_pool2d_u8, quantize_weights, Epilogue, QConv, QParams, QTensor};

use crate::error::{ModelError, Result};
use crate::Architecture;

/// One int8 convolution and the quantization of its output.
#[derive(Debug)]
pub struct QuantizedConv {
    /// Weights, scales, bias and geometry.
    pub conv: QConv,
    /// The output's quantization.
    pub out: QParams,
}

/// An int8 network ready to run.
#[derive(Debug)]
pub struct QuantizedModel {
    arch: Architecture,
    input: QParams,
    convs: HashMap<String, QuantizedConv>,
    head: HashMap<String, Tensor>,
    num_classes: usize,
}

impl QuantizedModel {
    /// Quantizes the folded f32 `state` of `arch` with the ranges of `calibration`.
    pub fn quantize(
        arch: Architecture,
        state: &HashMap<String, Tensor>,
        calibration: &Calibration,
    ) -> Result<QuantizedModel> {
        let mut convs = HashMap::new();
        for spec in convolutions(arch) {
            let get = |k: &str| {
                state.get(&format!("{}.{k}", spec.name)).ok_or_else(|| {
                    ModelError::Quantized(format!("the folded state has no {}.{k}", spec.name))
                })
            };
            let w = get("weight")?;
            let shape: [usize; 4] = w.dims4()?.into();
            let values = w.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
            let (codes, scale) =
                quantize_weights(&values, shape[0]).map_err(|e| ops(&spec.name, e))?;
            let bias = get("bias")?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
            let conv = QConv::new(codes, shape, scale, bias, spec.stride, spec.padding)
                .map_err(|e| ops(&spec.name, e))?;
            let out = calibration.qparams(&spec.name)?;
            convs.insert(spec.name.clone(), QuantizedConv { conv, out });
        }
        let head = graph::head_state(arch, state)?;
        QuantizedModel::new(arch, calibration.qparams(calibrate::INPUT)?, convs, head)
    }

    /// Assembles a network from its parts, checking that every convolution of `arch` is there
    /// with the geometry the graph runs it at and that the layers' channels chain.
    pub fn new(
        arch: Architecture,
        input: QParams,
        convs: HashMap<String, QuantizedConv>,
        head: HashMap<String, Tensor>,
    ) -> Result<QuantizedModel> {
        let mut channels = 3;
        for spec in convolutions(arch) {
            let c = convs
                .get(&spec.name)
                .ok_or_else(|| ModelError::Quantized(format!("no convolution {}", spec.name)))?;
            let [out_c, in_c, _, _] = c.conv.shape();
            if c.conv.geometry() != (spec.stride, spec.padding) {
                return Err(ModelError::Quantized(format!(
                    "{}: stride/padding {:?}, {arch} runs it at ({}, {})",
                    spec.name,
                    c.conv.geometry(),
                    spec.stride,
                    spec.padding
                )));
            }
            if !spec.name.contains("downsample") && in_c != channels {
                return Err(ModelError::Quantized(format!(
                    "{}: {in_c} input channels, the layer before it gives {channels}",
                    spec.name
                )));
            }
            if !spec.name.contains("downsample") {
                channels = out_c;
            }
        }
        let num_classes = graph::head_classes(arch, &head)?;
        Ok(QuantizedModel {
            arch,
            input,
            convs,
            head,
            num_classes,
        })
    }

    /// Logits `[n, classes]` f32 of a batch `[n, 3, h, w]` (eval transforms applied).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
        let d = x.dims();
        if d.len() != 4 || d[1] != 3 || d[0] == 0 {
            return Err(ModelError::InputShape {
                model: self.arch.as_str(),
                expected: "[N, 3, H, W] with N >= 1".into(),
                found: d.to_vec(),
            });
        }
        self.arch.check_image_size(d[2])?;
        self.arch.check_image_size(d[3])?;
        graph::run(self.arch, &mut Int8Exec { model: self }, &self.head, &x)
    }

    /// Which network this is.
    pub fn architecture(&self) -> Architecture {
        self.arch
    }

    /// Number of outputs.
    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// The input's quantization.
    pub fn input_qparams(&self) -> QParams {
        self.input
    }

    /// The int8 convolution `name` (torchvision's module name).
    pub fn conv(&self, name: &str) -> Option<&QuantizedConv> {
        self.convs.get(name)
    }

    /// The f32 head layers (`fc.weight`, ...).
    pub fn head(&self) -> &HashMap<String, Tensor> {
        &self.head
    }
}

/// Class activation maps of the int8 network at its last spatial layer: the activation is the
/// int8 layer's output dequantized, and the head after it runs in f32, so the gradient there
/// is exact. Other layers would need gradients through int8 layers and are refused.
impl crate::cam::CamSource for QuantizedModel {
    fn architecture(&self) -> Architecture {
        self.arch
    }

    fn num_classes(&self) -> usize {
        self.num_classes
    }

    fn last_spatial_layer(&self) -> &'static str {
        self.arch.last_spatial_layer()
    }

    fn activation(&self, x: &Tensor, layer: &str) -> Result<Tensor> {
        self.check_cam_layer(layer)?;
        let x = x.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
        let mut exec = Int8Exec { model: self };
        let a = graph::body(self.arch, &mut exec, &x)?;
        exec.to_f32(&a)
    }

    fn logits_from(&self, a: &Tensor, layer: &str) -> Result<Tensor> {
        self.check_cam_layer(layer)?;
        graph::head_of(self.arch, &mut TensorExec, &self.head, a)
    }

    fn classifier_weight(&self) -> Result<Tensor> {
        let last = graph::head_layers(self.arch)
            .last()
            .copied()
            .unwrap_or("fc");
        self.head
            .get(&format!("{last}.weight"))
            .cloned()
            .ok_or_else(|| ModelError::Quantized(format!("the head has no {last}.weight")))
    }
}

impl QuantizedModel {
    fn check_cam_layer(&self, layer: &str) -> Result<()> {
        let last = self.arch.last_spatial_layer();
        let accepted =
            layer == last || (self.arch == Architecture::ResNet18 && layer == "layer4.1");
        if accepted {
            return Ok(());
        }
        Err(ModelError::Config(format!(
            "an int8 {} gives class activation maps at {last} only (the layers after it run in \
             f32; before it the network is integer and has no gradient); use the f32 checkpoint \
             for {layer}",
            self.arch
        )))
    }
}

/// f32 tensors through the head's pooling (the differentiable part after the int8 body).
pub(crate) struct TensorExec;

impl Executor for TensorExec {
    type Act = Tensor;

    fn input(&mut self, x: &Tensor) -> Result<Tensor> {
        Ok(x.clone())
    }

    fn conv(&mut self, c: &ConvSpec, _: &Tensor, _: bool, _: Option<&Tensor>) -> Result<Tensor> {
        Err(ModelError::Quantized(format!(
            "{}: the f32 head has no convolution",
            c.name
        )))
    }

    fn max_pool(
        &mut self,
        x: &Tensor,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Result<Tensor> {
        let config = cv_ops::MaxPool2dConfig {
            kernel,
            stride,
            padding,
        };
        Ok(cv_ops::max_pool2d(x, config)?)
    }

    fn to_f32(&mut self, x: &Tensor) -> Result<Tensor> {
        Ok(x.clone())
    }

    fn pooled(&mut self, x: &Tensor) -> Result<Tensor> {
        Ok(x.mean((2, 3))?)
    }
}

fn ops(name: &str, e: cv_ops::OpsError) -> ModelError {
    ModelError::Quantized(format!("{name}: {e}"))
}

/// The int8 executor.
struct Int8Exec<'a> {
    model: &'a QuantizedModel,
}

impl Executor for Int8Exec<'_> {
    type Act = std::sync::Arc<QTensor>;

    fn input(&mut self, x: &Tensor) -> Result<Self::Act> {
        let dims: [usize; 4] = x.dims4()?.into();
        let border = graph::input_border(self.model.arch).max(cv_ops::int8::OUT_BORDER);
        // The batch's values are read where they lie (a copy costs as much as the quantization).
        let x = x.contiguous()?;
        let (storage, layout) = x.storage_and_layout();
        let values = match &*storage {
            Storage::Cpu(cpu) => &cpu.as_slice::<f32>()?[layout.start_offset()..],
            _ => {
                return Err(ModelError::Quantized(
                    "the int8 network runs on the CPU".into(),
                ))
            }
        };
        let q = QTensor::from_nchw(&values[..x.elem_count()], dims, self.model.input, border)
            .map_err(|e| ops("input", e))?;
        Ok(q.into())
    }

    fn conv(
        &mut self,
        c: &ConvSpec,
        x: &Self::Act,
        relu: bool,
        residual: Option<&Self::Act>,
    ) -> Result<Self::Act> {
        let q = self
            .model
            .convs
            .get(&c.name)
            .ok_or_else(|| ModelError::Quantized(format!("no convolution {}", c.name)))?;
        let e = Epilogue {
            out: q.out,
            residual: residual.map(|r| r.as_ref()),
            relu,
        };
        Ok(conv2d_u8(x, &q.conv, e)
            .map_err(|e| ops(&c.name, e))?
            .into())
    }

    fn max_pool(
        &mut self,
        x: &Self::Act,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Result<Self::Act> {
        Ok(max_pool2d_u8(x, kernel, stride, padding)
            .map_err(|e| ops("max_pool", e))?
            .into())
    }

    fn to_f32(&mut self, x: &Self::Act) -> Result<Tensor> {
        Ok(Tensor::from_vec(
            x.to_nchw(),
            x.dims().to_vec(),
            &Device::Cpu,
        )?)
    }

    fn pooled(&mut self, x: &Self::Act) -> Result<Tensor> {
        let [n, c, _, _] = x.dims();
        Ok(Tensor::from_vec(x.channel_means(), (n, c), &Device::Cpu)?)
    }
}
