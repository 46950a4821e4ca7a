//! Model workloads on the CPU: train steps of the tutorial's small CNN and ResNet-18 (forward,
//! cross-entropy, backward, SGD momentum 0.9), eval forwards of ResNet-18 on the detached model,
//! and a 2048^3 f32 matmul as the GEMM ceiling. Each figure is the median of individually timed
//! iterations after warm-up, as images/s (GFLOP/s for the matmul).
//!
//! Peak memory: every training workload runs in a child process (this binary again, with
//! [`CHILD_ENV`] naming the workload) that reads `VmHWM` from `/proc/self/status` at its end, so
//! each figure belongs to one workload and not to whatever ran before it in the same process.
//!
//! `--compare-pytorch` runs `scripts/bench_pytorch.py` (same workloads, batch sizes and thread
//! count) in the same invocation and prints both sides with the ratio ours/PyTorch.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context};
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use cv_models::params::{trainable_vars, Trainable};
use cv_models::quant::{Calibration, Observer, QuantizedModel};
use cv_models::{init, Architecture, Model};
use cv_train::autocast::{compute_name, Autocast};
use cv_train::config::{Precision, TrainMode};
use cv_train::optim::{AnyOptimizer, ParamGroup, Sgd, SgdConfig};
use cv_train::trainer::{StepContext, TrainBatch, TrainStep};

use super::{Measurement, Reference, Report, Settings};

/// Set in a child process to the one training workload it measures.
pub const CHILD_ENV: &str = "CV_BENCH_MODELS_CHILD";

/// How `pip` installs what `scripts/bench_pytorch.py` needs (PyPI's wheels carry CUDA
/// libraries too, about 3 GB, and run on the CPU all the same).
const TORCH_INSTALL: &str = "pip install torch torchvision (or, CPU only: pip install torch torchvision --index-url https://download.pytorch.org/whl/cpu)";

/// What one workload runs.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    /// Forward, cross-entropy, backward, SGD step.
    Train(Architecture),
    /// Forward of the detached model in eval mode.
    Eval(Architecture),
    /// Forward of the int8 network (`cv_models::quant`) quantized from the same weights,
    /// calibrated on [`CALIBRATION_IMAGES`] images (PyTorch: `torch.ao.quantization` FX graph
    /// mode, x86 backend, the same number).
    EvalInt8(Architecture),
    /// `n x n` times `n x n`, f32.
    Matmul,
}

/// One workload: a fixed name (the key both sides report), its kind and sizes.
#[derive(Debug, Clone, Copy)]
struct Workload {
    name: &'static str,
    kind: Kind,
    /// Batch size (matrix side for the matmul).
    batch: usize,
    /// Input side (images are `3 x side x side`).
    side: usize,
    /// PyTorch 2.14 CPU on this 2-core EPYC, from an earlier probe (not the same run).
    pytorch_probe: f64,
    /// f32, or bf16 autocast (PyTorch's side under `torch.autocast("cpu", torch.bfloat16)`).
    precision: Precision,
}

