//! `cargo xtask build-cuda`: build `cv` with `--features cuda` on a machine without a GPU or
//! an installed CUDA toolkit (see `docs/gpu.md` and `../shared/notes/cuda-build.md`).
//!
//! Why this exists: candle's CUDA backend needs `nvcc` at build time (candle-kernels compiles
//! its kernels to PTX) and links `-lcuda -lcublas -lcublasLt -lcurand -lnvrtc -lcudart`.
//! The compiler comes from NVIDIA's pinned PyPI wheels; the libraries that only a GPU machine
//! has (the driver's `libcuda`, cuBLAS, cuRAND, NVRTC) are replaced at link time by generated
//! stub libraries with the right sonames, so the binary loads the real ones at run time.
//! Everything lives under `target/` (toolchain in `target/cuda-toolchain`, build in
//! `target/cuda`): nothing is committed, the stubs never leave this machine, and the CPU build
//! in `target/release` is not invalidated.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{anyhow, bail, Context, Result};

/// The CUDA 13.0 compiler wheels (13.0.x: cudarc rejects newer than it knows, and newer PTX
/// may not load on a 580 driver).
const WHEELS: &[(&str, &str)] = &[
    ("nvidia-cuda-nvcc", "13.0.88"),
    ("nvidia-cuda-crt", "13.0.88"),
    ("nvidia-nvvm", "13.0.88"),
    ("nvidia-cuda-runtime", "13.0.96"),
    ("nvidia-cuda-cccl", "13.0.85"),
];

/// `CUDARC_CUDA_VERSION` for the wheels above (13.0).
const CUDARC_CUDA_VERSION: &str = "13000";

/// One stub library: cudarc's module whose `sys` bindings list the symbols, the file, soname.
struct Stub {
    module: &'static str,
    file: &'static str,
    soname: &'static str,
}

/// The libraries cudarc links but the wheels above do not provide. All stubs go into
/// `lib/stubs`, which cudarc adds to the link search path, so they never sit beside a real
/// library (a stray `LD_LIBRARY_PATH=.../lib` cannot pick them up at run time).
const STUBS: &[Stub] = &[
    Stub {
        module: "driver",
        file: "libcuda.so",
        soname: "libcuda.so.1",
    },
    Stub {
        module: "cublas",
        file: "libcublas.so",
        soname: "libcublas.so.13",
    },
    Stub {
        module: "cublaslt",
        file: "libcublasLt.so",
        soname: "libcublasLt.so.13",
    },
    Stub {
        module: "curand",
        file: "libcurand.so",
        soname: "libcurand.so.10",
    },
    Stub {
        module: "nvrtc",
        file: "libnvrtc.so",
        soname: "libnvrtc.so.13",
    },
];

/// Flags of `build-cuda`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// GPU compute capability the kernels are built for (90 = H100/H200, 80 = A100, 89 = L4).
    #[arg(long, default_value_t = 90)]
    compute_cap: u32,
    /// Where the compiler wheels and link stubs are installed (default target/cuda-toolchain).
    #[arg(long, value_name = "DIR")]
    toolchain_dir: Option<PathBuf>,
    /// Cargo target dir of the CUDA build (default target/cuda).
    #[arg(long, value_name = "DIR")]
    target_dir: Option<PathBuf>,
    /// Python interpreter whose pip fetches the wheels.
    #[arg(long, default_value = "python3")]
    python: String,
    /// Parallel nvcc jobs of candle-kernels (default: the number of CPUs).
    #[arg(long)]
    nvcc_threads: Option<usize>,
    /// Only prepare the toolchain and stubs; print the environment instead of building.
    #[arg(long)]
    prepare_only: bool,
}

