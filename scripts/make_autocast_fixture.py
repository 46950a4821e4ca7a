#!/usr/bin/env python3
"""PyTorch's CPU bf16 autocast logits on the shared parity fixtures, for the bf16 parity test
(crates/cv-models/tests/parity.rs, `resnet18_bf16_logits_match_pytorch_autocast`).

    python3 scripts/make_autocast_fixture.py ../shared/fixtures/torchvision-parity \
        crates/cv-models/tests/data/autocast_bf16.safetensors

Reads resnet18.safetensors, io.safetensors, net.safetensors and net_io.safetensors there, runs
each model in eval mode under torch.autocast("cpu", dtype=torch.bfloat16) on the fixtures'
inputs, and writes the logits as f32: resnet18_logits_224, resnet18_logits_64, net_logits.
Needs torch, torchvision and safetensors (pip install torch torchvision safetensors).
"""

import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_pytorch import make_net  # noqa: E402  (the tutorial's Net, defined once)


def autocast_logits(model, x):
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        return model(x).float()


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    src, out = sys.argv[1], sys.argv[2]
    resnet = torchvision.models.resnet18(num_classes=1000)
    resnet.load_state_dict(load_file(os.path.join(src, "resnet18.safetensors")), strict=False)
    io = load_file(os.path.join(src, "io.safetensors"))
    net = make_net(nn, F, torch)
    net.load_state_dict(load_file(os.path.join(src, "net.safetensors")))
    net_io = load_file(os.path.join(src, "net_io.safetensors"))
    tensors = {
        "resnet18_logits_224": autocast_logits(resnet, io["input_224"]),
        "resnet18_logits_64": autocast_logits(resnet, io["input_64"]),
        "net_logits": autocast_logits(net, net_io["input"]),
    }
    meta = {"torch": torch.__version__, "autocast": "cpu bfloat16, eval mode"}
    tmp = out + ".tmp"
    save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=meta)
    os.replace(tmp, out)
    for k, v in tensors.items():
        print(f"{k}: {list(v.shape)}, max |logit| {v.abs().max().item():.4f}")


if __name__ == "__main__":
    main()
