"""Training throughput: our loop against a plain DataLoader loop, per precision, in one process; FLOPs and the
fraction of the device's peak.

    python bench/train_throughput.py --data .data/cifar10                       # 32-true and bf16-mixed
    python bench/train_throughput.py --data .data/cifar10 --precision bf16-mixed --compile --steps 20

Ours: `fabric_train.train_epoch` itself (the uint8 data set on the device, `s10.data.augment` on whole batches, the
LightningModule's training_step under Fabric's autocast). Baseline, the way most S10 notebooks train: a DataLoader
(2 workers) over PIL images with torchvision's per-sample transforms (reflect-pad 4 + RandomCrop 32, flip, ToTensor,
Normalize, an 8x8 erase) and a plain PyTorch loop under `torch.autocast` for the same precision. Both train the same
S10 net (channels_last, Adam, batch 512); rounds alternate between them and the median is reported.

Prints, per precision: images/s of each and their ratio; FLOPs per training image (forward + backward, counted by
torch.utils.flop_counter, a multiply-add = 2 FLOPs); achieved TFLOP/s and the fraction of the device's peak; and
bf16-mixed against 32-true. The peak: on a GPU, from a table of dense tensor-core figures by device name; on a CPU,
cores x clock x FLOPs per cycle, with FLOPs per cycle = 2 FMA pipes x (SIMD datapath / 32 bits) x 2 (a multiply-add),
x 2 for bf16 with AVX512-BF16 (a pair of bf16 products per fp32 lane). The datapath is 512 bits with AVX-512, except
on AMD Zen 4 (family 25), which runs AVX-512 on 256-bit units; 256 bits with AVX2. bf16-mixed on a CPU with AMX
tiles: oneDNN runs the convolutions there (`avx10_1_512_amx` kernels in `ONEDNN_VERBOSE=1`), so the peak is the tile
unit's, 1024 bf16 FLOPs per cycle and core (one 16x16x32 tile multiply-add, 8,192 multiply-adds, every 16 cycles).
The clock is measured, not read: /proc/cpuinfo (and a VM's) shows the nominal clock, while the cores boost above it, so a
chain of dependent integer adds (one per cycle) is timed on every core at once, compiled with the system's C compiler
(the nominal clock is used when there is none).

Measured figures and the hardware: docs/speed.md, written by bench/render.py from
bench/results/train_throughput.json.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from s10 import hardware  # noqa: E402

# Dense peak TFLOP/s by GPU name fragment: (32-true as run, i.e. TF32 tensor cores where cuDNN uses them, bf16/fp16).
GPU_PEAK_TFLOPS = {
    "H200": (494.7, 989.4), "H100": (494.7, 989.4), "A100": (156.0, 312.0), "L40S": (183.0, 362.0),
    "L4": (60.0, 121.0), "A10": (62.5, 125.0), "RTX 4090": (82.6, 165.2), "RTX 3090": (35.6, 71.0),
    "V100": (15.7, 125.0), "T4": (8.1, 65.0),
}


class Cutout:
    """Blank one 8x8 square (clipped at the border) of a normalised (3, H, W) tensor, per sample."""

    def __init__(self, size: int = 8):
        self.size = size

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        cy, cx = np.random.randint(h), np.random.randint(w)
        y0, y1 = max(0, cy - self.size // 2), min(h, cy + self.size // 2)
        x0, x1 = max(0, cx - self.size // 2), min(w, cx + self.size // 2)
        x[:, y0:y1, x0:x1] = 0
        return x


class PILDataset(torch.utils.data.Dataset):
    """What torchvision's CIFAR10 does per item: a PIL image from the uint8 array, then the transforms."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def baseline_loader(split, mean, std, batch_size):
    from torchvision import transforms as T

    transform = T.Compose([T.RandomCrop(32, padding=4, padding_mode="reflect"), T.RandomHorizontalFlip(),
                           T.ToTensor(), T.Normalize(mean, std), Cutout(8)])
    ds = PILDataset(split.images.permute(0, 2, 3, 1).numpy(), split.labels.numpy(), transform)
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=2, drop_last=True,
                                       persistent_workers=True)


