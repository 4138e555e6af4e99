import pickle

import numpy as np
import pytest
import torch

from s10.data import (DataError, Split, augment, augmented_batches, epoch_generators, load_dataset, shard,
                      train_batches)

IDENTITY = ([0.0] * 3, [1 / 255] * 3)  # normalisation that leaves pixel values as they are


def batch(n=256, seed=0):
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_augment_shape_dtype_and_device():
    x = augment(batch(8), [0.5] * 3, [0.25] * 3, epoch_generators(0, 1, 0, "cpu")[1])
    assert x.shape == (8, 3, 32, 32) and x.dtype == torch.float32


def test_crops_are_translations_of_the_padded_image_and_flips_about_half():
    images = batch(256)
    out = augment(images, *IDENTITY, epoch_generators(0, 1, 0, "cpu")[1], cutout=0)
    padded = torch.nn.functional.pad(images, (4,) * 4, mode="reflect").float()
    flipped = 0
    for img, pad in zip(out, padded):
        windows = [pad[:, dy:dy + 32, dx:dx + 32] for dy in range(9) for dx in range(9)]
        plain = any(torch.equal(img, w) for w in windows)
        mirror = any(torch.equal(img, w.flip(-1)) for w in windows)
        assert plain or mirror, "an output is not a crop of the padded image"
        flipped += mirror and not plain
    assert 90 < flipped < 166  # Binomial(256, 0.5): mean 128, sd 8; the bounds are ~4.7 sd out


def test_cutout_blanks_exactly_one_clipped_8x8_patch_per_image():
    images = torch.full((512, 3, 32, 32), 255, dtype=torch.uint8)
    out = augment(images, *IDENTITY, epoch_generators(0, 1, 0, "cpu")[1])  # crops/flips of a flat image stay flat
    seen_clipped = False
    for img in out:
        zero = img == 0
        assert torch.equal(zero[0], zero[1]) and torch.equal(zero[1], zero[2])  # all channels
        ys, xs = zero[0].nonzero(as_tuple=True)
        assert len(ys) > 0
        h, w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
        assert len(ys) == h * w, "the blanked pixels are not one rectangle"
        # 8 wide unless the patch was clipped by the image border.
        assert h == 8 or ys.min() == 0 or ys.max() == 31
        assert w == 8 or xs.min() == 0 or xs.max() == 31
        assert h <= 8 and w <= 8 and h >= 4 and w >= 4
        seen_clipped |= bool(h < 8 or w < 8)
        assert torch.all(img[~zero] == 255)
    assert seen_clipped


def test_train_batches_are_disjoint_shares_of_one_shuffle():
    split = Split(batch(103), torch.arange(103))
    shares = []
    for rank in range(2):
        shuffle, _ = epoch_generators(3, 1, rank, "cpu")
        shares.append(torch.cat([labels for _, labels in train_batches(split, 20, rank, 2, shuffle)]))
    assert len(shares[0]) == len(shares[1]) == 50  # 5 global batches of 20, the last 3 images dropped
    assert not set(shares[0].tolist()) & set(shares[1].tolist())


def test_each_rank_draws_its_own_augmentation_repeatably():
    """Same images on both ranks (one flat picture, so only the augmentation differs): the ranks' crops, flips and
    CutOuts differ, and a rank gets the same ones again for the same (seed, epoch) (what a resume relies on)."""
    split = Split(torch.arange(64 * 3 * 32 * 32, dtype=torch.int64).remainder(251).to(torch.uint8)
                  .view(64, 3, 32, 32)[:1].expand(64, -1, -1, -1).contiguous(), torch.zeros(64, dtype=torch.int64))

    def epoch(rank, seed=0, n=1):
        return torch.cat([x for x, _ in augmented_batches(split, 32, rank, 2, seed, n, IDENTITY[0], IDENTITY[1])])

    rank0, rank1 = epoch(0), epoch(1)
    assert rank0.shape == rank1.shape == (32, 3, 32, 32)
    differ = [not torch.equal(a, b) for a, b in zip(rank0, rank1)]
    assert sum(differ) >= 28, sum(differ)  # a collision needs the same crop, flip and CutOut square
    assert torch.equal(epoch(0), rank0) and torch.equal(epoch(1), rank1)
    assert not torch.equal(epoch(0, n=2), rank0) and not torch.equal(epoch(0, seed=1), rank0)


def test_test_shards_cover_without_padding():
    parts = [shard(21, r, 2) for r in range(2)]
    assert [p.stop - p.start for p in parts] == [10, 11] or [p.stop - p.start for p in parts] == [11, 10]
    assert parts[0].start == 0 and parts[0].stop == parts[1].start and parts[1].stop == 21


def test_class_folder_tree_decodes_and_caches(tiny_data):
    ds = load_dataset(str(tiny_data))
    assert ds.classes == ["cat", "dog", "ship"]
    assert ds.train.images.shape == (72, 3, 32, 32) and ds.train.images.dtype == torch.uint8
    assert ds.test.labels.tolist() == [0] * 7 + [1] * 7 + [2] * 7
    assert list((tiny_data / ".s10-cache").glob("train-*.safetensors"))
    again = load_dataset(str(tiny_data))
    assert torch.equal(again.train.images, ds.train.images)


