"""Test-set evaluation: accuracy (plain and with flip TTA), per class, confusion matrix, calibration, and the
misclassified pack. Used by the end of training (fabric_train.py writes the run's files from it), and alone to check
a released model or to add the calibration to a finished run's record:

    python -m s10.evaluate MODEL_DIR DATA_ROOT      # e.g. release/model .data/cifar10: JSON, and a summary on stderr
    python -m s10.evaluate RUN/model DATA_ROOT --recalibrate RUN

torchmetrics' functional API computes every figure, from the logits of the whole test set.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import save_file
from torchmetrics.functional.classification import multiclass_accuracy, multiclass_confusion_matrix

from s10.calibration import report as calibration_report
from s10.calibration import scores as calibration_scores
from s10.calibration import threshold_split
from s10.data import Split
from s10.model import calibrated, normalize

PACK_SIZE = 100  # misclassified images shipped with the model for the app's gallery


@contextmanager
def exact_float32():
    """float32 arithmetic as a CPU does it: no TF32 in cuDNN convolutions (PyTorch's default on Ampere and newer
    GPUs) or in CUDA matmuls, so that published figures measured on a GPU are those of the weights in float32."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@torch.no_grad()
def predict_logits(model: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, mean, std,
                   batch_size: int | None = None, flip: bool = False) -> torch.Tensor:
    """float32 logits of `model` (a network, or its `forward`: the eager pass of a compiled one) for uint8 images
    (N, 3, H, W), or for their mirror images with `flip`, on the images' device, in exact float32 (`exact_float32`).
    Flip TTA is the mean of the two: two passes in all for the plain and the TTA
    figure. The batch size is for speed: by default 100 images on a CPU (their activations stay in its caches;
    bench/eval_batch.py compares sizes and whether the logits are the same), 500 on a GPU."""
    if batch_size is None:
        batch_size = 100 if images.device.type == "cpu" else 500
    out = []
    with exact_float32():
        for start in range(0, len(images), batch_size):
            x = normalize(images[start:start + batch_size], mean, std)
            out.append(model((x.flip(-1) if flip else x).contiguous(memory_format=torch.channels_last)).float())
    return torch.cat(out) if out else torch.empty(0, device=images.device)


def released_logits(model_dir: str | Path, images: torch.Tensor):
    """A model folder (or Hub repo) loaded as users load it, and its float32 logits for `images`: plain and flip TTA.
    (model, logits, logits_tta)."""
    from s10.model import S10Net

    net = S10Net.from_pretrained(model_dir).to(memory_format=torch.channels_last)
    cfg = net.config
    logits = predict_logits(net, images, cfg.mean, cfg.std)
    return net, logits, (logits + predict_logits(net, images, cfg.mean, cfg.std, flip=True)) / 2


def _acc(logits, labels, n):
    return round(multiclass_accuracy(logits, labels, n, average="micro").item(), 6)


def test_results(logits: torch.Tensor, logits_tta: torch.Tensor, split: Split, classes: list[str]) -> dict:
    """Every figure of results.json, from the logits of the whole test split: accuracy, per class, confusion matrix,
    calibration (s10/calibration.py) and the low-confidence threshold on the calibrated scale."""
    n = len(classes)
    labels = split.labels.to(logits.device)
    per_class = multiclass_accuracy(logits, labels, n, average=None)
    calibration = calibration_report(logits, labels)
    probs = calibrated(logits, calibration["temperature"])
    confidence, predicted = probs.max(-1)
    correct = confidence[predicted == labels]
    # The 5th percentile of the calibrated top-class probability over the correctly classified test images: a picture
    # whose top probability is lower looks unlike 95 % of what the model gets right (the app's "may show none of the ten classes").
    threshold = round(torch.quantile(correct, 0.05).item(), 4) if len(correct) else None
    results = {
        "test_images": len(labels),
        "test_acc": _acc(logits, labels, n),
        "test_acc_tta": _acc(logits_tta, labels, n),
        "per_class_acc": {c: round(a.item(), 6) for c, a in zip(classes, per_class)},
        "confusion_matrix": multiclass_confusion_matrix(logits, labels, n).tolist(),  # rows: true, cols: predicted
        "temperature": calibration["temperature"],
        "calibration": calibration,
        "low_confidence_threshold": threshold,
    }
    if threshold is not None:
        results["low_confidence"] = {"threshold": threshold, **threshold_split(probs, labels, threshold),
                                     "same_flags_as_uncalibrated": same_flags(logits, labels, probs, threshold)}
    return results


