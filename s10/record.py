"""A training run's record: how a run folder starts (fresh, or resumed from what global rank 0 finds in it), its
provenance and config.json, and at the end everything that is published (results.json, per_class.csv, the plots,
model/; fabric_train.py adds the model card, hub/card.py, since s10/ imports nothing from hub/). fabric_train.py calls
the writers on global rank 0.

Everything after training runs here, on CPU float32 copies of the gathered test logits (`write_results` makes
them), whatever device and precision trained the network: the figures are those `python -m s10.evaluate` gets from
the published weights, and no CPU tensor meets a CUDA one.
"""

from __future__ import annotations

import csv
import json
import logging
import platform
import subprocess
import sys
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch

from s10 import hardware


class UsageError(Exception):
    """Bad input: printed as one line, exit code 2."""


DATA_FLAGS = ("smoke", "train_limit", "test_limit", "holdout")  # flags that cut the data: a resume keeps them
METRIC_COLUMNS = ["epoch", "lr", "train_loss", "train_acc", "test_loss", "test_acc", "epoch_time_s", "images_per_s"]


def setup_logging(log: logging.Logger, out: Path, rank_zero: bool) -> None:
    """The run's log: train.log in the run folder and stdout, on global rank 0 only."""
    log.setLevel(logging.INFO)
    log.handlers.clear()
    log.propagate = False
    if rank_zero:
        for handler in (logging.FileHandler(out / "train.log"), logging.StreamHandler(sys.stdout)):
            handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
            log.addHandler(handler)


def check_batch_size(batch_size: int | None, world_size: int) -> None:
    if batch_size is not None and batch_size % world_size:
        raise UsageError(f"--batch-size {batch_size} is not divisible by the {world_size} devices")


def recipe_flags(args) -> dict:
    """The recipe values the command line sets: the named recipe's (--recipe), then the single flags over them."""
    from s10.module import RECIPES, Recipe

    named = RECIPES[args.recipe]["values"] if getattr(args, "recipe", None) else {}
    return {**named, **{f.name: getattr(args, f.name) for f in fields(Recipe) if getattr(args, f.name) is not None}}


def new_recipe(args):
    from s10.module import Recipe

    try:
        return Recipe(**recipe_flags(args))
    except ValueError as err:  # "batch_size must be ..." -> "--batch-size must be ..."
        name, rest = str(err).split(" ", 1)
        raise UsageError(f"--{name.replace('_', '-')} {rest}") from None


def read_start(args) -> dict:
    """Global rank 0, from its disk: the saved config of the run to resume (or None) and whether it has a
    checkpoint. A folder that a killed run left without a config (killed during the LR range test) starts over."""
    config, ckpt = args.out / "config.json", args.out / "checkpoints" / "last.ckpt"
    if args.resume and config.is_file():
        try:
            return {"saved": json.loads(config.read_text()), "checkpoint": ckpt.is_file()}
        except (OSError, ValueError) as err:
            raise UsageError(f"--resume: {config} cannot be read ({err})") from None
    if not args.resume and (config.exists() or ckpt.exists()):
        raise UsageError(f"--out {args.out} already holds a run; pass --resume to continue it, or another --out")
    return {"saved": None, "checkpoint": False}


def start_or_resume(fabric, args) -> tuple[Any, dict | None, bool]:
    """Collective: (recipe, saved config, has a checkpoint), the same on every rank. Rank 0 reads the run folder and
    broadcasts what it found, since nodes without a shared disk have nothing to read. A resumed run keeps its own
    recipe (its found peak LR included) and precision; a flag that contradicts it is refused, on every rank."""
    from s10.distributed import first_error
    from s10.module import Recipe

    start, error = None, None
    if fabric.is_global_zero:
        try:
            start = read_start(args)
        except UsageError as err:
            error = str(err)
    start, error = fabric.broadcast((start, error))
    recipe = None
    if error is None:
        saved = start["saved"]
        recipe = Recipe.from_record(saved["recipe"]) if saved else new_recipe(args)
        for name, value in (recipe_flags(args) if saved else {}).items():
            if value != getattr(recipe, name) and error is None:
                error = (f"--resume: the run in {args.out} has --{name.replace('_', '-')} {getattr(recipe, name)}, "
                         f"not {value}")
        if saved and saved["args"]["precision"] != args.precision and error is None:
            error = (f"--resume: the run in {args.out} has --precision {saved['args']['precision']}, not "
                     f"{args.precision}")
        for name in DATA_FLAGS:  # the data a run trains on cannot change under it
            if saved and saved["args"].get(name) != getattr(args, name) and error is None:
                error = (f"--resume: the run in {args.out} has --{name.replace('_', '-')} "
                         f"{saved['args'].get(name)}, not {getattr(args, name)}")
    error = first_error(fabric, error)  # a node that would train in another precision stops every rank
    if error:
        raise UsageError(error)
    return recipe, start["saved"], start["checkpoint"]


def code_version(where: Path) -> dict:
    """The commit the running code came from, read at start-up, and whether the tree had uncommitted changes."""
    def git(*cmd):
        try:
            proc = subprocess.run(["git", *cmd], capture_output=True, text=True, cwd=where, timeout=10)
            return proc.stdout.strip() if proc.returncode == 0 else None
        except (OSError, subprocess.SubprocessError):
            return None

    status = git("status", "--porcelain", "--untracked-files=no")
    return {"git_commit": git("rev-parse", "HEAD"), "git_dirty": bool(status) if status is not None else None}


