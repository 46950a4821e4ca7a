#!/usr/bin/env python3
"""GPU check of a `cv` binary built with `--features cuda`; run through scripts/gpu-check.sh.

Steps (each recorded in one JSON file, each with its own time limit inside a global deadline):
  1. parity: torchvision ResNet-18 with the fixture weights (f32, TF32 off) on the GPU vs
     `cv predict --weights <fixture> --json --top-k 1000 --device cuda` on the same PNGs, whose
     size (256x256) makes our eval transforms (resize 256, centre crop 224, ImageNet
     normalisation) exactly a crop + normalisation that this script repeats. Compared: the
     log-probabilities (relative to their largest magnitude, tolerance 1e-3) and top-1. The same
     comparison with `--device cpu` shows the comparison itself is sound.
  2. fine-tune: CIFAR-format batches generated here (learnable: the class sets the colour and a
     stripe pattern), `cv finetune --mode full` from the fixture weights with --device cuda in
     f32 and bf16, then `cv eval` and `cv predict` on the checkpoint, and `cv train --model cnn`.
  3. bench: `cv train --model resnet18 --image-size 224` at batch 16 and 64 (images/s of the
     last epoch in metrics.jsonl) vs the same SGD loop in PyTorch on the same GPU.
"""

import argparse
import json
import os
import platform
import struct
import subprocess
import sys
import tempfile
import time
import zlib

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
REL_TOL = 1e-3
CUDA_FALLBACK = "using the CPU"  # cv_models::device::select's warning when CUDA is unusable


class Deadline:
    def __init__(self, seconds):
        self.end = time.monotonic() + seconds

    def left(self):
        return max(0.0, self.end - time.monotonic())


def run_cv(bin_path, args, deadline, limit, log):
    """Runs the binary; returns (rc, stdout, stderr, seconds). A time-out is rc 124."""
    timeout = max(1.0, min(limit, deadline.left()))
    started = time.monotonic()
    try:
        p = subprocess.run([bin_path] + args, capture_output=True, text=True, timeout=timeout)
        rc, out, err = p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as e:
        rc = 124
        out = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        err = (e.stderr or b"").decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        err += f"\n(timed out after {timeout:.0f} s)"
    secs = time.monotonic() - started
    log.append({"cmd": ["cv"] + args, "rc": rc, "seconds": round(secs, 2), "stderr_tail": err[-1500:]})
    print(f"gpu-check: cv {' '.join(args[:3])} ... rc={rc} {secs:.1f}s", file=sys.stderr)
    return rc, out, err, secs


def write_png(path, rgb, w, h):
    """A minimal 8-bit RGB PNG writer (no PIL needed). `rgb` is bytes, row-major HWC."""
    raw = b"".join(b"\x00" + rgb[y * w * 3:(y + 1) * w * 3] for y in range(h))

    def chunk(tag, data):
        c = struct.pack(">I", len(data)) + tag + data
        return c + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")
    with open(path, "wb") as f:
        f.write(png)


def load_safetensors(path, torch, np):
    """Reads a safetensors file with numpy (the `safetensors` package may be absent)."""
    dtypes = {"F32": np.float32, "F64": np.float64, "I64": np.int64, "F16": np.float16}
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for k, v in header.items():
        if k == "__metadata__":
            continue
        a, b = v["data_offsets"]
        arr = np.frombuffer(data[a:b], dtype=dtypes[v["dtype"]]).reshape(v["shape"])
        out[k] = torch.from_numpy(arr.copy())
    return out


def probs_from_json(text, n_images, n_classes):
    rows = json.loads(text)
    if len(rows) != n_images:
        raise ValueError(f"{len(rows)} answers for {n_images} images")
    out = []
    for r in rows:
        p = [0.0] * n_classes
        for e in r["predictions"]:
            p[e["index"]] = e["probability"]
        out.append(p)
    return out