pub fn run(args: Args) -> Result<()> {
    let root = crate::workspace_root()?;
    let toolchain = args
        .toolchain_dir
        .clone()
        .unwrap_or_else(|| root.join("target/cuda-toolchain"));
    let target_dir = args
        .target_dir
        .clone()
        .unwrap_or_else(|| root.join("target/cuda"));

    let cuda = prepare_compiler(&toolchain, &args.python)?;
    let cudarc = cudarc_source(&root)?;
    for stub in STUBS {
        build_stub(&cudarc, &cuda, stub)?;
    }

    let threads = args.nvcc_threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
    });
    let env = build_env(&cuda, args.compute_cap, threads)?;
    if args.prepare_only {
        println!("CUDA toolchain ready in {}; build with:", cuda.display());
        let vars: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!(
            "  {} CARGO_TARGET_DIR={} cargo build --release -p cv-cli --features cuda",
            vars.join(" "),
            target_dir.display()
        );
        return Ok(());
    }

    let cargo = crate::cargo();
    println!(
        "building cv --features cuda (sm_{}) into {} ...",
        args.compute_cap,
        target_dir.display()
    );
    let started = std::time::Instant::now();
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(&root)
        .args(["build", "--release", "-p", "cv-cli", "--features", "cuda"])
        .env("CARGO_TARGET_DIR", &target_dir)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {cargo}"))?;
    if !status.success() {
        bail!(
            "the CUDA build failed ({status}); the compiler output is above. Toolchain: {}",
            cuda.display()
        );
    }
    let bin = target_dir.join("release/cv");
    let size = fs::metadata(&bin)
        .with_context(|| {
            format!(
                "the build reported success but {} is missing",
                bin.display()
            )
        })?
        .len();
    println!(
        "built {} ({:.1} MB) in {:.0} s",
        bin.display(),
        size as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );
    report_needed(&bin, &cuda);
    Ok(())
}

/// The spec list pip gets, also stored in the completion marker.
fn wheel_specs() -> Vec<String> {
    WHEELS.iter().map(|(n, v)| format!("{n}=={v}")).collect()
}

/// Installs the pinned wheels into `toolchain/pkgs` once; returns the CUDA folder
/// (`pkgs/nvidia/cu13`, laid out as `bin/`, `nvvm/`, `include/`, `lib/`).
///
/// A complete install is recognised by a marker holding the exact spec list, written last;
/// the wheels are downloaded into `toolchain/wheels` (checking that the pinned versions exist)
/// and installed from there offline, so an interrupted run resumes without downloading again.
fn prepare_compiler(toolchain: &Path, python: &str) -> Result<PathBuf> {
    let pkgs = toolchain.join("pkgs");
    let cuda = pkgs.join("nvidia/cu13");
    let marker = toolchain.join("complete.txt");
    let specs = wheel_specs();
    let expected = specs.join("\n") + "\n";
    let nvcc = cuda.join("bin/nvcc");
    if fs::read_to_string(&marker).ok().as_deref() == Some(expected.as_str()) && nvcc.is_file() {
        println!("CUDA compiler already installed in {}", cuda.display());
        ensure_cudart_link(&cuda)?;
        return Ok(cuda);
    }

    let pip_ok = Command::new(python)
        .args(["-m", "pip", "--version"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !pip_ok {
        bail!(
            "`{python} -m pip` is not available: pip is needed to fetch the CUDA compiler wheels \
             ({}); install pip or pass --python",
            specs.join(" ")
        );
    }
    let wheels = toolchain.join("wheels");
    fs::create_dir_all(&wheels).with_context(|| format!("cannot create {}", wheels.display()))?;
    println!("downloading {} into {}", specs.join(" "), wheels.display());
    run_checked(
        Command::new(python)
            .args([
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--only-binary=:all:",
                "-d",
            ])
            .arg(&wheels)
            .args(&specs),
        "pip download of the CUDA compiler wheels (are these versions on your package index?)",
    )?;

    // Install into a fresh folder, then rename: a half-installed tree is never taken as done.
    let tmp = toolchain.join("pkgs.partial");
    for dir in [&tmp, &pkgs] {
        if dir.exists() {
            fs::remove_dir_all(dir).with_context(|| format!("cannot remove {}", dir.display()))?;
        }
    }
    run_checked(
        Command::new(python)
            .args([
                "-m",
                "pip",
                "install",
                "--no-deps",
                "--no-index",
                "--disable-pip-version-check",
                "--find-links",
            ])
            .arg(&wheels)
            .arg("--target")
            .arg(&tmp)
            .args(&specs),
        "pip install of the downloaded CUDA compiler wheels",
    )?;
    fs::rename(&tmp, &pkgs)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), pkgs.display()))?;
    if !nvcc.is_file() {
        bail!(
            "the wheels were installed but {} is missing (did the wheel layout change?)",
            nvcc.display()
        );
    }
    ensure_cudart_link(&cuda)?;
    fs::write(&marker, expected).with_context(|| format!("cannot write {}", marker.display()))?;
    println!("CUDA compiler installed in {}", cuda.display());
    Ok(cuda)
}

