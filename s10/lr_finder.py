"""LR range test (Smith 2017, "Cyclical Learning Rates"; the fastai / torch-lr-finder variant).

The LR grows exponentially from `start_lr` to `end_lr` over `num_steps` optimizer steps on training batches, the
loss is smoothed with a bias-corrected exponential moving average, and the sweep stops early once the smoothed loss
exceeds `diverge_factor` x its minimum. Model and optimizer are restored to their initial state afterwards.

Under DDP every rank must take the same decisions: `reduce` (`fabric.all_reduce` there) turns each rank's loss into
the mean over the ranks before it drives the smoothing, the early stop and the suggestion, so every rank sweeps the
same steps, stops at the same one and suggests the same LR (a rank that stopped alone would leave the others waiting
in the gradient all-reduce).

Suggestion rule: the LR at the minimum of the smoothed loss, divided by 10 (fastai's "lr_min / 10"). It sits
safely below the divergence point, and unlike the steepest-slope rule it does not jump around with the noise
of a short sweep.
"""

from __future__ import annotations

import copy
import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import torch

SUGGESTION_RULE = "LR at the minimum of the smoothed loss / 10"


@dataclass
class LRFinderResult:
    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)  # raw loss per step
    smoothed: list[float] = field(default_factory=list)  # bias-corrected EMA of the loss
    suggestion: float = float("nan")
    diverged_at: float | None = None  # LR at which the sweep stopped early, if it did

    def write_csv(self, path: str | Path) -> None:
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["step", "lr", "loss", "smoothed_loss"])
            for i, (lr, loss, sm) in enumerate(zip(self.lrs, self.losses, self.smoothed)):
                writer.writerow([i, f"{lr:.6g}", f"{loss:.6g}", f"{sm:.6g}"])


def lr_range_test(
    step_loss: Callable[[object], torch.Tensor],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterable,
    backward: Callable[[torch.Tensor], None] = torch.Tensor.backward,
    reduce: Callable[[torch.Tensor], torch.Tensor] = lambda loss: loss,
    start_lr: float = 1e-6,
    end_lr: float = 1.0,
    num_steps: int = 100,
    beta: float = 0.9,
    diverge_factor: float = 4.0,
) -> LRFinderResult:
    """Run the sweep. `step_loss(batch)` returns the loss of one batch; `backward` is `fabric.backward` under
    Fabric; `reduce` averages a loss over the ranks. `batches` is cycled if it runs out before `num_steps`."""
    model_state = copy.deepcopy(model.state_dict())
    optim_state = copy.deepcopy(optimizer.state_dict())
    result = LRFinderResult()
    gamma = (end_lr / start_lr) ** (1 / max(num_steps - 1, 1))
    avg, best = 0.0, math.inf
    was_training = model.training
    model.train()
    batches = list(batches) if not isinstance(batches, list) else batches
    try:
        for step in range(num_steps):
            lr = start_lr * gamma**step
            for group in optimizer.param_groups:  # a group's own multiple of the LR (bn_bias_lr) kept
                group["lr"] = lr * group.get("lr_scale", 1.0)
            loss = step_loss(batches[step % len(batches)])
            optimizer.zero_grad(set_to_none=True)
            backward(loss)
            optimizer.step()
            value = reduce(loss.detach()).item()
            avg = beta * avg + (1 - beta) * value
            smoothed = avg / (1 - beta ** (step + 1))
            result.lrs.append(lr)
            result.losses.append(value)
            result.smoothed.append(smoothed)
            best = min(best, smoothed)
            if not math.isfinite(value) or smoothed > diverge_factor * best:
                result.diverged_at = lr
                break
    finally:
        model.load_state_dict(model_state)
        optimizer.load_state_dict(optim_state)
        optimizer.zero_grad(set_to_none=True)
        model.train(was_training)
    result.suggestion = suggest(result)
    return result


def suggest(result: LRFinderResult) -> float:
    """SUGGESTION_RULE, over the finite part of the sweep."""
    finite = [(sm, lr) for sm, lr in zip(result.smoothed, result.lrs) if math.isfinite(sm)]
    if not finite:
        first = f" ({result.lrs[0]:.0e})" if result.lrs else ""
        raise ValueError(f"LR range test: the loss was not finite even at the smallest LR{first}; check the data, "
                         "or give the peak LR with --max-lr instead of --find-lr")
    return min(finite)[1] / 10
