#!/usr/bin/env python3
"""PyTorch side of `cargo xtask bench models --compare-pytorch`.

Runs the same workloads as xtask/src/bench/models.rs with the same names, batch sizes, input
sizes, optimizer (SGD, lr 0.01, momentum 0.9) and thread count, and reports the median of
individually timed iterations after warm-up: images/s, GFLOP/s for the matmul. Each training
workload runs in a child process (this script with --child) that reports its peak resident
memory (ru_maxrss) as `<name>_peak_rss_mib`.

    python3 scripts/bench_pytorch.py --json -           # JSON on stdout, progress on stderr
    python3 scripts/bench_pytorch.py --quick            # smoke run, prints a table
    python3 scripts/bench_pytorch.py --channels-last    # models and inputs in NHWC memory

--channels-last runs PyTorch in the memory format its CPU convolutions are fastest in (the
tutorial, and so the default here, keeps NCHW).

Needs torch and torchvision: `pip install torch torchvision` (PyPI's wheels bundle CUDA
libraries and run on the CPU all the same), or the CPU-only wheels:
    pip install torch torchvision --index-url https://download.pytorch.org/whl/cpu
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

INSTALL = "pip install torch torchvision (CPU only: add --index-url https://download.pytorch.org/whl/cpu)"

NUM_CLASSES = 10
LR = 0.01
MOMENTUM = 0.9

# name -> (kind, model, batch size (matrix side for matmul), input side, precision); bf16
# runs the forward (and loss) under torch.autocast("cpu", dtype=torch.bfloat16); int8 is
# torch.ao.quantization's FX graph mode with the x86 backend's default qconfig, calibrated on
# CALIBRATION_IMAGES random images (as ours).
WORKLOADS = {
    "net_train_b100_32": ("train", "net", 100, 32, "f32"),
    "resnet18_train_b64_32": ("train", "resnet18", 64, 32, "f32"),
    "resnet18_train_b16_224": ("train", "resnet18", 16, 224, "f32"),
    "resnet18_eval_b64_32": ("eval", "resnet18", 64, 32, "f32"),
    "resnet18_eval_b16_224": ("eval", "resnet18", 16, 224, "f32"),
    "matmul_2048": ("matmul", None, 2048, None, "f32"),
    "resnet18_train_b16_224_bf16": ("train", "resnet18", 16, 224, "bf16"),
    "resnet18_eval_b16_224_bf16": ("eval", "resnet18", 16, 224, "bf16"),
    "resnet18_eval_b64_32_bf16": ("eval", "resnet18", 64, 32, "bf16"),
    "resnet18_eval_b16_224_int8": ("eval", "resnet18", 16, 224, "int8"),
    "resnet18_eval_b64_32_int8": ("eval", "resnet18", 64, 32, "int8"),
}

CALIBRATION_IMAGES = 32


def import_torch():
    """torch, nn, F and torchvision, or exit with the install command."""
    try:
        import torch
        import torch.nn as nn
        import torch.nn.functional as F
        import torchvision
    except ImportError as e:
        sys.exit(
            f"error: scripts/bench_pytorch.py needs PyTorch and torchvision ({e}).\n"
            f"Install them with: {INSTALL}"
        )
    return torch, nn, F, torchvision


def make_net(nn, F, torch):
    """The PyTorch CIFAR-10 tutorial's Net."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 6, 5)
            self.pool = nn.MaxPool2d(2, 2)
            self.conv2 = nn.Conv2d(6, 16, 5)
            self.fc1 = nn.Linear(16 * 5 * 5, 120)
            self.fc2 = nn.Linear(120, 84)
            self.fc3 = nn.Linear(84, NUM_CLASSES)

        def forward(self, x):
            x = self.pool(F.relu(self.conv1(x)))
            x = self.pool(F.relu(self.conv2(x)))
            x = torch.flatten(x, 1)
            x = F.relu(self.fc1(x))
            x = F.relu(self.fc2(x))
            return self.fc3(x)

    return Net()


def make_step(name, channels_last=False):
    """A function running one iteration of workload `name`, and the work it does (images, or
    GFLOP for the matmul). `channels_last` puts the model and its input in NHWC memory."""
    torch, nn, F, torchvision = import_torch()
    kind, model_name, batch, side, precision = WORKLOADS[name]
    torch.manual_seed(0)

    def autocast():
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")

    if kind == "matmul":
        a = torch.randn(batch, batch, dtype=torch.float32)
        b = torch.randn(batch, batch, dtype=torch.float32)

        def step():
            c = a @ b
            return c

        return step, 2.0 * batch**3 / 1e9

    if model_name == "net":
        model = make_net(nn, F, torch)
    else:
        model = torchvision.models.resnet18(num_classes=NUM_CLASSES)
    x = torch.randn(batch, 3, side, side, dtype=torch.float32)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    if kind == "eval" and precision == "int8":
        model = quantize_fx(torch, model.eval(), side, channels_last)
        def step():
            with torch.no_grad():
                return model(x)

        return step, float(batch)
    if kind == "eval":
        model.eval()

        def step():
            with torch.no_grad(), autocast():
                return model(x)

        return step, float(batch)

    model.train()
    y = torch.tensor([(i * 7) % NUM_CLASSES for i in range(batch)], dtype=torch.long)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)

    def step():
        opt.zero_grad(set_to_none=True)
        with autocast():
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        value = loss.item()
        if value != value or value in (float("inf"), float("-inf")):
            raise RuntimeError(f"{name}: the loss became {value}")
        return value

    return step, float(batch)


