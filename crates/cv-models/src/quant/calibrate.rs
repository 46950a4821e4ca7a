//! Calibration: the f32 network (BatchNorm folded) run over calibration images while an
//! observer records the range of every tensor the int8 network quantizes: the input and the
//! output of each convolution (after its ReLU and residual add, where they are fused).
//!
//! Observers (both are PyTorch's, `torch.ao.quantization.observer`):
//! - [`Observer::MinMax`]: the smallest and largest value seen (`MinMaxObserver`);
//! - [`Observer::Percentile`]: the `p`-th and `(100 - p)`-th percentiles of the values seen,
//!   which clips rare outliers (the idea of `HistogramObserver`, without its search). The
//!   values are subsampled to at most [`SAMPLES_PER_BATCH`] per tensor and batch, evenly
//!   strided, so memory stays bounded at 224x224.

use std::collections::{BTreeMap, HashMap};

use candle_core::{DType, Tensor};
use cv_ops::int8::QParams;

use super::graph::{ConvSpec, Executor};
use crate::error::{ModelError, Result};
use crate::Architecture;

/// Values kept per tensor and batch by the percentile observer.
pub const SAMPLES_PER_BATCH: usize = 1 << 16;
/// The name of the input's range.
pub const INPUT: &str = "input";

/// How a range is taken from the observed values.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Observer {
    /// Smallest to largest value.
    MinMax,
    /// The `percentile`-th and `(100 - percentile)`-th percentiles.
    Percentile {
        /// In (50, 100], e.g. 99.99.
        percentile: f64,
    },
}

impl Observer {
    /// Refuses a percentile outside (50, 100].
    pub fn check(self) -> Result<Observer> {
        match self {
            Observer::Percentile { percentile } if !(percentile > 50.0 && percentile <= 100.0) => {
                Err(ModelError::Config(format!(
                    "percentile {percentile} is not in (50, 100]"
                )))
            }
            o => Ok(o),
        }
    }
}

impl std::fmt::Display for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Observer::MinMax => f.write_str("min-max"),
            Observer::Percentile { percentile } => write!(f, "percentile {percentile}"),
        }
    }
}

/// What was seen of one tensor.
#[derive(Clone, Debug, Default)]
struct Seen {
    min: f32,
    max: f32,
    samples: Vec<f32>,
    any: bool,
}

/// The ranges recorded over the calibration batches, by tensor name.
#[derive(Clone, Debug)]
pub struct Calibration {
    observer: Observer,
    seen: BTreeMap<String, Seen>,
    images: usize,
}

impl Calibration {
    /// An empty record for `observer`.
    pub fn new(observer: Observer) -> Result<Calibration> {
        Ok(Calibration {
            observer: observer.check()?,
            seen: BTreeMap::new(),
            images: 0,
        })
    }

    /// Runs the f32 graph of `arch` over the batch `x` `[n, 3, h, w]` and records its ranges;
    /// `state` is the folded f32 state.
    pub fn observe(
        &mut self,
        arch: Architecture,
        state: &HashMap<String, Tensor>,
        x: &Tensor,
    ) -> Result<()> {
        let head = super::graph::head_state(arch, state)?;
        let mut exec = FloatExec {
            state,
            record: self,
        };
        super::graph::run(arch, &mut exec, &head, x)?;
        self.images += x.dim(0)?;
        Ok(())
    }

    /// Images observed so far.
    pub fn images(&self) -> usize {
        self.images
    }

    /// The observer used.
    pub fn observer(&self) -> Observer {
        self.observer
    }

    fn record(&mut self, name: &str, t: &Tensor) -> Result<()> {
        let v = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        if let Some(bad) = v.iter().find(|x| !x.is_finite()) {
            return Err(ModelError::Quantized(format!(
                "{name}: the f32 network computed {bad} on a calibration image"
            )));
        }
        let seen = self.seen.entry(name.to_string()).or_default();
        let (lo, hi) = v
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &x| {
                (lo.min(x), hi.max(x))
            });
        if seen.any {
            seen.min = seen.min.min(lo);
            seen.max = seen.max.max(hi);
        } else {
            (seen.min, seen.max, seen.any) = (lo, hi, true);
        }
        if matches!(self.observer, Observer::Percentile { .. }) {
            let step = v.len().div_ceil(SAMPLES_PER_BATCH).max(1);
            seen.samples.extend(v.iter().step_by(step));
        }
        Ok(())
    }

    /// The quantization of tensor `name` from what was seen.
    pub fn qparams(&self, name: &str) -> Result<QParams> {
        let seen = self.seen.get(name).filter(|s| s.any).ok_or_else(|| {
            ModelError::Quantized(format!("{name}: no calibration image was observed"))
        })?;
        let (lo, hi) = match self.observer {
            Observer::MinMax => (seen.min, seen.max),
            Observer::Percentile { percentile } => {
                let mut s = seen.samples.clone();
                s.sort_by(f32::total_cmp);
                let at = |p: f64| s[((p / 100.0) * (s.len() - 1) as f64).round() as usize];
                (at(100.0 - percentile), at(percentile))
            }
        };
        QParams::from_range(lo, hi).map_err(|e| ModelError::Quantized(format!("{name}: {e}")))
    }
}

/// The f32 executor over the folded state, recording into a [`Calibration`].
struct FloatExec<'a> {
    state: &'a HashMap<String, Tensor>,
    record: &'a mut Calibration,
}

impl Executor for FloatExec<'_> {
    type Act = Tensor;

    fn input(&mut self, x: &Tensor) -> Result<Tensor> {
        self.record.record(INPUT, x)?;
        Ok(x.clone())
    }

    fn conv(
        &mut self,
        c: &ConvSpec,
        x: &Tensor,
        relu: bool,
        residual: Option<&Tensor>,
    ) -> Result<Tensor> {
        let get = |k: &str| {
            self.state.get(&format!("{}.{k}", c.name)).ok_or_else(|| {
                ModelError::Quantized(format!("the folded state has no {}.{k}", c.name))
            })
        };
        let mut y = cv_ops::conv2d(x, get("weight")?, c.stride, c.padding)?
            .broadcast_add(&get("bias")?.reshape((1, (), 1, 1))?)?;
        if let Some(r) = residual {
            y = (y + r)?;
        }
        if relu {
            y = y.relu()?;
        }
        self.record.record(&c.name, &y)?;
        Ok(y)
    }

    fn max_pool(
        &mut self,
        x: &Tensor,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Result<Tensor> {
        super::TensorExec.max_pool(x, kernel, stride, padding)
    }

    fn to_f32(&mut self, x: &Tensor) -> Result<Tensor> {
        super::TensorExec.to_f32(x)
    }

    fn pooled(&mut self, x: &Tensor) -> Result<Tensor> {
        super::TensorExec.pooled(x)
    }
}
