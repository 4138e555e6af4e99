"""A recipe's spread over seeds: the finished runs' records copied into one folder, and their mean and standard
deviation, which s10.report renders.

    python -m s10.seeds RUN [RUN ...] --out release/seeds            # make seeds-record SEEDS=~/s10-seeds
    python -m s10.seeds release --out release/recipes/course         # make recipe-record NAME=course RUNS=release

Each run must be finished (results.json), and all must share one recipe (the seed apart), one precision, where the peak
LR came from, and the data they were trained and tested on (`data_of`); otherwise the spread would mix recipes or data
sets. For each run, its config.json, results.json, metrics.csv and train.log go to
OUT/seed<k>/ (no checkpoint, no weights), and OUT/summary.json holds each seed's plain and flip-TTA accuracy with
their mean and sample standard deviation (none for a single run). One run is a recipe's record without a spread: how
an earlier release's recipe stays beside the new one (`release/recipes/<name>/`, the "Recipes compared" table).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import statistics
import sys
from pathlib import Path

RECORD = ("config.json", "results.json", "metrics.csv", "train.log")
AIM = 0.945  # the project's aim for the default recipe: mean plain test accuracy, a fraction (SPEC.md, issue 25)
AIM_SEEDS = 3  # over this many seeds
RANGE_TEST = "range test"  # a recipe whose peak LR is each seed's LR range test's (summary.json's "peak_lr")


def pct(x: float) -> str:
    """A fraction as the project prints accuracies: 0.9371 -> "93.71 %"."""
    return f"{100 * x:.2f} %"


class SeedsError(ValueError):
    """One line for the user."""


def full_recipe(recipe: dict) -> dict:
    """A config.json's recipe with every field, those it predates as they ran then (`Recipe.from_record`), less the
    seed and the LR range test's peak LR, which vary by seed."""
    from s10.module import Recipe

    return {k: v for k, v in dataclasses.asdict(Recipe.from_record(recipe)).items() if k not in ("seed", "max_lr")}


def peak_lr(config: dict) -> str | float:
    """Where a run's peak LR came from: "range test" (`--find-lr`: each seed's own) or the LR it was given
    (`--max-lr`), which is then part of the recipe, so two given LRs are two recipes."""
    return RANGE_TEST if config["args"].get("find_lr") else config["recipe"]["max_lr"]


def recipe_key(config: dict) -> tuple[dict, str | float]:
    """What makes a run's recipe, seed apart: its full recipe and where its peak LR came from."""
    return full_recipe(config["recipe"]), peak_lr(config)


def summary_key(summary: dict) -> tuple[dict, str | float]:
    """recipe_key of the runs a summary.json holds (one written before "peak_lr" is of range-test runs)."""
    return full_recipe(summary["recipe"]), summary.get("peak_lr", RANGE_TEST)


def recipe_name(key: tuple[dict, str | float]) -> str | None:
    """The named recipe (`--recipe NAME`, s10.module.RECIPES) that a recipe_key is, value for value, its length and
    its peak LR's origin included; None for any other recipe (one flag changed, another length, another LR)."""
    from s10.module import RECIPES, Recipe

    for name, named in RECIPES.items():
        values = dataclasses.asdict(Recipe(**named["values"]))
        if key == (full_recipe(values), RANGE_TEST if named["find_lr"] else values["max_lr"]):
            return name
    return None


def data_of(config: dict, results: dict) -> dict:
    """What a run was trained and tested on, as its record says: the data's fingerprint (records from before it
    have the sizes only), the sizes, the classes and the flags that cut the data. Two runs to pool must agree on
    every item both have."""
    args, data = config["args"], config.get("data", {})
    return {"data fingerprint": data.get("fingerprint"), "training images": data.get("train_images"),
            "test images": results.get("test_images", data.get("test_images")),
            "held-out images": data.get("held_out_images", 0), "classes": data.get("classes"),
            "--smoke": bool(args.get("smoke")), "--train-limit": args.get("train_limit"),
            "--test-limit": args.get("test_limit"), "--holdout": args.get("holdout")}


def data_differences(a: dict, b: dict) -> list[str]:
    return [k for k in a if a[k] != b[k] and not (k == "data fingerprint" and None in (a[k], b[k]))]


