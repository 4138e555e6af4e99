"""The S10 network: a ResNet-9-style CIFAR-10 classifier (6,573,130 parameters).

    from s10.model import S10Net
    model = S10Net.from_pretrained("path/or/user-repo")    # eval mode, CPU, safetensors only
    probs = model.probabilities(x)                         # x: (B, 3, 32, 32), normalised with config.mean/std

This module imports nothing from training (no Lightning, no data sets), so the Space can ship it alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)  # per-channel mean of the training images, in [0, 1]
CIFAR10_STD = (0.2470, 0.2435, 0.2616)  # per-channel std of the training images, in [0, 1]
# Modules whose output is a spatial feature map, in forward order: the layers a CAM can be taken at.
CAM_LAYERS = ["prep", "layer1", "layer1.res", "layer2", "layer3", "layer3.res"]


def normalize(images: torch.Tensor, mean, std) -> torch.Tensor:
    """Images (B, 3, H, W), uint8 in 0..255 or float in [0, 1] -> the normalised float32 input the network expects.
    The one normalisation of the project: training, evaluation, the app and the predict command all use it.
    `mean` and `std`: 3 values, or float32 tensors on the images' device; the trainer passes tensors that it made
    once, since building them from Python values is a host-to-device copy (a GPU sync) at every call."""
    mean = torch.as_tensor(mean, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    std = torch.as_tensor(std, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    if images.dtype == torch.uint8:  # a fresh float copy, scaled in place: ~10x faster than out of place on a CPU
        return images.float().mul_(1 / (255 * std)).sub_(mean / std)
    return (images.float() - mean) / std


def calibrated(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax(logits / T), float32: the probabilities the model's config says its logits mean (s10/calibration.py
    fits T; T = 1 is the plain softmax)."""
    return (logits.float() / temperature).softmax(-1)


@dataclass
class S10Config:
    """What inference needs, saved as config.json beside the weights."""

    num_classes: int = 10  # number of output logits
    class_names: list[str] = field(default_factory=lambda: list(CIFAR10_CLASSES))  # label index -> name
    mean: list[float] = field(default_factory=lambda: list(CIFAR10_MEAN))  # normalisation mean, RGB in [0, 1]
    std: list[float] = field(default_factory=lambda: list(CIFAR10_STD))  # normalisation std, RGB in [0, 1]
    input_size: int = 32  # input height and width, pixels
    cam_layers: list[str] = field(default_factory=lambda: list(CAM_LAYERS))  # layer names a CAM can use
    temperature: float = 1.0  # logits are divided by it before the softmax (temperature scaling); 1.0: as trained
    results: dict = field(default_factory=dict)  # the training run's headline results (filled by training)
    ood: dict = field(default_factory=dict)  # the out-of-distribution detector (s10/ood.py; bench/ood.py fills it)

    def __post_init__(self):
        if len(self.class_names) != self.num_classes:
            raise ValueError(f"config has {len(self.class_names)} class names for num_classes={self.num_classes}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError("config mean and std must have 3 values (RGB)")
        if not self.temperature > 0:
            raise ValueError(f"config temperature must be positive, got {self.temperature}")
        unknown = set(self.cam_layers) - set(CAM_LAYERS)
        if unknown:
            raise ValueError(f"config cam_layers names unknown layers: {sorted(unknown)}")

    @classmethod
    def from_dict(cls, data: dict) -> "S10Config":
        """Strict: an unknown key is an error, not silently dropped."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown keys in S10 config: {sorted(unknown)}")
        return cls(**data)


def conv_bn(c_in: int, c_out: int, pool: bool = False) -> nn.Sequential:
    """Conv3x3 (no bias) -> [MaxPool(2)] -> BN -> ReLU: the unit every stage is built from."""
    layers = [nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    layers += [nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class ResBlock(nn.Sequential):
    """(Conv3x3 -> BN -> ReLU) x 2 at constant width; the caller adds the skip connection."""

    def __init__(self, channels: int):
        super().__init__(conv_bn(channels, channels), conv_bn(channels, channels))


class ResLayer(nn.Module):
    """X = conv_bn with pooling; out = X + ResBlock(X). Hooks on `.res` see R, hooks on the layer see X + R."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv = conv_bn(c_in, c_out, pool=True)
        self.res = ResBlock(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return x + self.res(x)


class S10Net(
    nn.Module,
    PyTorchModelHubMixin,
    library_name="s10",
    license="mit",
    pipeline_tag="image-classification",
    tags=["image-classification", "cifar10", "resnet", "pytorch"],
):
    """The S10 custom ResNet. Shapes for a 32x32 input, batch B:

    prep   (B, 64, 32, 32) -> layer1 (B, 128, 16, 16) -> layer2 (B, 256, 8, 8)
    -> layer3 (B, 512, 4, 4) -> head: MaxPool(4), flatten, Linear -> (B, num_classes) logits
    """

    def __init__(self, config: S10Config | None = None):
        super().__init__()
        self.config = config or S10Config()
        self._hub_mixin_config = self.config  # save_pretrained writes it as config.json, defaults included
        self.prep = conv_bn(3, 64)
        self.layer1 = ResLayer(64, 128)
        self.layer2 = conv_bn(128, 256, pool=True)
        self.layer3 = ResLayer(256, 512)
        self.head = nn.Sequential(nn.MaxPool2d(4), nn.Flatten(), nn.Linear(512, self.config.num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head[-1](self.features(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The penultimate features (B, 512): what the head's linear layer reads (s10/ood.py scores them)."""
        pool, flatten = self.head[0], self.head[1]
        return flatten(pool(self.layer3(self.layer2(self.layer1(self.prep(x))))))

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 or [0, 1] float images (B, 3, H, W) -> the normalised float input the network expects."""
        return normalize(images, self.config.mean, self.config.std)

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """Calibrated class probabilities (B, classes) of a normalised batch: softmax(logits / config.temperature)."""
        return calibrated(self(x), self.config.temperature)

    # -- Hub round trip: safetensors only, strict, eval mode ----------------------------------------------------

    @classmethod
    def _from_pretrained(cls, *, model_id, revision, cache_dir, force_download, local_files_only, token,
                         map_location="cpu", strict=True, **model_kwargs):
        """Load safetensors weights strictly; a folder with only pytorch_model.bin is refused, never unpickled."""
        from huggingface_hub import hf_hub_download
        from safetensors.torch import load_file

        config = model_kwargs.pop("config", None)
        if isinstance(config, dict):
            config = S10Config.from_dict(config)
        model = cls(config)
        if Path(model_id).is_dir():
            weights = Path(model_id) / "model.safetensors"
            if not weights.is_file():
                raise FileNotFoundError(f"{model_id}: no model.safetensors (pytorch_model.bin is never unpickled)")
        else:
            try:
                weights = hf_hub_download(model_id, "model.safetensors", revision=revision, cache_dir=cache_dir,
                                          force_download=force_download, local_files_only=local_files_only,
                                          token=token)
            except Exception as err:  # EntryNotFound, offline, gated...: one clear message
                raise FileNotFoundError(f"{model_id}: cannot get model.safetensors ({type(err).__name__})") from err
        state = load_file(str(weights), device=str(map_location))
        try:
            model.load_state_dict(state, strict=strict)
        except RuntimeError as err:
            raise ValueError(f"{model_id}: weights do not match the config: {err}") from None
        return model.eval()

