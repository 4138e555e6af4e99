"""Class activation maps for the S10 net with torchcam, leaving the shared model as it found it.

Each call makes its own torchcam extractor (hooks on the named layer), runs one forward and one backward for every
requested (image, class) pair at once, and removes the hooks. A lock serialises this hooked section: the hooks sit on
the model itself, so any other forward pass through it meanwhile (a second CAM, or a plain prediction) would be
recorded too. Hence the app gives CAMs a model copy of their own (26 MB), so predictions never wait for a CAM. The
trade-off: CAMs queue for the lock (a few ms to tens of ms each here), while everything else in a request (decoding,
resizing, overlays) runs concurrently; a copy per request would avoid the queue but cost 26 MB and a copy each time,
and on a 2-vCPU Space two CAMs in parallel are not faster than in turn.
"""

from __future__ import annotations

import threading

import numpy as np
import torch
from PIL import Image
from torchcam.methods import GradCAM, GradCAMpp, LayerCAM, XGradCAM
from torchcam.utils import overlay_mask

# The methods the app offers, by the name the page and the API use: torchcam's methods that need one forward and one
# backward pass. ScoreCAM is left out: it runs one forward pass per channel of the layer (512 at layer3), about
# 0.3 to 1.7 s for three maps on a 2-vCPU machine (bench/cam_faithfulness.py), against 15 to 30 ms for these.
CAM_METHODS = {"GradCAM": GradCAM, "GradCAM++": GradCAMpp, "XGradCAM": XGradCAM, "LayerCAM": LayerCAM}
# Chosen by bench/cam_faithfulness.py (the README has the table): the best trade-off of faithfulness and latency.
DEFAULT_METHOD = "LayerCAM"
DEFAULT_LAYER = "layer2"
SHOWN_SIZE = 224  # pixels: the side of every picture the app shows

_hooked = threading.Lock()


class CamError(ValueError):
    """A CAM request that names an unknown method or layer; the message is meant for the user."""


def check_method(method: str) -> str:
    if method not in CAM_METHODS:
        raise CamError(f"unknown CAM method {method!r}; choose one of {', '.join(CAM_METHODS)}")
    return method


def freeze(model: torch.nn.Module) -> torch.nn.Module:
    """An inference model: eval mode, float32, no parameter that can store a gradient. CAMs take gradients with
    respect to the input instead, so nothing is written into the shared parameters."""
    model.eval().float()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def class_maps(model: torch.nn.Module, x: torch.Tensor, layer: str, class_idx: list[int],
               method: str = DEFAULT_METHOD) -> np.ndarray:
    """CAMs at `layer` for image i of `x` (N, 3, H, W) and class `class_idx[i]`, or for one image (1, 3, H, W) and
    each class in `class_idx`: float32 (len(class_idx), H, W), upsampled to the input size, each in [0, 1].
    `model` must not run other forward passes concurrently."""
    extractor_cls = CAM_METHODS[check_method(method)]
    if not class_idx:
        return np.zeros((0, *x.shape[-2:]), dtype=np.float32)
    if len(x) == 1:
        x = x.expand(len(class_idx), -1, -1, -1)
    if len(x) != len(class_idx):
        raise ValueError(f"{len(x)} images for {len(class_idx)} classes")
    batch = x.float().clone().requires_grad_(True)  # gradients flow to the input, never into the parameters
    with _hooked, torch.enable_grad(), torch.autocast(x.device.type, enabled=False):
        was_training = model.training
        model.eval()
        extractor = extractor_cls(model, target_layer=layer)
        try:
            scores = model(batch)
            cams = extractor([int(c) for c in class_idx], scores)[0]  # (N, h, w) at the layer's resolution
        finally:
            extractor.remove_hooks()
            extractor.reset_hooks()
            model.train(was_training)
            model.zero_grad(set_to_none=True)
    cams = torch.nn.functional.interpolate(cams[:, None].detach().float(), size=x.shape[-2:], mode="bilinear",
                                           align_corners=False)[:, 0]
    return cams.clamp(0, 1).nan_to_num(0.0).numpy()


def overlay(image: Image.Image, cam: np.ndarray, opacity: float, size: int = SHOWN_SIZE) -> Image.Image:
    """The CAM as a jet heat map over the image, at size x size: torchcam's `overlay_mask` (which squares the map,
    so the peaks stand out), over the image resized as `shown` does."""
    base = shown(image, size)
    opacity = float(np.clip(opacity, 0, 1))
    if opacity == 0:  # overlay_mask's alpha (the image's share) must stay below 1
        return base
    return overlay_mask(base, Image.fromarray(np.asarray(cam, dtype=np.float32), mode="F"), "jet", alpha=1 - opacity)


def shown(image: Image.Image, size: int = SHOWN_SIZE) -> Image.Image:
    """An image as the app shows it: its centre square at size x size, nearest-upscaled when smaller (32x32 pixels
    stay sharp), Lanczos-resized when larger."""
    from s10.inference import centre_square

    base = image.convert("RGB")
    box = centre_square(base)
    resample = Image.Resampling.NEAREST if min(base.size) < size else Image.Resampling.LANCZOS
    return base.resize((size, size), resample, box=box)
