"""CIFAR-10 in the class-folder layout the trainer reads (`ROOT/{train,test}/<class>/*.png`): what `make data` runs.

    python -m s10.cifar10 .data/cifar10 --archive ../shared/data/cifar10-imagefolder.tar.gz

Where the offline archive exists (this project's build machines), it is unpacked, and the folder is tied to it by
the archive's sha256 (`<folder>.sha256`), so a folder from another archive is replaced. Everywhere else (a clone
from GitHub) the data set comes from torchvision's download of the CIFAR-10 python batches, checked against their
MD5, and is written out as PNG files, losslessly: file `train/<class>/NNNNN.png` is image NNNNN of data_batch_1..5
in order, `test/<class>/NNNN.png` image NNNN of test_batch. A folder that already exists is kept when there is no
archive to check it against; it is only ever replaced by a complete new one (built beside it, then renamed), never
removed first. A failure is one line and exit 1.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import pickle
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np

BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}


class FetchError(Exception):
    """One line for the user."""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def unpack(archive: Path, work: Path) -> Path:
    """The offline archive's `cifar10/` folder, unpacked under `work`."""
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(work, filter="data")
    except (OSError, tarfile.TarError) as err:
        raise FetchError(f"{archive}: cannot be unpacked ({err})") from None
    folder = work / "cifar10"
    if not (folder / "train").is_dir() or not (folder / "test").is_dir():
        raise FetchError(f"{archive}: holds no cifar10/train and cifar10/test folders")
    return folder


def source() -> tuple[str, str]:
    """torchvision's CIFAR10 download: its URL and the archive's MD5. The environment may name others, for the
    tests' loopback server only."""
    from torchvision.datasets import CIFAR10

    return os.environ.get("S10_CIFAR10_URL", CIFAR10.url), os.environ.get("S10_CIFAR10_MD5", CIFAR10.tgz_md5)


def download(downloads: Path, work: Path) -> Path:
    """torchvision's checksummed download of the python batches (kept in `downloads`, so a retry does not fetch it
    again), written out as class folders under `work`."""
    from torchvision.datasets.utils import check_integrity, download_and_extract_archive

    url, md5 = source()
    name = url.rsplit("/", 1)[-1]
    try:
        download_and_extract_archive(url, str(downloads), extract_root=str(work), filename=name, md5=md5)
    except Exception as err:  # URLError, socket errors, a corrupt download: one line
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        if (downloads / name).is_file() and not check_integrity(str(downloads / name), md5):
            reason = f"{downloads / name} does not match its MD5 {md5}"
        raise FetchError(f"cannot download CIFAR-10 from {url} ({reason}); with no internet, unpack the offline "
                         "archive instead (make data SHARED=<folder that holds data/cifar10-imagefolder.tar.gz>)")
    return write_folders(work / "cifar-10-batches-py", work / "cifar10")


def write_folders(batches: Path, folder: Path) -> Path:
    """The python batches (pickled dicts of uint8 rows, RGB planes of 32x32) as PNG class folders."""
    from PIL import Image

    with open(batches / "batches.meta", "rb") as f:
        classes = [c.decode() if isinstance(c, bytes) else c for c in pickle.load(f, encoding="bytes")[b"label_names"]]
    for split, names in BATCHES.items():
        for c in classes:
            (folder / split / c).mkdir(parents=True, exist_ok=True)
        index = 0
        for name in names:
            with open(batches / name, "rb") as f:
                batch = pickle.load(f, encoding="bytes")
            images = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
            for image, label in zip(images, batch[b"labels"]):
                width = 5 if split == "train" else 4
                Image.fromarray(image).save(folder / split / classes[label] / f"{index:0{width}d}.png")
                index += 1
        print(f"  {split}: {index:,} images")
    return folder


def replace(target: Path, new: Path) -> None:
    """Put the complete `new` folder at `target`; an old one is moved aside first and removed only afterwards."""
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        target.rename(old)
    new.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def decode(folder: Path) -> None:
    """Decode the new folder's images once into the cache the trainer reads (s10/data.py, keyed by the files' relative
    paths and sizes, so it stays valid when the folder is renamed into place): the first run starts training at once,
    and runs started side by side do not each decode the same 60,000 files."""
    from s10.data import DataError, load_dataset

    print("decoding the images once into the trainer's cache (.s10-cache)")
    try:
        load_dataset(str(folder))
    except DataError as err:
        raise FetchError(str(err)) from None


def fetch(target: Path, archive: Path) -> str:
    marker = target.with_name(target.name + ".sha256")
    stamp = marker.read_text().strip() if marker.is_file() else None
    if archive.is_file():
        want = sha256(archive)
        if target.is_dir() and stamp == want:
            return f"{target} is unpacked from {archive}"
    elif target.is_dir():
        return (f"{target} kept as it is: there is no archive at {archive} to check it against (remove the folder to "
                "download the data set afresh)")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}-new-") as work:
        if archive.is_file():
            print(f"unpacking {archive} into {target}")
            new, stamp = unpack(archive, Path(work)), want
        else:
            print(f"no offline archive at {archive}: downloading CIFAR-10 through torchvision into {target}")
            new, stamp = download(target.parent / "downloads", Path(work)), f"download {source()[1]}"
        decode(new)
        replace(target, new)
    marker.write_text(stamp + "\n")
    return f"{target} is ready"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m s10.cifar10", description=__doc__.splitlines()[0])
    p.add_argument("folder", type=Path, help="where the class folders go (.data/cifar10)")
    p.add_argument("--archive", type=Path, required=True, help="the offline archive, used where it exists")
    args = p.parse_args(argv)
    try:
        print(fetch(args.folder, args.archive))
    except FetchError as err:
        print(f"make data: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("make data: interrupted; nothing was replaced", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
