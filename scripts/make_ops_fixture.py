"""Reference outputs of torchvision's augmentation operations and its policy tables, for
crates/cv-data/tests/torchvision_ops.rs.

Each operation runs through torchvision's own `_apply_op` (what AutoAugment, RandAugment and
TrivialAugmentWide call) or `adjust_hue` (ColorJitter), on uint8 tensors, nearest
interpolation, zero fill. Keys are `IMAGE:OP:MAGNITUDE`; `IMAGE:input` holds the input (H, W, 3).
Beside it, OUT with `.json` for `.safetensors`: the policies' magnitude tables (every op, every
bin, signed or not) for a 224x160 (width x height) image and AutoAugment's ImageNet policy.

    python3 -m venv venv && venv/bin/pip install torch torchvision numpy safetensors
    venv/bin/python scripts/make_ops_fixture.py crates/cv-data/tests/fixtures/torchvision_ops.safetensors
"""
import json
import sys

import numpy as np
import torch
import torchvision
from safetensors.numpy import save_file
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as F
from torchvision.transforms import autoaugment as A
from torchvision.transforms.autoaugment import _apply_op


def image(w, h, seed, flat_blue):
    rng = np.random.RandomState(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 128 + 100 * np.sin(x / 3.0) * np.cos(y / 5.0) + rng.normal(0, 12, (h, w))
    g = 40 + 180 * (x + y) / (w + h) + rng.normal(0, 8, (h, w))
    b = np.full((h, w), 77.0) if flat_blue else 90 + 60 * rng.random_sample((h, w))
    return np.clip(np.stack([r, g, b], -1), 0, 255).round().astype(np.uint8)


OPS = [
    ("Brightness", [-0.7, 0.45, 0.99]),
    ("Color", [-0.8, 0.6]),
    ("Contrast", [-0.6, 0.3, 0.9]),
    ("Sharpness", [-0.9, 0.8]),
    ("Posterize", [2.0, 5.0]),
    ("Solarize", [128.0, 246.5, 0.0]),
    ("AutoContrast", [0.0]),
    ("Equalize", [0.0]),
    ("Invert", [0.0]),
    ("Rotate", [30.0, -67.5, 90.0, 135.0]),
    ("TranslateX", [10.0, -5.9]),
    ("TranslateY", [-7.0, 32.0]),
    ("ShearX", [0.3, -0.99]),
    ("ShearY", [0.5, -0.2]),
]
HUES = [-0.3, 0.15, 0.5]


def main(out):
    tensors = {}
    images = {"a": image(23, 17, 0, False), "b": image(19, 31, 1, True)}
    for name, hwc in images.items():
        tensors[f"{name}:input"] = hwc
        chw = torch.from_numpy(hwc).permute(2, 0, 1).contiguous()
        for op, mags in OPS:
            for m in mags:
                res = _apply_op(chw.clone(), op, m, InterpolationMode.NEAREST, None)
                tensors[f"{name}:{op}:{m}"] = res.permute(1, 2, 0).contiguous().numpy()
        for m in HUES:
            res = F.adjust_hue(chw.clone(), m)
            tensors[f"{name}:Hue:{m}"] = res.permute(1, 2, 0).contiguous().numpy()
    save_file(tensors, out, metadata={"torch": torch.__version__, "torchvision": torchvision.__version__})
    print(f"{len(tensors)} arrays -> {out}")
    json_out = out.rsplit(".", 1)[0] + ".json"
    with open(json_out, "w") as f:
        json.dump(tables(), f, indent=1)
        f.write("\n")
    print(f"policy tables -> {json_out}")


def space(table):
    return {op: {"magnitudes": [float(v) for v in m.reshape(-1).tolist()] if m.ndim > 0 else [],
                 "signed": bool(signed)}
            for op, (m, signed) in table.items()}


def tables():
    width, height = 224, 160
    aa = A.AutoAugment(A.AutoAugmentPolicy.IMAGENET)
    return {
        "torchvision": torchvision.__version__,
        "image": {"width": width, "height": height},
        "trivial_augment_wide": space(A.TrivialAugmentWide()._augmentation_space(31)),
        # torchvision passes [height, width] to the two below.
        "rand_augment": space(A.RandAugment()._augmentation_space(31, [height, width])),
        "auto_augment": space(aa._augmentation_space(10, [height, width])),
        "imagenet_policy": [[[op, p, m] for op, p, m in sub] for sub in aa.policies],
    }


if __name__ == "__main__":
    main(sys.argv[1])
