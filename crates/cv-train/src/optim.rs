//! SGD (momentum, dampening, Nesterov, L2 weight decay) and AdamW with PyTorch semantics,
//! parameter groups with their own learning rate and weight decay, and optimizer state that
//! can be exported and imported as named tensors for an exact resume.
//!
//! Why not `candle_nn::SGD`: it has no momentum, dampening, Nesterov or weight decay, so it
//! cannot reproduce PyTorch's `torch.optim.SGD(momentum=0.9)`, which the tutorial uses.
//! `candle_nn::AdamW` has no parameter groups and no state export, so resume could not be exact.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

/// A set of parameters that share a learning-rate multiplier and a weight decay.
///
/// Fine-tuning uses several: the pretrained backbone with `lr_scale` 0.1 and the new head with
/// 1.0 (fastai's discriminative rates), and BatchNorm/bias parameters with no weight decay.
#[derive(Debug, Clone)]
pub struct ParamGroup {
    /// A name for logs and errors (e.g. `"backbone"`, `"head.no_decay"`).
    pub name: String,
    /// The parameters, with their state-dict names (used to key the optimizer state).
    pub vars: Vec<(String, Var)>,
    /// Multiplier applied to the optimizer's (scheduled) learning rate.
    pub lr_scale: f64,
    /// Weight decay of this group (L2 for SGD, decoupled for AdamW).
    pub weight_decay: f64,
}

impl ParamGroup {
    /// Splits named vars into a decayed group `name` and an undecayed group `name.no_decay`
    /// (BatchNorm weights/biases and every bias, as `cv_models::params::is_no_decay` says),
    /// dropping BatchNorm running statistics (`cv_models::params::is_buffer`), which are state,
    /// not parameters. Empty groups are left out.
    pub fn split_decay(
        name: &str,
        vars: Vec<(String, Var)>,
        lr_scale: f64,
        weight_decay: f64,
    ) -> Vec<ParamGroup> {
        let mut decay = Vec::new();
        let mut no_decay = Vec::new();
        for (key, var) in vars {
            if cv_models::params::is_buffer(&key) {
                continue;
            }
            if cv_models::params::is_no_decay(&key) {
                no_decay.push((key, var));
            } else {
                decay.push((key, var));
            }
        }
        let mut groups = Vec::new();
        if !decay.is_empty() {
            groups.push(ParamGroup {
                name: name.to_string(),
                vars: decay,
                lr_scale,
                weight_decay,
            });
        }
        if !no_decay.is_empty() {
            groups.push(ParamGroup {
                name: format!("{name}.no_decay"),
                vars: no_decay,
                lr_scale,
                weight_decay: 0.0,
            });
        }
        groups
    }
}

/// One parameter as the optimizer sees it.
#[derive(Debug, Clone)]
struct Param {
    name: String,
    var: Var,
    lr_scale: f64,
    weight_decay: f64,
}

/// Flattens groups, refusing duplicate names (the state is keyed by name) and buffers.
fn flatten(groups: Vec<ParamGroup>) -> Result<Vec<Param>> {
    let mut seen = HashSet::new();
    let mut params = Vec::new();
    for group in groups {
        for (name, var) in group.vars {
            if cv_models::params::is_buffer(&name) {
                return Err(TrainError::Config(format!(
                    "{name} (group {}) is a BatchNorm statistic, not a trainable parameter",
                    group.name
                )));
            }
            if !var.dtype().is_float() {
                continue;
            }
            if !seen.insert(name.clone()) {
                return Err(TrainError::Config(format!(
                    "parameter {name} appears twice in the optimizer groups"
                )));
            }
            params.push(Param {
                name,
                var,
                lr_scale: group.lr_scale,
                weight_decay: group.weight_decay,
            });
        }
    }
    Ok(params)
}

/// Names vars given without names (the `candle_nn::Optimizer::new` path) by position.
fn unnamed(vars: Vec<Var>, weight_decay: f64) -> Vec<ParamGroup> {
    vec![ParamGroup {
        name: "all".into(),
        vars: vars
            .into_iter()
            .enumerate()
            .map(|(i, v)| (format!("param{i}"), v))
            .collect(),
        lr_scale: 1.0,
        weight_decay,
    }]
}

