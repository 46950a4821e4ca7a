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
    /// Run everything this many times; with --compare-pytorch the models' two sides alternate
    /// which goes first, and a last table gives each workload's median ratio over the rounds
    /// (on a shared host one same-run ratio moves by several percent).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=50))]
    rounds: u32,
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
    /// The figures (each round's, in order).
    pub results: Vec<Measurement>,
    /// With several rounds of a comparison: each workload's ratios over the rounds.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rounds: Vec<RoundsSummary>,
}

/// One workload's comparisons over the rounds of one invocation.
#[derive(Debug, Clone, Serialize)]
pub struct RoundsSummary {
    /// The workload.
    pub name: String,
    /// What `value` counts.
    pub unit: String,
    /// Ours over the reference, per round, in round order.
    pub ratios: Vec<f64>,
    /// The median of `ratios`.
    pub median_ratio: f64,
    /// The median of our figures.
    pub median_ours: f64,
    /// The median of the reference's figures.
    pub median_reference: f64,
}

impl RoundsSummary {
    /// One summary per workload compared in every round of `results` (names in first-seen
    /// order).
    fn from_results(results: &[Measurement]) -> Vec<RoundsSummary> {
        let mut names: Vec<&str> = Vec::new();
        for m in results {
            if m.reference.is_some() && !names.contains(&m.name.as_str()) {
                names.push(&m.name);
            }
        }
        names
            .into_iter()
            .filter_map(|name| {
                let runs: Vec<&Measurement> = results.iter().filter(|m| m.name == name).collect();
                let references: Vec<f64> = runs
                    .iter()
                    .filter_map(|m| m.reference.as_ref().map(|r| r.range[0]))
                    .collect();
                if references.len() != runs.len() {
                    return None;
                }
                let ours: Vec<f64> = runs.iter().map(|m| m.value).collect();
                let ratios: Vec<f64> = ours
                    .iter()
                    .zip(&references)
                    .map(|(o, r)| o / r.max(1e-12))
                    .collect();
                Some(RoundsSummary {
                    name: name.to_string(),
                    unit: runs[0].unit.clone(),
                    median_ratio: median(&ratios),
                    median_ours: median(&ours),
                    median_reference: median(&references),
                    ratios,
                })
            })
            .collect()
    }
}

/// The median (the mean of the middle two for an even count); NaN for none.
fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The table of [`RoundsSummary`]s.
fn print_rounds(summaries: &[RoundsSummary]) {
    let Some(first) = summaries.first() else {
        return;
    };
    println!();
    println!(
        "over {} rounds: median of ours, of the reference, of the ratio (lowest-highest)",
        first.ratios.len()
    );
    for s in summaries {
        let lo = s.ratios.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = s.ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        // Rates are better higher; for the other figures (peak memory) the count means nothing.
        let below = match s.unit.ends_with("/s") {
            true => {
                let below = s.ratios.iter().filter(|&&r| r < 1.0).count();
                format!(", {below} of {} below 1.0", s.ratios.len())
            }
            false => String::new(),
        };
        println!(
            "{:<36} {:>10.1} {:>10.1} {:>6.2} ({lo:.2}-{hi:.2}{below})  {}",
            s.name, s.median_ours, s.median_reference, s.median_ratio, s.unit
        );
    }
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
            rounds: Vec::new(),
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
    for round in 0..args.rounds {
        if args.rounds > 1 {
            println!("\nround {} of {}", round + 1, args.rounds);
        }
        for &g in &groups {
            match g {
                Group::Data => data::run(&settings, &mut report, args.compare_pytorch)?,
                Group::Models => {
                    let order = if round % 2 == 0 {
                        models::Order::ReferenceFirst
                    } else {
                        models::Order::OursFirst
                    };
                    models::run(&settings, &mut report, args.compare_pytorch, order)?
                }
            }
        }
    }
    if args.rounds > 1 && args.compare_pytorch {
        report.rounds = RoundsSummary::from_results(&report.results);
        print_rounds(&report.rounds);
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

    fn figure(name: &str, value: f64, reference: Option<f64>) -> Measurement {
        Measurement {
            group: "models".into(),
            name: name.into(),
            unit: "images/s".into(),
            value,
            items: 1,
            iterations: 1,
            seconds: 1.0,
            cpu_seconds: None,
            params: serde_json::json!({}),
            reference: reference.map(|r| Reference {
                what: "PyTorch, same run".into(),
                range: [r, r],
            }),
        }
    }

    /// The rounds' table: per workload, the ratios in round order and their median (the
    /// middle one, or the mean of the middle two); a workload without a same-run reference in
    /// every round has none.
    #[test]
    fn rounds_summary_takes_each_workloads_median_ratio() {
        let results = [
            figure("a", 100.0, Some(50.0)),
            figure("b", 10.0, Some(10.0)),
            figure("c", 1.0, None),
            figure("a", 90.0, Some(100.0)),
            figure("b", 12.0, Some(10.0)),
            figure("c", 1.0, Some(1.0)),
            figure("a", 110.0, Some(100.0)),
            figure("b", 9.0, Some(10.0)),
        ];
        let s = RoundsSummary::from_results(&results);
        assert_eq!(s.len(), 2, "c lacks a reference in one round");
        assert_eq!((s[0].name.as_str(), s[1].name.as_str()), ("a", "b"));
        assert_eq!(s[0].ratios, vec![2.0, 0.9, 1.1]);
        assert_eq!(s[0].median_ratio, 1.1);
        assert_eq!(s[0].median_ours, 100.0);
        assert_eq!(s[0].median_reference, 100.0);
        assert_eq!(s[1].median_ratio, 1.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&[]).is_nan());
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
