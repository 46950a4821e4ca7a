#!/usr/bin/env python3
"""Checks a `cv export --format onnx` file with the ONNX tools from PyPI.

    python3 scripts/check_onnx.py MODEL.onnx WEIGHTS.safetensors [--sizes 32,64,224]

WEIGHTS is what MODEL was exported from (a checkpoint's model.safetensors, torchvision names,
BatchNorm not folded). The script
- validates MODEL with `onnx.checker.check_model(full_check=True)` (schema and shape inference),
- prints its metadata_props (classes, input size, normalisation),
- runs it in onnxruntime at batch 1 and 7 for each size (the small CNN: 32 only) on random
  normalised inputs, and compares the logits with PyTorch's on WEIGHTS (torchvision's
  ResNet-18, or the tutorial's CNN), loaded with strict=True. cv's own logits match PyTorch's
  (the parity tests), so this checks the exported graph against cv's eval forward.
Exits 1 when any max |onnx - pytorch| exceeds 1e-4 of max |pytorch|.
Needs onnx, onnxruntime, torch, torchvision and safetensors.
"""
import argparse
import json
import sys

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from safetensors.torch import load_file

TOLERANCE = 1e-4


class Net(nn.Module):
    """The PyTorch tutorial's CNN, with cv's parameter names."""

    def __init__(self, classes):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


def reference(arch, path):
    state = {k: v.float() if v.is_floating_point() else v for k, v in load_file(path).items()}
    head = "fc.weight" if arch == "resnet18" else "fc3.weight"
    classes = state[head].shape[0]
    net = torchvision.models.resnet18(num_classes=classes) if arch == "resnet18" else Net(classes)
    net.load_state_dict(state, strict=True)
    return net.eval()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("weights")
    parser.add_argument("--sizes", default="32,64,224")
    args = parser.parse_args()

    proto = onnx.load(args.model)
    onnx.checker.check_model(proto, full_check=True)
    meta = {p.key: p.value for p in proto.metadata_props}
    print(f"{args.model}: valid ONNX, opset {proto.opset_import[0].version}, "
          f"{len(json.loads(meta['classes']))} classes, input size {meta['input_size']}, "
          f"mean {meta['mean']}, std {meta['std']}")
    arch = meta["architecture"]
    sizes = [32] if arch == "cnn" else [int(s) for s in args.sizes.split(",")]
    net = reference(arch, args.weights)
    session = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    torch.manual_seed(0)
    ok = True
    for size in sizes:
        for batch in (1, 7):
            x = torch.randn(batch, 3, size, size)
            with torch.no_grad():
                expected = net(x).numpy()
            got = session.run(None, {name: x.numpy()})[0]
            diff = float(np.abs(got - expected).max())
            scale = float(np.abs(expected).max())
            good = got.shape == expected.shape and diff <= TOLERANCE * scale
            print(f"  {arch} {size}x{size} batch {batch}: max |onnx - pytorch| {diff:.2e} "
                  f"of max |logit| {scale:.3f}: {'ok' if good else 'FAIL'}")
            ok &= good
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