const WORKLOADS: [Workload; 11] = [
    Workload {
        name: "net_train_b100_32",
        kind: Kind::Train(Architecture::SimpleCnn),
        batch: 100,
        side: 32,
        pytorch_probe: 11_230.0,
        precision: Precision::F32,
    },
    Workload {
        name: "resnet18_train_b64_32",
        kind: Kind::Train(Architecture::ResNet18),
        batch: 64,
        side: 32,
        pytorch_probe: 518.0,
        precision: Precision::F32,
    },
    Workload {
        name: "resnet18_train_b16_224",
        kind: Kind::Train(Architecture::ResNet18),
        batch: 16,
        side: 224,
        pytorch_probe: 13.1,
        precision: Precision::F32,
    },
    Workload {
        name: "resnet18_eval_b64_32",
        kind: Kind::Eval(Architecture::ResNet18),
        batch: 64,
        side: 32,
        pytorch_probe: 2_011.0,
        precision: Precision::F32,
    },
    Workload {
        name: "resnet18_eval_b16_224",
        kind: Kind::Eval(Architecture::ResNet18),
        batch: 16,
        side: 224,
        pytorch_probe: 41.9,
        precision: Precision::F32,
    },
    Workload {
        name: "matmul_2048",
        kind: Kind::Matmul,
        batch: 2048,
        side: 0,
        pytorch_probe: 145.0,
        precision: Precision::F32,
    },
    Workload {
        name: "resnet18_train_b16_224_bf16",
        kind: Kind::Train(Architecture::ResNet18),
        batch: 16,
        side: 224,
        pytorch_probe: 46.2,
        precision: Precision::Bf16,
    },
    Workload {
        name: "resnet18_eval_b16_224_bf16",
        kind: Kind::Eval(Architecture::ResNet18),
        batch: 16,
        side: 224,
        pytorch_probe: 124.9,
        precision: Precision::Bf16,
    },
    Workload {
        name: "resnet18_eval_b64_32_bf16",
        kind: Kind::Eval(Architecture::ResNet18),
        batch: 64,
        side: 32,
        pytorch_probe: 2_832.0,
        precision: Precision::Bf16,
    },
    Workload {
        name: "resnet18_eval_b16_224_int8",
        kind: Kind::EvalInt8(Architecture::ResNet18),
        batch: 16,
        side: 224,
        pytorch_probe: 226.9,
        precision: Precision::F32,
    },
    Workload {
        name: "resnet18_eval_b64_32_int8",
        kind: Kind::EvalInt8(Architecture::ResNet18),
        batch: 64,
        side: 32,
        pytorch_probe: 10_720.0,
        precision: Precision::F32,
    },
];

/// Calibration images of the int8 workloads (both sides), in batches of 8.
const CALIBRATION_IMAGES: usize = 32;

const NUM_CLASSES: usize = 10;
const LR: f64 = 0.01;
const MOMENTUM: f64 = 0.9;

impl Workload {
    fn unit(&self) -> &'static str {
        match self.kind {
            Kind::Matmul => "GFLOP/s",
            _ => "images/s",
        }
    }

    fn params(&self) -> serde_json::Value {
        match self.kind {
            Kind::Matmul => {
                serde_json::json!({"m": self.batch, "n": self.batch, "k": self.batch, "dtype": "f32"})
            }
            Kind::Train(arch) => serde_json::json!({
                "model": arch.as_str(), "mode": "train", "batch_size": self.batch,
                "precision": self.precision,
                "input": [3, self.side, self.side], "classes": NUM_CLASSES,
                "optimizer": {"sgd": {"lr": LR, "momentum": MOMENTUM}},
            }),
            Kind::Eval(arch) => serde_json::json!({
                "model": arch.as_str(), "mode": "eval (detached)", "batch_size": self.batch,
                "precision": self.precision,
                "input": [3, self.side, self.side], "classes": NUM_CLASSES,
            }),
            Kind::EvalInt8(arch) => serde_json::json!({
                "model": arch.as_str(), "mode": "eval, int8 static (min-max)", "batch_size": self.batch,
                "precision": "int8", "kernel": cv_models::quant::int8_kernel().name(),
                "calibration_images": CALIBRATION_IMAGES,
                "input": [3, self.side, self.side], "classes": NUM_CLASSES,
            }),
        }
    }

    /// Work of one iteration, in the unit's numerator (images, or GFLOP for the matmul).
    fn work_per_iteration(&self) -> f64 {
        match self.kind {
            Kind::Matmul => 2.0 * (self.batch as f64).powi(3) / 1e9,
            _ => self.batch as f64,
        }
    }
}

/// A prepared workload: call it once per iteration.
type Step = Box<dyn FnMut() -> anyhow::Result<()>>;