def summarize(runs: list[Path]) -> dict:
    if not runs:
        raise SeedsError("no runs given")
    seeds, recipe, precision, lr, where, data = [], None, None, None, [], None
    for run in runs:
        missing = [n for n in ("config.json", "results.json") if not (run / n).is_file()]
        if missing:
            raise SeedsError(f"{run} is not a finished run folder (missing {', '.join(missing)})")
        config, results = (json.loads((run / n).read_text()) for n in ("config.json", "results.json"))
        other = full_recipe(config["recipe"])
        if data is None:
            data = data_of(config, results)
        elif data_differences(data_of(config, results), data):
            mine = data_of(config, results)
            raise SeedsError(f"{run} was not trained and tested on the first run's data (" + "; ".join(
                f"{k}: {mine[k]} against {data[k]}" for k in data_differences(mine, data)) + ")")
        if recipe is None:
            recipe, precision, lr = other, config["args"]["precision"], peak_lr(config)
        elif other != recipe or config["args"]["precision"] != precision or peak_lr(config) != lr:
            diff = sorted(k for k in set(other) | set(recipe) if other.get(k) != recipe.get(k))
            if peak_lr(config) != lr:
                diff.append(f"peak LR: {peak_lr(config)} against {lr}")
            raise SeedsError(f"{run} does not share the first run's recipe ({', '.join(diff) or 'precision'} differ)")
        seeds.append({"seed": config["recipe"]["seed"], "run": run.name, "test_acc": results["test_acc"],
                      "test_acc_tta": results["test_acc_tta"], "val_acc": results.get("val_acc"),
                      "max_lr": config["recipe"]["max_lr"],
                      "train_time_s": results.get("train_time_s"), "git_commit": config.get("git_commit")})
        hw = config.get("hardware", {})
        gpu = hw.get("gpu")
        where.append((gpu.get("name") if isinstance(gpu, dict) else gpu) or f"{hw.get('cpu_threads')} CPU cores "
                     f"({hw.get('cpu')})")
    if len({s["seed"] for s in seeds}) != len(seeds):
        raise SeedsError("two runs have the same seed")

    def spread(key):
        values = [s[key] for s in seeds]
        return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else None}

    summary = {"runs": len(seeds), "recipe": recipe, "peak_lr": lr, "precision": precision, "data": data,
               "seeds": seeds, "test_acc": spread("test_acc"), "test_acc_tta": spread("test_acc_tta"),
               "hardware": sorted(set(where))}
    if data["--holdout"]:  # the screen's figure: the accuracy on the held-out training images (--holdout)
        summary["val_acc"] = spread("val_acc")
    return summary


def record(runs: list[Path], out: Path) -> dict:
    summary = summarize(runs)
    for run, seed in zip(runs, summary["seeds"]):
        folder = out / f"seed{seed['seed']}"
        folder.mkdir(parents=True, exist_ok=True)
        for name in RECORD:
            if (run / name).is_file():
                shutil.copyfile(run / name, folder / name)
        seed["run"] = folder.name
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def seed_list(summary: dict) -> str:
    """`0, 1, 2`: the seeds a summary holds."""
    return ", ".join(str(s["seed"]) for s in summary["seeds"])


def spread_text(value: dict) -> str:
    """`94.07 % +- 0.23` (percentage points), or the one run's figure."""

    return pct(value["mean"]) + (f" +- {100 * value['sd']:.2f}" if value.get("sd") is not None else "")


def lines(summary: dict) -> list[str]:
    """The seeds' table: each seed's peak LR (the LR range test runs per seed, so it is part of what a seed varies)
    and its plain and flip-TTA accuracy, then mean +- sd."""

    out = ["| seed | peak LR | test accuracy | flip TTA |", "|---:|---:|---:|---:|"]
    out += [f"| {s['seed']} | {s['max_lr']:.2e} | {pct(s['test_acc'])} | {pct(s['test_acc_tta'])} |"
            for s in summary["seeds"]]
    if summary["runs"] > 1:
        out.append(f"| **mean +- sd over {summary['runs']} seeds** | | **{spread_text(summary['test_acc'])}** | "
                   f"**{spread_text(summary['test_acc_tta'])}** |")
    return out


def held_out_lines(summary: dict) -> list[str]:
    """What recording a screen run (--holdout) prints: each seed's accuracy on the held-out training images, the
    figure recipes are chosen on; its test figures stay in the record, out of sight of the choice."""
    out = ["| seed | peak LR | held-out accuracy |", "|---:|---:|---:|"]
    out += [f"| {s['seed']} | {s['max_lr']:.2e} | {pct(s['val_acc'])} |" for s in summary["seeds"]]
    if summary["runs"] > 1:
        out.append(f"| **mean +- sd over {summary['runs']} seeds** | | **{spread_text(summary['val_acc'])}** |")
    return out


