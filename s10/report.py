"""Render a run folder as the results page and the README's headline. Deterministic: the same run folder gives the
same bytes.

    python -m s10.report release                                               # print the results section
    python -m s10.report release --readme README.md --results docs/results.md  # rewrite both marked sections
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import sys
from pathlib import Path

from s10.seeds import pct  # noqa: F401 (the one percent format; report reads seeds, never the reverse)

EXAMPLES = Path(__file__).resolve().parent.parent / "space" / "examples"  # the app's examples, <class>.png
START = "<!-- results:start (written by `python -m s10.report`; do not edit by hand) -->"
END = "<!-- results:end -->"
HEADLINE_START = "<!-- headline:start (written by `python -m s10.report`; do not edit by hand) -->"
HEADLINE_END = "<!-- headline:end -->"
RECIPES_START = "<!-- recipes:start (written by `python -m s10.report`; do not edit by hand) -->"
RECIPES_END = "<!-- recipes:end -->"
SCREEN_START = "<!-- screen:start (written by `python -m s10.report`; do not edit by hand) -->"
SCREEN_END = "<!-- screen:end -->"
RUN_START = "<!-- run:start (written by `python -m s10.report`; do not edit by hand) -->"
RUN_END = "<!-- run:end -->"


def recipe_lines(config: dict, results: dict) -> list[str]:
    """The recipe, data, hardware and time of a run, as Markdown bullets (README and model card)."""
    r, hw, data = config["recipe"], config["hardware"], config["data"]
    bf16 = "".join(f", {flag}" for flag in hw.get("cpu_bf16", []))  # why a CPU run defaults to bf16-mixed
    gpu = hw.get("gpu")
    gpu = gpu.get("name") if isinstance(gpu, dict) else gpu  # a dict (name, CUDA, cuDNN, TF32) since the CUDA rework
    device = gpu or f"CPU ({hw['cpu']}, {hw['cpu_threads']} threads{bf16})"
    world = config.get("world_size", 1)
    optimizer = {"adamw": f"AdamW (decoupled decay {r['weight_decay']:g}, not on batch-norm parameters and biases)",
                 "sgd": f"SGD with {'Nesterov ' if r.get('nesterov') else ''}momentum {r.get('momentum', 0):g} "
                        f"(L2 {r['weight_decay']:g})"}.get(r.get("optimizer"), f"Adam (L2 {r['weight_decay']:g})")
    extras = "".join([f"; a moving average of the weights (decay {r['ema_decay']:g} every {r['ema_every']} steps, "
                      "batch-norm statistics included) is evaluated and published" if r.get("ema_decay") else "",
                      "; alternating flip" if r.get("alternating_flip") else "",
                      f"; ghost batch norm over groups of {r['ghost_batch']}" if r.get("ghost_batch") else "",
                      "; batch-norm scales frozen at 1" if r.get("freeze_bn_scale") else "",
                      f"; batch-norm biases at {r['bn_bias_lr']:g}x the LR and {r['bn_bias_decay']:g}x the decay"
                      if (r.get("bn_bias_lr", 1), r.get("bn_bias_decay", 1)) != (1, 1) else ""])
    peak_at = f"{r['pct_start'] * r['epochs']:.3g} epochs"
    if r.get("schedule") == "linear":
        floor = r.get("lr_floor", 0) * r["max_lr"]
        held = f", held for the last {r['floor_epochs']} epochs" if r.get("floor_epochs") else ""
        schedule = f"linear schedule: from 0 to the peak {r['max_lr']:.2e} at {peak_at}, then to {floor:.2e}{held}"
    else:
        schedule = (f"One Cycle: start {r['max_lr'] / r['div_factor']:.2e}, peak {r['max_lr']:.2e} at {peak_at}, "
                    f"linear, two phases, end {r['max_lr'] / r['div_factor'] / r['final_div_factor']:.2e}")
    scale = f" on the logits x {r['logit_scale']:g}" if r.get("logit_scale", 1) != 1 else ""
    smoothing = f" with label smoothing {r['label_smoothing']:g}" if r["label_smoothing"] else ", no label smoothing"
    name = config["args"].get("recipe")
    return [
        f"- Data: `{Path(data['source']).name}`: {data['train_images']:,} training images, {data['test_images']:,} "
        "test images" + (f" ({data['held_out_images']:,} training images held out)." if data.get("held_out_images")
                         else "."),
        (f"- Recipe `{name}` (docs/training.md: Recipes): " if name else "- ")
        + f"{r['epochs']} epoch{'s' if r['epochs'] != 1 else ''}, batch {r['batch_size']}, {optimizer}, "
        f"cross-entropy{scale}{smoothing}; {schedule}; augmentation: reflect-pad "
        f"4 + random crop 32, horizontal flip, CutOut 8x8{extras}.",
        f"- Peak LR from the LR range test: {'yes' if config['args'].get('find_lr') else 'no (given)'}; "
        f"seed {r['seed']}.",
        f"- Ran on {world} x {device}, precision {config['args']['precision']}; torch "
        f"{config['versions']['torch']}, lightning {config['versions']['lightning']}; commit "
        f"`{(config.get('git_commit') or 'unknown')[:10]}`"
        + "".join(f", resumed at epoch {res['from_epoch']} with `{(res.get('git_commit') or 'unknown')[:10]}`"
                  for res in config.get("resumes", [])) + ".",
        f"- Wall time: {duration(results['train_time_s'])} of training on {'the GPU' if gpu else 'the CPU'}: "
        f"the sum of the {results.get('epochs', r['epochs'])} epochs' training loops (the LR range test, the test "
        "passes and the time between a stop and its resume not included).",
    ]


def duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{seconds / 60:.1f} min"


def results_table(results: dict) -> list[str]:
    return [
        "| test set | images | accuracy | with flip TTA |",
        "|---|---:|---:|---:|",
        f"| CIFAR-10 test split | {results['test_images']:,} | {pct(results['test_acc'])} | "
        f"{pct(results['test_acc_tta'])} |",
    ]


def calibration_lines(results: dict, image: str | None = None) -> list[str]:
    """What the probabilities mean: calibration before and after temperature scaling, the reliability diagram,
    accuracy against coverage and the app's low-confidence hint (README and model card). [] without calibration."""
    cal = results.get("calibration")
    if not cal:
        return []
    before, after = cal["uncalibrated"], cal["calibrated"]
    halves = " / ".join(f"{t:.3f}" for t in cal["half_temperatures"])
    lines = [
        f"Temperature scaling (Guo et al. 2017) divides the logits by **T = {cal['temperature']:.4f}** before the "
        "softmax, fitted by negative log-likelihood on all test images and shipped in the model's `config.json` "
        "(`S10Net.probabilities` applies it); the predicted class, so the accuracy, is unchanged. There is no "
        "validation split (the recipe trains on all 50,000 training images), so the calibrated figures below are "
        f"cross-fitted: {cal['protocol']} (T = {halves}). No image is scored by a T fitted on it.",
        "",
        "| probabilities | ECE (15 bins) | NLL (nats) | Brier score |",
        "|---|---:|---:|---:|",
        f"| plain softmax | {before['ece']:.4f} | {before['nll']:.4f} | {before['brier']:.4f} |",
        f"| temperature-scaled (held-out halves) | {after['ece']:.4f} | {after['nll']:.4f} | {after['brier']:.4f} |",
        "",
    ]
    if image:
        lines += [f"![reliability diagrams before and after temperature scaling]({image})", ""]
    lines += ["Accuracy on the test images the model is most confident about (calibrated top probability):", "",
              "| most confident | images | accuracy | top probability at least |", "|---:|---:|---:|---:|"]
    lines += [f"| {100 * r['coverage']:.0f} % | {r['images']:,} | {pct(r['accuracy'])} | {r['min_confidence']:.4f} |"
              for r in cal["risk_coverage"]]
    low = results.get("low_confidence")
    if low:
        def right(share, words):  # None when no test image falls on that side of the threshold
            return words.format(pct(share)) if share is not None else "no test image lies"

        below = right(low["accuracy_below"], "the model is right {} of the time")
        lines += ["", f"The app's low-confidence hint appears below a calibrated top probability of "
                  f"{low['threshold']:.4f}, the 5th percentile over the correctly classified test images. Below it "
                  f"({pct(low['share_below'])} of the test images) {below}, at or above it "
                  f"{right(low['accuracy_above'], '{}')}; it flags the same test images as the same rule on the plain "
                  f"softmax for {pct(low['same_flags_as_uncalibrated'])} of them."]
    return lines + [""]


