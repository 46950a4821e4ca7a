#!/usr/bin/env python3
"""torchvision side of `cargo xtask bench data --compare-pytorch`.

The same five pipelines as xtask/src/bench/data.rs, with the same names, the way the
PyTorch CIFAR-10 tutorial feeds a model: 50,000 32x32 RGB images in memory, a map-style
Dataset returning PIL images through torchvision transforms (ToTensor + Normalize last), a
DataLoader with batch 100, shuffling and 2 worker processes (persistent). Reports images/s over
at least --seconds after --warmup batches.

    python3 scripts/bench_torchvision_data.py --json -     # JSON on stdout, progress on stderr

Needs torch, torchvision, numpy and Pillow: `pip install torch torchvision numpy pillow`
(PyPI), or torch and torchvision as CPU-only wheels:
    pip install torch torchvision --index-url https://download.pytorch.org/whl/cpu
"""

import argparse
import json
import os
import sys
import time

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
BATCH = 100
IMAGES = 50_000


def pipelines(T):
    return {
        "random_resized_crop_224+flip+normalize (loader)": T.Compose([
            T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]),
        "resize_224+normalize (loader)": T.Compose([
            T.Resize(224), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]),
        "random_crop_32_pad_4+flip+normalize (loader)": T.Compose([
            T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
            T.Normalize(CIFAR10_MEAN, CIFAR10_STD)]),
        # torchvision's reference recipe order (references/classification/presets.py).
        "random_resized_crop_224+flip+trivial_augment_wide+normalize (loader)": T.Compose([
            T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.TrivialAugmentWide(),
            T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]),
        "random_crop_32_pad_4+flip+trivial_augment_wide+normalize (loader)": T.Compose([
            T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.TrivialAugmentWide(),
            T.ToTensor(), T.Normalize(CIFAR10_MEAN, CIFAR10_STD)]),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", metavar="FILE", help="write the figures as JSON to FILE ('-' for stdout)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    p.add_argument("--seconds", type=float, default=5.0, help="minimum timed seconds per pipeline")
    p.add_argument("--warmup", type=int, default=3, help="untimed batches first")
    p.add_argument("--quick", action="store_true", help="1 warm-up and 1 timed batch (smoke run)")
    p.add_argument("--only", help="comma-separated pipeline names (default: all)")
    args = p.parse_args()
    if args.quick:
        args.warmup, args.seconds = 1, 0.0
    try:
        import numpy as np
        import torch
        import torchvision
        import torchvision.transforms as T
        from PIL import Image
    except ImportError as e:
        sys.exit(f"error: scripts/bench_torchvision_data.py needs torch, torchvision, numpy and Pillow ({e})")

    all_pipes = pipelines(T)
    names = list(all_pipes)
    if args.only:
        names = [n for n in args.only.split(",") if n]
        unknown = [n for n in names if n not in all_pipes]
        if unknown:
            p.error(f"unknown pipelines: {', '.join(unknown)} (known: {', '.join(all_pipes)})")

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(IMAGES, 32, 32, 3), dtype=np.uint8)
    labels = (np.arange(IMAGES) % 10).astype(np.int64)

    class InMemory(torch.utils.data.Dataset):
        def __init__(self, transform):
            self.transform = transform

        def __len__(self):
            return IMAGES

        def __getitem__(self, i):
            return self.transform(Image.fromarray(pixels[i])), int(labels[i])

    results = []
    for name in names:
        print(f"torchvision: {name}...", file=sys.stderr, flush=True)
        loader = torch.utils.data.DataLoader(
            InMemory(all_pipes[name]), batch_size=BATCH, shuffle=True,
            num_workers=args.workers, persistent_workers=args.workers > 0)

        def batches():
            while True:
                yield from loader

        it = batches()
        for _ in range(args.warmup):
            next(it)
        images, n_batches = 0, 0
        start = time.perf_counter()
        while n_batches < 1 or time.perf_counter() - start < args.seconds:
            x, _ = next(it)
            images += x.shape[0]
            n_batches += 1
        secs = time.perf_counter() - start
        results.append({"name": name, "unit": "images/s", "value": images / secs,
                        "images": images, "seconds": secs})
        del it, loader

    doc = {"torch_version": torch.__version__, "torchvision_version": torchvision.__version__,
           "workers": args.workers, "batch_size": BATCH, "results": results}
    if args.json == "-":
        json.dump(doc, sys.stdout, indent=2)
        sys.stdout.write("\n")
    elif args.json:
        tmp = f"{args.json}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(doc, f, indent=2)
        os.replace(tmp, args.json)
    if args.json != "-":
        for r in results:
            print(f"{r['name']:<50} {r['value']:>10.1f} images/s")


if __name__ == "__main__":
    main()
