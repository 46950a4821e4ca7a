#!/usr/bin/env python3
"""Loads `cv export` files into torchvision's ResNet-18 and compares them with the f32 weights.

    python3 scripts/check_export.py F32.safetensors EXPORTED.safetensors [...]

Each EXPORTED file (f16 or bf16, torchvision names) is loaded with
`load_state_dict({k: v.float()}, strict=True)`; the script prints, for 16 random normalised
224x224 inputs, the largest logit difference to the f32 model and whether every top-1 agrees,
and exits 1 when one does not. Needs torch, torchvision and safetensors.
"""
import sys

import torch
import torchvision
from safetensors.torch import load_file


def model(path):
    state = {k: v.float() if v.is_floating_point() else v for k, v in load_file(path).items()}
    classes = state["fc.weight"].shape[0]
    net = torchvision.models.resnet18(num_classes=classes)
    net.load_state_dict(state, strict=True)
    return net.eval()


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    torch.manual_seed(0)
    x = torch.randn(16, 3, 224, 224)
    with torch.no_grad():
        reference = model(sys.argv[1])(x)
        ok = True
        for path in sys.argv[2:]:
            logits = model(path)(x)
            same = bool((logits.argmax(1) == reference.argmax(1)).all())
            diff = (logits - reference).abs().max().item()
            print(f"{path}: max |logit - f32| = {diff:.3g} (max |f32| {reference.abs().max():.3g}), top-1 {'same' if same else 'DIFFERS'}")
            ok &= same
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