def compare(ours, ref_logp, np):
    """Relative max difference of log-probabilities (where both are representable) and top-1."""
    ours = np.asarray(ours, dtype=np.float64)
    ref_logp = np.asarray(ref_logp, dtype=np.float64)
    ref_p = np.exp(ref_logp)
    mask = (ours > 1e-30) & (ref_p > 1e-30)
    logp = np.log(np.where(mask, ours, 1.0))
    diff = np.abs(np.where(mask, logp - ref_logp, 0.0)).max()
    scale = np.abs(np.where(mask, ref_logp, 0.0)).max()
    rel = float(diff / max(scale, 1e-12))
    pdiff = float(np.abs(ours - ref_p).max())
    top1 = bool((ours.argmax(1) == ref_logp.argmax(1)).all())
    return {
        "logprob_max_abs_diff": float(diff),
        "logprob_scale": float(scale),
        "logprob_rel_diff": rel,
        "prob_max_abs_diff": pdiff,
        "classes_compared": int(mask.sum()),
        "top1_equal": top1,
        "pass": bool(rel <= REL_TOL and top1),
    }


def parity(a, torch, np, torchvision, deadline, log, work):
    weights = os.path.join(a.fixtures, "resnet18.safetensors")
    if not os.path.isfile(weights):
        return {"status": "skipped", "reason": f"no fixture {weights}"}
    rng = np.random.default_rng(0)
    images, paths = [], []
    yy, xx = np.mgrid[0:256, 0:256]
    for i in range(3):
        # Smooth colour fields + noise: natural-ish statistics, exact 8-bit pixels.
        base = np.stack([128 + 100 * np.sin((xx * (c + 1) + yy * (i + 1)) / 37.0 + c) for c in range(3)], -1)
        img = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
        p = os.path.join(work, f"parity_{i}.png")
        write_png(p, img.tobytes(), 256, 256)
        images.append(img)
        paths.append(p)

    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    model = torchvision.models.resnet18()
    sd = load_safetensors(weights, torch, np)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        return {"status": "error", "reason": f"fixture keys: missing {missing}, unexpected {unexpected}"}
    model = model.cuda().eval()
    x = np.stack(images)[:, 16:240, 16:240, :].astype(np.float32) / 255.0
    x = (x - np.array(IMAGENET_MEAN, np.float32)) / np.array(IMAGENET_STD, np.float32)
    x = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).cuda()
    with torch.no_grad():
        ref_logp = torch.log_softmax(model(x).double(), 1).cpu().numpy()

    result = {"status": "ok", "tolerance_rel": REL_TOL, "images": len(paths)}
    for device in ("cuda", "cpu"):
        rc, out, err, secs = run_cv(
            a.bin,
            ["predict", "--weights", weights, "--offline", "--json", "--top-k", "1000", "--device", device] + paths,
            deadline, 120, log)
        if rc != 0:
            result[device] = {"pass": False, "error": f"cv predict exited {rc}: {err[-500:]}"}
            continue
        r = compare(probs_from_json(out, len(paths), 1000), ref_logp, np)
        r["seconds"] = round(secs, 2)
        if device == "cuda" and CUDA_FALLBACK in err:
            r["pass"] = False
            r["error"] = "CUDA was not used: " + err.strip()[-300:]
        result[device] = r
    result["pass"] = bool(result.get("cuda", {}).get("pass"))
    return result


def write_cifar(dirpath, np, per_batch=600, test=500):
    """CIFAR-10 binary batches (1 label byte + 3072 planar bytes), learnable by colour/pattern."""
    os.makedirs(dirpath, exist_ok=True)
    rng = np.random.default_rng(1)
    palette = rng.integers(30, 226, size=(10, 3))
    yy, xx = np.mgrid[0:32, 0:32]

    def batch(n):
        labels = rng.integers(0, 10, size=n)
        imgs = np.empty((n, 3, 32, 32), np.float64)
        for i, y in enumerate(labels):
            stripes = 30 * np.sin((xx if y % 2 else yy) * (1 + y % 5) * 0.5)
            imgs[i] = palette[y][:, None, None] + stripes + rng.normal(0, 25, (3, 32, 32))
        imgs = np.clip(imgs, 0, 255).astype(np.uint8).reshape(n, 3072)
        return np.concatenate([labels.astype(np.uint8)[:, None], imgs], 1).tobytes()

    for k in range(1, 6):
        with open(os.path.join(dirpath, f"data_batch_{k}.bin"), "wb") as f:
            f.write(batch(per_batch))
    with open(os.path.join(dirpath, "test_batch.bin"), "wb") as f:
        f.write(batch(test))
    with open(os.path.join(dirpath, "batches.meta.txt"), "w") as f:
        f.write("\n".join(["airplane", "automobile", "bird", "cat", "deer",
                           "dog", "frog", "horse", "ship", "truck"]) + "\n")


