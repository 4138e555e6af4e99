"""GradCAM for the S10 net with torchcam, leaving the shared model as it found it.

Each call makes its own torchcam extractor (hooks on the named layer), runs one forward and one backward for all the
requested classes at once (the image repeated once per class), and removes the hooks. A lock serialises this hooked
section: the hooks sit on the model itself, so any other forward pass through it meanwhile (a second CAM, or a plain
prediction) would be recorded too. Hence the app gives CAMs a model copy of their own (26 MB), so predictions never
wait for a CAM. The trade-off: CAMs queue for the lock (about 40 ms each at the first stage here), while everything
else in a request (decoding, resizing, overlays) runs concurrently; a copy per request would avoid the queue but cost
26 MB and a copy each time, and on a 2-vCPU Space two CAMs in parallel are not faster than in turn.
"""

from __future__ import annotations

import threading

import numpy as np
import torch
from PIL import Image
from torchcam.methods import GradCAM

_hooked = threading.Lock()


def freeze(model: torch.nn.Module) -> torch.nn.Module:
    """An inference model: eval mode, float32, no parameter that can store a gradient. CAMs take gradients with
    respect to the input instead, so nothing is written into the shared parameters."""
    model.eval().float()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def grad_cams(model: torch.nn.Module, x: torch.Tensor, layer: str, class_idx: list[int]) -> np.ndarray:
    """GradCAMs of `x` (1, 3, H, W) for each class in `class_idx`, at `layer`: float32 (len(class_idx), H, W),
    upsampled to the input size, each in [0, 1]. `model` must not run other forward passes concurrently."""
    if not class_idx:
        return np.zeros((0, *x.shape[-2:]), dtype=np.float32)
    batch = x.float().expand(len(class_idx), -1, -1, -1).clone().requires_grad_(True)
    with _hooked, torch.enable_grad(), torch.autocast(x.device.type, enabled=False):
        was_training = model.training
        model.eval()
        extractor = GradCAM(model, target_layer=layer)
        try:
            scores = model(batch)
            cams = extractor(list(class_idx), scores)[0]  # (N, h, w) at the layer's resolution
        finally:
            extractor.remove_hooks()
            extractor.reset_hooks()
            model.train(was_training)
    cams = torch.nn.functional.interpolate(cams[:, None].detach().float(), size=x.shape[-2:], mode="bilinear",
                                           align_corners=False)[:, 0]
    cams = cams.clamp(0, 1).nan_to_num(0.0)
    return cams.numpy()


def overlay(image: Image.Image, cam: np.ndarray, opacity: float, size: int = 224) -> Image.Image:
    """The CAM as a jet heat map over the image, both shown at size x size (image nearest-upscaled if small)."""
    from matplotlib import colormaps

    base = image.convert("RGB")
    resample = Image.Resampling.NEAREST if base.width < size else Image.Resampling.LANCZOS
    base = np.asarray(base.resize((size, size), resample), dtype=np.float32) / 255
    heat = Image.fromarray((cam * 255).astype(np.uint8)).resize((size, size), Image.Resampling.BILINEAR)
    colour = colormaps["jet"](np.asarray(heat, dtype=np.float32) / 255)[..., :3]
    opacity = float(np.clip(opacity, 0, 1))
    return Image.fromarray(((1 - opacity) * base + opacity * colour).clip(0, 1).__mul__(255).astype(np.uint8))
