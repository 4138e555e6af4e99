"""Does the model know when a picture shows none of the ten classes? The out-of-distribution set, the detectors'
table and the detector the model folder ships.

    python bench/ood.py --data .data/cifar10 [--model release/model] [--json bench/results/ood.json] [--ship]

The out-of-distribution set is generated here, never taken from CIFAR-10: `--per-kind` pictures (seeded) of each
kind in KINDS, drawn at 64x64 and then sent through the app's own preprocessing (s10.inference.to_input: centre
square, resized to 32x32), as an upload would be. Four kinds are generated (noise, textures, shapes, text); the fifth,
`photos`, is held out: crops of the photographs that installed packages ship (PHOTOS: matplotlib's, gradio's and
scikit-image's photographs of people, objects, places and surfaces, none of them of the ten classes), on which no
choice here is tuned.

Every score of s10.ood is fitted on the training images (features of all 50,000) and measured against the CIFAR-10
test images sent the same way: enlarged to 64x64, then through the app's preprocessing, so that a difference the
resampling alone makes is not counted as the detector's. AUROC (higher is better) and the false-positive rate at the
threshold that keeps 95 % of those test images (FPR95, lower is better); every figure with its sample size (pictures,
and the distinct source pictures they come from). The shipped detector is the score with the best mean AUROC over the four generated
kinds among those whose statistics fit in the model folder (SHIP_LIMIT_MB); its threshold keeps 95 % of the test
images. How often it fires on CIFAR-10 test images sent through what an upload goes through (upscaling, JPEG, crops,
flips, colour changes) is measured too: photos of the ten classes should rarely trip it.

With --ship the detector goes into the model folder (config.json's `ood`, ood.safetensors).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter, ImageFont

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

KINDS = ("noise", "textures", "shapes", "text", "photos")
HELD_OUT = "photos"
KEEP = 0.95  # share of CIFAR-10 test images the threshold keeps
SHIP_LIMIT_MB = 5.0
KNN_SAMPLE = 2000  # training images in the k-NN bank that can ship (k = 1): 512 float16 features each, 2 MB
DRAWN = 64  # pixels: the side the generated pictures are drawn at, before the app's resize


def _colour(rng) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(0, 256, 3))


def noise(rng) -> Image.Image:
    style = rng.integers(3)
    if style == 0:  # white RGB noise
        a = rng.integers(0, 256, (DRAWN, DRAWN, 3))
    elif style == 1:  # grey Gaussian noise around a random level
        a = np.repeat(rng.normal(rng.uniform(60, 200), rng.uniform(10, 60), (DRAWN, DRAWN, 1)), 3, 2)
    else:  # smooth noise: a few random values, upscaled
        side = int(rng.choice([2, 4, 8]))
        small = Image.fromarray(rng.integers(0, 256, (side, side, 3)).astype(np.uint8))
        return small.resize((DRAWN, DRAWN), Image.Resampling.BICUBIC)
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def textures(rng) -> Image.Image:
    y, x = np.mgrid[0:DRAWN, 0:DRAWN] / DRAWN
    angle, freq = rng.uniform(0, np.pi), rng.uniform(2, 12)
    u = x * np.cos(angle) + y * np.sin(angle)
    style = rng.integers(3)
    if style == 0:  # sinusoidal grating
        t = 0.5 + 0.5 * np.sin(2 * np.pi * freq * u)
    elif style == 1:  # stripes
        t = (np.floor(freq * u) % 2).astype(float)
    else:  # checkerboard
        v = -x * np.sin(angle) + y * np.cos(angle)
        t = ((np.floor(freq * u) + np.floor(freq * v)) % 2).astype(float)
    a, b = np.array(_colour(rng)), np.array(_colour(rng))
    return Image.fromarray((a * t[..., None] + b * (1 - t[..., None])).astype(np.uint8))


def shapes(rng) -> Image.Image:
    im = Image.new("RGB", (DRAWN, DRAWN), _colour(rng))
    draw = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(1, 5))):
        box = sorted(rng.integers(0, DRAWN, 2).tolist()), sorted(rng.integers(0, DRAWN, 2).tolist())
        xy = [box[0][0], box[1][0], box[0][1] + 4, box[1][1] + 4]
        style = rng.integers(3)
        if style == 0:
            draw.ellipse(xy, fill=_colour(rng))
        elif style == 1:
            draw.rectangle(xy, fill=_colour(rng))
        else:
            draw.polygon([tuple(p) for p in rng.integers(0, DRAWN, (int(rng.integers(3, 7)), 2)).tolist()],
                         fill=_colour(rng))
    return im


def text(rng) -> Image.Image:
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    im = Image.new("RGB", (DRAWN, DRAWN), _colour(rng))
    draw = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(1, 4))):
        word = "".join(rng.choice(list(letters), int(rng.integers(1, 6))))
        font = ImageFont.load_default(size=int(rng.integers(12, 40)))
        draw.text(tuple(rng.integers(-8, DRAWN - 16, 2).tolist()), word, fill=_colour(rng), font=font)
    return im


# The held-out photographs: (package, path inside it). None shows one of the ten classes (skimage's cat, horse and
# motorcycle pictures, and gradio's cheetahs, are left out), and none was looked at to choose anything.
PHOTOS = [("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"), ("gradio", "media_assets/images/tower.jpg"),
          ("gradio", "media_assets/images/groot.jpeg"),
          *(("skimage", f"data/{name}") for name in (
              "astronaut.png", "camera.png", "coffee.png", "rocket.jpg", "clock_motion.png", "hubble_deep_field.jpg",
              "retina.jpg", "moon.png", "coins.png", "ihc.png", "brick.png", "grass.png", "gravel.png"))]


def photo_sources() -> list[Image.Image]:
    """The held-out photographs (PHOTOS), RGB; the first is Grace Hopper's portrait (the tests and screenshots crop
    her face)."""
    import importlib.util

    def path(package, rel):
        return Path(importlib.util.find_spec(package).submodule_search_locations[0]) / rel

    return [Image.open(path(package, rel)).convert("RGB") for package, rel in PHOTOS]


def as_uploaded(image: Image.Image) -> Image.Image:
    """A CIFAR-10 test image sent the way the out-of-distribution pictures are: at DRAWN x DRAWN (enlarged with
    Lanczos), for the app's preprocessing to shrink back to 32x32."""
    return image.resize((DRAWN, DRAWN), Image.Resampling.LANCZOS)


