#!/usr/bin/env python3
"""A real held-out image set without a download: scikit-learn's copy of the UCI handwritten
digits (1,797 scans of 8x8 pixels, 16 grey levels, written by 43 people), as an image folder
that `cv train`, `cv eval` and `cv quantize` read (`OUT/train/<digit>/*.png`,
`OUT/test/<digit>/*.png`).

    python3 scripts/make_digits.py OUT [--test-share 0.3] [--size 32] [--seed 0]

Each scan is upsampled (bilinear) to SIZE x SIZE and written as RGB (grey on the three
channels). The split is stratified by digit and seeded; the test images are never seen in
training. Needs scikit-learn, numpy and Pillow (`pip install scikit-learn pillow`).
"""

import argparse
import pathlib
import sys

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=pathlib.Path)
    parser.add_argument("--test-share", type=float, default=0.3)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not 0.0 < args.test_share < 1.0:
        parser.error("--test-share must lie strictly between 0 and 1")
    if args.out.exists():
        parser.error(f"{args.out} exists; choose a new folder")
    digits = load_digits()
    rng = np.random.default_rng(args.seed)
    staging = args.out.with_name(args.out.name + ".partial")
    counts = {"train": 0, "test": 0}
    for label in range(10):
        indices = rng.permutation(np.flatnonzero(digits.target == label))
        n_test = round(args.test_share * len(indices))
        for split, chosen in (("test", indices[:n_test]), ("train", indices[n_test:])):
            folder = staging / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            for i in chosen:
                grey = (digits.images[i] * (255.0 / 16.0)).round().astype(np.uint8)
                image = Image.fromarray(grey, mode="L").resize(
                    (args.size, args.size), Image.Resampling.BILINEAR
                )
                image.convert("RGB").save(folder / f"{i:04}.png")
                counts[split] += 1
    staging.rename(args.out)
    print(args.out)
    print(f"{counts['train']} training and {counts['test']} test images", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