fn state_error(message: String) -> TrainError {
    TrainError::State {
        path: PathBuf::from("<optimizer state>"),
        message,
    }
}

/// Checks that every key of a saved state belongs to this optimizer and has the right shape.
fn check_state_keys(
    params: &[Param],
    state: &HashMap<String, Tensor>,
    prefixes: &[&str],
) -> Result<()> {
    let by_name: HashMap<&str, &Param> = params.iter().map(|p| (p.name.as_str(), p)).collect();
    for (key, tensor) in state {
        let Some((prefix, name)) = prefixes
            .iter()
            .find_map(|p| key.strip_prefix(p).map(|rest| (*p, rest)))
        else {
            return Err(state_error(format!("unexpected optimizer state key {key}")));
        };
        let Some(param) = by_name.get(name) else {
            return Err(state_error(format!(
                "optimizer state {key} is for a parameter this optimizer does not train"
            )));
        };
        if !prefix.ends_with("step.") && tensor.dims() != param.var.dims() {
            return Err(state_error(format!(
                "optimizer state {key} has shape {:?}, the parameter has {:?}",
                tensor.dims(),
                param.var.dims()
            )));
        }
    }
    Ok(())
}

/// Hyper-parameters of [`Sgd`], as `torch.optim.SGD` names them.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SgdConfig {
    /// Base learning rate (each group multiplies it by its `lr_scale`).
    pub lr: f64,
    /// Momentum factor; 0 disables the momentum buffer.
    pub momentum: f64,
    /// Dampening of the gradient added to the momentum buffer (PyTorch default 0).
    pub dampening: f64,
    /// Nesterov momentum (needs momentum > 0 and dampening 0, as in PyTorch).
    pub nesterov: bool,
    /// Weight decay for groups built by `Optimizer::new` (groups carry their own).
    pub weight_decay: f64,
}

impl Default for SgdConfig {
    fn default() -> Self {
        SgdConfig {
            lr: 0.01,
            momentum: 0.9,
            dampening: 0.0,
            nesterov: false,
            weight_decay: 0.0,
        }
    }
}

/// Stochastic gradient descent with PyTorch's semantics:
/// `g = grad + wd*p`; `buf = g` on the first step, then `buf = m*buf + (1-dampening)*g`;
/// `g = g + m*buf` (Nesterov) or `g = buf`; `p -= lr*lr_scale*g`.
#[derive(Debug)]
pub struct Sgd {
    params: Vec<Param>,
    config: SgdConfig,
    momentum_buffers: HashMap<String, Tensor>,
}

const SGD_BUF: &str = "sgd.momentum_buffer.";

