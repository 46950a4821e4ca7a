#!/usr/bin/env bash
# GPU check of a `cv` binary built with `--features cuda` (e.g. by `cargo xtask build-cuda`),
# on a GPU machine with no network and no Rust toolchain. See docs/gpu.md.
#
#   scripts/gpu-check.sh BINARY [OUT_JSON] [FIXTURES_DIR]
#
# OUT_JSON defaults to $OUT/gpu-check.json (or ./gpu-check.json without $OUT); FIXTURES_DIR to
# ../shared/fixtures/torchvision-parity beside the repository. It finds the CUDA libraries the
# binary needs (ldconfig, else the Python environment's site-packages/nvidia/*/lib) and runs
# scripts/gpu_check.py: PyTorch parity on the GPU, short fine-tunes (f32, bf16) on generated
# CIFAR-format data, train/eval/predict with --device cuda, and the ResNet-18 benchmarks
# against PyTorch on the same GPU. The whole run stays under 8 minutes.
set -euo pipefail

die() { echo "gpu-check: error: $*" >&2; exit 1; }

[ $# -ge 1 ] || die "usage: $0 BINARY [OUT_JSON] [FIXTURES_DIR]"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
bin="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")" || die "no such binary: $1"
[ -x "$bin" ] || die "$1 is not an executable file"
out_json="${2:-${OUT:-.}/gpu-check.json}"
fixtures="${3:-$root/../shared/fixtures/torchvision-parity}"
command -v python3 >/dev/null || die "python3 is needed (with torch, torchvision and numpy for the comparisons)"

# Python environment's NVIDIA wheels (PyTorch for CUDA 13 brings cuBLAS, cuRAND, cudart).
py_lib_dirs() {
    python3 - <<'EOF' 2>/dev/null || true
import glob, site, sys
roots = list(getattr(site, "getsitepackages", lambda: [])()) + [site.getusersitepackages()] + sys.path
seen = set()
for r in roots:
    for d in sorted(glob.glob(f"{r}/nvidia/*/lib")) + sorted(glob.glob(f"{r}/nvidia/*/lib64")):
        if d not in seen:
            seen.add(d)
            print(d)
EOF
}

# What the dynamic loader cannot find yet (the binary's DT_NEEDED and their own dependencies,
# e.g. libcublas.so.13 -> libcublasLt.so.13): libcuda.so.1 comes from the driver (ldconfig),
# cuBLAS/cuRAND from a CUDA 13 toolkit or the Python environment's nvidia-* packages.
not_found() { ldd "$bin" 2>/dev/null | awk '/not found/ {print $1}' | sort -u; }

dirs="$(py_lib_dirs)"
for _round in 1 2 3; do
    missing="$(not_found)"
    [ -n "$missing" ] || break
    added=""
    for lib in $missing; do
        while IFS= read -r d; do
            [ -n "$d" ] && [ -e "$d/$lib" ] || continue
            case ":${LD_LIBRARY_PATH:-}:" in
                *":$d:"*) ;;
                *) export LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"; added=1 ;;
            esac
            break
        done <<< "$dirs"
    done
    [ -n "$added" ] || break
done
echo "gpu-check: LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}" >&2
missing="$(not_found)"
[ -z "$missing" ] || die "shared libraries of $bin not found by ldconfig nor under site-packages/nvidia/*/lib:
$missing
(libcuda.so.1 comes with the NVIDIA driver; libcublas.so.13, libcublasLt.so.13 and libcurand.so.10
with a CUDA 13 toolkit or a PyTorch built for CUDA 13)"

mkdir -p "$(dirname "$out_json")"
exec python3 "$here/gpu_check.py" --bin "$bin" --out "$out_json" --fixtures "$fixtures" \
    --deadline-s "${GPU_CHECK_DEADLINE_S:-450}"