/// Builds the model, data and optimizer of `w` (outside the timed part), the model's
/// parameters in `varmap`.
fn prepare(w: &Workload, varmap: &VarMap) -> anyhow::Result<Step> {
    let dev = Device::Cpu;
    match w.kind {
        Kind::Matmul => {
            let n = w.batch;
            let a = Tensor::randn(0f32, 1.0, (n, n), &dev)?;
            let b = Tensor::randn(0f32, 1.0, (n, n), &dev)?;
            Ok(Box::new(move || {
                let c = a.matmul(&b)?;
                // Keep the product alive until here so nothing is optimised away.
                std::hint::black_box(&c);
                Ok(())
            }))
        }
        Kind::EvalInt8(arch) => prepare_int8(w, arch, varmap),
        Kind::Train(arch) | Kind::Eval(arch) => {
            let vb = VarBuilder::from_varmap(varmap, DType::F32, &dev);
            let model = Model::new(arch, NUM_CLASSES, vb)?;
            init::initialise(varmap, arch, 0)?;
            let x = Tensor::randn(0f32, 1.0, (w.batch, 3, w.side, w.side), &dev)?;
            let precision = w.precision;
            if let Kind::Eval(_) = w.kind {
                let model = model.detached();
                return Ok(Box::new(move || {
                    let cast = Autocast::enter(precision, &Device::Cpu)?;
                    let logits = model.forward_t(&cast.input(&x)?, false)?;
                    std::hint::black_box(&logits);
                    Ok(())
                }));
            }
            let labels: Vec<u32> = (0..w.batch as u32).map(|i| (i * 7) % 10).collect();
            let batch = TrainBatch::new(x, Tensor::from_vec(labels, w.batch, &dev)?);
            let group = ParamGroup {
                name: "all".into(),
                vars: trainable_vars(varmap, arch, Trainable::All),
                lr_scale: 1.0,
                weight_decay: 0.0,
            };
            let config = SgdConfig {
                lr: LR,
                momentum: MOMENTUM,
                ..SgdConfig::default()
            };
            let mut opt = AnyOptimizer::Sgd(Sgd::with_groups(vec![group], config)?);
            let frozen = model.detached();
            let ctx = StepContext {
                epoch: 0,
                batch: 0,
                global_step: 0,
                mode: TrainMode::Full,
                lr: LR,
            };
            // The trainer's own step: forward, loss, backward, update (and the finite-loss check).
            Ok(Box::new(move || {
                let step = TrainStep::new(&model, &frozen, TrainMode::Full, precision, 0.0);
                step.run(&batch, &mut opt, &mut [], &ctx)?;
                Ok(())
            }))
        }
    }
}

/// The int8 network of `arch` quantized from freshly initialised weights, calibrated on
/// [`CALIBRATION_IMAGES`] random images, and its forward on a random batch.
fn prepare_int8(w: &Workload, arch: Architecture, varmap: &VarMap) -> anyhow::Result<Step> {
    let dev = Device::Cpu;
    Model::new(
        arch,
        NUM_CLASSES,
        VarBuilder::from_varmap(varmap, DType::F32, &dev),
    )?;
    init::initialise(varmap, arch, 0)?;
    let folded = cv_models::fold::fold_batch_norm(arch, &cv_models::state::state_dict(varmap)?)?;
    let mut calibration = Calibration::new(Observer::MinMax)?;
    for _ in 0..CALIBRATION_IMAGES.div_ceil(8) {
        let x = Tensor::randn(0f32, 1.0, (8, 3, w.side, w.side), &dev)?;
        calibration.observe(arch, &folded, &x)?;
    }
    let model = QuantizedModel::quantize(arch, &folded, &calibration)?;
    let x = Tensor::randn(0f32, 1.0, (w.batch, 3, w.side, w.side), &dev)?;
    Ok(Box::new(move || {
        std::hint::black_box(model.forward(&x)?);
        Ok(())
    }))
}

/// Durations of individually timed iterations of `step` after `warmup` untimed ones: at least
/// `min_iters`, then until `settings.min_time` has passed.
fn time_iterations(
    step: &mut Step,
    warmup: usize,
    min_iters: usize,
    settings: &Settings,
) -> anyhow::Result<(Vec<f64>, f64, Option<f64>)> {
    for _ in 0..warmup {
        step()?;
    }
    let cpu0 = super::process_cpu_seconds();
    let start = Instant::now();
    let mut times = Vec::new();
    while times.len() < min_iters || start.elapsed() < settings.min_time {
        let t = Instant::now();
        step()?;
        times.push(t.elapsed().as_secs_f64());
    }
    let total = start.elapsed().as_secs_f64();
    let cpu = match (cpu0, super::process_cpu_seconds()) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    Ok((times, total, cpu))
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => v[n / 2],
        _ => 0.5 * (v[n / 2 - 1] + v[n / 2]),
    }
}

