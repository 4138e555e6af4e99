"""The moving average of the weights against the network's last weights, of one finished run, on the training set.

    python bench/weight_average.py RUN [--data .data/cifar10] [--json bench/results/weight_average.json]

RUN is a run folder trained with --ema-decay (its checkpoints/last.ckpt holds both weight sets). Both go through the
50,000 training images, un-augmented, under the run's own precision: cross-entropy (no label smoothing) and accuracy.
This is the evidence apart from the test set on which the default recipe's --ema-decay is chosen: an average that
trails the weights on the very images they were fitted to is an average of a trajectory still moving, not of points
around one minimum (Page's average came with the LR held low for the last epochs; One Cycle anneals through the
average's whole window). The run's test-set figures are copied beside, from its record, for the reader: the choice
is made on the training-set columns.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from s10.data import load_dataset  # noqa: E402
from s10.evaluate import predict_logits  # noqa: E402
from s10.hardware import cpu  # noqa: E402
from s10.model import S10Config, S10Net  # noqa: E402


def network(state: dict) -> S10Net:
    net = S10Net(S10Config())
    net.load_state_dict({k.removeprefix("net."): v for k, v in state.items()})
    return net.eval().to(memory_format=torch.channels_last)


def figures(net: S10Net, split, autocast) -> dict:
    config = net.config
    with autocast:
        logits = predict_logits(net, split.images, config.mean, config.std).float()
    return {"loss": round(F.cross_entropy(logits, split.labels).item(), 4),
            "acc": round((logits.argmax(1) == split.labels).float().mean().item(), 5)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--data", default=".data/cifar10")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    checkpoint_path = args.run / "checkpoints" / "last.ckpt"
    if not checkpoint_path.is_file():
        sys.exit(f"error: {checkpoint_path} not found (a run folder trained with --ema-decay, with its checkpoint)")
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
    if "ema" not in checkpoint:
        sys.exit(f"error: {args.run} ran without --ema-decay: its checkpoint holds no moving average")
    config = json.loads((args.run / "config.json").read_text())
    results = json.loads((args.run / "results.json").read_text())
    precision = config["args"]["precision"]
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if precision.startswith("bf16") else nullcontext()
    train = load_dataset(args.data).train
    t0 = time.perf_counter()
    rows = {}
    for key, name in (("model", "last weights"), ("ema", "moving average")):
        rows[name] = figures(network(checkpoint[key]), train, autocast)
        print(f"{name}: training set loss {rows[name]['loss']:.4f} acc {rows[name]['acc']:.4%}", file=sys.stderr)
    recipe = config["recipe"]
    out = {"date": time.strftime("%Y-%m-%d"), "machine": cpu().describe(),
           "torch": torch.__version__, "python": platform.python_version(), "run": {"folder": args.run.name, "git_commit": config.get("git_commit")},
           "recipe": {k: recipe[k] for k in ("seed", "epochs", "max_lr", "label_smoothing", "ema_decay", "ema_every",
                                             "alternating_flip")},
           "precision": precision, "train_images": len(train), "seconds": round(time.perf_counter() - t0, 1),
           "train": rows,
           "test_acc": {"last weights": config_last_test_acc(args.run), "moving average": results["test_acc"]}}
    text = json.dumps(out, indent=2) + "\n"
    if args.json:
        args.json.write_text(text)
    print(text)
    return 0


def config_last_test_acc(run: Path) -> float:
    """The last epoch's test accuracy in metrics.csv: the network's own weights (the per-epoch validation never uses
    the average)."""
    import csv
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    return round(float(rows[-1]["test_acc"]), 5)


if __name__ == "__main__":
    sys.exit(main())