def aim_line(summary: dict) -> str:
    """The project's aim against a recipe's seeds: reached, or by how many points it falls short, and on how many
    seeds of the aim's."""
    mean, runs = summary["test_acc"]["mean"], summary["runs"]
    aim = f"The project's aim, a mean plain test accuracy of at least {100 * AIM:.2f} % over {AIM_SEEDS} seeds: "
    if mean < AIM:
        aim += f"**not reached**, {100 * (AIM - mean):.2f} points short"
    else:
        aim += "**reached**"
    if runs < AIM_SEEDS:
        aim += f" (so far: {runs} of the {AIM_SEEDS} seeds)"
    return aim + "."


def brief(recipe: dict, lr: str | float = RANGE_TEST) -> str:
    """What a recipe sets beyond the schedule, in words: optimizer and decay, label smoothing, EMA, flip, and where
    its peak LR came from (`peak_lr`: each seed's range test, or given)."""
    r = full_recipe(recipe)
    optimizer = {"adamw": "AdamW, decoupled decay", "adam": "Adam, L2",
                 "sgd": f"SGD{' Nesterov' if r['nesterov'] else ''} {r['momentum']:g}, L2"}[r["optimizer"]]
    parts = [f"{optimizer} {r['weight_decay']:g}"]
    if r["schedule"] == "linear":
        parts.append("linear schedule" + (f" to {r['lr_floor']:g}x, held {r['floor_epochs']} epochs"
                                          if r["floor_epochs"] else ""))
    if r["logit_scale"] != 1:
        parts.append(f"logits x {r['logit_scale']:g} in the loss")
    parts.append(f"label smoothing {r['label_smoothing']:g}" if r["label_smoothing"] else "no label smoothing")
    if r["ghost_batch"]:
        parts.append(f"ghost batch norm of {r['ghost_batch']}")
    if r["freeze_bn_scale"]:
        parts.append("batch-norm scales frozen")
    if (r["bn_bias_lr"], r["bn_bias_decay"]) != (1, 1):
        parts.append(f"batch-norm biases at {r['bn_bias_lr']:g}x LR, {r['bn_bias_decay']:g}x decay")
    if r["ema_decay"]:
        parts.append(f"weight average {r['ema_decay']:g} every {r['ema_every']} steps")
    parts.append("alternating flip" if r["alternating_flip"] else "random flip")
    parts.append("peak LR from each seed's range test" if lr == RANGE_TEST else f"peak LR {lr:.2e} given (no range test)")
    return ", ".join(parts)


# A named recipe's figure as its author published it, for the same network, epochs and test set: (mean plain test
# accuracy, runs, where). "Recipes compared" sets a record of that name beside it.
REFERENCES = {"page": (0.940, 50, "David Page's cifar10-fast, \"How to train your ResNet 8: bag of tricks\", the "
                                  "24-epoch baseline with max-pooling before batch norm")}


def compare_lines(recipes: list[tuple[str, dict]]) -> list[str]:
    """The recipes compared: one row per (label, summary), plain and flip-TTA accuracy as mean +- sd over its seeds;
    below, a record that is a named recipe with a published figure (REFERENCES: matched by its values, whatever its
    label) beside that figure."""
    out = ["| recipe | what it sets | seeds | test accuracy | flip TTA |", "|---|---|---:|---:|---:|"]
    for label, s in recipes:
        out.append(f"| {label} | {brief(s['recipe'], s.get('peak_lr', RANGE_TEST))} | {seed_list(s)} | "
                   f"{spread_text(s['test_acc'])} | {spread_text(s['test_acc_tta'])} |")
    for _, s in recipes:
        name = recipe_name(summary_key(s))
        if name in REFERENCES:
            acc, runs, where = REFERENCES[name]
            mine = s["test_acc"]["mean"]
            out += ["", f"`{name}` as its author measured it: {pct(acc)} mean over {runs} runs ({where}); here "
                        f"{spread_text(s['test_acc'])} over {s['runs']} seed{'s' if s['runs'] > 1 else ''}, "
                        f"{100 * (mine - acc):+.2f} points from it."]
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m s10.seeds", description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+", help="finished run folders, one per seed")
    parser.add_argument("--out", type=Path, required=True, help="where the records and summary.json go")
    args = parser.parse_args(argv)
    try:
        summary = record(args.runs, args.out)
    except (SeedsError, OSError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print("\n".join(held_out_lines(summary) if "val_acc" in summary else lines(summary)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