/// Runs `w` in this process and returns its throughput figure.
fn measure(w: &Workload, settings: &Settings) -> anyhow::Result<Measurement> {
    let mut step = prepare(w, &VarMap::new()).with_context(|| format!("preparing {}", w.name))?;
    let min_iters = if settings.quick { 1 } else { 3 };
    let (times, seconds, cpu_seconds) =
        time_iterations(&mut step, settings.warmup, min_iters, settings)
            .with_context(|| format!("running {}", w.name))?;
    let med = median(&times);
    let mut params = w.params();
    params["warmup"] = settings.warmup.into();
    params["median_iteration_seconds"] = med.into();
    Ok(Measurement {
        group: "models".into(),
        name: w.name.into(),
        unit: w.unit().into(),
        value: w.work_per_iteration() / med.max(1e-12),
        // Images, or whole GFLOP for the matmul (so the harness's per-CPU-second rate fits).
        items: (w.work_per_iteration() * times.len() as f64).round() as u64,
        iterations: times.len() as u64,
        seconds,
        cpu_seconds,
        params,
        reference: Some(Reference {
            what: "PyTorch 2.14 CPU, earlier probe on the 2-core EPYC".into(),
            range: [w.pytorch_probe, w.pytorch_probe],
        }),
    })
}

/// `VmHWM` (peak resident set) in MiB from the text of `/proc/<pid>/status`.
fn parse_vm_hwm_mib(status: &str) -> Option<f64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let mut fields = line["VmHWM:".len()..].split_whitespace();
    let value: f64 = fields.next()?.parse().ok()?;
    match fields.next() {
        Some("kB") => Some(value / 1024.0),
        _ => None,
    }
}

fn peak_rss_mib() -> anyhow::Result<f64> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    parse_vm_hwm_mib(&status).context("/proc/self/status has no VmHWM line in kB")
}

fn rss_measurement(w: &Workload, mib: f64, reference: Option<Reference>) -> Measurement {
    let mut params = w.params();
    params["measured"] = "VmHWM of a process that ran only this workload".into();
    Measurement {
        group: "models".into(),
        name: format!("{}_peak_rss_mib", w.name),
        unit: "MiB".into(),
        value: mib,
        items: 0,
        iterations: 0,
        seconds: 0.0,
        cpu_seconds: None,
        params,
        reference,
    }
}

/// In a child: run only the workload named by [`CHILD_ENV`], then its peak RSS.
fn run_child(name: &str, settings: &Settings, report: &mut Report) -> anyhow::Result<()> {
    let w = WORKLOADS
        .iter()
        .find(|w| w.name == name)
        .with_context(|| format!("{CHILD_ENV}={name} names no model workload"))?;
    let m = measure(w, settings)?;
    report.push(m);
    report.push(rss_measurement(w, peak_rss_mib()?, None));
    Ok(())
}

/// Runs training workload `w` in a child process (this binary) and returns its figures.
fn measure_in_child(w: &Workload, settings: &Settings) -> anyhow::Result<Vec<serde_json::Value>> {
    let exe = std::env::current_exe().context("locating the xtask binary")?;
    let json =
        std::env::temp_dir().join(format!("cv-bench-{}-{}.json", std::process::id(), w.name));
    let mut cmd = Command::new(&exe);
    cmd.args(["bench", "models", "--json"])
        .arg(&json)
        .args(["--seconds", &settings.min_time.as_secs_f64().to_string()])
        .env(CHILD_ENV, w.name)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    if settings.quick {
        cmd.arg("--quick");
    }
    let status = cmd
        .status()
        .with_context(|| format!("starting {} for {}", exe.display(), w.name))?;
    let text = std::fs::read_to_string(&json);
    let _ = std::fs::remove_file(&json);
    if !status.success() {
        bail!("the child process measuring {} failed ({status})", w.name);
    }
    let text = text.with_context(|| format!("reading {}", json.display()))?;
    let doc: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", json.display()))?;
    match doc.get("results").and_then(|r| r.as_array()) {
        Some(r) if r.len() == 2 => Ok(r.clone()),
        _ => bail!(
            "{} does not hold the 2 figures of {}",
            json.display(),
            w.name
        ),
    }
}