def quantize_fx(torch, model, side, channels_last):
    """`model` quantized to int8 by FX graph mode (x86 backend), calibrated in batches of 8."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = "x86"
    example = torch.randn(8, 3, side, side)
    if channels_last:
        example = example.contiguous(memory_format=torch.channels_last)
    prepared = prepare_fx(model, get_default_qconfig_mapping("x86"), (example,))
    with torch.no_grad():
        for _ in range(CALIBRATION_IMAGES // 8):
            prepared(torch.randn_like(example))
    return convert_fx(prepared)


def measure(name, args):
    """Median-of-iterations figure of `name` in this process."""
    kind = WORKLOADS[name][0]
    step, work = make_step(name, args.channels_last)
    for _ in range(args.warmup):
        step()
    min_iters = 1 if args.quick else 3
    times = []
    start = time.perf_counter()
    while len(times) < min_iters or time.perf_counter() - start < args.seconds:
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    med = statistics.median(times)
    return {
        "name": name,
        "unit": "GFLOP/s" if kind == "matmul" else "images/s",
        "value": work / max(med, 1e-12),
        "iterations": len(times),
        "median_iteration_seconds": med,
        "seconds": time.perf_counter() - start,
    }


def peak_rss_mib():
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return rss / (1024.0 * 1024.0) if sys.platform == "darwin" else rss / 1024.0


def run_child(name, args):
    """In a child: one training workload, then this process's peak RSS; JSON on stdout."""
    result = measure(name, args)
    rss = {"name": f"{name}_peak_rss_mib", "unit": "MiB", "value": peak_rss_mib()}
    json.dump([result, rss], sys.stdout)


def measure_in_child(name, args):
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--child",
        name,
        "--threads",
        str(args.threads),
        "--seconds",
        str(args.seconds),
        "--warmup",
        str(args.warmup),
    ]
    if args.quick:
        cmd.append("--quick")
    if args.channels_last:
        cmd.append("--channels-last")
    out = subprocess.run(cmd, stdout=subprocess.PIPE, check=False)
    if out.returncode != 0:
        sys.exit(f"error: the child process measuring {name} failed (exit {out.returncode})")
    return json.loads(out.stdout)


def default_threads():
    env = os.environ.get("RAYON_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    return os.cpu_count() or 1


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", metavar="FILE", help="write the figures as JSON to FILE ('-' for stdout)")
    p.add_argument("--threads", type=int, default=default_threads(), help="torch.set_num_threads (default: RAYON_NUM_THREADS or the CPU count)")
    p.add_argument("--seconds", type=float, default=5.0, help="minimum timed seconds per workload")
    p.add_argument("--warmup", type=int, default=3, help="untimed iterations first")
    p.add_argument("--quick", action="store_true", help="1 warm-up and 1 timed iteration (smoke run)")
    p.add_argument("--only", help="comma-separated workload names (default: all)")
    p.add_argument("--channels-last", action="store_true", help="models and inputs in channels-last (NHWC) memory")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.quick:
        args.warmup = min(args.warmup, 1)
        args.seconds = 0.0
    if args.threads < 1:
        p.error("--threads must be at least 1")

    torch, _, _, torchvision = import_torch()
    torch.set_num_threads(args.threads)

    if args.child:
        if args.child not in WORKLOADS:
            p.error(f"unknown workload {args.child}")
        run_child(args.child, args)
        return

    names = list(WORKLOADS)
    if args.only:
        names = [n for n in args.only.split(",") if n]
        unknown = [n for n in names if n not in WORKLOADS]
        if unknown:
            p.error(f"unknown workloads: {', '.join(unknown)} (known: {', '.join(WORKLOADS)})")

    results = []
    for name in names:
        print(f"pytorch: {name}...", file=sys.stderr, flush=True)
        if WORKLOADS[name][0] == "train":
            results.extend(measure_in_child(name, args))
        else:
            results.append(measure(name, args))

    doc = {
        "torch_version": torch.__version__,
        "torchvision_version": torchvision.__version__,
        "threads": args.threads,
        "memory_format": "channels_last" if args.channels_last else "contiguous",
        "warmup": args.warmup,
        "min_seconds": args.seconds,
        "results": results,
    }
    if args.json == "-":
        json.dump(doc, sys.stdout, indent=2)
        sys.stdout.write("\n")
    elif args.json:
        tmp = f"{args.json}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(doc, f, indent=2)
        os.replace(tmp, args.json)
    if args.json != "-":
        layout = ", channels-last" if args.channels_last else ""
        print(f"PyTorch {torch.__version__}, {args.threads} threads{layout}")
        for r in results:
            print(f"{r['name']:<40} {r['value']:>12.1f} {r['unit']}")


if __name__ == "__main__":
    main()