def last_metrics(run_dir):
    path = os.path.join(run_dir, "metrics.jsonl")
    with open(path) as f:
        rows = [json.loads(l) for l in f if l.strip()]
    return rows


def finetune(a, np, deadline, log, work, data):
    weights = os.path.join(a.fixtures, "resnet18.safetensors")
    result = {}
    img = os.path.join(work, "parity_0.png")
    if os.path.isfile(weights):
        for precision in ("f32", "bf16"):
            out = os.path.join(work, f"ft_{precision}")
            rc, _, err, secs = run_cv(a.bin, [
                "finetune", "--weights", weights, "--offline", "--data", data, "--mode", "full",
                "--epochs", "2", "--batch-size", "64", "--image-size", "64", "--lr", "0.01",
                "--device", "cuda", "--precision", precision, "--quiet", "--out", out],
                deadline, 120, log)
            r = {"rc": rc, "seconds": round(secs, 2), "cuda_used": CUDA_FALLBACK not in err}
            if rc == 0:
                rows = last_metrics(out)
                r["epochs"] = rows
                r["test_acc"] = rows[-1].get("test_acc")
                r["learns"] = bool(r["test_acc"] is not None and r["test_acc"] > 0.3)
            else:
                r["error"] = err[-800:]
            result[f"finetune_{precision}"] = r
        ck = os.path.join(work, "ft_f32")
        if result["finetune_f32"]["rc"] == 0:
            rc, out, err, _ = run_cv(a.bin, ["eval", "--checkpoint", ck, "--data", data, "--device", "cuda", "--json"],
                                     deadline, 60, log)
            result["eval"] = {"rc": rc, "cuda_used": CUDA_FALLBACK not in err,
                              "report": _json_or_text(out) if rc == 0 else err[-800:]}
            if os.path.isfile(img):
                rc, out, err, _ = run_cv(a.bin, ["predict", "--checkpoint", ck, "--device", "cuda", "--json", img],
                                         deadline, 60, log)
                result["predict"] = {"rc": rc, "cuda_used": CUDA_FALLBACK not in err,
                                     "answer": _json_or_text(out) if rc == 0 else err[-800:]}
    else:
        result["finetune"] = {"status": "skipped", "reason": f"no fixture {weights}"}
    out = os.path.join(work, "train_cnn")
    rc, _, err, secs = run_cv(a.bin, ["train", "--model", "cnn", "--data", data, "--epochs", "2",
                                      "--device", "cuda", "--quiet", "--out", out], deadline, 90, log)
    r = {"rc": rc, "seconds": round(secs, 2), "cuda_used": CUDA_FALLBACK not in err}
    if rc == 0:
        r["epochs"] = last_metrics(out)
    else:
        r["error"] = err[-800:]
    result["train_cnn"] = r
    return result


def _json_or_text(s):
    try:
        return json.loads(s)
    except ValueError:
        return s[-800:]


def bench_ours(a, deadline, log, work, data, batch, precision):
    n = 32 * batch if batch <= 16 else 16 * batch  # 32 / 16 steps per epoch
    out = os.path.join(work, f"bench_{batch}_{precision}")
    rc, _, err, secs = run_cv(a.bin, [
        "train", "--model", "resnet18", "--data", data, "--image-size", "224", "--batch-size", str(batch),
        "--epochs", "2", "--augment", "none", "--limit-train", str(n), "--limit-test", "32",
        "--precision", precision, "--device", "cuda", "--quiet", "--out", out], deadline, 150, log)
    if rc != 0:
        return {"rc": rc, "error": err[-800:]}
    rows = last_metrics(out)
    return {"rc": 0, "images": n, "cuda_used": CUDA_FALLBACK not in err,
            "images_per_s_epochs": [r["images_per_s"] for r in rows],
            "images_per_s": rows[-1]["images_per_s"]}


