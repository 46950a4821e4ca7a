//! `cargo xtask bench <group>... [--json FILE]`: throughput benchmarks with one shared harness.
//!
//! A group is a module with `run(&Settings, &mut Report)`; it measures with [`throughput`] and
//! pushes [`Measurement`]s. To add a group, add a module, a [`Group`] variant and its arm in
//! [`run`]. Figures are printed as a table and, with `--json`, written atomically as JSON.
//! Benchmarks are meant for release builds: `cargo xtask bench` re-runs itself as
//! `cargo run --release -p xtask -- bench ...` (see `crate::release`).

mod cpu;
pub mod data;
pub mod models;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

/// Benchmark groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Group {
    /// Data pipelines: augmentation + batching on 32x32 input.
    Data,
    /// Model workloads: CNN / ResNet-18 train steps, ResNet-18 eval, a 2048^3 matmul.
    Models,
}

/// Flags of `bench`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Groups to run (all when none is given).
    #[arg(value_enum)]
    groups: Vec<Group>,
    /// Write the figures to this JSON file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Minimum measured seconds per benchmark.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Only run benchmarks whose name contains this text.
    #[arg(long)]
    filter: Option<String>,
    /// A very short run that only checks the benchmarks work (figures are not meaningful).
    #[arg(long)]
    quick: bool,
    /// Also run the PyTorch side in the same run and compare (needs torch and torchvision):
    /// scripts/bench_pytorch.py for the models, in NCHW and in channels-last, each figure
    /// compared with the faster of the two; scripts/bench_torchvision_data.py (a torchvision
    /// DataLoader with 2 workers) for the data pipelines.
    #[arg(long)]
    compare_pytorch: bool,
}

/// How long each benchmark runs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Minimum measured time per benchmark.
    pub min_time: Duration,
    /// Untimed iterations first (allocator, caches, thread pools).
    pub warmup: usize,
    /// Shrink inputs too (smoke runs).
    pub quick: bool,
    /// Only benchmarks whose name contains this text.
    pub filter: Option<String>,
}

impl Settings {
    /// Whether the benchmark `name` was selected.
    pub fn selected(&self, name: &str) -> bool {
        self.filter.as_deref().is_none_or(|f| name.contains(f))
    }
}

/// One figure.
#[derive(Debug, Clone, Serialize)]
pub struct Measurement {
    /// Benchmark group (`data`, ...).
    pub group: String,
    /// Name within the group.
    pub name: String,
    /// What `value` counts, e.g. `images/s`.
    pub unit: String,
    /// The figure.
    pub value: f64,
    /// Items processed in the timed part.
    pub items: u64,
    /// Timed iterations.
    pub iterations: u64,
    /// Timed seconds.
    pub seconds: f64,
    /// CPU seconds the whole process used while timed (all threads; Linux only). On a shared
    /// machine `items / cpu_seconds` is steadier than the wall-clock rate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_seconds: Option<f64>,
    /// Parameters of the workload (batch size, input size, pipeline, ...).
    pub params: serde_json::Value,
    /// A reference figure to compare with, if any (e.g. PyTorch on the same machine).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference: Option<Reference>,
}

/// A figure from elsewhere, for comparison.
#[derive(Debug, Clone, Serialize)]
pub struct Reference {
    /// What was measured.
    pub what: String,
    /// Low and high end of the reported range, in the same unit.
    pub range: [f64; 2],
}

/// Everything one `bench` invocation measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `release` or `debug`: figures from debug builds are not meaningful.
    pub profile: String,
    /// Logical CPUs the process could use.
    pub cpus: usize,
    /// rayon worker threads.
    pub rayon_threads: usize,
    /// The CPU: model, kernel-relevant flags, the bf16 kernel family.
    pub cpu: cpu::CpuInfo,
    /// Seconds since the Unix epoch when the run started.
    pub started_unix: u64,
    /// The figures.
    pub results: Vec<Measurement>,
}

impl Report {
    fn new() -> Self {
        Self {
            profile: if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            }
            .into(),
            cpus: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            rayon_threads: cv_data_threads(),
            cpu: cpu::CpuInfo::detect(),
            started_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            results: Vec::new(),
        }
    }

    /// Add a figure and print it.
    pub fn push(&mut self, m: Measurement) {
        let reference = m
            .reference
            .as_ref()
            .map(|r| {
                format!(
                    "  ({:.1}x-{:.1}x {})",
                    m.value / r.range[1],
                    m.value / r.range[0],
                    r.what
                )
            })
            .unwrap_or_default();
        let per_cpu = m
            .cpu_seconds
            .filter(|&c| c > 0.0)
            .map(|c| format!("  [{:.0} per CPU-second]", m.items as f64 / c))
            .unwrap_or_default();
        println!(
            "{:<6} {:<62} {:>9.0} {}{per_cpu}{reference}",
            m.group, m.name, m.value, m.unit
        );
        self.results.push(m);
    }
}