impl Sgd {
    /// Builds the optimizer over parameter groups.
    pub fn with_groups(groups: Vec<ParamGroup>, config: SgdConfig) -> Result<Self> {
        if config.nesterov && (config.momentum <= 0.0 || config.dampening != 0.0) {
            return Err(TrainError::Config(
                "Nesterov momentum requires a momentum > 0 and zero dampening".into(),
            ));
        }
        Ok(Sgd {
            params: flatten(groups)?,
            config,
            momentum_buffers: HashMap::new(),
        })
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &SgdConfig {
        &self.config
    }

    /// Names of the parameters this optimizer updates.
    pub fn param_names(&self) -> Vec<&str> {
        self.params.iter().map(|p| p.name.as_str()).collect()
    }

    /// The momentum buffers as named tensors (`sgd.momentum_buffer.<param>`).
    pub fn state_tensors(&self) -> HashMap<String, Tensor> {
        self.momentum_buffers
            .iter()
            .map(|(k, v)| (format!("{SGD_BUF}{k}"), v.clone()))
            .collect()
    }

    /// Restores momentum buffers saved by [`Sgd::state_tensors`]. Parameters without a saved
    /// buffer start fresh (e.g. the backbone after gradual unfreezing).
    pub fn load_state_tensors(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        check_state_keys(&self.params, state, &[SGD_BUF])?;
        self.momentum_buffers.clear();
        for (key, tensor) in state {
            if let Some(name) = key.strip_prefix(SGD_BUF) {
                self.momentum_buffers
                    .insert(name.to_string(), tensor.to_dtype(DType::F32)?.detach());
            }
        }
        Ok(())
    }

    /// One update of every parameter that has a gradient.
    fn update(&mut self, grads: &GradStore) -> Result<()> {
        let c = self.config;
        for p in &self.params {
            let Some(grad) = grads.get(p.var.as_tensor()) else {
                continue;
            };
            let theta = p.var.as_detached_tensor();
            let lr = c.lr * p.lr_scale;
            let buf = self.momentum_buffers.get(&p.name);
            let in_place = cv_ops::sgd_update_applies(&[&theta, grad])
                && buf.is_none_or(|b| cv_ops::sgd_update_applies(&[b]));
            if in_place {
                let step = cv_ops::SgdStep {
                    lr: lr as f32,
                    momentum: c.momentum as f32,
                    dampening: c.dampening as f32,
                    weight_decay: p.weight_decay as f32,
                    nesterov: c.nesterov,
                };
                if let Some(b) = cv_ops::sgd_update(&theta, grad, buf, step)? {
                    self.momentum_buffers.insert(p.name.clone(), b);
                }
                continue;
            }
            let mut g = grad.detach();
            if p.weight_decay != 0.0 {
                g = (g + theta.affine(p.weight_decay, 0.0)?)?;
            }
            if c.momentum != 0.0 {
                let buf = match self.momentum_buffers.get(&p.name) {
                    None => g.copy()?,
                    Some(buf) => {
                        let add = if c.dampening != 0.0 {
                            g.affine(1.0 - c.dampening, 0.0)?
                        } else {
                            g.clone()
                        };
                        (buf.affine(c.momentum, 0.0)? + add)?
                    }
                };
                g = if c.nesterov {
                    (g + buf.affine(c.momentum, 0.0)?)?
                } else {
                    buf.clone()
                };
                self.momentum_buffers.insert(p.name.clone(), buf);
            }
            p.var.set(&(theta - g.affine(lr, 0.0)?)?)?;
        }
        Ok(())
    }
}

/// `candle_nn::Optimizer` speaks candle's error type: a candle error passes through, ours
/// becomes its message.
impl From<TrainError> for candle_core::Error {
    fn from(e: TrainError) -> Self {
        match e {
            TrainError::Candle(e) => e,
            other => candle_core::Error::Msg(other.to_string()),
        }
    }
}

impl candle_nn::Optimizer for Sgd {
    type Config = SgdConfig;

    fn new(vars: Vec<Var>, config: SgdConfig) -> candle_core::Result<Self> {
        Ok(Sgd::with_groups(
            unnamed(vars, config.weight_decay),
            config,
        )?)
    }

    fn step(&mut self, grads: &GradStore) -> candle_core::Result<()> {
        Ok(self.update(grads)?)
    }

    fn learning_rate(&self) -> f64 {
        self.config.lr
    }