def example_predictions(model_dir: Path, examples: Path) -> list[tuple[str, str, str]]:
    """(file, true class, predicted class) for each of the app's examples (`<class>.png`), as the app reads them."""
    from s10.inference import load_image, probabilities, to_input
    from s10.model import S10Net

    model = S10Net.from_pretrained(model_dir)
    cfg = model.config
    paths = sorted(examples.glob("*.png"))
    if sorted(p.stem for p in paths) != sorted(cfg.class_names):
        return []  # not this model's examples (another data set)
    out = []
    for path in paths:
        pred = probabilities(model, to_input(load_image(path), cfg.mean, cfg.std))[0].argmax().item()
        out.append((path.name, path.stem, cfg.class_names[pred]))
    return out


def examples_lines(predictions: list[tuple[str, str, str]]) -> list[str]:
    wrong = [(name, pred) for name, true, pred in predictions if pred != true]
    lines = ["### The app's examples", "",
             f"The app's {len(predictions)} example images (`space/examples`: the first test image of each "
             f"class), classified by this model: {len(predictions) - len(wrong)} of {len(predictions)} as "
             "their own class."]
    if wrong:
        lines[-1] += " Not classified as their own class: " + ", ".join(
            f"`{name}` (predicted {pred})" for name, pred in wrong) + "."
    return lines + [""]