/// A [`Measurement`] back from the JSON a child wrote.
fn measurement_from_json(v: &serde_json::Value) -> anyhow::Result<Measurement> {
    let s = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
    let f = |k: &str| v.get(k).and_then(|x| x.as_f64());
    let u = |k: &str| v.get(k).and_then(|x| x.as_u64());
    Ok(Measurement {
        group: s("group").context("child figure without group")?,
        name: s("name").context("child figure without name")?,
        unit: s("unit").context("child figure without unit")?,
        value: f("value").context("child figure without value")?,
        items: u("items").unwrap_or(0),
        iterations: u("iterations").unwrap_or(0),
        seconds: f("seconds").unwrap_or(0.0),
        cpu_seconds: f("cpu_seconds"),
        params: v.get("params").cloned().unwrap_or(serde_json::Value::Null),
        reference: None,
    })
}

/// Figures from `scripts/bench_pytorch.py --json -`, keyed by name.
#[derive(Debug, Clone)]
pub(super) struct Pytorch {
    pub version: String,
    pub values: std::collections::HashMap<String, f64>,
}

fn parse_pytorch(text: &str) -> anyhow::Result<Pytorch> {
    let doc: serde_json::Value =
        serde_json::from_str(text).context("bench_pytorch.py printed no valid JSON")?;
    let version = doc
        .get("torch_version")
        .and_then(|v| v.as_str())
        .unwrap_or("?")
        .to_string();
    let results = doc
        .get("results")
        .and_then(|r| r.as_array())
        .context("bench_pytorch.py JSON has no results array")?;
    let mut values = std::collections::HashMap::new();
    for r in results {
        let name = r.get("name").and_then(|n| n.as_str());
        let value = r.get("value").and_then(|n| n.as_f64());
        match (name, value) {
            (Some(n), Some(v)) => values.insert(n.to_string(), v),
            _ => bail!("bench_pytorch.py result without name or value: {r}"),
        };
    }
    Ok(Pytorch { version, values })
}

/// `scripts/<name>` of the checkout this xtask was built from, or, for a copied binary run
/// elsewhere (a benchmark machine without a Rust toolchain), of the current directory.
fn script_path(name: &str) -> PathBuf {
    let built = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("scripts")
        .join(name);
    let here = Path::new("scripts").join(name);
    if !built.is_file() && here.is_file() {
        here
    } else {
        built
    }
}

/// Fails with the install command when `python3` cannot import torch and torchvision.
pub(super) fn check_torch() -> anyhow::Result<()> {
    let out = Command::new("python3")
        .args(["-c", "import torch, torchvision"])
        .output();
    match out {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => bail!(
            "--compare-pytorch needs PyTorch: python3 cannot import torch/torchvision ({}). Install them with: {TORCH_INSTALL}",
            String::from_utf8_lossy(&o.stderr).lines().last().unwrap_or("no message").trim()
        ),
        Err(e) => bail!("--compare-pytorch needs python3 with PyTorch, but python3 could not be run ({e}). Install Python 3, then: {TORCH_INSTALL}"),
    }
}

/// The memory layout PyTorch's side runs its models in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TorchLayout {
    /// NCHW, as the tutorial (and our models) use.
    Contiguous,
    /// NHWC (`torch.channels_last`), PyTorch's fastest CPU layout for convolutions.
    ChannelsLast,
}

impl TorchLayout {
    /// How tables and JSON name the layout (empty for the default).
    fn label(self) -> &'static str {
        match self {
            Self::Contiguous => "",
            Self::ChannelsLast => ", channels-last",
        }
    }
}

/// Runs the PyTorch side with the same workloads, thread count and timing settings.
fn run_pytorch(
    settings: &Settings,
    names: &[&str],
    threads: usize,
    layout: TorchLayout,
) -> anyhow::Result<Pytorch> {
    let what = format!("PyTorch, {threads} threads{}", layout.label());
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut extra = vec!["--threads".to_string(), threads.to_string()];
    if layout == TorchLayout::ChannelsLast {
        extra.push("--channels-last".into());
    }
    run_script("bench_pytorch.py", &what, &extra, settings, &names)
}

