//! The int8 checkpoint as safetensors: for each convolution `{name}.weight` (I8
//! `[out, in, k, k]`), `{name}.weight_scale` (F32 `[out]`), `{name}.bias` (F32 `[out]`, the
//! BatchNorm folded in), `{name}.output_scale` (F32 `[1]`) and `{name}.output_zero_point`
//! (I32 `[1]`); `input.scale` and `input.zero_point`; the f32 head under torchvision's keys;
//! metadata `format` = [`FORMAT`] and `architecture`. candle has no i8 dtype, so the file is
//! read and written with the `safetensors` crate directly.

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use cv_ops::int8::{QConv, QParams};
use safetensors::tensor::{Dtype, TensorView};

use super::{convolutions, graph, QuantizedConv, QuantizedModel};
use crate::error::{ModelError, Result};
use crate::Architecture;

/// The `format` metadata of an int8 checkpoint.
pub const FORMAT: &str = "cv-int8";

/// A tensor's bytes, dtype and shape, ready to serialize.
struct Raw {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

fn f32s(v: &[f32]) -> Raw {
    Raw {
        dtype: Dtype::F32,
        shape: vec![v.len()],
        bytes: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    }
}

fn bad(message: String) -> ModelError {
    ModelError::Quantized(message)
}

impl QuantizedModel {
    /// The checkpoint bytes (safetensors).
    pub fn to_safetensors(&self) -> Result<Vec<u8>> {
        let mut raw: Vec<(String, Raw)> = Vec::new();
        raw.push(("input.scale".into(), f32s(&[self.input.scale])));
        raw.push(("input.zero_point".into(), i32s(self.input.zero_point)));
        for spec in convolutions(self.arch) {
            let q = &self.convs[&spec.name];
            let n = &spec.name;
            raw.push((
                format!("{n}.weight"),
                Raw {
                    dtype: Dtype::I8,
                    shape: q.conv.shape().to_vec(),
                    bytes: q.conv.weight().iter().map(|&w| w as u8).collect(),
                },
            ));
            raw.push((format!("{n}.weight_scale"), f32s(q.conv.scale())));
            raw.push((format!("{n}.bias"), f32s(q.conv.bias())));
            raw.push((format!("{n}.output_scale"), f32s(&[q.out.scale])));
            raw.push((format!("{n}.output_zero_point"), i32s(q.out.zero_point)));
        }
        for (k, t) in &self.head {
            let mut r = f32s(&t.flatten_all()?.to_vec1::<f32>()?);
            r.shape = t.dims().to_vec();
            raw.push((k.clone(), r));
        }
        let views = raw
            .iter()
            .map(|(k, r)| {
                TensorView::new(r.dtype, r.shape.clone(), &r.bytes)
                    .map(|v| (k.clone(), v))
                    .map_err(|e| bad(format!("{k}: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        let meta = HashMap::from([
            ("format".to_string(), FORMAT.to_string()),
            ("architecture".to_string(), self.arch.as_str().to_string()),
        ]);
        safetensors::serialize(views, Some(meta)).map_err(|e| bad(e.to_string()))
    }

    /// Reads a checkpoint written by [`QuantizedModel::to_safetensors`], checking every
    /// tensor's dtype and shape, the scales and the zero points.
    pub fn from_safetensors(bytes: &[u8]) -> Result<QuantizedModel> {
        let st = safetensors::SafeTensors::deserialize(bytes)
            .map_err(|e| bad(format!("not a safetensors file: {e}")))?;
        let (_, meta) = safetensors::SafeTensors::read_metadata(bytes)
            .map_err(|e| bad(format!("not a safetensors file: {e}")))?;
        let meta = meta.metadata().clone().unwrap_or_default();
        if meta.get("format").map(String::as_str) != Some(FORMAT) {
            return Err(bad(format!(
                "no `format: {FORMAT}` in its metadata: not an int8 checkpoint made by cv quantize"
            )));
        }
        let arch: Architecture = meta
            .get("architecture")
            .ok_or_else(|| bad("no architecture in its metadata".into()))?
            .parse()?;
        let read = Reader { st: &st };
        let input = read.qparams("input.scale", "input.zero_point")?;
        let mut convs = HashMap::new();
        for spec in convolutions(arch) {
            let n = &spec.name;
            let (codes, shape) = read.i8s(&format!("{n}.weight"))?;
            let shape: [usize; 4] = shape.try_into().map_err(|s| {
                bad(format!(
                    "{n}.weight has shape {s:?}, expected [out, in, k, k]"
                ))
            })?;
            let scale = read.f32s(&format!("{n}.weight_scale"), &[shape[0]])?;
            let bias = read.f32s(&format!("{n}.bias"), &[shape[0]])?;
            let conv = QConv::new(codes, shape, scale, bias, spec.stride, spec.padding)
                .map_err(|e| bad(format!("{n}: {e}")))?;
            let out = read.qparams(
                &format!("{n}.output_scale"),
                &format!("{n}.output_zero_point"),
            )?;
            convs.insert(n.clone(), QuantizedConv { conv, out });
        }
        let mut head = HashMap::new();
        for layer in graph::head_layers(arch) {
            for k in ["weight", "bias"] {
                let key = format!("{layer}.{k}");
                let view = read.view(&key, Dtype::F32)?;
                let values = le_f32(view.data());
                head.insert(
                    key,
                    Tensor::from_vec(values, view.shape().to_vec(), &Device::Cpu)?,
                );
            }
        }
        QuantizedModel::new(arch, input, convs, head)
    }
}

fn i32s(v: i32) -> Raw {
    Raw {
        dtype: Dtype::I32,
        shape: vec![1],
        bytes: v.to_le_bytes().to_vec(),
    }
}

fn le_f32(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

struct Reader<'a, 'd> {
    st: &'a safetensors::SafeTensors<'d>,
}

impl<'d> Reader<'_, 'd> {
    fn view(&self, key: &str, dtype: Dtype) -> Result<TensorView<'d>> {
        let v = self
            .st
            .tensor(key)
            .map_err(|_| bad(format!("no tensor {key}")))?;
        if v.dtype() != dtype {
            return Err(bad(format!("{key} is {:?}, expected {dtype:?}", v.dtype())));
        }
        Ok(v)
    }

    fn f32s(&self, key: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let v = self.view(key, Dtype::F32)?;
        if v.shape() != shape {
            return Err(bad(format!(
                "{key} has shape {:?}, expected {shape:?}",
                v.shape()
            )));
        }
        Ok(le_f32(v.data()))
    }

    fn i8s(&self, key: &str) -> Result<(Vec<i8>, Vec<usize>)> {
        let v = self.view(key, Dtype::I8)?;
        Ok((
            v.data().iter().map(|&b| b as i8).collect(),
            v.shape().to_vec(),
        ))
    }

    fn qparams(&self, scale: &str, zero: &str) -> Result<QParams> {
        let s = self.f32s(scale, &[1])?[0];
        let z = self.view(zero, Dtype::I32)?;
        let zb = z.data();
        if z.shape() != [1] || zb.len() != 4 {
            return Err(bad(format!(
                "{zero} has shape {:?}, expected [1]",
                z.shape()
            )));
        }
        let zero_point = i32::from_le_bytes([zb[0], zb[1], zb[2], zb[3]]);
        QParams {
            scale: s,
            zero_point,
        }
        .check()
        .map_err(|e| bad(format!("{scale} / {zero}: {e}")))
    }
}