def same_flags(logits: torch.Tensor, labels: torch.Tensor, probs: torch.Tensor, threshold: float) -> float:
    """The share of test images that the calibrated threshold flags exactly as the uncalibrated one (the same rule on
    the plain softmax) does."""
    plain = logits.float().softmax(-1)
    top, predicted = plain.max(-1)
    plain_threshold = torch.quantile(top[predicted == labels], 0.05)
    return round(((top < plain_threshold) == (probs.max(-1).values < threshold)).float().mean().item(), 4)


def misclassified(logits: torch.Tensor, split: Split, k: int = PACK_SIZE, temperature: float = 1.0) -> dict:
    """The k most confidently wrong test images: uint8 pixels, true and predicted label, confidence (the calibrated
    probability, softmax(logits / temperature), as the app shows it)."""
    probs = calibrated(logits, temperature)
    conf, pred = probs.max(-1)
    labels = split.labels.to(logits.device)
    wrong = (pred != labels).nonzero().flatten()
    order = wrong[conf[wrong].argsort(descending=True, stable=True)][:k].cpu()
    return {
        "images": split.images[order].contiguous(),
        "index": order,
        "true": labels.cpu()[order],
        "pred": pred.cpu()[order],
        "confidence": conf.cpu()[order],
    }


def save_misclassified(pack: dict, classes: list[str], folder: Path) -> None:
    """misclassified.safetensors (uint8 pixels) + misclassified.json (labels): no unpickling needed to read."""
    save_file({"images": pack["images"]}, str(folder / "misclassified.safetensors"))
    index = [
        {"test_index": int(i), "true": classes[t], "pred": classes[p], "confidence": round(float(c), 4)}
        for i, t, p, c in zip(pack["index"], pack["true"], pack["pred"], pack["confidence"])
    ]
    (folder / "misclassified.json").write_text(json.dumps(index, indent=1) + "\n")


def write_misclassified_grid(pack: dict, names: list[str], path: Path) -> None:
    from s10 import plots

    plots.misclassified_grid(pack["images"][:10], [plots.caption(names[t], names[p], c) for t, p, c in
                                                  zip(pack["true"][:10], pack["pred"][:10], pack["confidence"][:10])],
                             path)