def test_bad_trees(tmp_path):
    from tests.conftest import make_tree

    with pytest.raises(DataError, match="not a directory"):
        load_dataset(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="missing"):
        load_dataset(str(tmp_path / "empty"))
    make_tree(tmp_path / "differ", n_train=2, n_test=1)
    (tmp_path / "differ" / "test" / "ship").rename(tmp_path / "differ" / "test" / "boat")
    with pytest.raises(DataError, match="class folders differ"):
        load_dataset(str(tmp_path / "differ"))
    make_tree(tmp_path / "broken", n_train=2, n_test=1)
    (tmp_path / "broken" / "train" / "cat" / "000.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="not a readable image"):
        load_dataset(str(tmp_path / "broken"))


def test_torchvision_source_with_a_fake_download(tmp_path, monkeypatch):
    """torchvision's CIFAR10 reads a tiny fake of its pickled batches; its download and integrity check are
    replaced so nothing touches the network."""
    from torchvision.datasets import CIFAR10

    folder = tmp_path / "torchvision" / CIFAR10.base_folder
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, _ in CIFAR10.train_list + CIFAR10.test_list:
        data = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, "labels": [0, 1, 2, 9]}, f)
    with open(folder / CIFAR10.meta["filename"], "wb") as f:
        pickle.dump({"label_names": ["c%d" % i for i in range(10)]}, f)
    import torchvision.datasets.cifar as cifar

    monkeypatch.setattr(CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(cifar, "check_integrity", lambda path, md5=None: True)
    monkeypatch.setattr(CIFAR10, "download", lambda self: None)
    ds = load_dataset("cifar10", cache_dir=tmp_path)
    assert ds.train.images.shape == (20, 3, 32, 32) and ds.test.images.shape == (4, 3, 32, 32)
    assert ds.classes[0] == "airplane" and ds.test.labels.tolist() == [0, 1, 2, 9]


def test_torchvision_source_offline_is_a_clear_error(tmp_path, monkeypatch):
    from torchvision.datasets import CIFAR10

    def no_network(self):
        raise OSError("network unreachable")

    monkeypatch.setattr(CIFAR10, "download", no_network)
    with pytest.raises(DataError, match="cannot be downloaded"):
        load_dataset("cifar10", cache_dir=tmp_path)


def test_a_class_folder_tree_of_png_and_jpeg_files_loads_as_decoded(tmp_path):
    """Any class-folder data set: PNG and JPEG files (any suffix case) side by side, each decoded as PIL decodes it."""
    from PIL import Image

    rng = np.random.default_rng(0)
    expected = {}
    kinds = [("bird", ".png", "PNG"), ("cat", ".jpg", "JPEG"), ("dog", ".JPEG", "JPEG")]
    for split in ("train", "test"):
        for k, (c, suffix, fmt) in enumerate(kinds):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(3):
                path = tmp_path / split / c / f"{i}{suffix}"
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path, fmt)
                with Image.open(path) as im:
                    expected.setdefault(split, []).append((k, np.asarray(im.convert("RGB"))))
    ds = load_dataset(str(tmp_path))
    assert ds.classes == ["bird", "cat", "dog"]
    for split, data in (("train", ds.train), ("test", ds.test)):
        assert data.labels.tolist() == [k for k, _ in expected[split]]
        assert np.array_equal(data.images.permute(0, 2, 3, 1).numpy(), np.stack([a for _, a in expected[split]]))


# -- make data: the offline archive, else torchvision's download ------------------------------------------------------