/// Runs `scripts/<name> --json - <extra> --seconds .. --warmup .. --only <names>` with
/// `python3` and reads the figures it prints.
pub(super) fn run_script(
    name: &str,
    what: &str,
    extra: &[String],
    settings: &Settings,
    names: &[String],
) -> anyhow::Result<Pytorch> {
    let script = script_path(name);
    eprintln!("running {} ({what})...", script.display());
    let mut cmd = Command::new("python3");
    cmd.arg(&script)
        .args(["--json", "-"])
        .args(extra)
        .args(["--seconds", &settings.min_time.as_secs_f64().to_string()])
        .args(["--warmup", &settings.warmup.to_string()])
        .arg("--only")
        .arg(names.join(","))
        .stderr(Stdio::inherit());
    if settings.quick {
        cmd.arg("--quick");
    }
    let out = cmd
        .output()
        .with_context(|| format!("running python3 {}", script.display()))?;
    if !out.status.success() {
        bail!("{} failed ({})", script.display(), out.status);
    }
    parse_pytorch(&String::from_utf8_lossy(&out.stdout))
        .with_context(|| format!("reading the output of {}", script.display()))
}

/// Whether this CPU runs `w`'s arithmetic; a notice names what it lacks when not.
fn runs_here(w: &Workload) -> bool {
    match compute_name(w.precision, &Device::Cpu) {
        Ok(_) => true,
        Err(e) => {
            eprintln!("skipping {}: {e}", w.name);
            false
        }
    }
}

/// PyTorch's figures in both layouts.
struct Torch {
    version: String,
    nchw: Pytorch,
    channels_last: Pytorch,
}

impl Torch {
    /// Both layouts' runs of `names`.
    fn measure(settings: &Settings, names: &[&str], threads: usize) -> anyhow::Result<Self> {
        check_torch()?;
        let nchw = run_pytorch(settings, names, threads, TorchLayout::Contiguous)?;
        let channels_last = run_pytorch(settings, names, threads, TorchLayout::ChannelsLast)?;
        Ok(Torch {
            version: nchw.version.clone(),
            nchw,
            channels_last,
        })
    }

    /// PyTorch's figure for `name` in its faster layout for that workload (a peak-memory
    /// figure comes from the layout whose throughput was faster), and the layout.
    fn best(&self, name: &str) -> Option<(f64, TorchLayout)> {
        let base = name.strip_suffix("_peak_rss_mib").unwrap_or(name);
        let a = self.nchw.values.get(base).copied().unwrap_or(0.0);
        let b = self.channels_last.values.get(base).copied().unwrap_or(0.0);
        let (layout, figures) = if b > a {
            (TorchLayout::ChannelsLast, &self.channels_last)
        } else {
            (TorchLayout::Contiguous, &self.nchw)
        };
        figures.values.get(name).map(|&v| (v, layout))
    }
}

/// Which side of a comparison runs first (rounds alternate, so that a drift of the host's
/// speed does not favour one side).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    ReferenceFirst,
    OursFirst,
}

/// Runs the selected model workloads; with `compare`, PyTorch's side too, in both layouts,
/// before or after ours as `order` says.
pub fn run(
    settings: &Settings,
    report: &mut Report,
    compare: bool,
    order: Order,
) -> anyhow::Result<()> {
    if let Ok(name) = std::env::var(CHILD_ENV) {
        return run_child(&name, settings, report);
    }
    let selected: Vec<&Workload> = WORKLOADS
        .iter()
        .filter(|w| settings.selected(w.name) && runs_here(w))
        .collect();
    let names: Vec<&str> = selected.iter().map(|w| w.name).collect();
    let threads = report.rayon_threads;
    let reference = |first: bool| -> anyhow::Result<Option<Torch>> {
        match compare && first == (order == Order::ReferenceFirst) {
            true => Torch::measure(settings, &names, threads).map(Some),
            false => Ok(None),
        }
    };
    let before = reference(true)?;
    // Figures are printed as they come unless their reference is still to be measured.
    let print_now = before.is_some() || !compare;
    let mut ours = Vec::new();
    for w in selected {
        for mut m in measure_workload(w, settings)? {
            if let Some(t) = &before {
                compare_with(&mut m, t);
            }
            if print_now {
                report.push(m.clone());
            }
            ours.push(m);
        }
    }
    let torch = match before {
        Some(t) => Some(t),
        None => reference(false)?,
    };
    if !print_now {
        for m in &mut ours {
            if let Some(t) = &torch {
                compare_with(m, t);
            }
            report.push(m.clone());
        }
    }
    if let Some(t) = &torch {
        print_comparison(&ours, t, report.rayon_threads);
    }
    Ok(())
}