# -- FLOPs and peak --------------------------------------------------------------------------------------------------


def training_flops_per_image(batch: int = 8) -> float:
    """Forward + backward FLOPs of one S10 training image (32x32)."""
    from torch.utils.flop_counter import FlopCounterMode

    from s10.model import S10Net

    net = S10Net()
    x = torch.randn(batch, 3, 32, 32)
    with FlopCounterMode(display=False) as counter:
        torch.nn.functional.cross_entropy(net(x), torch.zeros(batch, dtype=torch.int64)).backward()
    return counter.get_total_flops() / batch


CLOCK_C = r"""
#include <stdio.h>
#include <time.h>
int main(void) {
    struct timespec a, b; long x = 0, one = 1; const long n = 100000000;
    clock_gettime(CLOCK_MONOTONIC, &a);
    /* 8 dependent register adds: 8 cycles per iteration. Not add-immediate: newer Intel cores fold chains of those
       in the renamer and run more than one a cycle, which would read as twice the clock. */
    for (long i = 0; i < n; i++)
        __asm__ volatile("add %1,%0\n\tadd %1,%0\n\tadd %1,%0\n\tadd %1,%0\n\t"
                         "add %1,%0\n\tadd %1,%0\n\tadd %1,%0\n\tadd %1,%0" : "+r"(x) : "r"(one));
    clock_gettime(CLOCK_MONOTONIC, &b);
    printf("%f\n", 8.0 * n / ((b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) * 1e-9) / 1e9);
    return x == 0;
}
"""


def measured_ghz(cores: int, tries: int = 5) -> float | None:
    """The all-core clock in GHz, from timed dependent adds on every core at once (the slowest core of a try), the
    best of `tries` tries: a try that another process interrupted reads low. None without an x86 C compiler."""
    import platform
    import shutil
    import subprocess
    import tempfile

    compiler = shutil.which("cc") or shutil.which("gcc")
    if not compiler or platform.machine() not in ("x86_64", "AMD64"):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        src, exe = Path(tmp) / "clock.c", Path(tmp) / "clock"
        src.write_text(CLOCK_C)
        if subprocess.run([compiler, "-O1", "-o", str(exe), str(src)], capture_output=True).returncode:
            return None
        readings = []
        for _ in range(tries):
            procs = [subprocess.Popen([str(exe)], stdout=subprocess.PIPE, text=True) for _ in range(cores)]
            readings.append(min(float(p.communicate()[0]) for p in procs))
        return max(readings)


