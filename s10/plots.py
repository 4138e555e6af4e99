"""The run's figures: training curves, LR range test, confusion matrix, misclassified images.

Matplotlib with the Agg backend, fixed sizes and DPI; the 32x32 images are upscaled with nearest-neighbour so
they stay sharp. Metadata is stripped so the same inputs give the same PNG bytes.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PNG_META = {"Software": None}  # no matplotlib version stamp: identical bytes run to run


def _save(fig, path):
    fig.savefig(path, dpi=100, metadata=PNG_META)
    plt.close(fig)


def curves(rows: list[dict], path: str | Path, schedule: list[float] | None = None, recipe=None) -> None:
    """Loss, accuracy and LR per epoch (rows as in metrics.csv); with `schedule` (the LR of every step of the
    run), the LR panel draws the whole schedule, with the epochs' last-step LRs on it. `recipe` (s10.module.Recipe)
    names the schedule and what the losses read: the label smoothing and the logit scale."""
    smoothing, scale = (recipe.label_smoothing, recipe.logit_scale) if recipe is not None else (0.0, 1.0)
    scaled = f"logits x {scale:g}" if scale != 1 else ""
    train = ", ".join(filter(None, [f"label smoothing {smoothing:g}" if smoothing else "", scaled]))
    epochs = [int(r["epoch"]) for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), layout="constrained")
    ax = axes[0]
    ax.plot(epochs, [float(r["train_loss"]) for r in rows], "o-", label=f"train ({train})" if train else "train")
    ax.plot(epochs, [float(r["test_loss"]) for r in rows], "s-", label=f"test ({scaled})" if scaled else "test")
    ax.set(title="Cross-entropy loss", xlabel="epoch", ylabel="loss (nats)")
    ax.legend()
    ax = axes[1]
    ax.plot(epochs, [100 * float(r["train_acc"]) for r in rows], "o-", label="train (augmented)")
    ax.plot(epochs, [100 * float(r["test_acc"]) for r in rows], "s-", label="test")
    ax.set(title="Accuracy", xlabel="epoch", ylabel="accuracy (%)")
    ax.legend()
    ax = axes[2]
    if schedule:  # the whole run: its last row is its last epoch
        steps_per_epoch = len(schedule) / epochs[-1]
        ax.plot([(i + 1) / steps_per_epoch for i in range(len(schedule))], schedule, color="tab:green",
                label="every step")
    ax.plot(epochs, [float(r["lr"]) for r in rows], "o", color="tab:green", label="last step of each epoch")
    name = {"one_cycle": " (One Cycle)", "linear": " (linear)"}.get(getattr(recipe, "schedule", None), "")
    ax.set(title=f"Learning rate{name}", xlabel="epoch", ylabel="LR")
    ax.legend()
    for ax in axes:
        ax.grid(alpha=0.3)
    _save(fig, path)


def redraw_curves(run: str | Path) -> None:
    """A finished run folder's curves.png drawn again from its metrics.csv and config.json (its recipe and its
    schedule), as today's code draws it: `make release-record` does so for a run that older code drew."""
    import csv
    import json

    from s10.module import Recipe, S10Module

    run = Path(run)
    config = json.loads((run / "config.json").read_text())
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    recipe = Recipe.from_record(config["recipe"])
    schedule = S10Module(recipe=recipe, steps_per_epoch=config["steps_per_epoch"]).lr_schedule()
    curves(rows, run / "curves.png", schedule, recipe)


