"""CIFAR-10 as uint8 tensors on the training device, augmented a whole batch at a time.

Two sources behind one interface, `load_dataset(source)`:
- "cifar10": torchvision's CIFAR10 (downloads and verifies it when the network allows);
- a class-folder root `ROOT/{train,test}/<class>/*.{png,jpg}` (the offline copy, most custom data sets).

Images are decoded once, cached as safetensors next to the data (the second run starts in seconds), then kept on the
device as one uint8 tensor. `augment` crops, flips and cuts out on the device, so training never waits on a CPU
data loader and there is no per-sample Python work in the loop.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from s10.model import CIFAR10_CLASSES, normalize  # noqa: F401 (normalize: used here and re-exported)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
CACHE_VERSION = 2  # 2: no per-image "exact" flag


class DataError(ValueError):
    """A data source that cannot be used; the message says why, in one line."""


@dataclass
class Split:
    images: torch.Tensor  # (N, 3, 32, 32) uint8
    labels: torch.Tensor  # (N,) int64

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index) -> "Split":
        return Split(self.images[index], self.labels[index])

    def to(self, device) -> "Split":
        return Split(self.images.to(device), self.labels.to(device))


@dataclass
class Dataset:
    train: Split
    test: Split
    classes: list[str]
    source: str  # "cifar10" or the class-folder root
    val: Split | None = None  # training images held out of training (fabric_train.py --holdout)


HOLDOUT_SEED = 20_171_001  # the held-out images are picked with this seed, whatever the run's


def select(data: Dataset, seed: int, train_limit: int | None, test_limit: int | None, holdout: int | None) -> None:
    """Cut `data` in place as a run asks: seeded random subsets of `train_limit` training and `test_limit` test
    images (the run's seed), then `holdout` training images set aside as `data.val`, the same ones for every seed
    and recipe (HOLDOUT_SEED), so that recipes are compared on one held-out split."""
    pick = torch.Generator().manual_seed(seed)
    if train_limit and train_limit < len(data.train):
        data.train = data.train.subset(torch.randperm(len(data.train), generator=pick)[:train_limit].sort().values)
    if test_limit and test_limit < len(data.test):
        data.test = data.test.subset(torch.randperm(len(data.test), generator=pick)[:test_limit].sort().values)
    if holdout:
        if not 0 < holdout < len(data.train):
            raise DataError(f"--holdout {holdout} must lie between 0 and the {len(data.train)} training images")
        order = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(HOLDOUT_SEED))
        data.val = data.train.subset(order[:holdout].sort().values)
        data.train = data.train.subset(order[holdout:].sort().values)


def fingerprint(data: Dataset) -> str:
    """A short sha256 of the splits as trained and tested on (pixels, labels, order; the held-out images too): two
    runs with the same fingerprint saw the same data, whatever folder it was read from."""
    digest = hashlib.sha256()
    for split in (data.train, data.test, data.val):
        if split is not None:
            digest.update(split.images.cpu().contiguous().numpy().tobytes())
            digest.update(split.labels.cpu().numpy().tobytes())
        digest.update(b"|")
    return digest.hexdigest()[:16]


# -- sources ---------------------------------------------------------------------------------------------------------


def load_dataset(source: str, cache_dir: str | Path | None = None) -> Dataset:
    """Load both splits from "cifar10" or a class-folder root, as uint8 CPU tensors."""
    if source == "cifar10":
        return _load_torchvision(Path(cache_dir or os.environ.get("S10_DATA", ".data")) / "torchvision")
    return _load_folder(Path(source))


def _load_torchvision(root: Path) -> Dataset:
    from torchvision.datasets import CIFAR10

    splits = {}
    for name, train in (("train", True), ("test", False)):
        try:
            ds = CIFAR10(str(root), train=train, download=True)
        except Exception as err:  # URLError, socket errors, integrity failures: one message
            raise DataError(
                f"--data cifar10: the data set is not cached under {root} and cannot be downloaded ({err}); "
                "pass a class-folder root instead (see ../shared/data/README.md)"
            ) from None
        images = torch.from_numpy(np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)))
        labels = torch.tensor(ds.targets, dtype=torch.int64)
        splits[name] = Split(images, labels)
    return Dataset(splits["train"], splits["test"], list(CIFAR10_CLASSES), "cifar10")


def _class_files(split_dir: Path) -> dict[str, list[Path]]:
    if not split_dir.is_dir():
        raise DataError(f"{split_dir}: missing; a class-folder root needs train/<class>/ and test/<class>/")
    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{split_dir}: no class folders")
    files = {}
    for c in classes:
        files[c] = sorted(p for p in (split_dir / c).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files[c]:
            raise DataError(f"{split_dir / c}: no .png or .jpg images")
    return files


def check_source(source: str) -> None:
    """Raise DataError for a source that cannot be used, from its file listing alone (no decoding): cheap enough to
    run before any process is launched."""
    if source != "cifar10":
        _folder_files(Path(source))


def _folder_files(root: Path) -> tuple[dict[str, list[Path]], dict[str, list[Path]]]:
    if not root.is_dir():
        raise DataError(f"--data {root}: not a directory (give 'cifar10' or a class-folder root)")
    train_files, test_files = _class_files(root / "train"), _class_files(root / "test")
    if list(train_files) != list(test_files):
        raise DataError(f"{root}: train and test class folders differ: {list(train_files)} vs {list(test_files)}")
    return train_files, test_files


def _load_folder(root: Path) -> Dataset:
    train_files, test_files = _folder_files(root)
    classes = list(train_files)
    splits = {name: _decode_cached(root, name, files, classes)
              for name, files in (("train", train_files), ("test", test_files))}
    return Dataset(splits["train"], splits["test"], classes, str(root))


def _decode_cached(root: Path, split: str, files: dict[str, list[Path]], classes: list[str]) -> Split:
    """Decode a split once; later runs read the safetensors cache keyed by the file list and sizes."""
    from safetensors.torch import load_file, save_file

    listing = [(str(p.relative_to(root)), p.stat().st_size) for c in classes for p in files[c]]
    key = hashlib.sha256(json.dumps([CACHE_VERSION, listing]).encode()).hexdigest()[:16]
    cache = root / ".s10-cache" / f"{split}-{key}.safetensors"
    if cache.is_file():
        t = load_file(str(cache))
        return Split(t["images"], t["labels"])
    images, labels = [], []
    for label, c in enumerate(classes):
        for p in files[c]:
            images.append(_decode(p))
            labels.append(label)
    split_data = Split(torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(),
                       torch.tensor(labels, dtype=torch.int64))
    try:
        cache.parent.mkdir(exist_ok=True)
        tmp = cache.with_suffix(f".tmp{os.getpid()}")
        save_file({"images": split_data.images, "labels": split_data.labels}, str(tmp))
        tmp.replace(cache)
    except OSError:
        pass  # a read-only data folder: decode again next time
    return split_data


def _decode(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if im.size != (32, 32):
                raise DataError(f"{path}: {im.size[0]}x{im.size[1]} pixels; the S10 net takes 32x32 images")
            return np.asarray(im)
    except (OSError, SyntaxError) as err:
        raise DataError(f"{path}: not a readable image ({err})") from None


# -- batches on the device -------------------------------------------------------------------------------------------


def epoch_generators(seed: int, epoch: int, rank: int, device) -> tuple[torch.Generator, torch.Generator]:
    """Two RNG streams for an epoch, both the same after a resume: the shuffle, (seed, epoch), shared by every rank so
    that the ranks split one permutation; the augmentation, (seed, epoch, rank), so that each rank draws its own crops,
    flips and CutOuts (with one stream, the j-th image of every rank would get the same ones)."""
    base = seed * 1_000_003 + epoch
    shuffle = torch.Generator(device=device)
    shuffle.manual_seed(base % 2**63)
    augmentation = torch.Generator(device=device)
    augmentation.manual_seed((base * 65_537 + 1 + rank) % 2**63)  # distinct for every rank below 65,536
    return shuffle, augmentation


def train_batches(split: Split, batch_size: int, rank: int, world_size: int, generator: torch.Generator,
                  with_index: bool = False):
    """Yield (uint8 images, labels) for this rank: one shared shuffle cut into global batches of `batch_size`,
    each rank taking its contiguous share. The last incomplete global batch is dropped (a fresh shuffle each epoch).
    With `with_index`, also the images' indices in the split."""
    per_rank = batch_size // world_size
    order = torch.randperm(len(split), generator=generator, device=split.images.device)
    for start in range(0, len(order) - batch_size + 1, batch_size):
        index = order[start + rank * per_rank: start + (rank + 1) * per_rank]
        yield (split.images[index], split.labels[index], index) if with_index else (split.images[index],
                                                                                      split.labels[index])


def alternating_flips(n: int, seed: int, epoch: int, device) -> torch.Tensor:
    """Which of n training images epoch `epoch` mirrors under alternating flip (Keller Jordan's airbench): a seeded
    coin per image, inverted every other epoch, so each epoch mirrors exactly the images the previous one did not.
    (n,) bool on `device`, the same on every rank."""
    coins = torch.Generator(device=device)
    coins.manual_seed((seed * 1_000_003 + 7_919) % 2**63)
    return (torch.rand(n, device=device, generator=coins) < 0.5) ^ bool(epoch % 2)


def augmented_batches(split: Split, batch_size: int, rank: int, world_size: int, seed: int, epoch: int, mean, std,
                      alternating_flip: bool = False):
    """One epoch of this rank's training batches, augmented on the device: (normalised float images in
    channels_last, labels). Deterministic for (seed, epoch, rank), so a resumed run sees the same batches. `mean`
    and `std` as tensors on the device keep the steps free of host-to-device copies (s10.model.normalize). With
    `alternating_flip`, the flips follow `alternating_flips` instead of a fresh coin per image and epoch."""
    shuffle, augmentation = epoch_generators(seed, epoch, rank, split.images.device)
    flips = alternating_flips(len(split), seed, epoch, split.images.device) if alternating_flip else None
    for images, labels, index in train_batches(split, batch_size, rank, world_size, shuffle, with_index=True):
        x = augment(images, mean, std, augmentation, flip=None if flips is None else flips[index])
        yield x.contiguous(memory_format=torch.channels_last), labels


def shard(n: int, rank: int, world_size: int) -> slice:
    """This rank's contiguous share of n items, without padding (shares differ by at most one)."""
    bounds = np.linspace(0, n, world_size + 1).round().astype(int)
    return slice(int(bounds[rank]), int(bounds[rank + 1]))


def augment(images: torch.Tensor, mean, std, generator: torch.Generator, pad: int = 4, cutout: int = 8,
            flip: torch.Tensor | None = None):
    """The S10 augmentation for a whole uint8 batch (B, 3, H, W), on its own device:
    random crop after reflect-padding by `pad`, horizontal flip with p=0.5 (or where `flip`, (B,) bool, says),
    normalise, then CutOut: one `cutout`x`cutout` square per image, centred anywhere in the image and clipped at its
    border, set to 0 (the mean colour after normalisation; DeVries & Taylor 2017)."""
    b, c, h, w = images.shape
    dev = images.device
    padded = torch.nn.functional.pad(images, (pad,) * 4, mode="reflect") if pad else images
    dy = torch.randint(0, 2 * pad + 1, (b,), device=dev, generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (b,), device=dev, generator=generator)
    coin = torch.rand(b, device=dev, generator=generator) < 0.5  # drawn either way: the other draws stay the same
    flip = coin if flip is None else flip
    # Crop and flip as two gathers (rows, then columns; a flipped crop reads its columns in reverse): much
    # cheaper than 4-D advanced indexing, and no full-size flipped copy.
    ar_h, ar_w = torch.arange(h, device=dev), torch.arange(w, device=dev)
    rows = (dy[:, None] + ar_h).view(b, 1, h, 1).expand(b, c, h, padded.shape[-1])
    cols = (torch.where(flip[:, None], w - 1 - ar_w, ar_w) + dx[:, None]).view(b, 1, 1, w).expand(b, c, h, w)
    x = normalize(padded.gather(2, rows).gather(3, cols), mean, std)
    if cutout:
        cy = torch.randint(0, h, (b,), device=dev, generator=generator)
        cx = torch.randint(0, w, (b,), device=dev, generator=generator)
        in_y = (ar_h >= (cy - cutout // 2)[:, None]) & (ar_h < (cy + cutout - cutout // 2)[:, None])  # (B, H)
        in_x = (ar_w >= (cx - cutout // 2)[:, None]) & (ar_w < (cx + cutout - cutout // 2)[:, None])  # (B, W)
        x.masked_fill_((in_y[:, :, None] & in_x[:, None, :])[:, None], 0.0)
    return x
