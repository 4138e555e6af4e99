"""Inference without the training stack: any image file -> the S10 input, top-k classes, the misclassified pack.

What the Space and `python -m s10.predict` share. Imports torch, PIL and safetensors only.
"""

from __future__ import annotations

import io
import json
import re
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

# The one size limit: Pillow's own, past which it refuses to open a file (its decompression-bomb guard). Phone photos
# (48, 50 and 108 MP modes) lie below it; their JPEGs decode at a reduced scale (draft), so their size costs little.
MAX_PIXELS = 2 * Image.MAX_IMAGE_PIXELS
# Between half the limit and the limit Pillow warns on every open; the limit above is what counts here.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
MIN_SIDE = 8  # pixels; a thinner image has no square to crop that means anything
MAX_TOP_K = 10


class ImageError(ValueError):
    """An upload that cannot become an S10 input; the message is meant for the user."""


def load_image(source, target_size: int = 32, notes: list[str] | None = None) -> Image.Image:
    """Open a file path, bytes or PIL image the way a user expects: first frame of an animation, EXIF orientation
    applied, transparency composited on white, 16-bit and CMYK converted, result RGB. JPEGs are decoded at a
    reduced scale (libjpeg's DCT scaling) when far larger than needed, which makes 12-MP uploads cheap.
    What the user should know but is not an error (an animation cut to its first frame) goes into `notes`."""
    if source is None:
        raise ImageError("no image: upload one or pick an example")
    try:
        if isinstance(source, Image.Image):
            im = source
        else:
            if isinstance(source, (bytes, bytearray)):
                if not source:
                    raise ImageError("the file is empty")
                im = Image.open(io.BytesIO(source))
            else:
                path = Path(source)
                if not path.exists():
                    raise ImageError(f"no such file: {path}")
                if path.is_dir():
                    raise ImageError(f"{path} is a folder, not an image file")
                if path.stat().st_size == 0:
                    raise ImageError("the file is empty")
                im = Image.open(path)
        w, h = im.size
        if w * h > MAX_PIXELS:
            raise ImageError(too_large(w * h, f"{w}x{h} = "))
        if min(w, h) < MIN_SIDE:
            raise ImageError(f"the image is {w}x{h} pixels; it needs at least {MIN_SIDE} on each side")
        if im.format == "JPEG" and min(w, h) >= 8 * target_size:
            im.draft("RGB", (max(target_size * 4, w // 8), max(target_size * 4, h // 8)))
        if getattr(im, "n_frames", 1) > 1 and notes is not None:
            notes.append(f"animated image ({im.n_frames} frames): classifying its first frame")
        im.seek(0)
        im = ImageOps.exif_transpose(im)
        return to_rgb(im)
    except ImageError:
        raise
    except Image.DecompressionBombError as err:
        pixels = re.search(r"\((\d+) pixels\)", str(err))
        raise ImageError(too_large(int(pixels.group(1)) if pixels else None)) from None
    except UnidentifiedImageError:
        raise ImageError("not an image file that can be read (PNG, JPEG, WebP, GIF, BMP or TIFF)") from None
    except PermissionError:
        raise ImageError("the file cannot be read (permission denied)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise ImageError(f"the image file is damaged or truncated ({type(err).__name__})") from None


def too_large(pixels: int | None, size: str = "") -> str:
    shown = f"{size}{pixels / 1e6:.0f} megapixels" if pixels else "larger than that"
    return f"the image is {shown}; the most that can be read is {MAX_PIXELS / 1e6:.0f} megapixels"


def to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):  # 16/32-bit greyscale: scale the full range to 8 bits
        a = np.asarray(im, dtype=np.float32)
        lo, hi = float(a.min()), float(a.max())
        a = (a - lo) / (hi - lo) * 255 if hi > lo else np.zeros_like(a)
        im = Image.fromarray(a.astype(np.uint8), "L")
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV, RGB


def centre_square(im: Image.Image) -> tuple[int, int, int, int]:
    """The box (left, top, right, bottom) of the largest centred square of an image."""
    w, h = im.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return left, top, left + side, top + side


def square_resize(im: Image.Image, size: int = 32) -> Image.Image:
    """Centre square crop, then an antialiased (Lanczos) resize to size x size: the picture the network sees."""
    return im.resize((size, size), Image.Resampling.LANCZOS, box=centre_square(im), reducing_gap=3.0)


def to_input(im: Image.Image, mean, std, size: int = 32) -> torch.Tensor:
    """RGB PIL image -> normalised float tensor (1, 3, size, size)."""
    from s10.model import normalize

    pixels = torch.from_numpy(np.array(square_resize(im, size), dtype=np.uint8)).permute(2, 0, 1)[None]
    return normalize(pixels, mean, std)


def caption(true: str, pred: str, confidence: float) -> str:
    """How a misclassified image is captioned everywhere (README grid, model card, app)."""
    return f"true: {true} / pred: {pred} ({confidence:.2f})"


def check_top_k(k) -> int:
    try:
        k_int = int(k)
    except (TypeError, ValueError):
        raise ImageError(f"top-k must be a whole number from 1 to {MAX_TOP_K}, got {k!r}") from None
    if k_int != k or not 1 <= k_int <= MAX_TOP_K:
        raise ImageError(f"top-k must be a whole number from 1 to {MAX_TOP_K}, got {k!r}")
    return k_int


@torch.inference_mode()
def probabilities(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Calibrated class probabilities (B, classes), float32, for a normalised batch x (B, 3, H, W): the model's
    temperature applied (`S10Net.probabilities`)."""
    return model.probabilities(x)


def top_k(probs: torch.Tensor, class_names: list[str], k: int) -> list[tuple[str, float]]:
    """The k most likely classes, most likely first."""
    k = min(check_top_k(k), len(class_names))
    values, index = probs.topk(k)
    return [(class_names[i], float(p)) for p, i in zip(values.tolist(), index.tolist())]


@torch.no_grad()
def classify(model: torch.nn.Module, source, k: int = 5) -> list[tuple[str, float]]:
    """A picture (file path, bytes or PIL image) -> its k most likely classes with calibrated probabilities, prepared
    as the network was trained (load_image, then to_input with the model's config)."""
    cfg = model.config
    x = to_input(load_image(source, cfg.input_size), cfg.mean, cfg.std, cfg.input_size)
    return top_k(probabilities(model, x)[0], cfg.class_names, k)


def load_misclassified(folder: str | Path) -> tuple[torch.Tensor, list[dict]]:
    """The model folder's misclassified pack: uint8 images (N, 3, 32, 32) and their labels (no unpickling)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    images = load_file(str(folder / "misclassified.safetensors"))["images"]
    return images, json.loads((folder / "misclassified.json").read_text())
