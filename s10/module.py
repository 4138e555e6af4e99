"""The S10 training logic as a LightningModule: loss, metrics and the One Cycle recipe.

The Fabric loop in fabric_train.py calls these hooks; the module never touches devices or data loading.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import lightning as L
import torch
import torch.nn.functional as F
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from s10.model import S10Config, S10Net


def setting(default, help: str):
    """A dataclass field whose one-line help (with units) is also its command-line help."""
    return field(default=default, metadata={"help": help})


@dataclass
class Recipe:
    """The run settings of the S10 recipe (the architecture lives in S10Config). fabric_train.py derives an option
    from every field (`max_lr` -> `--max-lr`), with the field's default and help."""

    epochs: int = setting(24, "length of the One Cycle schedule, epochs")
    batch_size: int = setting(512, "global batch, images per optimizer step (split across devices)")
    max_lr: float = setting(2.3e-3, "One Cycle peak LR when --find-lr is not given (the LR range test's "
                                    "suggestion on CIFAR-10, batch 512)")
    pct_start: float = setting(5 / 24, "fraction of the run at which the LR peaks (epoch 5 of 24)")
    div_factor: float = setting(100.0, "start LR = max_lr / div_factor")
    final_div_factor: float = setting(100.0, "final LR = start LR / final_div_factor")
    weight_decay: float = setting(1e-4, "adam: the L2 penalty added to the gradient; adamw: the decoupled decay, a "
                                        "fraction of each weight per unit of LR per step")
    optimizer: str = setting("adam", "adam (the course's) or adamw (decoupled weight decay, Loshchilov & Hutter "
                                     "2019; batch-norm parameters and biases are not decayed)")
    label_smoothing: float = setting(0.2, "cross-entropy label smoothing of the training loss (Szegedy et al. 2016; "
                                          "the course's: 0.1)")
    ema_decay: float = setting(0.0, "decay of an exponential moving average of the weights and batch-norm "
                                    "statistics, updated every --ema-every steps; the final evaluation and the "
                                    "published weights use it (0: off, the default and the course's; Page's: 0.99)")
    ema_every: int = setting(5, "optimizer steps between two updates of the weights' moving average")
    alternating_flip: bool = setting(True, "each epoch mirrors exactly the images the previous one did not "
                                           "(airbench); --no-alternating-flip: a fresh coin per image and epoch, "
                                           "the course's")
    lr_find_steps: int = setting(100, "optimizer steps of the LR range test (--find-lr)")
    seed: int = setting(0, "seeds weights, shuffling and augmentation")

    @classmethod
    def from_record(cls, recipe: dict) -> "Recipe":
        """The recipe a config.json records. A field the record predates ran as it did before the field existed
        (RECORDED_BEFORE: the course's recipe), not as today's default."""
        return cls(**{**RECORDED_BEFORE, **recipe})

    def __post_init__(self):
        for name in ("epochs", "batch_size", "lr_find_steps", "ema_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("max_lr", "div_factor", "final_div_factor"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not 0 < self.pct_start < 1:
            raise ValueError(f"pct_start must lie in (0, 1), got {self.pct_start}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be at least 0, got {self.weight_decay}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing must lie in [0, 1), got {self.label_smoothing}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must lie in [0, 1), got {self.ema_decay}")
        if self.optimizer not in ("adam", "adamw"):
            raise ValueError(f"optimizer must be adam or adamw, got {self.optimizer!r}")


# What a run recorded before these fields existed did: Adam, no weight average, a fresh flip coin per image and epoch.
RECORDED_BEFORE = {"optimizer": "adam", "ema_decay": 0.0, "ema_every": 5, "alternating_flip": False}


class S10Module(L.LightningModule):
    def __init__(self, arch: S10Config | None = None, recipe: Recipe | None = None, steps_per_epoch: int = 1):
        super().__init__()
        self.recipe = recipe or Recipe()
        self.steps_per_epoch = steps_per_epoch
        self.net = S10Net(arch)
        n = self.net.config.num_classes
        # Synced across ranks on compute(): each image is counted once, whatever the world size. The losses go in
        # per image, so a mean over them weights every image alike (a short last batch, any number of ranks). They
        # accumulate on the device with no input checks: a check reads a value back to the host (a sync on a GPU),
        # and nan_strategy="disable" skips that read (it also replaces any weight by ones, hence no weights here).
        checks = {"average": "micro", "validate_args": False}
        self.train_loss, self.train_acc = MeanMetric(nan_strategy="disable"), MulticlassAccuracy(n, **checks)
        self.test_loss, self.test_acc = MeanMetric(nan_strategy="disable"), MulticlassAccuracy(n, **checks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        losses = F.cross_entropy(logits.float(), y, label_smoothing=self.recipe.label_smoothing, reduction="none")
        self.train_loss.update(losses.detach())
        self.train_acc.update(logits.detach(), y)
        return {"loss": losses.mean(), "acc": (logits.detach().argmax(-1) == y).float().mean()}

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.test_loss.update(F.cross_entropy(logits.float(), y, reduction="none"))
        self.test_acc.update(logits, y)
        return logits

    def on_train_epoch_start(self):
        self.train_loss.reset()
        self.train_acc.reset()

    def on_validation_epoch_start(self):
        self.test_loss.reset()
        self.test_acc.reset()

    def epoch_metrics(self) -> dict[str, float]:
        """Train and test loss/accuracy of the epoch, synced over all ranks. The test loss is plain
        cross-entropy (no smoothing), so it is comparable across recipes."""
        return {
            "train_loss": self.train_loss.compute().item(),
            "train_acc": self.train_acc.compute().item(),
            "test_loss": self.test_loss.compute().item(),
            "test_acc": self.test_acc.compute().item(),
        }

    def configure_optimizers(self):
        r = self.recipe
        # Fused Adam: one kernel per step, and under 16-mixed the gradient scaler hands it the scale and the inf flag
        # on the device (GradScaler's path for `_step_supports_amp_scaling`) instead of reading found_inf back to
        # the host at every step. Fused kernels exist for CUDA and CPU parameters.
        fused = next(self.parameters()).device.type in ("cuda", "cpu") or None
        if r.optimizer == "adamw":
            optimizer = torch.optim.AdamW(self.decay_groups(r.weight_decay), lr=r.max_lr / r.div_factor, fused=fused)
        else:
            optimizer = torch.optim.Adam(self.parameters(), lr=r.max_lr / r.div_factor, weight_decay=r.weight_decay,
                                         fused=fused)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self._one_cycle(optimizer), "interval": "step"}}

    def decay_groups(self, weight_decay: float) -> list[dict]:
        """Two parameter groups: the convolution and linear weights, decayed, and the batch-norm weights and biases
        and the linear bias (every 1-D parameter), not decayed: shrinking them only rescales what batch norm
        normalises away, or moves a bias."""
        params = [p for p in self.parameters() if p.requires_grad]
        return [{"params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay},
                {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]

    def _one_cycle(self, optimizer):
        r = self.recipe
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=r.max_lr, epochs=r.epochs, steps_per_epoch=self.steps_per_epoch,
            pct_start=r.pct_start, div_factor=r.div_factor, final_div_factor=r.final_div_factor,
            three_phase=False, anneal_strategy="linear",
        )

    def lr_schedule(self) -> list[float]:
        """The LR of every optimizer step of the run, as the scheduler sets it (for the plots)."""
        optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=self.recipe.max_lr)
        scheduler = self._one_cycle(optimizer)
        lrs = []
        for _ in range(self.recipe.epochs * self.steps_per_epoch):
            lrs.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        return lrs


class WeightAverage(torch.nn.Module):
    """An exponential moving average of a network: its parameters and its floating-point buffers (batch norm's
    running mean and variance) move by `1 - decay` towards the network's at every `update`, in one fused lerp on the
    device; integer buffers (batch norm's step count) are copied. torch's AveragedModel does the same but reads its
    update count back to the host at every update (a GPU sync), hence this one. `net` is the averaged copy."""

    def __init__(self, net: torch.nn.Module, decay: float):
        super().__init__()
        self.decay = decay
        self.net = copy.deepcopy(net).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, net: torch.nn.Module) -> None:
        mine, theirs = self._tensors(self.net), self._tensors(net)
        torch._foreach_lerp_(mine["float"], theirs["float"], 1 - self.decay)
        for a, b in zip(mine["other"], theirs["other"]):
            a.copy_(b)

    @staticmethod
    def _tensors(net):
        tensors = [*net.parameters(), *net.buffers()]
        return {"float": [t for t in tensors if t.is_floating_point()],
                "other": [t for t in tensors if not t.is_floating_point()]}