def recalibrate(run: Path, data) -> dict:
    """Measure a finished run's published weights again (float32, every test image) and write what the calibration
    adds to its record: results.json (the training figures kept), reliability.png, model/config.json's temperature
    and headline, and the misclassified pack and grid with calibrated confidences. model.safetensors is not rewritten
    (the weights stay byte-identical)."""
    from s10 import plots

    net, logits, logits_tta = released_logits(run / "model", data.test.images)
    cfg = net.config
    old = json.loads((run / "results.json").read_text())
    results = test_results(logits, logits_tta, data.test, cfg.class_names)
    for key in ("epochs", "peak_lr", "train_time_s", "final_train_acc"):
        if key in old:
            results[key] = old[key]
    (run / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    plots.reliability(results["calibration"], run / "reliability.png")
    pack = misclassified(logits, data.test, temperature=results["temperature"])
    save_misclassified(pack, cfg.class_names, run / "model")
    write_misclassified_grid(pack, cfg.class_names, run / "misclassified.png")
    config_path = run / "model" / "config.json"
    config = json.loads(config_path.read_text())
    config["temperature"] = results["temperature"]
    config["results"] = headline(results)
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return results


def headline(results: dict) -> dict:
    """The figures that travel in model/config.json (the app's header and hint read them)."""
    keys = ["test_acc", "test_acc_tta", "test_images", "epochs", "per_class_acc", "low_confidence_threshold",
            "low_confidence"]
    out = {k: results[k] for k in keys if k in results}
    if "calibration" in results:
        cal = results["calibration"]
        out["calibration"] = {"uncalibrated": cal["uncalibrated"], "calibrated": cal["calibrated"]}
    return out


def same_images(data, run: Path) -> None:
    """Cut `data` as the run in `run` cut it (fabric_train.py's load_data: s10.data.select with its flags)."""
    from s10.data import select

    try:
        config = json.loads((Path(run) / "config.json").read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"--images-of {run}: no readable config.json ({err})") from None
    a, b = config["args"], config["recipe"]["batch_size"]
    limits = (3 * b, 2 * b + 1) if a.get("smoke") else (a.get("train_limit"), a.get("test_limit"))
    select(data, config["recipe"]["seed"], *limits, a.get("holdout"))


def measure(model_dir: str | Path, data) -> dict:
    """What `python -m s10.evaluate` prints as JSON: a model folder's figures on `data`'s test split (float32)."""
    model, logits, logits_tta = released_logits(model_dir, data.test.images)
    cfg = model.config
    results = test_results(logits, logits_tta, data.test, cfg.class_names)
    results.pop("confusion_matrix")
    cal = results.pop("calibration")
    results["calibration"] = {"uncalibrated": cal["uncalibrated"], "calibrated_held_out": cal["calibrated"],
                              "temperature_fitted_here": cal["temperature"], "temperature_in_config": cfg.temperature,
                              "with_config_temperature": calibration_scores(logits, data.test.labels,
                                                                            cfg.temperature),
                              "risk_coverage": cal["risk_coverage"]}
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m s10.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", help="a model folder (model.safetensors + config.json) or a Hub repo id")
    parser.add_argument("data", help="'cifar10' or a class-folder root, e.g. .data/cifar10")
    parser.add_argument("--recalibrate", metavar="RUN_DIR", type=Path,
                        help="write the calibration into this finished run's record (its model/ is measured)")
    parser.add_argument("--images-of", metavar="RUN_DIR", type=Path,
                        help="measure on the test images this run was measured on (its --smoke, --train-limit, "
                             "--test-limit, --holdout and seed), so that the figures compare with its results.json")
    args = parser.parse_args(argv)
    from s10.data import DataError, load_dataset

    torch.set_num_threads(max(1, torch.get_num_threads()))
    try:
        data = load_dataset(args.data)
        if args.images_of:
            same_images(data, args.images_of)
        if args.recalibrate:
            if Path(args.model_dir).resolve() != (args.recalibrate / "model").resolve():
                raise ValueError(f"--recalibrate {args.recalibrate} measures {args.recalibrate / 'model'}; "
                                 "pass that folder as MODEL_DIR")
            results = recalibrate(args.recalibrate, data)
            print(f"{args.recalibrate}: recalibrated, T = {results['temperature']}", file=sys.stderr)
            return 0
        results = measure(args.model_dir, data)
    except (DataError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(results, indent=1))
    cal = results["calibration"]
    before, after = cal["uncalibrated"], cal["calibrated_held_out"]
    print(f"{args.model_dir}: {100 * results['test_acc']:.2f} % on {results['test_images']:,} test images, "
          f"{100 * results['test_acc_tta']:.2f} % with flip TTA", file=sys.stderr)  # for people; stdout for programs
    print(f"calibration (15-bin ECE / NLL / Brier): {before['ece']:.4f} / {before['nll']:.4f} / {before['brier']:.4f} "
          f"plain softmax, {after['ece']:.4f} / {after['nll']:.4f} / {after['brier']:.4f} temperature-scaled "
          f"(2-fold cross-fitted on the test set); T fitted on all of it {cal['temperature_fitted_here']:.4f}, in "
          f"the model's config {cal['temperature_in_config']:g}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