fn cv_data_threads() -> usize {
    // rayon's global pool size (RAYON_NUM_THREADS or the CPU count).
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n: &usize| n > 0)
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
}

/// Result of [`throughput`].
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Items processed while timed.
    pub items: u64,
    /// Iterations while timed.
    pub iterations: u64,
    /// Elapsed timed seconds.
    pub seconds: f64,
    /// Process CPU seconds while timed, where the OS tells.
    pub cpu_seconds: Option<f64>,
}

impl Timing {
    /// Items per second.
    pub fn rate(&self) -> f64 {
        self.items as f64 / self.seconds.max(1e-9)
    }
}

/// Call `step` (which returns how many items it processed) `warmup` times untimed, then until
/// `min_time` has passed.
pub fn throughput(
    settings: &Settings,
    mut step: impl FnMut() -> anyhow::Result<u64>,
) -> anyhow::Result<Timing> {
    for _ in 0..settings.warmup {
        step()?;
    }
    let cpu0 = process_cpu_seconds();
    let start = Instant::now();
    let (mut items, mut iterations) = (0u64, 0u64);
    while iterations == 0 || start.elapsed() < settings.min_time {
        items += step()?;
        iterations += 1;
    }
    let seconds = start.elapsed().as_secs_f64();
    let cpu_seconds = match (cpu0, process_cpu_seconds()) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    Ok(Timing {
        items,
        iterations,
        seconds,
        cpu_seconds,
    })
}

/// User + system CPU time of this process, from `/proc/self/stat` (Linux).
fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after ')' (0-based).
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // The kernel reports clock ticks; USER_HZ is 100 on every Linux ABI in use.
    Some((utime + stime) / 100.0)
}

/// Write `value` as pretty JSON to `path` through a temporary file and a rename.
pub fn write_json(path: &Path, value: &impl Serialize) -> anyhow::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    ));
    let json = serde_json::to_vec_pretty(value)?;
    std::fs::write(&tmp, json).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| {
        let _ = std::fs::remove_file(&tmp);
        format!("renaming {} to {}", tmp.display(), path.display())
    })?;
    Ok(())
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if cfg!(debug_assertions) {
        eprintln!("warning: xtask was built without --release; figures are not meaningful (cargo run --release -p xtask -- bench ...)");
    }
    let settings = Settings {
        min_time: Duration::from_secs_f64(if args.quick {
            0.05
        } else {
            args.seconds.max(0.01)
        }),
        warmup: if args.quick { 1 } else { 3 },
        quick: args.quick,
        filter: args.filter,
    };
    let groups = if args.groups.is_empty() {
        vec![Group::Data, Group::Models]
    } else {
        args.groups
    };
    let mut report = Report::new();
    for g in groups {
        match g {
            Group::Data => data::run(&settings, &mut report, args.compare_pytorch)?,
            Group::Models => models::run(&settings, &mut report, args.compare_pytorch)?,
        }
    }
    if let Some(path) = &args.json {
        write_json(path, &report)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quick_data_bench_measures_and_writes_json() {
        let settings = Settings {
            min_time: Duration::from_millis(1),
            warmup: 0,
            quick: true,
            filter: None,
        };
        let mut report = Report::new();
        data::run(&settings, &mut report, false).unwrap();
        assert_eq!(
            report.results.len(),
            10,
            "five workloads, loader and augment-only"
        );
        assert!(report
            .results
            .iter()
            .all(|m| m.value > 0.0 && m.items >= 100 && m.unit == "images/s"));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/bench.json");
        write_json(&path, &report).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(v["results"][0]["group"], "data");
        assert_eq!(v["results"][0]["params"]["batch_size"], 100);
        assert_eq!(
            v["results"][0]["params"]["pipeline"]["transforms"][0]["type"],
            "random_resized_crop"
        );
        assert_eq!(
            std::fs::read_dir(dir.path().join("sub")).unwrap().count(),
            1,
            "no temp file left"
        );

        let only = Settings {
            filter: Some("random_crop_32_pad_4+flip+normalize".into()),
            ..settings
        };
        let mut report = Report::new();
        data::run(&only, &mut report, false).unwrap();
        assert_eq!(report.results.len(), 2);
    }

    #[test]
    fn throughput_counts_items_and_iterations() {
        let settings = Settings {
            min_time: Duration::from_millis(5),
            warmup: 2,
            quick: true,
            filter: None,
        };
        let mut calls = 0u64;
        let t = throughput(&settings, || {
            calls += 1;
            std::thread::sleep(Duration::from_millis(1));
            Ok(3)
        })
        .unwrap();
        assert_eq!(calls, t.iterations + 2);
        assert_eq!(t.items, 3 * t.iterations);
        assert!(t.seconds >= 0.005);
        assert!(throughput(&settings, || anyhow::bail!("boom")).is_err());
    }
}
