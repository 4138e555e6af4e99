"""Fabric callbacks for what a user may switch off: the progress bar and checkpointing.

The loop in fabric_train.py triggers them with `fabric.call(hook, ...)`; a callback that is not passed to
`Fabric(callbacks=...)` is simply never called.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch
from tqdm import tqdm


class ProgressBar:
    """A tqdm bar per epoch on rank 0: loss, accuracy, LR and images/s. The loss and accuracy live on the device.
    Reading them with `.item()` would make the host wait for the device (a sync on a GPU), so every `every` steps
    the bar queues a non-blocking copy of them and shows the copy at a later report, once the device has made it
    (a CUDA event says so): the host never waits for the device."""

    def __init__(self, every: int = 10):
        self.every = every
        self.bar = None
        self.pending = None  # (host copy of [loss, acc], its CUDA event or None, lr)
        self.last, self.images = 0.0, 0

    def on_train_epoch_start(self, fabric, epoch: int, epochs: int, steps: int):
        if fabric.is_global_zero:
            self.bar = tqdm(total=steps, desc=f"epoch {epoch}/{epochs}", unit="batch", dynamic_ncols=True,
                            leave=True)
            self.last, self.images, self.pending = time.perf_counter(), 0, None

    def on_train_batch_end(self, fabric, outputs: dict, batch, batch_idx: int, lr: float):
        if self.bar is None:
            return
        self.images += len(batch[1]) * fabric.world_size
        self.bar.update(1)
        if (batch_idx + 1) % self.every:
            return
        if self.pending is not None and (self.pending[1] is None or self.pending[1].query()):
            (loss, acc), shown_lr = self.pending[0].tolist(), self.pending[2]
            now = time.perf_counter()
            self.bar.set_postfix(loss=f"{loss:.3f}", acc=f"{acc:.3f}", lr=f"{shown_lr:.2e}",
                                 img_s=f"{self.images / (now - self.last):.0f}", refresh=False)
            self.last, self.images, self.pending = now, 0, None
        if self.pending is None:
            stats = torch.stack([outputs["loss"].detach().float(), outputs["acc"].detach().float()])
            host, done = stats, None
            if stats.is_cuda:  # a copy into pinned memory is asynchronous; into pageable memory it would wait
                host = torch.empty(stats.shape, dtype=stats.dtype, pin_memory=True).copy_(stats, non_blocking=True)
                done = torch.cuda.Event()
                done.record()
            self.pending = (host, done, lr)

    def on_train_epoch_end(self, fabric, epoch: int, row: dict, state: dict):
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{row['train_loss']:.3f}", test_acc=f"{row['test_acc']:.4f}",
                                 img_s=f"{row['images_per_s']:.0f}")
            self.bar.close()
            self.bar = None


class Checkpoint:
    """`checkpoints/last.ckpt` via fabric.save: before the first epoch (so a run killed during epoch 1 resumes with
    the peak LR its range test found) and after every epoch. Written to a temporary name, then renamed, so a run
    killed mid-write keeps its previous checkpoint."""

    def __init__(self, folder: str | Path):
        self.path = Path(folder) / "last.ckpt"

    def on_train_start(self, fabric, state: dict):
        if state["epoch"] == 0:
            self.save(fabric, state)

    def on_train_epoch_end(self, fabric, epoch: int, row: dict, state: dict):
        self.save(fabric, state)

    def save(self, fabric, state: dict):
        tmp = self.path.with_name("last.ckpt.tmp")
        if fabric.is_global_zero:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        fabric.barrier()
        fabric.save(tmp, state)
        fabric.barrier()
        if fabric.is_global_zero:
            os.replace(tmp, self.path)
        fabric.barrier()


def run_loggers(out: Path) -> list:
    """Fabric's loggers for a run folder: CSVLogger (metrics.csv in the folder itself), and TensorBoardLogger
    (out/tensorboard) when tensorboard is installed."""
    from lightning.fabric.loggers import CSVLogger, TensorBoardLogger

    loggers = [CSVLogger(root_dir=out, name="", version="")]
    try:
        import tensorboard  # noqa: F401

        loggers.append(TensorBoardLogger(root_dir=out, name="tensorboard", version=""))
    except ImportError:
        pass
    return loggers
