#!/usr/bin/env python3
"""pytorch-grad-cam's maps on the shared parity fixtures, for the CAM parity test
(crates/cv-models/tests/cam.rs).

    python3 scripts/make_cam_fixture.py ../shared/fixtures/torchvision-parity \
        crates/cv-models/tests/data/cam.safetensors

Reads resnet18.safetensors, io.safetensors, net.safetensors and net_io.safetensors there and
runs pytorch-grad-cam (PyPI `grad-cam`) on the fixtures' inputs. For each case NAME it writes
NAME.raw (relu of the weighted channel sum at the layer's resolution, before any scaling:
`get_cam_image` on the activations and gradients the CAM object hooked), NAME.map (what the
CAM object returns: scaled to [0, 1] at the input's resolution; left out for some cases to
keep the file small) and NAME.targets (the explained classes, i64). CAM is BaseCAM with the
fc row of the target class as the channel weights. `jet` is OpenCV's COLORMAP_JET as RGB u8
rows, the table `show_cam_on_image` colours with. Needs torch, torchvision, safetensors and
grad-cam (pip install torch torchvision safetensors grad-cam).
"""

import os
import sys

import cv2
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus
from pytorch_grad_cam.base_cam import BaseCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_pytorch import make_net  # noqa: E402  (the tutorial's Net, defined once)


class FcCAM(BaseCAM):
    """CAM (Zhou et al.): the classifier's weights of the target class."""

    def __init__(self, model, target_layers, fc):
        super().__init__(model, target_layers, uses_gradients=False)
        self.fc = fc

    def get_cam_weights(self, input_tensor, target_layer, targets, activations, grads):
        rows = [t.category for t in targets]
        return self.fc.weight.detach().numpy()[rows]


def run(method, model, layer, x, classes, keep_map):
    """One case: the maps of `method` at `layer` for `x`, explaining `classes` (None: top-1)."""
    cam = method(model, [layer])
    if classes is None:
        with torch.no_grad():
            classes = model(x).argmax(-1).tolist()
    targets = [ClassifierOutputTarget(c) for c in classes]
    maps = cam(input_tensor=x, targets=targets)
    acts = cam.activations_and_grads.activations[0].numpy()
    grads = cam.activations_and_grads.gradients[0].numpy() if cam.uses_gradients else None
    raw = np.maximum(cam.get_cam_image(x, layer, targets, acts, grads), 0)
    out = {"raw": torch.from_numpy(np.float32(raw)), "targets": torch.tensor(classes)}
    if keep_map:
        out["map"] = torch.from_numpy(np.float32(maps))
    return out


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    src, out = sys.argv[1], sys.argv[2]
    torch.set_num_threads(1)
    resnet = torchvision.models.resnet18(num_classes=1000)
    resnet.load_state_dict(load_file(os.path.join(src, "resnet18.safetensors")), strict=False)
    resnet.eval()
    io = load_file(os.path.join(src, "io.safetensors"))
    net = make_net(nn, F, torch)
    net.load_state_dict(load_file(os.path.join(src, "net.safetensors")))
    net.eval()
    net_x = load_file(os.path.join(src, "net_io.safetensors"))["input"]
    fc_cam = lambda m, layers: FcCAM(m, layers, resnet.fc)  # noqa: E731
    x224, x64 = io["input_224"], io["input_64"]
    cases = {
        "resnet18_gradcam_layer4_224": (GradCAM, resnet, resnet.layer4, x224, None, True),
        "resnet18_gradcampp_layer4_224": (GradCAMPlusPlus, resnet, resnet.layer4, x224, None, False),
        "resnet18_cam_layer4_224": (fc_cam, resnet, resnet.layer4, x224, None, False),
        "resnet18_gradcam_layer3_224": (GradCAM, resnet, resnet.layer3, x224, [3, 7], False),
        "resnet18_gradcampp_layer4_64": (GradCAMPlusPlus, resnet, resnet.layer4, x64, None, True),
        "resnet18_cam_layer4_64": (fc_cam, resnet, resnet.layer4, x64, None, True),
        "resnet18_gradcam_layer2_64": (GradCAM, resnet, resnet.layer2, x64, [0, 1, 2, 999], True),
        "resnet18_gradcam_layer4.0_64": (GradCAM, resnet, resnet.layer4[0], x64, None, True),
        "net_gradcam_conv2": (GradCAM, net, net.conv2, net_x, None, True),
        "net_gradcampp_conv1": (GradCAMPlusPlus, net, net.conv1, net_x, [1, 2, 3, 4, 5, 6, 7, 8], True),
    }
    tensors = {}
    for name, (method, model, layer, x, classes, keep_map) in cases.items():
        for k, v in run(method, model, layer, x, classes, keep_map).items():
            tensors[f"{name}.{k}"] = v
    lut = cv2.applyColorMap(np.arange(256, dtype=np.uint8).reshape(1, 256), cv2.COLORMAP_JET)
    tensors["jet"] = torch.from_numpy(np.ascontiguousarray(lut[0][:, ::-1]))
    import pytorch_grad_cam

    meta = {
        "torch": torch.__version__,
        "grad-cam": getattr(pytorch_grad_cam, "__version__", "1.5.x"),
        "opencv": cv2.__version__,
    }
    tmp = out + ".tmp"
    save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=meta)
    os.replace(tmp, out)
    for k, v in tensors.items():
        print(f"{k}: {list(v.shape)}")


if __name__ == "__main__":
    main()
