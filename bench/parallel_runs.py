"""Runs side by side, as `make test`'s workers run them: OpenMP threads per process at PyTorch's default (every core)
against each process's share of the cores (what tests/conftest.py sets). One smoke run of fabric_train.py per
worker, all started at once; rounds alternate between the two settings; the median wall time of each.

    python bench/parallel_runs.py                 # as many runs at once as pytest-xdist workers in `make test` (2)
    python bench/parallel_runs.py --runs 2 --rounds 3

Prints the machine, both medians and their ratio. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def tiny_tree(root: Path, classes=("cat", "dog", "ship"), n=24) -> Path:
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for k, c in enumerate(classes):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                img = np.clip(60 + 70 * k + rng.normal(0, 30, (32, 32, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(root / split / c / f"{i:03d}.png")
    return root


def side_by_side(data: Path, out: Path, runs: int, threads: int) -> float:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(threads), "CUDA_VISIBLE_DEVICES": ""}
    t0 = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, str(ROOT / "fabric_train.py"), "--data", str(data), "--out",
                               str(out / f"{threads}-{time.time_ns()}-{k}"), "--smoke", "--batch-size", "16",
                               "--epochs", "2", "--no-progress-bar", "--no-checkpoint"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for k in range(runs)]
    for proc in procs:
        _, err = proc.communicate()
        if proc.returncode:
            sys.exit(f"a run failed (exit {proc.returncode}): {err[-2000:]}")
    return time.perf_counter() - t0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=2, help="runs at once (make test's pytest-xdist workers)")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    from s10 import hardware

    cores = len(os.sched_getaffinity(0))
    settings = {"default": cores, "shared": max(1, cores // args.runs)}
    times = {name: [] for name in settings}
    with tempfile.TemporaryDirectory() as tmp:
        data = tiny_tree(Path(tmp) / "data")
        side_by_side(data, Path(tmp), args.runs, 1)  # warm the file cache and the imports' .pyc files
        for _ in range(args.rounds):
            for name, threads in settings.items():
                times[name].append(side_by_side(data, Path(tmp), args.runs, threads))
    cpu = hardware.cpu()
    print(f"{cpu.name} ({cores} cores available), {args.runs} smoke runs at once, {args.rounds} rounds")
    for name, threads in settings.items():
        print(f"  {threads} OpenMP thread(s) per run ({name}): median {statistics.median(times[name]):.1f} s "
              f"(rounds: {', '.join(f'{t:.1f}' for t in times[name])})")
    ratio = statistics.median(times["default"]) / statistics.median(times["shared"])
    print(f"  the share of the cores is {ratio:.2f}x as fast as the default")
    return 0


if __name__ == "__main__":
    sys.exit(main())
