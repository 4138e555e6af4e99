"""Classify image files from the command line, with the app's preprocessing and model loading.

    python -m s10.predict photo.jpg [more.png ...] [--top-k 3] [--model release/model | user/repo]

A picture that the model's out-of-distribution detector (config.json `ood`, as in the app) finds unlike the training
pictures gets "(unlike the training pictures?)" after its classes: it may show none of the ten, so take its classes
with caution.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from s10.inference import MAX_TOP_K, ImageError, check_top_k, load_image, to_input, top_k

UNLIKE = "(unlike the training pictures?)"  # the mark of a picture the detector fires on
DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "release" / "model"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m s10.predict", description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="+", help="image files (PNG, JPEG, WebP, GIF, BMP, TIFF)")
    parser.add_argument("--top-k", default=3, type=int, help=f"classes to list, 1 to {MAX_TOP_K} (default 3)")
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="a model folder or Hub repo id")
    args = parser.parse_args(argv)
    try:
        k = check_top_k(args.top_k)
    except ImageError as err:
        parser.error(str(err))
    from s10.model import S10Net

    try:
        model = S10Net.from_pretrained(args.model)
    except (OSError, ValueError) as err:
        print(f"error: cannot load model {args.model}: {err}", file=sys.stderr)
        return 2
    from s10.model import calibrated
    from s10.ood import Detector, features_and_logits

    cfg = model.config
    try:
        detector = Detector.load(cfg.ood, model_folder(args.model))
    except (OSError, ValueError) as err:  # the classes are still right; say that the check is off
        print(f"warning: no out-of-distribution check: {err}", file=sys.stderr)
        detector = None
    status = 0
    for path in args.images:
        try:
            x = to_input(load_image(path), cfg.mean, cfg.std, cfg.input_size)
        except (ImageError, FileNotFoundError) as err:
            print(f"{path}: error: {err}", file=sys.stderr)
            status = 2
            continue
        features, logits = features_and_logits(model, x)
        ranked = top_k(calibrated(logits, cfg.temperature)[0], cfg.class_names, k)
        odd = detector is not None and bool(detector.fires(features, logits, cfg.temperature)[0])
        print(f"{path}: " + ", ".join(f"{name} {p:.3f}" for name, p in ranked) + (f" {UNLIKE}" if odd else ""))
    return status


def model_folder(source: str) -> Path | None:
    """The folder holding the model's files: the folder given, or the Hub snapshot with the detector's statistics."""
    if Path(source).is_dir():
        return Path(source)
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(source, allow_patterns=["config.json", "ood.*"]))
    except Exception:  # offline or gone: Detector.load says the file is missing
        return None


if __name__ == "__main__":
    sys.exit(main())