def render(run: Path, relative_to: Path | None = None, examples: Path | None = EXAMPLES) -> str:
    """The Markdown section; with `examples` (a folder of `<class>.png`) and a model in the run, how the model
    classifies them."""
    run = Path(run)
    config = json.loads((run / "config.json").read_text())
    results = json.loads((run / "results.json").read_text())
    with open(run / "metrics.csv", newline="") as f:
        rows = sorted(csv.DictReader(f), key=lambda r: int(r["epoch"]))
    link = os.path.relpath(run, relative_to or run).replace(os.sep, "/")
    img = (lambda name: f"{link}/{name}") if link != "." else (lambda name: name)
    lines = ["### Recipe and hardware", "", *recipe_lines(config, results), "", "### Results", "",
             *results_table(results)]
    spread = seeds_summary(run)
    if spread:
        from s10 import seeds

        lines += ["", f"### The recipe over {spread['runs']} seed{'s' if spread['runs'] > 1 else ''}", "",
                  f"The same recipe and precision with seeds {seeds.seed_list(spread)} "
                  f"(records in [`seeds/`]({img('seeds')}); trained on {'; '.join(spread['hardware'])}):", "",
                  *seeds.lines(spread), "", seeds.aim_line(spread)]
    others = recipes(run)
    if others:
        from s10 import seeds

        mine = spread or seeds.summarize([run])
        name = seeds.recipe_name(seeds.summary_key(mine))
        lines += ["", "### Recipes compared", "",
                  "This release's recipe beside the earlier ones (their records, no weights, in "
                  f"[`recipes/`]({img('recipes')})), each over its seeds, all trained and tested on the same data "
                  "(their records agree: `s10.seeds.data_of`):", "",
                  *seeds.compare_lines([*others, (f"this release's recipe{f' (`{name}`)' if name else ''}", mine)])]
    lines += [
        "",
        "Per class (all test images): " + ", ".join(f"{c} {pct(a)}" for c, a in results["per_class_acc"].items()) + ".",
        "",
    ]
    calibration = calibration_lines(results, img("reliability.png") if (run / "reliability.png").is_file() else None)
    if calibration:
        lines += ["### Calibration: what the probabilities mean", "", *calibration]
    lines += [
        "### Training log",
        "",
        "| epoch | LR | train loss | train acc | test loss | test acc | epoch time (s) | images/s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(f"| {int(row['epoch'])} | {float(row['lr']):.2e} | {float(row['train_loss']):.4f} | "
                     f"{pct(float(row['train_acc']))} | {float(row['test_loss']):.4f} | "
                     f"{pct(float(row['test_acc']))} | {float(row['epoch_time_s']):.0f} | "
                     f"{float(row['images_per_s']):.0f} |")
    precision = config["args"]["precision"]
    per_epoch = ("" if precision == "32-true" else f" The table's test columns are measured after each epoch under the "
                 f"run's {precision} autocast; the published figures run the weights in float32, as "
                 "`python -m s10.evaluate` and the app do.")
    if config["recipe"].get("ema_decay"):
        per_epoch += (" The table's test columns are the network's own weights after each epoch; the published "
                      "weights are their moving average.")
    lines += ["", f"Final evaluation of the published weights (float32, all {results['test_images']:,} test images): "
              f"**{pct(results['test_acc'])}**, {pct(results['test_acc_tta'])} with flip TTA.{per_epoch} The full "
              f"log: [`train.log`]({img('train.log')}).", "", "### Curves", "",
              f"![loss, accuracy and learning rate per epoch]({img('curves.png')})", ""]
    if (run / "lr_finder.png").is_file():
        lines += [f"![LR range test]({img('lr_finder.png')})", ""]
    lines += ["### Confusion matrix", "", f"![confusion matrix]({img('confusion_matrix.png')})", "",
              "### Misclassified test images", "",
              "The 10 most confident mistakes, each captioned with its true and predicted label:", "",
              f"![10 misclassified test images with true and predicted labels]({img('misclassified.png')})", ""]
    if examples is not None and examples.is_dir() and (run / "model" / "model.safetensors").is_file():
        predictions = example_predictions(run / "model", examples)
        if predictions:
            lines += examples_lines(predictions)
    return "\n".join(lines)


