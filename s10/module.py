"""The S10 training logic as a LightningModule: loss, metrics, the optimiser and its LR schedule.

The Fabric loop in fabric_train.py calls these hooks; the module never touches devices or data loading.
"""

from __future__ import annotations

import contextlib
import copy
import functools
from dataclasses import dataclass, field

import lightning as L
import numpy as np
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

    epochs: int = setting(24, "length of the LR schedule, epochs")
    batch_size: int = setting(512, "global batch, images per optimizer step (split across devices)")
    max_lr: float = setting(0.4, "peak LR when --find-lr is not given (Page's for SGD at batch 512: scale it with "
                                 "the batch; for Adam the range test's suggestion is about 2.3e-3)")
    pct_start: float = setting(5 / 24, "fraction of the run at which the LR peaks (epoch 5 of 24)")
    schedule: str = setting("linear", "linear (Page's: from 0 up, then down to max_lr x lr_floor, held there for "
                                      "the last floor_epochs) or one_cycle (the course's: from max_lr / div_factor "
                                      "up, then down to max_lr / div_factor / final_div_factor)")
    div_factor: float = setting(100.0, "one_cycle: start LR = max_lr / div_factor")
    final_div_factor: float = setting(100.0, "one_cycle: final LR = start LR / final_div_factor")
    lr_floor: float = setting(0.0, "linear: the LR the schedule ends at, a fraction of max_lr")
    floor_epochs: int = setting(0, "linear: the last epochs held at max_lr x lr_floor (a weight average's epochs)")
    optimizer: str = setting("sgd", "sgd (momentum SGD, Page's), adam (the course's) or adamw (decoupled weight "
                                    "decay, Loshchilov & Hutter 2019; batch-norm parameters and biases are not "
                                    "decayed)")
    momentum: float = setting(0.9, "sgd: momentum")
    nesterov: bool = setting(True, "sgd: Nesterov momentum (Page's)")
    weight_decay: float = setting(5e-4, "adam, sgd: the L2 penalty added to the gradient; adamw: the decoupled "
                                        "decay, a fraction of each weight per unit of LR per step")
    logit_scale: float = setting(0.125, "the training loss reads the logits times this (Page's; the course's: 1); "
                                        "the network and what it outputs are unchanged")
    label_smoothing: float = setting(0.0, "cross-entropy label smoothing of the training loss (Szegedy et al. 2016; "
                                          "Page's: none; the course's: 0.1)")
    ghost_batch: int = setting(0, "batch norm normalises groups of this many images of a device's batch at "
                                  "training time (ghost batch norm; Page's: 32); 0: the whole batch. Evaluation "
                                  "uses the running statistics, the weights are unchanged")
    freeze_bn_scale: bool = setting(False, "batch-norm scales (gamma) stay at 1, not trained (Page's, airbench's)")
    bn_bias_lr: float = setting(1.0, "batch-norm biases train at this multiple of the LR (Page's: 16 to 64)")
    bn_bias_decay: float = setting(1.0, "batch-norm biases get this multiple of the weight decay (Page's: 1/16 to "
                                        "1/64)")
    ema_decay: float = setting(0.0, "decay of an exponential moving average of the weights and batch-norm "
                                    "statistics, updated every --ema-every steps; the final evaluation and the "
                                    "published weights use it (0: off, the default and the course's; Page's: 0.99)")
    ema_every: int = setting(5, "optimizer steps between two updates of the weights' moving average")
    alternating_flip: bool = setting(False, "each epoch mirrors exactly the images the previous one did not "
                                            "(airbench); off: a fresh coin per image and epoch (Page's, the "
                                            "course's)")
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
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must lie in [0, 1), got {self.momentum}")
        for name in ("logit_scale", "bn_bias_lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("lr_floor", "bn_bias_decay", "ghost_batch", "floor_epochs"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be at least 0, got {getattr(self, name)}")
        if self.floor_epochs and self.floor_epochs >= self.epochs * (1 - self.pct_start):
            raise ValueError(f"floor_epochs must end after the peak (epoch {self.epochs * self.pct_start:g} of "
                             f"{self.epochs}), got {self.floor_epochs}")
        if self.ghost_batch and self.batch_size % self.ghost_batch:
            raise ValueError(f"ghost_batch must divide the batch size {self.batch_size}, got {self.ghost_batch}")


OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("one_cycle", "linear")

# The values every named recipe starts from, and what a run did before a field existed (the course's: Adam, One Cycle,
# logits as they are, plain batch norm with every parameter at one LR and decay, no weight average, a fresh flip coin
# per image and epoch). A record that predates a field ran with it at this value, and a named recipe sets every field
# (tests/test_recipe.py), so that neither follows Recipe's defaults, which are the best recipe measured.
BASE = dict(optimizer="adam", momentum=0.9, nesterov=True, weight_decay=1e-4, schedule="one_cycle", pct_start=5 / 24,
            div_factor=100.0, final_div_factor=100.0, lr_floor=0.0, floor_epochs=0, logit_scale=1.0, ghost_batch=0,
            freeze_bn_scale=False, bn_bias_lr=1.0, bn_bias_decay=1.0, ema_decay=0.0, ema_every=5,
            alternating_flip=False)
RECORDED_BEFORE = BASE

# Named recipes (`--recipe NAME`): the values each sets; single flags override them. `find_lr`: the peak LR comes
# from the LR range test unless --max-lr is given. docs/training.md ("Recipes") says where each comes from.
# David Page's cifar10-fast 24-epoch baseline for this topology (dawn.py): SGD, Nesterov 0.9, 0 -> 0.4 at epoch 5 -> 0
# at epoch 24, L2 5e-4 on every parameter, logits x 0.125 in the loss, plain flip, no smoothing.
PAGE = {**BASE, **dict(optimizer="sgd", max_lr=0.4, weight_decay=5e-4, schedule="linear", logit_scale=0.125,
                       label_smoothing=0.0)}
RECIPES = {
    # The S10 assignment's: what a student hands in.
    "course": {"values": {**BASE, "label_smoothing": 0.1}, "find_lr": True},
    # The default until `page`, the held-out screen's choice, replaced it (its seeds: release/recipes/adam): the
    # course's with label smoothing 0.2 and alternating flip.
    "adam": {"values": {**BASE, "label_smoothing": 0.2, "alternating_flip": True}, "find_lr": True},
    "page": {"values": PAGE, "find_lr": False},
    # `page` with the options of Page's bag of tricks that keep this network (the screen's bundle, docs/training.md):
    # label smoothing 0.2, alternating flip, ghost batch norm of 32, batch-norm scales frozen with the biases at 64x
    # the LR and 1/64 the decay, a weight average 0.99 every 5 steps over the LR held at 0.1x its peak for 2 epochs.
    "tricks": {"values": {**PAGE, **dict(label_smoothing=0.2, alternating_flip=True, ghost_batch=32,
                                         freeze_bn_scale=True, bn_bias_lr=64.0, bn_bias_decay=0.015625,
                                         ema_decay=0.99, lr_floor=0.1, floor_epochs=2)},
               "find_lr": False},
}