def download_archive(path, per_batch=10):
    """An archive in the format of torchvision's CIFAR-10 download (cifar-10-batches-py/: five training batches, the
    test batch and batches.meta, pickled dicts of uint8 rows), built from a slice of the offline copy when there is
    one, else of seeded noise; the (train, test) images it holds, in file order, as (N, 32, 32, 3) arrays."""
    import io
    import tarfile

    from tests.conftest import CIFAR, CIFAR_NAMES

    rng = np.random.default_rng(0)
    real = load_dataset(str(CIFAR)) if CIFAR.is_dir() else None

    def take(split, n, offset):  # image j of a batch is of class j % 10: every class in every split
        labels = [j % 10 for j in range(n)]
        if real is None:
            return rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), labels
        part = getattr(real, split)
        index = [int((part.labels == c).nonzero()[offset + j, 0]) for j, c in enumerate(labels)]
        return part.images[index].numpy(), labels

    members, held = {}, {"train": [], "test": []}
    for k, (name, split) in enumerate([(f"data_batch_{i}", "train") for i in range(1, 6)] + [("test_batch", "test")]):
        images, labels = take(split, per_batch, k * per_batch)
        members[name] = {b"batch_label": name.encode(), b"labels": labels, b"data": images.reshape(len(images), -1)}
        held[split] += list(zip(images.transpose(0, 2, 3, 1), labels))
    members["batches.meta"] = {b"label_names": [c.encode() for c in CIFAR_NAMES], b"num_vis": 3072}
    with tarfile.open(path, "w:gz") as tar:
        for name, content in members.items():
            blob = pickle.dumps(content, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return held


class LoopbackServer:
    """A plain HTTP server on 127.0.0.1 serving one folder, in a thread; counts the requests."""

    def __init__(self, folder):
        import functools
        import http.server
        import threading

        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self):
                server.requests += 1
                return super().do_GET()

            def log_message(self, *args):
                pass

        self.requests = 0
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(folder)))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def make_data(data, shared, env=None):
    import os
    import subprocess

    from tests.conftest import ROOT

    return subprocess.run(["make", "--no-print-directory", "data", f"DATA={data}", f"SHARED={shared}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, env={**os.environ, **(env or {})})


def test_make_data_without_the_offline_copy_downloads_cifar10_into_class_folders(tmp_path):
    """A clone with no ../shared: `make data` (the target itself) downloads the archive from the (here loopback)
    server, checks its MD5, and writes the class folders the trainer reads, every pixel as served, their images
    decoded once into the trainer's cache; run again, it keeps the folder and fetches nothing."""
    import hashlib

    from PIL import Image

    from tests.conftest import CIFAR_NAMES

    served = tmp_path / "served"
    served.mkdir()
    held = download_archive(served / "cifar-10-python.tar.gz")
    md5 = hashlib.md5((served / "cifar-10-python.tar.gz").read_bytes()).hexdigest()
    server = LoopbackServer(served)
    try:
        env = {"S10_CIFAR10_URL": f"{server.url}/cifar-10-python.tar.gz", "S10_CIFAR10_MD5": md5}
        data = tmp_path / "clone" / ".data" / "cifar10"
        proc = make_data(data, tmp_path / "no-shared", env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "downloading CIFAR-10 through torchvision" in proc.stdout and server.requests
        requests = server.requests  # torchvision asks once for redirects, then downloads
        assert sorted(p.name for p in (data / "train").iterdir()) == list(CIFAR_NAMES)
        cached = sorted(p.name.split("-")[0] for p in (data / ".s10-cache").iterdir())
        assert cached == ["test", "train"] and "decoding the images once" in proc.stdout
        dataset = load_dataset(str(data))  # what the trainer reads: the cache, keyed by the files it was made from
        assert (len(dataset.train), len(dataset.test), dataset.classes) == (50, 10, list(CIFAR_NAMES))
        assert len(list((data / ".s10-cache").iterdir())) == 2  # read, not decoded again under another key
        for split, width in (("train", 5), ("test", 4)):
            for i, (image, label) in enumerate(held[split]):
                path = data / split / CIFAR_NAMES[label] / f"{i:0{width}d}.png"
                assert np.array_equal(np.asarray(Image.open(path)), image), path
        again = make_data(data, tmp_path / "no-shared", env)
        assert again.returncode == 0 and "kept as it is" in again.stdout and server.requests == requests
    finally:
        server.close()


def test_make_data_never_removes_a_folder_it_cannot_replace(tmp_path):
    """An unpacked folder and its stamp, no archive (../shared moved) and no server: `make data` keeps the folder
    and succeeds. With no folder either, it fails in one line, leaving nothing half-made; a corrupt archive leaves
    the folder it would have replaced as it was."""
    data = tmp_path / ".data" / "cifar10"
    (data / "train" / "cat").mkdir(parents=True)
    (data / "train" / "cat" / "0.png").write_bytes(b"kept")
    data.with_name("cifar10.sha256").write_text("an earlier archive\n")
    offline = {"S10_CIFAR10_URL": "http://127.0.0.1:9/cifar-10-python.tar.gz"}  # port 9 (discard): refused
    proc = make_data(data, tmp_path / "moved", offline)
    assert proc.returncode == 0, proc.stderr
    assert "kept as it is" in proc.stdout and (data / "train" / "cat" / "0.png").read_bytes() == b"kept"

    corrupt = tmp_path / "shared" / "data" / "cifar10-imagefolder.tar.gz"
    corrupt.parent.mkdir(parents=True)
    corrupt.write_bytes(b"not a tar file")
    proc = make_data(data, tmp_path / "shared", offline)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and any("cannot be unpacked" in line for line in err), proc.stderr
    assert "Traceback" not in proc.stderr and (data / "train" / "cat" / "0.png").read_bytes() == b"kept"

    empty = tmp_path / "fresh" / ".data" / "cifar10"
    proc = make_data(empty, tmp_path / "moved", offline)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert any(line.startswith("make data: error: cannot download CIFAR-10") for line in proc.stderr.splitlines())
    assert not empty.exists() and list(empty.parent.iterdir()) in ([], [empty.parent / "downloads"])