def seeds_summary(run: Path) -> dict | None:
    """The release's seeds' spread (`python -m s10.seeds ... --out RUN/seeds`), if it has one. A spread of another
    recipe or precision than the release's is refused (ValueError): it would be printed as the release's."""
    from s10.seeds import recipe_key, summary_key

    path = Path(run) / "seeds" / "summary.json"
    if not path.is_file():
        return None
    summary = json.loads(path.read_text())
    config = json.loads((Path(run) / "config.json").read_text())
    if summary_key(summary) != recipe_key(config) or summary["precision"] != config["args"]["precision"]:
        raise ValueError(f"{path} is the spread of another recipe or precision than the release's; run "
                         "`make seeds-record` with this recipe's seeds, or remove it")
    check_same_data(run, path.parent, summary)
    return summary


def recipes(run: Path) -> list[tuple[str, dict]]:
    """Earlier recipes' records kept beside the release (`python -m s10.seeds RUN --out RUN/recipes/<name>`), less
    any of the release's own recipe (its row is the release's). A record trained or tested on other data than the
    release is refused (ValueError): the table compares recipes on one data set and test set."""
    from s10.seeds import recipe_key, summary_key

    folder = Path(run) / "recipes"
    found = sorted(folder.glob("*/summary.json")) if folder.is_dir() else []
    config = json.loads((Path(run) / "config.json").read_text())
    kept = [(path.parent.name, json.loads(path.read_text())) for path in found]
    for path, (_, summary) in zip(found, kept):
        check_same_data(run, path.parent, summary)
    return [(name, summary) for name, summary in kept if summary_key(summary) != recipe_key(config)]