def lr_finder(result, path: str | Path, rule: str) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5), layout="constrained")
    ax.plot(result.lrs, result.losses, color="0.75", lw=1, label="loss per step")
    ax.plot(result.lrs, result.smoothed, color="tab:blue", lw=2, label="smoothed loss")
    ax.axvline(result.suggestion, color="tab:red", ls="--", label=f"suggested peak LR {result.suggestion:.2e}")
    ax.set_xscale("log")
    finite = [s for s in result.smoothed if math.isfinite(s)]
    raw = [s for s in result.losses if math.isfinite(s)]
    if finite:  # from the lowest loss seen up to where the sweep diverged; later spikes would flatten the curve
        ax.set_ylim(min(raw + finite) * 0.95, min(max(finite), 4 * min(finite)) * 1.1)
    ax.set(title=f"LR range test ({len(result.lrs)} steps)\nsuggestion: {rule}", xlabel="learning rate (log scale)",
           ylabel="training loss")
    ax.legend()
    ax.grid(alpha=0.3, which="both")
    _save(fig, path)


def confusion_matrix(matrix: list[list[int]], classes: list[str], path: str | Path) -> None:
    import numpy as np

    m = np.array(matrix)
    fig, ax = plt.subplots(figsize=(8, 7), layout="constrained")
    im = ax.imshow(m, cmap="Blues")
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, str(m[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if m[i, j] > m.max() / 2 else "black")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set(title=f"Confusion matrix ({m.sum()} test images)", xlabel="predicted class", ylabel="true class")
    fig.colorbar(im, ax=ax, label="images")
    _save(fig, path)


def misclassified_grid(images, captions: list[str], path: str | Path, columns: int = 5) -> None:
    """A grid of uint8 (N, 3, H, W) images, each captioned (e.g. "true: cat / pred: dog (0.93)")."""
    n = len(images)
    rows = max(1, -(-n // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3.3 * rows), layout="constrained", squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, img, cap in zip(axes.flat, images, captions):
        ax.imshow(img.permute(1, 2, 0).numpy(), interpolation="nearest")
        ax.set_title(cap, fontsize=11)
    fig.suptitle(f"{n} misclassified test images (the most confident mistakes)", fontsize=13)
    _save(fig, path)


from s10.inference import caption  # noqa: E402,F401 (the one caption, re-exported for the plots' users)


def reliability(calibration: dict, path: str | Path) -> None:
    """Reliability diagrams before and after temperature scaling (results.json's "calibration"): accuracy against
    mean confidence per bin of the top probability, the diagonal drawn; below, how many test images fall in each
    bin."""
    fig, axes = plt.subplots(2, 2, figsize=(10, 6.4), height_ratios=[3, 1], sharex=True, layout="constrained")
    for col, (key, title) in enumerate((("uncalibrated", "plain softmax"),
                                        ("calibrated", f"temperature-scaled (T = {calibration['temperature']:.3f})"))):
        bins = calibration[f"reliability_{key}"]
        scores = calibration[key]
        centres = [(b["low"] + b["high"]) / 2 for b in bins]
        width = bins[0]["high"] - bins[0]["low"]
        ax = axes[0, col]
        ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
        filled = [b for b in bins if b["count"]]
        ax.bar([(b["low"] + b["high"]) / 2 for b in filled], [b["accuracy"] for b in filled], width=width * 0.9,
               color="#4c72b0", alpha=0.8, label="accuracy in the bin")
        ax.plot([b["confidence"] for b in filled], [b["accuracy"] for b in filled], "o", color="#dd8452",
                markersize=4, label="(mean confidence, accuracy)")
        ax.set(title=f"{title}\nECE {scores['ece']:.3f}, NLL {scores['nll']:.3f}, Brier {scores['brier']:.3f}",
               ylabel="accuracy", xlim=(0, 1), ylim=(0, 1))
        ax.legend(loc="upper left", fontsize=8)
        ax = axes[1, col]
        ax.bar(centres, [b["count"] for b in bins], width=width * 0.9, color="grey")
        ax.set(xlabel="top probability (15 bins)", ylabel="test images", yscale="log")
    _save(fig, path)


def main(argv=None) -> int:
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m s10.plots", description="Draw a finished run's curves.png again "
                                     "from its metrics.csv and config.json.")
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR")
    for run in parser.parse_args(argv).runs:
        try:
            redraw_curves(run)
        except (OSError, ValueError, KeyError) as err:
            print(f"error: {run}: not a finished run folder ({err})", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
