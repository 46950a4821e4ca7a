#!/usr/bin/env bash
# Side-by-side benchmark on N cores of a larger machine: ours and PyTorch/torchvision pinned to
# the same N cores (one hardware thread per core), N rayon / torch threads, one run.
#
#   scripts/bench-pinned.sh XTASK_BINARY OUT_DIR [CORES] [SECONDS] [ROUNDS]
#
# XTASK_BINARY: a release build of xtask (`cargo build --release -p xtask`; it may be a copy run
# from this repository's root on a machine without Rust). CORES defaults to 2, SECONDS (minimum
# timed seconds per figure) to 3, ROUNDS (runs of both sides, alternating which goes first,
# with median ratios at the end: `bench --rounds`) to 1. Writes OUT_DIR/bench.json and
# OUT_DIR/bench.log. Needs python3 with torch, torchvision, numpy and Pillow
# (docs/benchmarks.md).
set -euo pipefail

die() { echo "bench-pinned: error: $*" >&2; exit 1; }
[ $# -ge 2 ] || die "usage: $0 XTASK_BINARY OUT_DIR [CORES] [SECONDS] [ROUNDS]"
bin="$1"; out="$2"; cores="${3:-2}"; seconds="${4:-3}"; rounds="${5:-1}"
[ -x "$bin" ] || die "$bin is not an executable file"
command -v taskset >/dev/null || die "taskset (util-linux) is needed"
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# One CPU per physical core: skip the hyperthread siblings of CPUs already taken.
pick=()
declare -A taken=()
for d in /sys/devices/system/cpu/cpu[0-9]*; do
    cpu="${d##*cpu}"
    [ -z "${taken[$cpu]:-}" ] || continue
    pick+=("$cpu")
    siblings="$(cat "$d/topology/thread_siblings_list" 2>/dev/null || echo "$cpu")"
    for s in $(echo "$siblings" | tr ',' ' '); do
        if [[ "$s" == *-* ]]; then
            for ((i = ${s%-*}; i <= ${s#*-}; i++)); do taken[$i]=1; done
        else
            taken[$s]=1
        fi
    done
    [ "${#pick[@]}" -lt "$cores" ] || break
done
[ "${#pick[@]}" -eq "$cores" ] || die "found only ${#pick[@]} physical cores, asked for $cores"
cpus="$(IFS=,; echo "${pick[*]}")"

mkdir -p "$out"
echo "bench-pinned: CPUs $cpus, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs)" | tee "$out/bench.log"
RAYON_NUM_THREADS="$cores" taskset -c "$cpus" "$bin" bench data models --compare-pytorch \
    --seconds "$seconds" --rounds "$rounds" --json "$out/bench.json" 2>&1 | tee -a "$out/bench.log"