def check_same_data(run: Path, record: Path, summary: dict) -> None:
    """A seeds' or recipe's record (its summary, or the first seed's own record for a summary from before the data
    was in it) against the release's data."""
    from s10.seeds import data_differences, data_of

    def data(folder):
        return data_of(*(json.loads((folder / n).read_text()) for n in ("config.json", "results.json")))

    theirs = summary.get("data") or data(record / f"seed{summary['seeds'][0]['seed']}")
    mine = data(Path(run))
    differ = data_differences(theirs, mine)
    if differ:
        raise ValueError(f"{record} was trained or tested on other data than the release ({', '.join(differ)} "
                         "differ); a spread or a comparison across data sets would mislead")


def headline(run: Path) -> str:
    """The README's first-screen result: accuracy, epochs, training time and hardware, calibration."""
    config = json.loads((run / "config.json").read_text())
    results = json.loads((run / "results.json").read_text())
    hw = config["hardware"]
    gpu = hw.get("gpu")
    device = (gpu.get("name") if isinstance(gpu, dict) else gpu) or f"{hw['cpu_threads']} CPU cores ({hw['cpu']})"
    text = (f"**{pct(results['test_acc'])}** test accuracy on CIFAR-10's {results['test_images']:,} test images "
            f"(**{pct(results['test_acc_tta'])}** with flip TTA) after {results['epochs']} epochs: "
            f"{duration(results['train_time_s'])} of training on {device}, {config['args']['precision']}.")
    spread = seeds_summary(run)
    if spread and spread["runs"] > 1:
        a, t = spread["test_acc"], spread["test_acc_tta"]
        from s10.seeds import spread_text

        text += (f" The recipe over {spread['runs']} seeds: **{spread_text(a)}** ({spread_text(t)} with flip TTA), "
                 "mean +- sd.")
    cal = results.get("calibration")
    if cal:
        text += (f" Calibrated probabilities: expected calibration error {cal['calibrated']['ece']:.4f} after "
                 f"temperature scaling (held-out halves of the test set), {cal['uncalibrated']['ece']:.4f} before.")
    return text + "\n"


def recipes_table() -> str:
    """docs/training.md's table of the named recipes: every value each one sets (from s10.module.RECIPES), beside the
    Recipe defaults that apply without --recipe."""
    from dataclasses import asdict

    from s10.module import RECIPES, Recipe

    default = asdict(Recipe())
    names = list(RECIPES)
    shown = [k for k in default if k not in ("seed", "lr_find_steps") and (
        any(k in RECIPES[n]["values"] for n in names))]
    lines = ["| value | " + " | ".join(f"`--recipe {n}`" for n in names) + " | no `--recipe` (the defaults) |",
             "|---|" + "---|" * (len(names) + 1)]
    lines.append("| peak LR from | " + " | ".join("the LR range test" if RECIPES[n]["find_lr"] else "given"
                                                  for n in names) + " | given, or the LR range test with `--find-lr` |")
    for k in shown:
        cells = [shown_value(RECIPES[n]["values"][k]) if k in RECIPES[n]["values"] else
                 "the range test's" if k == "max_lr" and RECIPES[n]["find_lr"] else
                 f"{shown_value(default[k])} (default)" for n in names]
        lines.append(f"| `--{k.replace('_', '-')}` | " + " | ".join(cells) + f" | {shown_value(default[k])} |")
    return "\n".join(lines) + "\n"


def shown_value(value) -> str:
    """A recipe value as docs/training.md's table shows it: 0.208333 for 5/24, 0.0001, 64, True."""
    return f"{value:g}" if isinstance(value, float) else f"{value}"


def flag(name: str, value) -> str:
    """A Recipe field and its value as the flag that sets it: `--ghost-batch 32`, `--freeze-bn-scale`,
    `--no-alternating-flip`."""
    name = name.replace("_", "-")
    if isinstance(value, bool):
        return f"`--{name}`" if value else f"`--no-{name}`"
    return f"`--{name} {value:g}`" if isinstance(value, float) else f"`--{name} {value}`"


