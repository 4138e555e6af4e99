import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
CIFAR = ROOT / ".data" / "cifar10"  # `make data` unpacks the offline copy here


def make_tree(root: Path, classes=("cat", "dog", "ship"), n_train=24, n_test=7, seed=0, learnable=True) -> Path:
    """A tiny class-folder tree. Learnable: each class has its own mean colour plus noise; else pure noise."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        for k, c in enumerate(classes):
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                base = np.zeros((32, 32, 3)) + (60 + 70 * k if learnable else rng.integers(40, 200))
                img = np.clip(base + rng.normal(0, 30, base.shape), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(root / split / c / f"{i:03d}.png")
    return root


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    # 3 classes x 7 = 21 test images: odd, so an uneven split across 2 ranks shows.
    return make_tree(tmp_path_factory.mktemp("tiny"))


def run_train(*args, timeout=300, launcher=None, env=None) -> subprocess.CompletedProcess:
    """Run the real entry point, as a user would."""
    cmd = (launcher or [sys.executable]) + [str(ROOT / "fabric_train.py"), *map(str, args)]
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=full_env)


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc
