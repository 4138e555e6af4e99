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

START = "<!-- results:start (written by `python -m s10.report`; do not edit by hand) -->"
END = "<!-- results:end -->"


def pct(x: float) -> str:
    return f"{100 * x:.2f} %"


def recipe_lines(config: dict, results: dict) -> list[str]:
    """The recipe, data, hardware and time of a run, as Markdown bullets (README and model card)."""
    r, hw, data = config["recipe"], config["hardware"], config["data"]
    device = hw["gpu"] or f"CPU ({hw['cpu']}, {hw['cpu_threads']} threads)"
    world = config.get("world_size", 1)
    return [
        f"- Data: `{Path(data['source']).name}`: {data['train_images']:,} training images, {data['test_images']:,} "
        f"test images ({data['exact_test_images']:,} of them lossless originals).",
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
        + "".join(f", resumed at epoch {r['from_epoch']} with `{(r.get('git_commit') or 'unknown')[:10]}`"
                  for r in config.get("resumes", [])) + ".",
        f"- Training time: {results['train_time_s'] / 60:.1f} min (sum of the epochs' training loops; test passes "
        f"and pauses not included).",
    ]


def results_table(results: dict) -> list[str]:
    lines = [
        "| test set | images | accuracy | with flip TTA |",
        "|---|---:|---:|---:|",
        f"| all test images | {results['test_images']:,} | {pct(results['test_acc'])} | "
        f"{pct(results['test_acc_tta'])} |",
    ]
    if "exact_test_acc" in results:
        lines.append(f"| lossless originals (`t*.png`) | {results['exact_images']:,} | "
                     f"{pct(results['exact_test_acc'])} | {pct(results['exact_test_acc_tta'])} |")
    return lines


def render(run: Path, relative_to: Path | None = None) -> str:
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
    lines += ["", f"The full log: [`train.log`]({img('train.log')}).", "", "### Curves", "",
              f"![loss, accuracy and learning rate per epoch]({img('curves.png')})", ""]
    if (run / "lr_finder.png").is_file():
        lines += [f"![LR range test]({img('lr_finder.png')})", ""]
    lines += ["### Confusion matrix", "", f"![confusion matrix]({img('confusion_matrix.png')})", "",
              "### Misclassified test images", "",
              "The 10 most confident mistakes, each captioned with its true and predicted label:", "",
              f"![10 misclassified test images with true and predicted labels]({img('misclassified.png')})", ""]
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