def cpu_peak_tflops(precision: str, info: hardware.Cpu, cores: int, ghz: float) -> tuple[float, str]:
    flags = info.flags
    if "avx512f" in flags:
        width = 256 if info.vendor == "AuthenticAMD" and info.family == 25 else 512
    else:
        width = 256 if "avx2" in flags else 128
    per_cycle = 2 * (width // 32) * 2
    unit = f"{width}-bit datapath, 2 FMA pipes"
    if precision == "bf16-mixed" and "amx_bf16" in flags:
        per_cycle, unit = 1024, "AMX tile unit: a 16x16x32 bf16 multiply-add every 16 cycles"
    elif precision == "bf16-mixed" and "avx512_bf16" in flags:
        per_cycle *= 2
    rule = f"{cores} cores x {ghz:.2f} GHz x {per_cycle} FLOPs/cycle ({unit})"
    return cores * ghz * per_cycle / 1e3, rule


def gpu_peak_tflops(precision: str, name: str) -> tuple[float | None, str]:
    for fragment, (fp32, half) in GPU_PEAK_TFLOPS.items():
        if fragment in name:
            return (fp32 if precision == "32-true" else half), f"{name}: table entry '{fragment}'"
    return None, f"{name}: not in the table"


# -- the two loops ---------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    from lightning.fabric import Fabric

    import fabric_train
    from s10.data import load_dataset
    from s10.model import CIFAR10_MEAN, CIFAR10_STD, S10Net
    from s10.module import Recipe, S10Module

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=".data/cifar10")
    p.add_argument("--precision", nargs="+", default=["32-true", "bf16-mixed"], choices=fabric_train.PRECISIONS)
    p.add_argument("--compile", action="store_true", help="torch.compile both networks (compilation not timed)")
    p.add_argument("--accelerator", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--steps", type=int, default=6, help="timed training steps per loop and round")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--cpu-ghz", type=float, help="clock for the CPU peak (default: measured)")
    p.add_argument("--json", type=Path, help="write the results here (bench/results/train_throughput.json, which "
                   "bench/render.py puts into docs/speed.md)")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    data = load_dataset(args.data)
    bs, steps = args.batch_size, args.steps
    accelerator = args.accelerator if args.accelerator != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    info = hardware.cpu()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    ghz = args.cpu_ghz or (measured_ghz(cores) if accelerator == "cpu" else None) or (info.mhz or 0) / 1e3
    device_name = torch.cuda.get_device_name(0) if accelerator == "cuda" else f"CPU {info.name}"
    print(f"{device_name}; torch {torch.__version__}, {torch.get_num_threads()} threads, batch {bs}, "
          f"{steps} steps x {args.rounds} rounds, compile {args.compile}")
    if accelerator == "cpu":
        print(f"CPU flags: avx2 {'avx2' in info.flags}, avx512f {'avx512f' in info.flags}, "
              f"avx512_bf16 {'avx512_bf16' in info.flags}, amx_bf16 {'amx_bf16' in info.flags}; "
              f"{cores} cores at {ghz:.2f} GHz measured (/proc/cpuinfo: {(info.mhz or 0) / 1e3:.2f} GHz)")
    flops = training_flops_per_image()
    print(f"FLOPs per training image (forward + backward): {flops / 1e9:.3f} GFLOP")

    loader = baseline_loader(data.train, CIFAR10_MEAN, CIFAR10_STD, bs)
    base_iter = (batch for _ in itertools.count() for batch in loader)  # epoch after epoch: a small set runs out
    ours_rate, rows = {}, []
    for precision in args.precision:
        fabric = Fabric(accelerator=accelerator, devices=1, precision=precision)
        if accelerator == "cuda":
            torch.backends.cudnn.benchmark = True
        train = data.train.to(fabric.device)
        recipe = Recipe(epochs=1000, batch_size=bs)  # a long schedule: the benchmark never runs off its end
        module = S10Module(recipe=recipe, steps_per_epoch=steps).to(memory_format=torch.channels_last)
        if args.compile:
            module.net.compile()
        opt_config = module.configure_optimizers()
        model, optimizer = fabric.setup(module, opt_config["optimizer"])
        scheduler = opt_config["lr_scheduler"]["scheduler"]
        plain = fabric.to_device(S10Net()).to(memory_format=torch.channels_last)
        if args.compile:
            plain.compile()
        plain_opt = torch.optim.Adam(plain.parameters(), lr=1e-4, weight_decay=1e-4, fused=True)  # as the trainer's
        dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
        scaler = torch.amp.GradScaler(enabled=precision == "16-mixed")
        mean, std = (torch.tensor(v, device=fabric.device) for v in (CIFAR10_MEAN, CIFAR10_STD))  # as the trainer's
        subset = train.subset(torch.arange(steps * bs, device=fabric.device))
        warm = train.subset(torch.arange(2 * bs, device=fabric.device))

        def ours(part, epoch):
            run = fabric_train.Run(fabric, args, recipe, code={}, train=part, module=module, model=model,
                                   optimizer=optimizer, scheduler=scheduler, mean=mean, std=std)
            return len(part) / fabric_train.train_epoch(run, epoch)[1]

        def baseline(n):
            plain.train()
            t = time.perf_counter()
            for _ in range(n):
                x, y = next(base_iter)
                x, y = fabric.to_device((x.contiguous(memory_format=torch.channels_last), y))
                with torch.autocast(fabric.device.type, dtype=dtype, enabled=dtype is not None):
                    loss = torch.nn.functional.cross_entropy(plain(x).float(), y, label_smoothing=0.1)
                plain_opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(plain_opt)
                scaler.update()
            if fabric.device.type == "cuda":
                torch.cuda.synchronize()
            return n * bs / (time.perf_counter() - t)

        ours(warm, 0), baseline(2)  # warm-up: allocation, oneDNN/cuDNN kernel choice, compilation
        rates = {"ours": [], "baseline": []}
        for r in range(args.rounds):
            rates["baseline"].append(baseline(steps))
            rates["ours"].append(ours(subset, r + 1))
            print(f"  {precision} round {r + 1}: ours {rates['ours'][-1]:.1f} img/s, "
                  f"baseline {rates['baseline'][-1]:.1f} img/s")
        o, b = np.median(rates["ours"]), np.median(rates["baseline"])
        ours_rate[precision] = o
        if accelerator == "cpu":
            peak, rule = cpu_peak_tflops(precision, info, cores, ghz)
        else:
            peak, rule = gpu_peak_tflops(precision, device_name)
        achieved = o * flops / 1e12
        share = (f"{100 * achieved / peak:.1f} % of peak {peak:.2f} TFLOP/s ({rule})" if peak
                 else f"peak unknown ({rule})")
        print(f"{precision}: ours {o:.1f} img/s, baseline {b:.1f} img/s -> ratio {o / b:.2f}; "
              f"ours {achieved:.3f} TFLOP/s = {share}")
        rows.append({"precision": precision, "ours": round(float(o), 1), "baseline": round(float(b), 1),
                     "ratio": round(float(o / b), 2), "achieved_tflops": round(achieved, 3),
                     "peak_tflops": round(peak, 3) if peak else None, "peak_rule": rule})
    speedup = None
    if "32-true" in ours_rate and "bf16-mixed" in ours_rate:
        speedup = round(float(ours_rate["bf16-mixed"] / ours_rate["32-true"]), 2)
        print(f"bf16-mixed / 32-true (ours): {speedup:.2f}x")
    if args.json:
        import json

        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "device": device_name, "machine": info.describe() if accelerator == "cpu" else device_name,
            "torch": torch.__version__, "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d"),
            "batch": bs, "steps": steps, "rounds": args.rounds, "compile": args.compile, "cores": cores,
            "ghz_measured": round(ghz, 2) if ghz else None, "ghz_cpuinfo": round((info.mhz or 0) / 1e3, 2),
            "gflop_per_image": round(flops / 1e9, 3), "rows": rows, "bf16_speedup": speedup}, indent=1) + "\n")
        print(f"wrote {args.json}")
        if accelerator == "cpu" and speedup is not None:
            table = args.json.with_name("train_precision_by_cpu.json")
            record_cpu(table, info, {r["precision"]: r["ours"] for r in rows}, torch.__version__)
            print(f"wrote this CPU's row of {table}")


def cpu_kind(row: dict) -> tuple:
    return row["name"], row["vendor"], row["family"], row["flags"]


def record_cpu(path: Path, info: hardware.Cpu, rates: dict, torch_version: str) -> None:
    """Add (or replace) this CPU's row in the table of bf16-mixed against 32-true by CPU, which tests/test_train.py
    holds `hardware.default_precision`'s rule to: one row per CPU kind (name, vendor, family, the flags that matter)."""
    import json

    flags = sorted(f for f in hardware.SHOWN_FLAGS if f in info.flags)
    row = {"name": info.name, "vendor": info.vendor, "family": info.family, "flags": flags,
           "images_per_s": {k: rates[k] for k in ("32-true", "bf16-mixed")}, "torch": torch_version, "date": time.strftime("%Y-%m-%d")}
    rows = json.loads(path.read_text())["cpus"] if path.exists() else []
    rows = [r for r in rows if cpu_kind(r) != cpu_kind(row)] + [row]
    path.write_text(json.dumps({"command": "python bench/train_throughput.py --data .data/cifar10 --json "
                                "bench/results/train_throughput.json (32-true and bf16-mixed; each CPU its own run)",
                                "cpus": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