def photos(rng, sources) -> Image.Image:
    src = sources[int(rng.integers(len(sources)))]
    short = min(src.size)
    side = int(short * rng.uniform(0.15, 0.6))
    left, top = int(rng.integers(0, src.width - side + 1)), int(rng.integers(0, src.height - side + 1))
    return src.crop((left, top, left + side, top + side)).resize((DRAWN, DRAWN), Image.Resampling.LANCZOS)


def build_set(per_kind: int, seed: int = 0) -> dict[str, list[Image.Image]]:
    makers = {"noise": noise, "textures": textures, "shapes": shapes, "text": text}
    sources = photo_sources()
    out = {}
    for i, kind in enumerate(KINDS):
        rng = np.random.default_rng([seed, i])
        out[kind] = [photos(rng, sources) if kind == "photos" else makers[kind](rng) for _ in range(per_kind)]
    return out


def _jpeg(im: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    im.save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def upload_variants(rng) -> dict:
    """What a photo of one of the ten classes goes through before the network sees it, on CIFAR-10 test images."""
    up = Image.Resampling.BICUBIC

    def crop(im):
        side = int(32 * rng.uniform(0.75, 0.95))
        left, top = rng.integers(0, 33 - side, 2)
        return im.crop((int(left), int(top), int(left) + side, int(top) + side)).resize((256, 256), up)

    return {
        "as is (32x32 PNG)": lambda im: im,
        "upscaled to 256x256": lambda im: im.resize((256, 256), up),
        "upscaled, JPEG quality 70": lambda im: _jpeg(im.resize((256, 256), up), 70),
        "cropped to 75-95 %, upscaled": crop,
        "mirrored": lambda im: im.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
        "brighter (x1.3)": lambda im: Image.eval(im, lambda v: min(255, int(v * 1.3))),
        "upscaled, blurred (Gaussian, radius 4)": lambda im: im.resize((256, 256), up).filter(
            ImageFilter.GaussianBlur(4)),
        "rotated 10 degrees": lambda im: im.resize((256, 256), up).rotate(10, Image.Resampling.BILINEAR,
                                                                          fillcolor=(128, 128, 128)),
    }


def fpr_at(id_scores: torch.Tensor, ood_scores: torch.Tensor) -> float:
    """The share of out-of-distribution pictures let through (called in-distribution) at the threshold that keeps
    KEEP of the in-distribution ones."""
    threshold = torch.quantile(id_scores, KEEP)
    return float((ood_scores <= threshold).float().mean())


def auroc(id_scores: torch.Tensor, ood_scores: torch.Tensor) -> float:
    """AUROC of telling them apart. The scores are scaled into [0, 1] first (in float64; ties stay ties): torchmetrics
    takes values outside it for logits and applies a sigmoid, which saturates large distances into one value."""
    from torchmetrics.functional.classification import binary_auroc

    s = torch.cat([id_scores, ood_scores]).double()
    s = ((s - s.min()) / (s.max() - s.min()).clamp_min(1e-300)).float()
    target = torch.cat([torch.zeros(len(id_scores)), torch.ones(len(ood_scores))]).long()
    return float(binary_auroc(s, target))


def main() -> None:
    from s10 import hardware
    from s10.data import load_dataset
    from s10.inference import to_input
    from s10.model import S10Net
    from s10.ood import SCORES, Detector, features_and_logits, fit_gaussian, fit_knn, score

    candidates = [*SCORES, f"knn-{KNN_SAMPLE // 1000}k"]

    def kind_of(name):  # "knn-2k" is the knn score on a smaller bank
        return name.split("-")[0]

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(ROOT / ".data" / "cifar10"))
    p.add_argument("--model", default=str(ROOT / "release" / "model"))
    p.add_argument("--per-kind", type=int, default=500)
    p.add_argument("--upload-images", type=int, default=2000, help="CIFAR-10 test images per upload variant")
    p.add_argument("--train-images", type=int, help="fit on a seeded sample of this many training images (a quick "
                   "check; the committed results use all)")
    p.add_argument("--json", type=Path, help="write the results here (bench/results/ood.json)")
    p.add_argument("--samples", type=Path, help="write a picture of 8 samples of each kind here")
    p.add_argument("--ship", action="store_true", help="write the chosen detector into the model folder")
    args = p.parse_args()
    torch.manual_seed(0)
    torch.set_grad_enabled(False)
    model = S10Net.from_pretrained(args.model).eval()
    cfg = model.config
    data = load_dataset(args.data)
    if args.train_images:
        pick = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(0))[: args.train_images]
        data.train = data.train.subset(pick.sort().values)
    t0 = time.perf_counter()

    def feats(images_uint8):
        return features_and_logits(model, model.normalize(images_uint8))

    train_f, _ = feats(data.train.images)
    stats = {"mahalanobis": fit_gaussian(train_f, data.train.labels, cfg.num_classes), "knn": fit_knn(train_f),
             f"knn-{KNN_SAMPLE // 1000}k": fit_knn(train_f, k=1, sample=KNN_SAMPLE)}
    size_mb = {"msp": 0.0, "energy": 0.0, **{k: sum(v.numel() * v.element_size() for v in s.values()) / 2**20
                                             for k, s in stats.items()}}
    print(f"features of {len(train_f):,} training images in {time.perf_counter() - t0:.0f} s", flush=True)
    def uploaded(pictures):  # PIL pictures -> features and logits, through the app's own preprocessing
        return features_and_logits(model, torch.cat([to_input(im, cfg.mean, cfg.std, cfg.input_size)
                                                     for im in pictures]))

    test_pictures = [as_uploaded(Image.fromarray(im.permute(1, 2, 0).numpy())) for im in data.test.images]
    test_f, test_logits = uploaded(test_pictures)
    del test_pictures

    def all_scores(f, logits):
        return {k: score(kind_of(k), f, logits, cfg.temperature, stats.get(k)) for k in candidates}

    id_scores = all_scores(test_f, test_logits)
    ood = build_set(args.per_kind)
    if args.samples:
        sheet = Image.new("RGB", (8 * 34, len(KINDS) * 34), "white")
        for r, kind in enumerate(KINDS):
            for c, im in enumerate(ood[kind][:8]):
                sheet.paste(im.resize((32, 32), Image.Resampling.LANCZOS), (c * 34 + 1, r * 34 + 1))
        sheet.resize((sheet.width * 3, sheet.height * 3), Image.Resampling.NEAREST).save(args.samples)
    kind_scores = {kind: all_scores(*uploaded(pictures)) for kind, pictures in ood.items()}
    sources = {kind: (len(PHOTOS) if kind == "photos" else args.per_kind) for kind in KINDS}  # distinct pictures

    rows = []
    for k in candidates:
        row = {"score": k, "stats_mb": round(size_mb[k], 2), "kinds": {}}
        for kind in KINDS:
            s_in, s_out = id_scores[k], kind_scores[kind][k]
            row["kinds"][kind] = {"auroc": auroc(s_in, s_out), "fpr95": fpr_at(s_in, s_out)}
        row["tuned_auroc"] = float(np.mean([row["kinds"][kd]["auroc"] for kd in KINDS if kd != HELD_OUT]))
        rows.append(row)
        print(f"{k:<12} " + "  ".join(f"{kd} {v['auroc']:.3f}/{v['fpr95']:.3f}" for kd, v in row["kinds"].items())
              + f"  | mean AUROC over the generated kinds {row['tuned_auroc']:.3f} ({row['stats_mb']:.1f} MB)",
              flush=True)
    best = max((r for r in rows if r["stats_mb"] <= SHIP_LIMIT_MB), key=lambda r: r["tuned_auroc"])
    name = best["score"]
    kind = kind_of(name)
    threshold = float(torch.quantile(id_scores[name], KEEP))

    # CIFAR-10 test images the way an upload reaches the network.
    pick = torch.randperm(len(data.test), generator=torch.Generator().manual_seed(0))[: args.upload_images]
    rng = np.random.default_rng(1)
    uploads = {}
    base = [Image.fromarray(data.test.images[i].permute(1, 2, 0).numpy()) for i in pick.tolist()]
    for variant, change in upload_variants(rng).items():
        x = torch.cat([to_input(change(im), cfg.mean, cfg.std, cfg.input_size) for im in base])
        f, logits = features_and_logits(model, x)
        uploads[variant] = float((score(kind, f, logits, cfg.temperature, stats.get(name)) > threshold).float().mean())
        print(f"fires on CIFAR-10 test images, {variant}: {100 * uploads[variant]:.1f} %", flush=True)

    measured = {"keeps": KEEP, "auroc": {kd: round(v["auroc"], 4) for kd, v in best["kinds"].items()},
                "fpr95": {kd: round(v["fpr95"], 4) for kd, v in best["kinds"].items()}, "held_out": HELD_OUT,
                "measured_by": "bench/ood.py"}
    detector = Detector(kind, threshold, dict(stats.get(name, {})), measured)
    print(f"\nshipped detector: {name}, threshold {threshold:.4g} (keeps {100 * KEEP:.0f} % of the CIFAR-10 test "
          f"images); {time.perf_counter() - t0:.0f} s in all")
    if args.ship:
        folder = Path(args.model)
        entry = detector.save(folder)
        config = json.loads((folder / "config.json").read_text())
        config["ood"] = entry
        (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        print(f"wrote the detector into {folder}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "machine": hardware.cpu().describe(), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
            "model": str(args.model), "per_kind": args.per_kind, "kinds": list(KINDS), "held_out": HELD_OUT,
            "sources": sources, "reference": f"CIFAR-10 test images enlarged to {DRAWN}x{DRAWN}, then preprocessed "
                                             "as an upload",
            "drawn": DRAWN, "keep": KEEP, "ship_limit_mb": SHIP_LIMIT_MB, "train_images": len(train_f),
            "test_images": len(test_f), "rows": rows, "choice": {"score": name, "threshold": threshold},
            "upload_images": len(base), "uploads": uploads}, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