    fn set_learning_rate(&mut self, lr: f64) {
        self.config.lr = lr;
    }
}

/// Hyper-parameters of [`AdamW`], as `torch.optim.AdamW` names them.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    /// Base learning rate (each group multiplies it by its `lr_scale`).
    pub lr: f64,
    /// Decay of the first moment.
    pub beta1: f64,
    /// Decay of the second moment.
    pub beta2: f64,
    /// Added to the denominator for stability.
    pub eps: f64,
    /// Decoupled weight decay for groups built by `Optimizer::new` (groups carry their own).
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            lr: 0.001,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

/// AdamW with PyTorch's semantics (decoupled weight decay `p *= 1 - lr*wd`, bias-corrected
/// moments, `eps` added after the square root of the corrected second moment, a step count
/// per parameter).
#[derive(Debug)]
pub struct AdamW {
    params: Vec<Param>,
    config: AdamWConfig,
    exp_avg: HashMap<String, Tensor>,
    exp_avg_sq: HashMap<String, Tensor>,
    steps: HashMap<String, u64>,
}

const ADAM_M: &str = "adamw.exp_avg.";
const ADAM_V: &str = "adamw.exp_avg_sq.";
const ADAM_STEP: &str = "adamw.step.";

impl AdamW {
    /// Builds the optimizer over parameter groups.
    pub fn with_groups(groups: Vec<ParamGroup>, config: AdamWConfig) -> Result<Self> {
        Ok(AdamW {
            params: flatten(groups)?,
            config,
            exp_avg: HashMap::new(),
            exp_avg_sq: HashMap::new(),
            steps: HashMap::new(),
        })
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &AdamWConfig {
        &self.config
    }

    /// Names of the parameters this optimizer updates.
    pub fn param_names(&self) -> Vec<&str> {
        self.params.iter().map(|p| p.name.as_str()).collect()
    }

    /// Moments and step counts as named tensors (`adamw.{exp_avg,exp_avg_sq,step}.<param>`).
    pub fn state_tensors(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        for (k, v) in &self.exp_avg {
            out.insert(format!("{ADAM_M}{k}"), v.clone());
        }
        for (k, v) in &self.exp_avg_sq {
            out.insert(format!("{ADAM_V}{k}"), v.clone());
        }
        for (k, &s) in &self.steps {
            let device = self.exp_avg.get(k).map(|t| t.device().clone());
            let device = device.unwrap_or(candle_core::Device::Cpu);
            out.insert(
                format!("{ADAM_STEP}{k}"),
                Tensor::new(&[s as i64], &device)?,
            );
        }
        Ok(out)
    }

    /// Restores the state saved by [`AdamW::state_tensors`].
    pub fn load_state_tensors(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        check_state_keys(&self.params, state, &[ADAM_M, ADAM_V, ADAM_STEP])?;
        self.exp_avg.clear();
        self.exp_avg_sq.clear();
        self.steps.clear();
        for (key, tensor) in state {
            if let Some(name) = key.strip_prefix(ADAM_M) {
                self.exp_avg
                    .insert(name.into(), tensor.to_dtype(DType::F32)?.detach());
            } else if let Some(name) = key.strip_prefix(ADAM_V) {
                self.exp_avg_sq
                    .insert(name.into(), tensor.to_dtype(DType::F32)?.detach());
            } else if let Some(name) = key.strip_prefix(ADAM_STEP) {
                let step = tensor
                    .flatten_all()?
                    .to_dtype(DType::I64)?
                    .to_vec1::<i64>()?;
                let step = step.first().copied().unwrap_or(0).max(0) as u64;
                self.steps.insert(name.into(), step);
            }
        }
        for name in self.steps.keys() {
            if !self.exp_avg.contains_key(name) || !self.exp_avg_sq.contains_key(name) {
                return Err(state_error(format!(
                    "AdamW state for {name} has a step count but no moments"
                )));
            }
        }
        Ok(())
    }

    fn update(&mut self, grads: &GradStore) -> Result<()> {
        let c = self.config;
        for p in &self.params {
            let Some(grad) = grads.get(p.var.as_tensor()) else {
                continue;
            };
            let g = grad.detach();
            let lr = c.lr * p.lr_scale;
            let mut theta = p.var.as_detached_tensor();
            if p.weight_decay != 0.0 {
                theta = theta.affine(1.0 - lr * p.weight_decay, 0.0)?;
            }
            let step = self.steps.get(&p.name).copied().unwrap_or(0) + 1;
            let m = match self.exp_avg.get(&p.name) {
                None => g.affine(1.0 - c.beta1, 0.0)?,
                Some(m) => (m.affine(c.beta1, 0.0)? + g.affine(1.0 - c.beta1, 0.0)?)?,
            };
            let g2 = g.sqr()?.affine(1.0 - c.beta2, 0.0)?;
            let v = match self.exp_avg_sq.get(&p.name) {
                None => g2,
                Some(v) => (v.affine(c.beta2, 0.0)? + g2)?,
            };
            let bc1 = 1.0 - c.beta1.powi(step as i32);
            let bc2 = 1.0 - c.beta2.powi(step as i32);
            let denom = v.sqrt()?.affine(1.0 / bc2.sqrt(), c.eps)?;
            let update = m.div(&denom)?.affine(lr / bc1, 0.0)?;
            p.var.set(&(theta - update)?)?;
            self.exp_avg.insert(p.name.clone(), m);
            self.exp_avg_sq.insert(p.name.clone(), v);
            self.steps.insert(p.name.clone(), step);
        }
        Ok(())
    }
}

impl candle_nn::Optimizer for AdamW {
    type Config = AdamWConfig;

