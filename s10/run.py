"""The state the phases of a training run share (fabric_train.py): one small object instead of a dozen arguments."""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch


@dataclass
class Run:
    """What the phases of a run share. Each phase takes the run and fills in or uses its parts."""

    fabric: Any  # lightning.fabric.Fabric: devices, processes, precision, callbacks, loggers
    args: argparse.Namespace  # the command line, precision resolved
    recipe: Any  # s10.module.Recipe: epochs, batch size, learning rates (max_lr found by the LR range test)
    code: dict  # the commit the code came from, read at start-up
    saved: dict | None = None  # the run's config.json when it is resumed (global rank 0's copy, broadcast)
    data: Any = None  # s10.data.Dataset on the host: classes, sizes, the whole test split for the final evaluation
    train: Any = None  # the training split, uint8 on the device
    test: Any = None  # this rank's shard of the test split, uint8 on the device
    val: Any = None  # this rank's shard of the held-out training images (--holdout), uint8 on the device
    mean: Any = None  # the normalisation's mean and std as float32 tensors on the device, made once
    std: Any = None
    module: Any = None  # s10.module.S10Module, the LightningModule; its network is module.net
    ema: Any = None  # s10.module.WeightAverage of the network with --ema-decay, else None
    model: Any = None  # the module as fabric.setup returned it (precision, DDP)
    optimizer: Any = None
    scheduler: Any = None
    epoch: int = 0  # the last finished epoch
    rows: list[dict] = field(default_factory=list)  # one metrics.csv row per finished epoch

    @property
    def out(self) -> Path:
        return self.args.out

    @property
    def net(self):
        return self.module.net

    @property
    def published(self):
        """The network whose weights are evaluated at the end and published: the moving average, if there is one."""
        return self.ema.net if self.ema is not None else self.module.net

    @property
    def checkpoint(self) -> Path:
        return self.out / "checkpoints" / "last.ckpt"

    def state(self) -> dict:
        """What checkpoints/last.ckpt holds: fabric.save and fabric.load read and fill this dict. Under 16-mixed the
        gradient scaler's scale and growth tracker too, so a resumed run skips no step that the whole one took."""
        state = {"model": self.model, "optimizer": self.optimizer, "scheduler": self.scheduler, "epoch": self.epoch,
                 "rng": torch.get_rng_state(), "recipe": asdict(self.recipe), "metrics": self.rows}
        scaler = getattr(self.fabric.strategy.precision, "scaler", None)
        if scaler is not None:
            state["scaler"] = scaler
        if self.ema is not None:
            state["ema"] = self.ema
        return state