class S10Module(L.LightningModule):
    def __init__(self, arch: S10Config | None = None, recipe: Recipe | None = None, steps_per_epoch: int = 1):
        super().__init__()
        self.recipe = recipe or Recipe()
        self.steps_per_epoch = steps_per_epoch
        self.net = S10Net(arch)
        if self.recipe.freeze_bn_scale:  # the parameters stay (the state dict is the same), at their initial 1
            for bn in batch_norms(self.net):
                bn.weight.requires_grad_(False)
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
        with ghost_batch_norm(self.net, self.recipe.ghost_batch):
            logits = self(x)
        losses = F.cross_entropy(logits.float() * self.recipe.logit_scale, y,
                                 label_smoothing=self.recipe.label_smoothing, reduction="none")
        self.train_loss.update(losses.detach())
        self.train_acc.update(logits.detach(), y)
        return {"loss": losses.mean(), "acc": (logits.detach().argmax(-1) == y).float().mean()}

    def validation_step(self, batch, batch_idx):
        """The test loss is the cross-entropy at the logit scale the training loss reads (without its label
        smoothing), so that the two curves compare; at Page's 0.125 the raw logits' would read several times higher."""
        x, y = batch
        logits = self(x)
        self.test_loss.update(F.cross_entropy(logits.float() * self.recipe.logit_scale, y, reduction="none"))
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
        groups = self.param_groups()
        for group in groups:
            group["lr"] = r.max_lr * group["lr_scale"]  # the schedulers scale each group's own peak
        # Fused Adam: one kernel per step, and under 16-mixed the gradient scaler hands it the scale and the inf flag
        # on the device (GradScaler's path for `_step_supports_amp_scaling`) instead of reading found_inf back to
        # the host at every step. Fused kernels exist for CUDA and CPU parameters.
        fused = next(self.parameters()).device.type in ("cuda", "cpu") or None
        if r.optimizer == "sgd":
            optimizer = torch.optim.SGD(groups, lr=r.max_lr, momentum=r.momentum, nesterov=r.nesterov, fused=fused)
        else:
            kind = torch.optim.AdamW if r.optimizer == "adamw" else torch.optim.Adam
            optimizer = kind(groups, lr=r.max_lr, fused=fused)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self._scheduler(optimizer), "interval": "step"}}

    def param_groups(self) -> list[dict]:
        """The trained parameters by LR multiple and weight decay: the batch-norm biases at `bn_bias_lr` times the
        LR and `bn_bias_decay` times the decay, the rest at 1x. AdamW decays only the convolution and linear weights
        (every parameter of more than one dimension): shrinking a batch-norm parameter only rescales what batch norm
        normalises away, or moves a bias. The first group holds the first convolution's weight (its LR is the
        one logged)."""
        r = self.recipe
        bn_biases = {id(bn.bias) for bn in batch_norms(self.net)}
        groups: dict[tuple[float, float], list] = {}
        for p in self.parameters():
            if not p.requires_grad:
                continue
            bias = id(p) in bn_biases
            decay = r.weight_decay * (r.bn_bias_decay if bias else 1.0)
            if r.optimizer == "adamw" and p.ndim <= 1:
                decay = 0.0
            groups.setdefault((r.bn_bias_lr if bias else 1.0, decay), []).append(p)
        return [{"params": params, "lr_scale": scale, "weight_decay": decay}
                for (scale, decay), params in groups.items()]

    def _scheduler(self, optimizer):
        r = self.recipe
        steps = r.epochs * self.steps_per_epoch
        if r.schedule == "linear":
            # Knots in optimizer steps: 0 -> 1 at the peak -> lr_floor where the floor starts, held to the end.
            knots = [0.0, r.pct_start * steps, steps - r.floor_epochs * self.steps_per_epoch, steps]
            values = [0.0, 1.0, r.lr_floor, r.lr_floor]
            return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: float(np.interp(step, knots, values)))
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], epochs=r.epochs,
            steps_per_epoch=self.steps_per_epoch, pct_start=r.pct_start, div_factor=r.div_factor,
            final_div_factor=r.final_div_factor, three_phase=False, anneal_strategy="linear",
        )

    def lr_schedule(self) -> list[float]:
        """The LR of every optimizer step of the run, as the scheduler sets it (for the plots)."""
        optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=self.recipe.max_lr)
        scheduler = self._scheduler(optimizer)
        lrs = []
        for _ in range(self.recipe.epochs * self.steps_per_epoch):
            lrs.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        return lrs