/// The runtime wheel ships `libcudart.so.13` only; the linker wants `libcudart.so`.
fn ensure_cudart_link(cuda: &Path) -> Result<()> {
    let lib = cuda.join("lib");
    let link = lib.join("libcudart.so");
    if link.exists() {
        return Ok(());
    }
    if !lib.join("libcudart.so.13").is_file() {
        bail!("{} has no libcudart.so.13", lib.display());
    }
    std::os::unix::fs::symlink("libcudart.so.13", &link)
        .with_context(|| format!("cannot create the symlink {}", link.display()))
}

/// The source folder of the cudarc crate the `cuda` feature resolves to (`cargo metadata`
/// fetches it if needed).
fn cudarc_source(root: &Path) -> Result<PathBuf> {
    let cargo = crate::cargo();
    let out = Command::new(&cargo)
        .current_dir(root)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--features",
            "cv-cli/cuda",
        ])
        .output()
        .with_context(|| format!("cannot run {cargo} metadata"))?;
    if !out.status.success() {
        bail!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let meta: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("cargo metadata printed invalid JSON")?;
    let manifest = meta["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == "cudarc")
        .and_then(|p| p["manifest_path"].as_str())
        .ok_or_else(|| anyhow!("cudarc is not in the dependency graph of cv-cli/cuda"))?;
    Path::new(manifest)
        .parent()
        .map(|p| p.join("src"))
        .ok_or_else(|| anyhow!("odd cudarc manifest path {manifest}"))
}

/// Every symbol name cudarc's bindings in `src/<module>/sys/*.rs` load by name.
fn cudarc_symbols(cudarc_src: &Path, module: &str) -> Result<BTreeSet<String>> {
    let dir = cudarc_src.join(module).join("sys");
    let mut names = BTreeSet::new();
    let entries = fs::read_dir(&dir).with_context(|| format!("cannot read {}", dir.display()))?;
    for entry in entries {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("rs") {
            continue;
        }
        let text =
            fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        names.extend(loaded_symbols(&text));
    }
    if names.is_empty() {
        bail!(
            "found no `load::<_F>(\"...\")` symbol names in {} (did cudarc change?)",
            dir.display()
        );
    }
    Ok(names)
}

/// The names in `load::<_F>("NAME")` calls, kept only if they are C identifiers.
fn loaded_symbols(text: &str) -> Vec<String> {
    const PAT: &str = "load::<_F>(\"";
    text.match_indices(PAT)
        .filter_map(|(i, _)| {
            let rest = &text[i + PAT.len()..];
            let name = &rest[..rest.find('"')?];
            let ident = !name.is_empty()
                && !name.starts_with(|c: char| c.is_ascii_digit())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            ident.then(|| name.to_string())
        })
        .collect()
}

/// The C source of a link-only stub: every function returns 999 (never a CUDA success code),
/// which does not matter because the stub is never loaded at run time.
fn stub_source(soname: &str, symbols: &BTreeSet<String>) -> String {
    let mut c = format!(
        "/* Link-only stub for {soname}, generated by `cargo xtask build-cuda`; never shipped. */\n"
    );
    for s in symbols {
        c.push_str(&format!("int {s}(void){{return 999;}}\n"));
    }
    c
}

/// Writes and compiles one stub into `cuda/lib/stubs/`, unless the same source is built.
fn build_stub(cudarc_src: &Path, cuda: &Path, stub: &Stub) -> Result<()> {
    let symbols = cudarc_symbols(cudarc_src, stub.module)?;
    let dir = cuda.join("lib/stubs");
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let src = dir.join(format!("{}.c", stub.soname));
    let lib = dir.join(stub.file);
    let text = stub_source(stub.soname, &symbols);
    if lib.is_file() && fs::read_to_string(&src).ok().as_deref() == Some(text.as_str()) {
        return Ok(());
    }
    fs::write(&src, &text).with_context(|| format!("cannot write {}", src.display()))?;
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let tmp = dir.join(format!("{}.partial", stub.file));
    run_checked(
        Command::new(&cc)
            .args(["-shared", "-fPIC", "-fno-builtin", "-w"])
            .arg(format!("-Wl,-soname,{}", stub.soname))
            .arg("-o")
            .arg(&tmp)
            .arg(&src),
        &format!("compiling the link stub {} with `{cc}`", stub.soname),
    )?;
    fs::rename(&tmp, &lib)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), lib.display()))?;
    println!(
        "link stub {} ({} symbols) -> {}",
        stub.soname,
        symbols.len(),
        lib.display()
    );
    Ok(())
}