def beyond_page(summary: dict) -> list[str]:
    """The flags a held-out record sets on top of `--recipe page` at its own length (epochs), its peak LR included."""
    from dataclasses import asdict

    from s10.module import RECIPES, Recipe
    from s10.seeds import full_recipe

    mine = full_recipe(summary["recipe"])
    page = full_recipe(asdict(Recipe(**{**RECIPES["page"]["values"], "epochs": mine["epochs"]})))
    out = [flag(k, mine[k]) for k in mine if k != "epochs" and mine[k] != page.get(k)]
    if summary.get("peak_lr") != RECIPES["page"]["values"]["max_lr"]:
        out.append("the LR range test" if isinstance(summary.get("peak_lr"), str) else flag("max_lr",
                                                                                            summary["peak_lr"]))
    return out


def screen_rows(folder: Path) -> tuple[list[tuple[str, dict]], dict[str, list[str]], float]:
    """The held-out records in `folder` (`python -m s10.seeds RUN --out release/screen/<name>`), ordered by length
    and baseline first, each one's flags on top of `page`, and the sampling error of one row's figure (a fraction,
    binomial at their mean accuracy on the held-out count). Records of the test set (no --holdout), or of other
    held-out images than the first's, are refused (ValueError)."""
    import math

    from s10.seeds import data_differences

    found = sorted(Path(folder).glob("*/summary.json")) if Path(folder).is_dir() else []
    rows = [(path.parent.name, json.loads(path.read_text())) for path in found]
    for name, s in rows:
        if "val_acc" not in s:
            raise ValueError(f"{folder}/{name} has no held-out accuracy (a run without --holdout): the screen chooses "
                             "on held-out images only, never on the test set")
        differ = data_differences(s["data"], rows[0][1]["data"])
        if differ:
            raise ValueError(f"{folder}/{name} was not trained and measured on the data of {rows[0][0]} "
                             f"({', '.join(differ)} differ): the screen compares on the same held-out images")
    flags = {name: beyond_page(s) for name, s in rows}
    rows.sort(key=lambda r: (r[1]["recipe"]["epochs"], bool(flags[r[0]]), r[0]))
    if not rows:
        return rows, flags, 0.0
    p = statistics.fmean(s["val_acc"]["mean"] for _, s in rows)
    return rows, flags, math.sqrt(p * (1 - p) / rows[0][1]["data"]["held-out images"])


def screen_gains(folder: Path) -> dict[str, tuple[float, bool]]:
    """Each screen row beyond `page` that has a `page` row of its length: its gain in held-out accuracy over it (a
    fraction) and whether it is kept, the rule docs/training.md states: a gain of more than twice one row's sampling
    error. The campaign's choice between recipes is this function's, fixed before their runs end."""
    rows, flags, error = screen_rows(folder)
    base = {s["recipe"]["epochs"]: s["val_acc"]["mean"] for name, s in rows if not flags[name]}
    return {name: (s["val_acc"]["mean"] - base[s["recipe"]["epochs"]],
                   s["val_acc"]["mean"] - base[s["recipe"]["epochs"]] > 2 * error)
            for name, s in rows if flags[name] and s["recipe"]["epochs"] in base}


def screen_table(folder: Path) -> str:
    """docs/training.md's screen (`make screen-record`): each held-out record's flags on top of `page`, its accuracy
    on the held-out training images (mean over its seeds), its difference to `page` at the same length (the row with
    no flags of its own) and whether that keeps it (`screen_gains`), and where it ran. Below, the sampling error of
    one row's figure from the held-out count: the scale against which a difference is noise."""
    from s10.seeds import seed_list, spread_text

    rows, flags, error = screen_rows(folder)
    if not rows:
        return "No screen run is recorded yet (`make screen-record RUNS=...`).\n"
    gains = screen_gains(folder)
    lines = ["| run | on top of `--recipe page` | epochs | seeds | held-out accuracy | against `page` | ran on |",
             "|---|---|---:|---:|---:|---:|---|"]
    for name, s in rows:
        diff = "" if not flags[name] else "no `page` row" if name not in gains else (
            f"{100 * gains[name][0]:+.2f} points, {'kept' if gains[name][1] else 'not kept'}")
        lines.append(f"| {name} | {', '.join(flags[name]) or '(the baseline)'} | {s['recipe']['epochs']} | "
                     f"{seed_list(s)} | {spread_text(s['val_acc'])} | {diff} | {', '.join(s['hardware'])} |")
    n, p = rows[0][1]["data"]["held-out images"], statistics.fmean(s["val_acc"]["mean"] for _, s in rows)
    lines += ["", f"Each row is measured on the same {n:,} held-out training images (`--holdout {n}`), never on the "
              f"test set. The sampling error of one row's figure alone is {100 * error:.2f} points (binomial, at "
              f"{pct(p)}); a seed's own training noise comes on top of it. An option is kept only if it beats "
              f"`page` of the same length by more than twice that ({100 * 2 * error:.2f} points)."]
    return "\n".join(lines) + "\n"