def bench_torch(torch, torchvision, batch, precision, seconds=8.0):
    """The same step as `cv train`: ResNet-18 (10 classes) train mode, CE loss, SGD momentum."""
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    model = torchvision.models.resnet18(num_classes=10).cuda().train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(batch, 3, 224, 224, device="cuda")
    y = torch.randint(0, 10, (batch,), device="cuda")

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = model(x)
        loss = torch.nn.functional.cross_entropy(out.float(), y)
        loss.backward()
        opt.step()

    for _ in range(5):
        step()
    torch.cuda.synchronize()
    iters, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds or iters < 5:
        step()
        iters += 1
        if iters % 5 == 0:
            torch.cuda.synchronize()
    torch.cuda.synchronize()
    return batch * iters / (time.perf_counter() - started)


def bench(a, torch, torchvision, deadline, log, work, data):
    result = {"note": "ours: last of 2 epochs of `cv train` (CIFAR images resized to 224 on the CPU by the "
                      "loader, --augment none); torch: synthetic batch already on the GPU, TF32 off"}
    for batch, precision in ((16, "f32"), (64, "f32"), (64, "bf16")):
        key = f"resnet18_train_b{batch}_224_{precision}"
        r = {"ours": bench_ours(a, deadline, log, work, data, batch, precision)}
        if torch is not None and deadline.left() > 20:
            try:
                r["torch_images_per_s"] = bench_torch(torch, torchvision, batch, precision)
                torch.cuda.empty_cache()  # leave the GPU memory to the next `cv train`
            except Exception as e:  # noqa: BLE001 - recorded, the other workloads still run
                r["torch_error"] = repr(e)
        ours = r["ours"].get("images_per_s")
        if ours and r.get("torch_images_per_s"):
            r["ratio_ours_over_torch"] = ours / r["torch_images_per_s"]
            print(f"gpu-check: {key}: ours {ours:.0f} img/s, torch {r['torch_images_per_s']:.0f} img/s, "
                  f"ratio {r['ratio_ours_over_torch']:.2f}", file=sys.stderr)
        result[key] = r
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--fixtures", required=True)
    ap.add_argument("--deadline-s", type=float, default=450)
    a = ap.parse_args()
    deadline = Deadline(a.deadline_s)
    log = []
    report = {"binary": a.bin, "fixtures": a.fixtures, "host": platform.node(),
              "ld_library_path": os.environ.get("LD_LIBRARY_PATH", ""), "commands": log}
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,compute_cap,memory.total",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
        report["gpu"] = smi.stdout.strip() or smi.stderr.strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        report["gpu"] = f"nvidia-smi failed: {e}"
    try:
        import numpy as np
    except ImportError:
        np = None
    try:
        import torch
        import torchvision
        report["torch"] = f"{torch.__version__} cuda {torch.version.cuda} available={torch.cuda.is_available()}"
        if not torch.cuda.is_available():
            torch = None
    except ImportError as e:
        torch = torchvision = None
        report["torch"] = f"not importable: {e}"

    with tempfile.TemporaryDirectory(prefix="gpu-check-") as work:
        steps = {}
        if np is None:
            steps["error"] = "numpy is not importable: parity, data generation and benchmarks need it"
        else:
            data = os.path.join(work, "cifar")
            write_cifar(data, np)
            if torch is not None:
                try:
                    steps["parity"] = parity(a, torch, np, torchvision, deadline, log, work)
                except Exception as e:  # noqa: BLE001 - recorded, the other steps still run
                    steps["parity"] = {"status": "error", "reason": repr(e)}
            else:
                steps["parity"] = {"status": "skipped", "reason": "no torch with CUDA"}
            try:
                steps.update(finetune(a, np, deadline, log, work, data))
            except Exception as e:  # noqa: BLE001 - recorded, the benchmarks still run
                steps["finetune_error"] = repr(e)
            try:
                steps["bench"] = bench(a, torch, torchvision, deadline, log, work, data)
            except Exception as e:  # noqa: BLE001 - recorded in the JSON
                steps["bench"] = {"error": repr(e)}
        report.update(steps)
    report["seconds_left_of_deadline"] = round(deadline.left(), 1)
    tmp = a.out + ".partial"
    with open(tmp, "w") as f:
        json.dump(report, f, indent=2)
    os.replace(tmp, a.out)
    ok = bool(report.get("parity", {}).get("pass")) and all(
        report.get(k, {}).get("rc") == 0 and report.get(k, {}).get("cuda_used")
        for k in ("finetune_f32", "finetune_bf16", "eval", "predict", "train_cnn"))
    print(f"gpu-check: wrote {a.out}; {'PASS' if ok else 'FAIL (see the JSON)'}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
