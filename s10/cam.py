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
from functools import partial

import numpy as np
import torch
from PIL import Image
from torchcam.methods import FinerCAM, GradCAM, GradCAMpp, LayerCAM, XGradCAM
from torchcam.utils import overlay_mask

# torchcam's methods that need one forward and one backward pass, by the name the page and the API use: what
# bench/cam_faithfulness.py measures. ScoreCAM is left out: it runs one forward pass per channel of the layer (512 at
# layer3), seconds for three maps on a 2-core CPU against milliseconds for these. FinerCAM contrasts the class with
# the three classes whose scores lie nearest to it ("why A and not B"), on GradCAM.
MEASURED = {"GradCAM": GradCAM, "GradCAM++": GradCAMpp, "XGradCAM": XGradCAM, "LayerCAM": LayerCAM,
            "FinerCAM": partial(FinerCAM, base_method=GradCAM)}
# What the page offers, and its default: the benchmark's rule on the released weights (docs/app.md has the table and
# the reasons). A method whose map hardly changes with the class at every layer cannot answer "why not a dog?".
OFFERED = ("GradCAM", "XGradCAM", "LayerCAM", "FinerCAM")
CAM_METHODS = {name: MEASURED[name] for name in OFFERED}
DEFAULT_METHOD = "XGradCAM"
DEFAULT_LAYER = "layer2"
SHOWN_SIZE = 224  # pixels: the side of every picture the app shows

_hooked = threading.Lock()


class CamError(ValueError):
    """A CAM request that names an unknown method or layer; the message is meant for the user."""


def check_method(method: str, methods: dict = CAM_METHODS) -> str:
    """`method` if it is one of `methods` (by default, what the page offers); else a CamError naming them."""
    if method not in methods:
        raise CamError(f"unknown CAM method {method!r}; choose one of {', '.join(methods)}")
    return method


def freeze(model: torch.nn.Module) -> torch.nn.Module:
    """An inference model: eval mode, float32, no parameter that can store a gradient. CAMs take gradients with
    respect to the input instead, so nothing is written into the shared parameters."""
    model.eval().float()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def class_maps(model: torch.nn.Module, x: torch.Tensor, layer: str, class_idx: list[int] | int,
               method: str = DEFAULT_METHOD, with_scores: bool = False, with_features: bool = False):
    """CAMs at `layer` for the images of `x` (B, 3, H, W) and the classes `class_idx`, r = len(class_idx) / B per
    image (image i gets classes class_idx[i * r:(i + 1) * r]), or, for an int r, each image's r most likely classes
    by this same forward pass (most likely first: `scores[::r].topk(r)`, so the caller needs no forward pass of its
    own to rank them). float32 (B * r, H, W), upsampled to the input size, each in [0, 1]; with `with_scores`, also
    the logits of that forward pass, one row per map (float32 (B * r, classes)); with `with_features` (implies
    `with_scores`), also what the head's linear layer read (the penultimate features, (B * r, 512)), so an
    out-of-distribution score needs no second pass. `model` must not run other forward passes concurrently.

    Only what the maps need is computed: the layers before `layer` run once per image without autograd, and the graph
    starts at `layer`'s output, so the backward pass stops there (most of the network's FLOPs lie before layer2). Each
    image is repeated r times (one row per map) where it enters the top-level stage that holds `layer`: at the
    stage's output for a stage itself, at its input for a layer inside one (`layer1.res`), since the stage's skip
    connection adds its own input to the layer's output and both must have the same r rows."""
    extractor_cls = MEASURED[check_method(method, MEASURED)]
    top = isinstance(class_idx, int)
    with_scores = with_scores or with_features
    if (top and class_idx <= 0) or (not top and not class_idx):
        empty = np.zeros((0, *x.shape[-2:]), dtype=np.float32)
        if with_features:
            return empty, torch.zeros(0, 0), torch.zeros(0, 0)
        return (empty, torch.zeros(0, 0)) if with_scores else empty
    repeats, rest = (class_idx, 0) if top else divmod(len(class_idx), len(x))
    if rest or not repeats:
        raise ValueError(f"{len(x)} images for {len(class_idx)} classes")
    stage = layer.split(".")[0]

    def repeat_input(module, inputs):
        return (inputs[0].repeat_interleave(repeats, 0), *inputs[1:])

    def graph_starts_here(module, inputs, output):
        rows = output.repeat_interleave(repeats, 0) if layer == stage else output
        return rows.detach().requires_grad_(True)

    with _hooked, torch.autocast(x.device.type, enabled=False):
        was_training = model.training
        model.eval()
        hooks = [] if layer == stage else [model.get_submodule(stage).register_forward_pre_hook(repeat_input)]
        hooks.append(model.get_submodule(layer).register_forward_hook(graph_starts_here))  # before torchcam's own
        features = []
        if with_features:
            hooks.append(model.head[-1].register_forward_pre_hook(lambda m, i: features.append(i[0].detach())))
        extractor = extractor_cls(model, target_layer=layer)
        try:
            with torch.enable_grad():
                scores = model(x.float())
                if top:
                    class_idx = scores[::repeats].topk(repeats).indices.flatten()
                cams = extractor([int(c) for c in class_idx], scores)[0]  # (N, h, w) at the layer's resolution
        finally:
            for hook in hooks:
                hook.remove()
            extractor.remove_hooks()
            extractor.reset_hooks()
            model.train(was_training)
    cams = torch.nn.functional.interpolate(cams[:, None].detach().float(), size=x.shape[-2:], mode="bilinear",
                                           align_corners=False)[:, 0]
    cams = cams.clamp(0, 1).nan_to_num(0.0).numpy()
    if with_features:
        return cams, scores.detach().float(), features[0].float()
    return (cams, scores.detach().float()) if with_scores else cams


def overlay(base: Image.Image, cam: np.ndarray, opacity: float) -> Image.Image:
    """The CAM as a jet heat map over `base` (an image as `shown` gives it): torchcam's `overlay_mask`, which resizes
    the map to the image (bicubic) and squares it, so the peaks stand out."""
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