def readme_run(run: Path, relative_to: Path) -> str:
    """The README's own report of the release run, below the quick start: what the assignment asks the README itself
    to show. The loss and accuracy curves, the 10 misclassified test images with their true and predicted labels
    (the picture and a table), and the training log, folded so that the first screen stays the product."""
    run = Path(run)
    link = os.path.relpath(run, relative_to).replace(os.sep, "/")
    results = json.loads((run / "results.json").read_text())
    mistakes = json.loads((run / "model" / "misclassified.json").read_text())[:10]
    log = (run / "train.log").read_text().rstrip("\n")
    lines = ["### Loss and accuracy per epoch", "",
             f"![training and test loss, accuracy and learning rate per epoch]({link}/curves.png)", "",
             f"### 10 misclassified test images", "",
             f"The 10 most confident mistakes among the {results['test_images']:,} test images, each captioned with "
             "its true and predicted label:", "",
             f"![10 misclassified test images with true and predicted labels]({link}/misclassified.png)", "",
             "| # | test image | true | predicted | confidence |", "|---:|---:|---|---|---:|",
             *(f"| {k} | {m['test_index']} | {m['true']} | {m['pred']} | {pct(m['confidence'])} |"
               for k, m in enumerate(mistakes, 1)), "",
             "### Training log", "", "<details>",
             f"<summary><code>{link}/train.log</code>: {results['epochs']} epochs, then the final evaluation "
             "(click to open)</summary>", "", "```text", log, "```", "", "</details>", "",
             f"Per-epoch figures, the confusion matrix and calibration: [docs/results.md](docs/results.md).", ""]
    return "\n".join(lines)


def rewrite_section(path: Path, section: str, start: str = START, end: str = END) -> None:
    text = path.read_text()
    if start not in text or end not in text:
        raise ValueError(f"{path}: no markers ({start!r} ... {end!r})")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{start}\n{section}{end}{tail}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m s10.report", description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a finished run folder")
    parser.add_argument("--readme", type=Path, help="rewrite this README's headline and run report between their "
                        "markers")
    parser.add_argument("--results", type=Path, help="rewrite this page's results section between its markers")
    parser.add_argument("--recipes", type=Path, help="rewrite this page's table of the named recipes (docs/training.md)")
    parser.add_argument("--screen", type=Path, help="rewrite this page's screen table (docs/training.md) from the "
                        "held-out records in RUN/screen/")
    args = parser.parse_args(argv)
    missing = [n for n in ("config.json", "results.json", "metrics.csv") if not (args.run / n).is_file()]
    if missing:
        print(f"error: {args.run} is not a finished run folder (missing {', '.join(missing)})", file=sys.stderr)
        return 2
    try:
        if args.readme:
            rewrite_section(args.readme, headline(args.run), HEADLINE_START, HEADLINE_END)
            rewrite_section(args.readme, readme_run(args.run, args.readme.resolve().parent), RUN_START, RUN_END)
        if args.results:
            rewrite_section(args.results, render(args.run, args.results.resolve().parent))
        if args.recipes:
            rewrite_section(args.recipes, recipes_table(), RECIPES_START, RECIPES_END)
        if args.screen:
            rewrite_section(args.screen, screen_table(args.run / "screen"), SCREEN_START, SCREEN_END)
        if not (args.readme or args.results or args.recipes or args.screen):
            sys.stdout.write(render(args.run))
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