/// Our figures of one workload (a training step's throughput and peak memory from a child
/// process, with the earlier PyTorch probe as its reference until a same-run one replaces it).
fn measure_workload(w: &Workload, settings: &Settings) -> anyhow::Result<Vec<Measurement>> {
    match w.kind {
        Kind::Train(_) => {
            let raw = measure_in_child(w, settings)?;
            let mut ms = raw
                .iter()
                .map(measurement_from_json)
                .collect::<anyhow::Result<Vec<_>>>()?;
            if let Some(throughput) = ms.first_mut() {
                throughput.reference = Some(Reference {
                    what: "PyTorch 2.14 CPU, earlier probe on the 2-core EPYC".into(),
                    range: [w.pytorch_probe, w.pytorch_probe],
                });
            }
            Ok(ms)
        }
        _ => Ok(vec![measure(w, settings)?]),
    }
}

/// Sets `m`'s reference to PyTorch's faster layout and records both layouts in its params.
fn compare_with(m: &mut Measurement, t: &Torch) {
    m.reference = None;
    let Some((v, layout)) = t.best(&m.name) else {
        return;
    };
    m.reference = Some(Reference {
        what: format!("PyTorch {} CPU{}, same run", t.version, layout.label()),
        range: [v, v],
    });
    m.params["pytorch"] = serde_json::json!({
        "nchw": t.nchw.values.get(&m.name),
        "channels_last": t.channels_last.values.get(&m.name),
        "faster_layout": if layout == TorchLayout::ChannelsLast { "channels_last" } else { "nchw" },
        "ratio_ours_over_pytorch": m.value / v.max(1e-12),
    });
}

