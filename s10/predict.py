"""Classify image files from the command line, with the app's preprocessing and model loading.

    python -m s10.predict photo.jpg [more.png ...] [--top-k 3] [--model release/model | user/repo]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from s10.inference import MAX_TOP_K, ImageError, check_top_k, load_image, probabilities, to_input, top_k

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
    cfg = model.config
    status = 0
    for path in args.images:
        try:
            x = to_input(load_image(path), cfg.mean, cfg.std, cfg.input_size)
        except (ImageError, FileNotFoundError) as err:
            print(f"{path}: error: {err}", file=sys.stderr)
            status = 2
            continue
        ranked = top_k(probabilities(model, x)[0], cfg.class_names, k)
        print(f"{path}: " + ", ".join(f"{name} {p:.3f}" for name, p in ranked))
    return status


if __name__ == "__main__":
    sys.exit(main())