    fn new(vars: Vec<Var>, config: AdamWConfig) -> candle_core::Result<Self> {
        Ok(AdamW::with_groups(
            unnamed(vars, config.weight_decay),
            config,
        )?)
    }

    fn step(&mut self, grads: &GradStore) -> candle_core::Result<()> {
        Ok(self.update(grads)?)
    }

    fn learning_rate(&self) -> f64 {
        self.config.lr
    }

    fn set_learning_rate(&mut self, lr: f64) {
        self.config.lr = lr;
    }
}

/// Either optimizer, so the trainer can hold the one the configuration names.
#[derive(Debug)]
pub enum AnyOptimizer {
    /// SGD with momentum.
    Sgd(Sgd),
    /// AdamW.
    AdamW(AdamW),
}

impl AnyOptimizer {
    /// Applies one update.
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        match self {
            AnyOptimizer::Sgd(o) => o.update(grads),
            AnyOptimizer::AdamW(o) => o.update(grads),
        }
    }

    /// Sets the base learning rate (before group scales).
    pub fn set_learning_rate(&mut self, lr: f64) {
        use candle_nn::Optimizer;
        match self {
            AnyOptimizer::Sgd(o) => o.set_learning_rate(lr),
            AnyOptimizer::AdamW(o) => o.set_learning_rate(lr),
        }
    }

    /// The base learning rate.
    pub fn learning_rate(&self) -> f64 {
        use candle_nn::Optimizer;
        match self {
            AnyOptimizer::Sgd(o) => o.learning_rate(),
            AnyOptimizer::AdamW(o) => o.learning_rate(),
        }
    }

    /// The optimizer state as named tensors.
    pub fn state_tensors(&self) -> Result<HashMap<String, Tensor>> {
        match self {
            AnyOptimizer::Sgd(o) => Ok(o.state_tensors()),
            AnyOptimizer::AdamW(o) => o.state_tensors(),
        }
    }