/// The environment of the CUDA build (see `docs/gpu.md`).
fn build_env(cuda: &Path, compute_cap: u32, threads: usize) -> Result<Vec<(String, String)>> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs = vec![cuda.join("bin")];
    dirs.extend(std::env::split_paths(&path));
    let path = std::env::join_paths(dirs).context("PATH holds an entry with a ':'")?;
    Ok(vec![
        ("PATH".into(), path.to_string_lossy().into_owned()),
        ("CUDA_HOME".into(), cuda.display().to_string()),
        ("CUDA_COMPUTE_CAP".into(), compute_cap.to_string()),
        ("CUDARC_CUDA_VERSION".into(), CUDARC_CUDA_VERSION.into()),
        ("CUDAFORGE_THREADS".into(), threads.to_string()),
    ])
}

/// Prints the shared libraries the binary needs and where they come from at run time.
fn report_needed(bin: &Path, cuda: &Path) {
    let out = Command::new("readelf").arg("-d").arg(bin).output();
    let text = match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
        _ => {
            println!(
                "(readelf not available: run `readelf -d {}`)",
                bin.display()
            );
            return;
        }
    };
    let needed = needed_libs(&text);
    println!("shared libraries it needs at run time (DT_NEEDED):");
    for lib in &needed {
        let stubbed = STUBS.iter().any(|s| s.soname == lib);
        let from = if lib == "libcuda.so.1" {
            "the NVIDIA driver"
        } else if stubbed {
            "CUDA toolkit / pip nvidia-* packages (stubbed at link time here)"
        } else if lib.starts_with("libcudart") {
            "CUDA toolkit / pip nvidia-cuda-runtime"
        } else {
            "system"
        };
        println!("  {lib:<22} {from}");
    }
    println!(
        "on the GPU machine: scripts/gpu-check.sh {} (docs/gpu.md); do not point \
         LD_LIBRARY_PATH at {}/lib/stubs",
        bin.display(),
        cuda.display()
    );
}

/// The `NEEDED` entries of `readelf -d` output.
fn needed_libs(readelf: &str) -> Vec<String> {
    readelf
        .lines()
        .filter(|l| l.contains("(NEEDED)"))
        .filter_map(|l| {
            let start = l.find('[')? + 1;
            let end = l[start..].find(']')? + start;
            Some(l[start..end].to_string())
        })
        .collect()
}

/// Runs `cmd`; a failure to start or a non-zero exit is one error naming `what`.
fn run_checked(cmd: &mut Command, what: &str) -> Result<()> {
    let status = cmd.status().map_err(|e| {
        anyhow!(
            "{what}: cannot run `{}`: {e}",
            cmd.get_program().to_string_lossy()
        )
    })?;
    if !status.success() {
        bail!("{what} failed ({status}); see the output above");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extracts_loaded_symbols() {
        let src = r#"
            let cuInit = __library.load::<_F>("cuInit").map(|s| *s);
            let b = lib.load::<_F>("cuMemAlloc_v2").ok();
            let bad = lib.load::<_F>("not a name");
        "#;
        assert_eq!(loaded_symbols(src), vec!["cuInit", "cuMemAlloc_v2"]);
    }

    #[test]
    fn stub_source_defines_each_symbol_once() {
        let syms: BTreeSet<String> = ["b", "a"].iter().map(|s| s.to_string()).collect();
        let c = stub_source("libx.so.1", &syms);
        assert!(c.contains("int a(void){return 999;}\nint b(void){return 999;}\n"));
    }

    #[test]
    fn parses_readelf_needed() {
        let text = " 0x0000000000000001 (NEEDED)             Shared library: [libcuda.so.1]\n \
                    0x000000000000000e (SONAME)             Library soname: [x]\n \
                    0x0000000000000001 (NEEDED)             Shared library: [libc.so.6]\n";
        assert_eq!(needed_libs(text), vec!["libcuda.so.1", "libc.so.6"]);
    }
}
