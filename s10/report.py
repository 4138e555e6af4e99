"""Render a run folder as the README's results section. Deterministic: the same run folder gives the same bytes.

    python -m s10.report release/run                     # print the Markdown
    python -m s10.report release/run --readme README.md  # rewrite README.md between the results markers
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "space" / "examples"  # the app's examples, <class>.png
START = "<!-- results:start (written by `python -m s10.report`; do not edit by hand) -->"
END = "<!-- results:end -->"


def pct(x: float) -> str:
    return f"{100 * x:.2f} %"


def recipe_lines(config: dict, results: dict) -> list[str]:
    """The recipe, data, hardware and time of a run, as Markdown bullets (README and model card)."""
    r, hw, data = config["recipe"], config["hardware"], config["data"]
    bf16 = "".join(f", {flag}" for flag in hw.get("cpu_bf16", []))  # why a CPU run defaults to bf16-mixed
    device = hw["gpu"] or f"CPU ({hw['cpu']}, {hw['cpu_threads']} threads{bf16})"
    world = config.get("world_size", 1)
    return [
        f"- Data: `{Path(data['source']).name}`: {data['train_images']:,} training images, {data['test_images']:,} "
        "test images.",
        f"- {r['epochs']} epoch{'s' if r['epochs'] != 1 else ''}, batch {r['batch_size']}, Adam (L2 "
        f"{r['weight_decay']:g}), cross-entropy with label smoothing {r['label_smoothing']:g}; One Cycle: start "
        f"{r['max_lr'] / r['div_factor']:.2e}, peak "
        f"{r['max_lr']:.2e} at {r['pct_start'] * r['epochs']:.3g} epochs, linear, two phases, end "
        f"{r['max_lr'] / r['div_factor'] / r['final_div_factor']:.2e}; augmentation: reflect-pad 4 + random crop 32, "
        "horizontal flip, CutOut 8x8.",
        f"- Peak LR from the LR range test: {'yes' if config['args'].get('find_lr') else 'no (given)'}; "
        f"seed {r['seed']}.",
        f"- Ran on {world} x {device}, precision {config['args']['precision']}; torch "
        f"{config['versions']['torch']}, lightning {config['versions']['lightning']}; commit "
        f"`{(config.get('git_commit') or 'unknown')[:10]}`"
        + "".join(f", resumed at epoch {res['from_epoch']} with `{(res.get('git_commit') or 'unknown')[:10]}`"
                  for res in config.get("resumes", [])) + ".",
        f"- Wall time: {duration(results['train_time_s'])} of training on {'the GPU' if hw['gpu'] else 'the CPU'}: "
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
    lines += [
        "",
        "Per class (all test images): " + ", ".join(f"{c} {pct(a)}" for c, a in results["per_class_acc"].items()) + ".",
        "",
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


def rewrite_readme(readme: Path, section: str) -> None:
    text = readme.read_text()
    if START not in text or END not in text:
        raise ValueError(f"{readme}: no results markers ({START!r} ... {END!r})")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{START}\n{section}{END}{tail}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m s10.report", description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a finished run folder")
    parser.add_argument("--readme", type=Path, help="rewrite this README between the results markers")
    args = parser.parse_args(argv)
    missing = [n for n in ("config.json", "results.json", "metrics.csv") if not (args.run / n).is_file()]
    if missing:
        print(f"error: {args.run} is not a finished run folder (missing {', '.join(missing)})", file=sys.stderr)
        return 2
    section = render(args.run, args.readme.resolve().parent if args.readme else None)
    if args.readme:
        try:
            rewrite_readme(args.readme, section)
        except (OSError, ValueError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    else:
        sys.stdout.write(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