def batch_norms(net: torch.nn.Module) -> list[torch.nn.modules.batchnorm._BatchNorm]:
    return [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


@contextlib.contextmanager
def ghost_batch_norm(net: torch.nn.Module, group: int):
    """Within the block, every batch norm of `net` in training mode normalises each group of `group` images of
    its batch by that group's own statistics (Hoffer et al. 2017; Page's "ghost batch norm"), and moves its running
    statistics by the groups' average, once per batch, as a whole-batch update would. The batch norms are
    unchanged outside the block (no new parameter or buffer: the state dict stays). `group` 0: nothing changes."""
    bns = [bn for bn in batch_norms(net) if bn.training] if group else []
    for bn in bns:
        bn.forward = functools.partial(_ghost_forward, bn, group)
    try:
        yield
    finally:
        for bn in bns:
            del bn.forward


def _ghost_forward(bn, group: int, x: torch.Tensor) -> torch.Tensor:
    """Page's way: the batch regrouped into `group` images of G x C channels, the k-th image of every group side by
    side, so that one call of the fused batch-norm kernel normalises each group's channels by that group's statistics
    (its weights, biases and running statistics repeated G times; the running statistics then averaged back)."""
    b, c, h, w = x.shape
    if b <= group:
        return type(bn).forward(bn, x)
    if b % group:
        raise ValueError(f"ghost batch norm: a batch of {b} images does not split into groups of {group}")
    g = b // group
    # (G, group, C, H, W) -> (group, H, W, G, C): one copy, laid out channels-last for the kernel
    x2 = x.unflatten(0, (g, group)).permute(1, 3, 4, 0, 2).reshape(group, h, w, g * c).permute(0, 3, 1, 2)
    mean, var = bn.running_mean.repeat(g), bn.running_var.repeat(g)
    y2 = F.batch_norm(x2, mean, var, bn.weight.repeat(g), bn.bias.repeat(g), True, bn.momentum, bn.eps)
    with torch.no_grad():  # each group moved its copy of the running statistics; the batch moves them by the average
        bn.running_mean.copy_(mean.view(g, c).mean(0))
        bn.running_var.copy_(var.view(g, c).mean(0))
        bn.num_batches_tracked.add_(1)
    # back to (G, group, H, W, C), one copy: the batch in its order, channels-last
    y = y2.permute(0, 2, 3, 1).unflatten(3, (g, c)).permute(3, 0, 1, 2, 4).reshape(b, h, w, c).permute(0, 3, 1, 2)
    return y if x.is_contiguous(memory_format=torch.channels_last) else y.contiguous()


SHORT_AVERAGE = 0.02


def short_average(recipe: Recipe, steps_per_epoch: int) -> str | None:
    """The published weights are the moving average: in a run too short for it, they are still mostly the initial
    ones. A warning, with the way out, when more than SHORT_AVERAGE of the initial weights would be left at the end
    (the recipe this average comes from, 0.99 every 5 steps for 24 epochs of 97 steps, leaves about 1 %)."""
    updates = recipe.epochs * (steps_per_epoch // recipe.ema_every)
    left = recipe.ema_decay ** updates
    if recipe.ema_decay and left > SHORT_AVERAGE:
        return (f"the moving average of the weights (--ema-decay {recipe.ema_decay:g}, every {recipe.ema_every} "
                f"steps) gets {updates} updates in this run and still holds {left:.0%} of the initial weights at the "
                "end, and it is what is evaluated and published: for a run this short, pass --ema-decay 0")
    return None


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

    @torch.no_grad()
    def sync(self, fabric) -> None:
        """Average the floating-point buffers over the ranks. Under DDP the parameters are the same on every rank,
        but each rank's batch norm keeps the running statistics of its own batches, and so does each rank's average
        of them; without this, every rank would evaluate its test shard with its own statistics while rank 0's were
        published. Called after every epoch, so the checkpoint (rank 0's) is every rank's state."""
        if fabric.world_size == 1:
            return
        buffers = [b for b in self.net.buffers() if b.is_floating_point()]
        mean = fabric.all_reduce(torch.cat([b.flatten() for b in buffers]), reduce_op="mean")
        torch._foreach_copy_(buffers, [m.view_as(b) for m, b in zip(mean.split([b.numel() for b in buffers]),
                                                                     buffers)])

    @staticmethod
    def _tensors(net):
        tensors = [*net.parameters(), *net.buffers()]
        return {"float": [t for t in tensors if t.is_floating_point()],
                "other": [t for t in tensors if not t.is_floating_point()]}