/// The same-run table: ours, PyTorch in each layout, ours over the faster one.
fn print_comparison(ours: &[Measurement], t: &Torch, threads: usize) {
    println!();
    println!(
        "models: ours vs PyTorch {} ({threads} threads, same run; ratio against its faster layout)",
        t.version
    );
    println!(
        "{:<36} {:>10} {:>10} {:>10} {:>8}  unit",
        "workload", "ours", "pt nchw", "pt nhwc", "ours/pt"
    );
    let show = |v: Option<&f64>| v.map(|v| format!("{v:.1}")).unwrap_or_else(|| "-".into());
    for m in ours {
        let ratio = t
            .best(&m.name)
            .map(|(v, _)| format!("{:.2}", m.value / v.max(1e-12)))
            .unwrap_or_else(|| "-".into());
        println!(
            "{:<36} {:>10.1} {:>10} {:>10} {:>8}  {}",
            m.name,
            m.value,
            show(t.nchw.values.get(&m.name)),
            show(t.channels_last.values.get(&m.name)),
            ratio,
            m.unit
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn tiny_settings() -> Settings {
        Settings {
            min_time: Duration::from_millis(1),
            warmup: 1,
            quick: true,
            filter: None,
        }
    }

    /// Every workload kind at a tiny size: the real model, loss, backward and optimizer run
    /// and give a finite positive rate; training moves the weights.
    #[test]
    fn every_kind_runs_at_a_tiny_size() {
        let settings = tiny_settings();
        for w in WORKLOADS.into_iter().filter(runs_here) {
            let tiny = Workload {
                batch: match w.kind {
                    Kind::Matmul => 64,
                    _ => 2,
                },
                side: w.side.min(32),
                ..w
            };
            let m = measure(&tiny, &settings).unwrap();
            assert_eq!(m.name, w.name);
            assert!(
                m.value.is_finite() && m.value > 0.0,
                "{}: {}",
                w.name,
                m.value
            );
            assert!(m.iterations >= 1);
            assert_eq!(m.params["warmup"].as_u64(), Some(1));
        }
    }

    /// The train step really updates every trainable parameter and the BatchNorm statistics;
    /// the eval step changes nothing.
    #[test]
    fn train_step_changes_weights_eval_does_not() {
        let snapshot = |varmap: &VarMap| -> Vec<(String, Vec<f32>)> {
            let mut v: Vec<_> = varmap
                .data()
                .lock()
                .unwrap()
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v.flatten_all()
                            .unwrap()
                            .to_dtype(DType::F32)
                            .unwrap()
                            .to_vec1::<f32>()
                            .unwrap(),
                    )
                })
                .collect();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v
        };
        for (w, expect_change) in [(WORKLOADS[1], true), (WORKLOADS[3], false)] {
            let w = Workload { batch: 2, ..w };
            let varmap = VarMap::new();
            let mut step = prepare(&w, &varmap).unwrap();
            let before = snapshot(&varmap);
            step().unwrap();
            step().unwrap();
            let after = snapshot(&varmap);
            for ((name, b), (_, a)) in before.iter().zip(&after) {
                if name.ends_with("num_batches_tracked") {
                    continue;
                }
                assert_eq!(b != a, expect_change, "{} {name}", w.name);
            }
        }
    }

    #[test]
    fn reads_vm_hwm() {
        let status = "Name:\txtask\nVmPeak:\t  300000 kB\nVmHWM:\t  204800 kB\nVmRSS:\t 1000 kB\n";
        assert_eq!(parse_vm_hwm_mib(status), Some(200.0));
        assert_eq!(parse_vm_hwm_mib("VmRSS:\t 1 kB\n"), None);
        assert_eq!(parse_vm_hwm_mib("VmHWM:\t 1 MB\n"), None);
        assert!(peak_rss_mib().unwrap() > 1.0);
    }

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }

    #[test]
    fn pytorch_json_and_the_faster_layout() {
        let nchw = r#"{"torch_version": "2.14.0", "threads": 2, "results": [
            {"name": "matmul_2048", "unit": "GFLOP/s", "value": 100.0},
            {"name": "net_train_b100_32", "unit": "images/s", "value": 50.0},
            {"name": "net_train_b100_32_peak_rss_mib", "unit": "MiB", "value": 400.0}]}"#;
        let nhwc = r#"{"torch_version": "2.14.0", "threads": 2, "results": [
            {"name": "matmul_2048", "unit": "GFLOP/s", "value": 90.0},
            {"name": "net_train_b100_32", "unit": "images/s", "value": 80.0},
            {"name": "net_train_b100_32_peak_rss_mib", "unit": "MiB", "value": 500.0}]}"#;
        let t = Torch {
            version: "2.14.0".into(),
            nchw: parse_pytorch(nchw).unwrap(),
            channels_last: parse_pytorch(nhwc).unwrap(),
        };
        assert_eq!(t.nchw.version, "2.14.0");
        assert_eq!(
            t.best("matmul_2048"),
            Some((100.0, TorchLayout::Contiguous))
        );
        assert_eq!(
            t.best("net_train_b100_32"),
            Some((80.0, TorchLayout::ChannelsLast))
        );
        // Peak memory comes from the layout that was faster for the workload.
        let rss = t.best("net_train_b100_32_peak_rss_mib");
        assert_eq!(rss, Some((500.0, TorchLayout::ChannelsLast)));
        assert_eq!(t.best("resnet18_eval_b64_32"), None);
        let mut m = Measurement {
            value: 40.0,
            name: "net_train_b100_32".into(),
            ..rss_measurement(&WORKLOADS[0], 0.0, None)
        };
        compare_with(&mut m, &t);
        assert_eq!(m.params["pytorch"]["faster_layout"], "channels_last");
        assert_eq!(m.params["pytorch"]["ratio_ours_over_pytorch"], 0.5);
        assert_eq!(m.params["pytorch"]["nchw"], 50.0);
        assert!(parse_pytorch("{\"results\": [{\"name\": \"x\"}]}").is_err());
        assert!(parse_pytorch("not json").is_err());
    }
}