    /// Restores the optimizer state.
    pub fn load_state_tensors(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        match self {
            AnyOptimizer::Sgd(o) => o.load_state_tensors(state),
            AnyOptimizer::AdamW(o) => o.load_state_tensors(state),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use candle_nn::Optimizer;

    /// A var `p` whose loss is `sum(g * p)`: its gradient is exactly `g` at every step.
    fn linear_loss(p: &Var, g: &[f32]) -> Tensor {
        let g = Tensor::new(g, &Device::Cpu)
            .unwrap()
            .to_dtype(p.dtype())
            .unwrap();
        (p.as_tensor() * g).unwrap().sum_all().unwrap()
    }

    fn group(name: &str, p: &Var, lr_scale: f64, wd: f64) -> ParamGroup {
        ParamGroup {
            name: name.into(),
            vars: vec![(name.to_string(), p.clone())],
            lr_scale,
            weight_decay: wd,
        }
    }

    /// PyTorch's SGD on scalars, in f64.
    fn sgd_reference(
        p0: f64,
        grads: &[f64],
        lr: f64,
        m: f64,
        damp: f64,
        wd: f64,
        nesterov: bool,
    ) -> f64 {
        let (mut p, mut buf) = (p0, None::<f64>);
        for &g0 in grads {
            let mut g = g0 + wd * p;
            if m != 0.0 {
                let b = match buf {
                    None => g,
                    Some(b) => m * b + (1.0 - damp) * g,
                };
                buf = Some(b);
                g = if nesterov { g + m * b } else { b };
            }
            p -= lr * g;
        }
        p
    }

    #[test]
    fn sgd_variants_follow_pytorch() {
        let grads = [0.5f32, -1.0, 0.25, 2.0];
        for (m, damp, wd, nesterov) in [
            (0.0, 0.0, 0.0, false),
            (0.9, 0.0, 0.0, false),
            (0.9, 0.1, 0.0, false),
            (0.9, 0.0, 0.01, true),
            (0.5, 0.0, 0.1, false),
        ] {
            // f32 takes the in-place kernels (cv_ops::sgd_update), f64 candle's ops.
            for dtype in [DType::F32, DType::F64] {
                let p0 = Tensor::new(&[1.5f32, 1.5], &Device::Cpu).unwrap();
                let p = Var::from_tensor(&p0.to_dtype(dtype).unwrap()).unwrap();
                let cfg = SgdConfig {
                    lr: 0.1,
                    momentum: m,
                    dampening: damp,
                    nesterov,
                    weight_decay: wd,
                };
                let mut opt = Sgd::with_groups(vec![group("w", &p, 1.0, wd)], cfg).unwrap();
                for &g in &grads {
                    opt.backward_step(&linear_loss(&p, &[g, g])).unwrap();
                }
                let got = p.to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap()[0];
                let g64: Vec<f64> = grads.iter().map(|&g| g as f64).collect();
                let want = sgd_reference(1.5, &g64, 0.1, m, damp, wd, nesterov);
                assert!(
                    (got - want).abs() < 1e-6,
                    "{dtype:?} m {m} d {damp} wd {wd} n {nesterov}: {got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn groups_scale_the_rate_and_skip_decay() {
        let backbone = Var::new(&[1.0f32], &Device::Cpu).unwrap();
        let head = Var::new(&[1.0f32], &Device::Cpu).unwrap();
        let cfg = SgdConfig {
            lr: 1.0,
            momentum: 0.0,
            ..Default::default()
        };
        let mut opt = Sgd::with_groups(
            vec![
                group("layer1.0.conv1.weight", &backbone, 0.1, 0.0),
                group("fc.weight", &head, 1.0, 0.0),
            ],
            cfg,
        )
        .unwrap();
        let loss = (linear_loss(&backbone, &[1.0]) + linear_loss(&head, &[1.0])).unwrap();
        opt.backward_step(&loss).unwrap();
        assert!((backbone.to_vec1::<f32>().unwrap()[0] - 0.9).abs() < 1e-7);
        assert!((head.to_vec1::<f32>().unwrap()[0] - 0.0).abs() < 1e-7);
        // split_decay: BN weights and biases undecayed, buffers dropped.
        let v = |x: f32| Var::new(&[x], &Device::Cpu).unwrap();
        let groups = ParamGroup::split_decay(
            "net",
            vec![
                ("conv1.weight".into(), v(1.0)),
                ("bn1.weight".into(), v(1.0)),
                ("fc.bias".into(), v(1.0)),
                ("bn1.running_mean".into(), v(1.0)),
            ],
            0.5,
            0.01,
        );
        assert_eq!(groups.len(), 2);
        assert_eq!(
            groups[0]
                .vars
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>(),
            ["conv1.weight"]
        );
        assert_eq!(groups[0].weight_decay, 0.01);
        assert_eq!(groups[1].name, "net.no_decay");
        assert_eq!(groups[1].vars.len(), 2);
        assert_eq!(groups[1].weight_decay, 0.0);
        // Buffers are refused outright, and so are duplicates.
        let bad = vec![group("bn1.running_var", &backbone, 1.0, 0.0)];
        assert!(Sgd::with_groups(bad, SgdConfig::default()).is_err());
        let dup = vec![group("w", &backbone, 1.0, 0.0), group("w", &head, 1.0, 0.0)];
        assert!(Sgd::with_groups(dup, SgdConfig::default()).is_err());
    }

    #[test]
    fn adamw_follows_pytorch() {
        let grads = [0.5f32, -1.0, 0.25];
        let (lr, b1, b2, eps, wd) = (0.01, 0.9, 0.999, 1e-8, 0.1);
        let p = Var::new(&[2.0f32], &Device::Cpu).unwrap();
        let cfg = AdamWConfig {
            lr,
            beta1: b1,
            beta2: b2,
            eps,
            weight_decay: wd,
        };
        let mut opt = AdamW::with_groups(vec![group("w", &p, 1.0, wd)], cfg).unwrap();
        let (mut want, mut m, mut v) = (2.0f64, 0.0, 0.0);
        for (t, &g) in grads.iter().enumerate() {
            opt.backward_step(&linear_loss(&p, &[g])).unwrap();
            let (g, t) = (g as f64, (t + 1) as i32);
            want *= 1.0 - lr * wd;
            m = b1 * m + (1.0 - b1) * g;
            v = b2 * v + (1.0 - b2) * g * g;
            let denom = (v / (1.0 - b2.powi(t))).sqrt() + eps;
            want -= lr / (1.0 - b1.powi(t)) * m / denom;
        }
        let got = p.to_vec1::<f32>().unwrap()[0] as f64;
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
    }

    /// Exporting after 2 steps and importing into a fresh optimizer continues exactly.
    fn continues_exactly(make: &dyn Fn(&Var) -> AnyOptimizer) {
        let grads = [[0.5f32, -0.2], [1.0, 0.3], [-0.4, 0.8], [0.1, 0.1]];
        let a = Var::new(&[1.0f32, -1.0], &Device::Cpu).unwrap();
        let mut oa = make(&a);
        for g in &grads {
            oa.step(&linear_loss(&a, g).backward().unwrap()).unwrap();
        }
        let b = Var::new(&[1.0f32, -1.0], &Device::Cpu).unwrap();
        let mut ob = make(&b);
        for g in &grads[..2] {
            ob.step(&linear_loss(&b, g).backward().unwrap()).unwrap();
        }
        let state = ob.state_tensors().unwrap();
        assert!(!state.is_empty());
        let mut oc = make(&b);
        oc.load_state_tensors(&state).unwrap();
        for g in &grads[2..] {
            oc.step(&linear_loss(&b, g).backward().unwrap()).unwrap();
        }
        assert_eq!(a.to_vec1::<f32>().unwrap(), b.to_vec1::<f32>().unwrap());
    }

    #[test]
    fn state_export_import_is_exact() {
        continues_exactly(&|p| {
            AnyOptimizer::Sgd(
                Sgd::with_groups(vec![group("w", p, 1.0, 0.01)], SgdConfig::default()).unwrap(),
            )
        });
        continues_exactly(&|p| {
            AnyOptimizer::AdamW(
                AdamW::with_groups(vec![group("w", p, 1.0, 0.01)], AdamWConfig::default()).unwrap(),
            )
        });
        // State for an unknown or mis-shaped parameter is refused with its key.
        let p = Var::new(&[1.0f32, 2.0], &Device::Cpu).unwrap();
        let mut o = Sgd::with_groups(vec![group("w", &p, 1.0, 0.0)], SgdConfig::default()).unwrap();
        let t = Tensor::new(&[1.0f32], &Device::Cpu).unwrap();
        let err = o
            .load_state_tensors(&[("sgd.momentum_buffer.w".to_string(), t.clone())].into())
            .unwrap_err();
        assert!(err.to_string().contains("shape"), "{err}");
        let err = o
            .load_state_tensors(&[("sgd.momentum_buffer.v".to_string(), t)].into())
            .unwrap_err();
        assert!(err.to_string().contains("sgd.momentum_buffer.v"), "{err}");
    }

    #[test]
    fn nesterov_without_momentum_is_refused() {
        let p = Var::new(&[1.0f32], &Device::Cpu).unwrap();
        let cfg = SgdConfig {
            momentum: 0.0,
            nesterov: true,
            ..Default::default()
        };
        assert!(Sgd::with_groups(vec![group("w", &p, 1.0, 0.0)], cfg).is_err());
    }
}