def provenance(data, code: dict) -> dict:
    """Library versions, hardware (the GPU and whether its float32 convolutions run as TF32) and data sizes."""
    import lightning
    import torchmetrics
    import torchvision

    from s10.data import fingerprint

    cpu = hardware.cpu()
    gpu = None
    if torch.cuda.is_available():
        gpu = {"name": torch.cuda.get_device_name(0), "cuda": torch.version.cuda,
               "cudnn": torch.backends.cudnn.version(), "tf32_convolutions": torch.backends.cudnn.allow_tf32}
    return {
        **code,
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "torchvision": torchvision.__version__, "lightning": lightning.__version__,
                     "torchmetrics": torchmetrics.__version__},
        "hardware": {"platform": platform.platform(), "cpu": cpu.name, "cpu_threads": torch.get_num_threads(),
                     "cpu_bf16": sorted(cpu.flags & set(hardware.BF16_FLAGS)), "cpu_avx512": "avx512f" in cpu.flags,
                     "gpu": gpu},
        "data": {"source": data.source, "classes": data.classes, "train_images": len(data.train),
                 "test_images": len(data.test), "held_out_images": len(data.val) if data.val is not None else 0,
                 "fingerprint": fingerprint(data)},
    }


def write_config(run) -> dict:
    """config.json. A resume keeps the run's original flags and provenance and records itself beside them."""
    args, recipe, data, world = run.args, run.recipe, run.data, run.fabric.world_size
    nodes = getattr(run.fabric.strategy, "num_nodes", 1)  # as launched: `fabric run` or SLURM may set it, not a flag
    flags = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    if run.saved is None:
        config = {"args": flags, "recipe": asdict(recipe), "arch": asdict(run.net.config), "world_size": world,
                  "num_nodes": nodes, "steps_per_epoch": len(data.train) // recipe.batch_size,
                  **provenance(data, run.code)}
    else:
        config = run.saved
        config["recipe"] = asdict(recipe)
        config.setdefault("resumes", []).append({"from_epoch": run.epoch, "args": flags, "world_size": world,
                                                 "num_nodes": nodes, **provenance(data, run.code)})
    (run.out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return config


def read_metrics(path: Path, last_epoch: int) -> list[dict]:
    """The rows of an existing metrics.csv up to `last_epoch` (for checkpoints that do not carry them)."""
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        rows = [{k: float(row[k]) for k in METRIC_COLUMNS} for row in csv.DictReader(f)]
    rows = [r for r in rows if int(r["epoch"]) <= last_epoch]
    for r in rows:
        r["epoch"] = int(r["epoch"])
    return rows


def write_results(run, logits: torch.Tensor, logits_tta: torch.Tensor, held_out: torch.Tensor | None = None) -> dict:
    """results.json, per_class.csv, the plots, model/ (weights, config with the temperature and the headline
    results, the misclassified pack; the trainer adds the model card, hub/card.py), from the whole test split's logits (any device, any
    dtype: they are copied to the CPU in float32 first, and the network is saved from a CPU float32 copy). With
    `held_out`, the logits of the training images held out (--holdout): their accuracy is `val_acc`."""
    from s10 import plots
    from s10.evaluate import headline, misclassified, save_misclassified, test_results, write_misclassified_grid

    logits, logits_tta = logits.detach().float().cpu(), logits_tta.detach().float().cpu()
    out, data = run.out, run.data
    results = test_results(logits, logits_tta, data.test, data.classes)
    results.update(epochs=len(run.rows), peak_lr=run.recipe.max_lr,
                   train_time_s=round(sum(r["epoch_time_s"] for r in run.rows), 1),
                   final_train_acc=round(run.rows[-1]["train_acc"], 6))
    if held_out is not None:
        labels = data.val.labels
        results.update(val_acc=round((held_out.detach().float().cpu().argmax(1) == labels).float().mean().item(), 6),
                       val_images=len(labels))
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    with open(out / "per_class.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["class", "test_images", "test_acc"])
        counts = torch.bincount(data.test.labels, minlength=len(data.classes)).tolist()
        for c, n in zip(data.classes, counts):
            writer.writerow([c, n, f"{results['per_class_acc'][c]:.4f}"])
    plots.curves(run.rows, out / "curves.png", run.module.lr_schedule(), run.recipe)
    plots.confusion_matrix(results["confusion_matrix"], data.classes, out / "confusion_matrix.png")
    plots.reliability(results["calibration"], out / "reliability.png")
    pack = misclassified(logits, data.test, temperature=results["temperature"])
    write_misclassified_grid(pack, data.classes, out / "misclassified.png")
    trained = run.published  # the moving average of the weights with --ema-decay, else the network itself
    net = type(trained)(trained.config)  # a CPU float32 copy: the trained one stays where it is
    net.load_state_dict({k: v.detach().cpu().float() if v.is_floating_point() else v.detach().cpu()
                         for k, v in trained.state_dict().items()})
    net.config.temperature = results["temperature"]
    net.config.results = headline(results)
    net.save_pretrained(out / "model")
    save_misclassified(pack, data.classes, out / "model")
    return results
