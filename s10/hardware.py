"""What machine this is: the CPU's name, vendor, family, nominal clock and flags (from /proc/cpuinfo), read in one
place for the trainer's defaults and provenance and for the benchmarks' headers; the device and default precision
a run gets, and whether another launcher started its processes."""

from __future__ import annotations

import functools
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path

import torch

BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # native bf16 arithmetic on a CPU
SHOWN_FLAGS = ("avx2", "avx512f", *BF16_FLAGS)  # the flags that decide precision and speed here


@dataclass(frozen=True)
class Cpu:
    name: str = "unknown"  # "model name"
    vendor: str = ""  # "vendor_id", e.g. AuthenticAMD
    family: int | None = None  # "cpu family", e.g. 25 for Zen 3 and 4
    mhz: float | None = None  # "cpu MHz" of the first core: the nominal clock, not the boost
    flags: frozenset[str] = field(default_factory=frozenset)

    @property
    def native_bf16(self) -> bool:
        return bool(self.flags & set(BF16_FLAGS))

    @property
    def fast_bf16(self) -> bool:
        """bf16 autocast trains faster than float32 here, by the CPUs measured (docs/speed.md, "Precision by CPU"):
        with AMX tiles, and with AVX512-BF16 on AMD (Zen 4 and newer); Intel's AVX512-BF16 without AMX, the same
        oneDNN kernels, ran slower than its float32 ones."""
        return "amx_bf16" in self.flags or ("avx512_bf16" in self.flags and self.vendor == "AuthenticAMD")

    @classmethod
    def from_row(cls, row: dict) -> "Cpu":
        """The CPU of a row of bench/results/train_precision_by_cpu.json (name, vendor, family, flags)."""
        return cls(name=row["name"], vendor=row["vendor"], family=row["family"], flags=frozenset(row["flags"]))

    def describe(self) -> str:
        """One line for a benchmark's or a run's header: name, cores, the flags that matter."""
        shown = [f for f in SHOWN_FLAGS if f in self.flags]
        return f"{self.name}, {os.cpu_count()} cores, flags {' '.join(shown) or 'none of ' + '/'.join(SHOWN_FLAGS)}"


@functools.lru_cache(maxsize=None)
def cpu() -> Cpu:
    values: dict = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = (s.strip() for s in line.partition(":"))
            if key == "model name":
                values.setdefault("name", value)
            elif key == "vendor_id":
                values.setdefault("vendor", value)
            elif key == "cpu family":
                values.setdefault("family", int(value))
            elif key == "cpu MHz":
                values.setdefault("mhz", float(value))
            elif key == "flags":
                values.setdefault("flags", frozenset(value.split()))
    except (OSError, ValueError):
        pass
    values.setdefault("name", platform.processor() or platform.machine() or "unknown")
    return Cpu(**values)


def default_precision(device_type: str) -> str:
    """The faster precision the device trains in: bf16-mixed where it computes in bf16 natively and fast, else
    16-mixed on a GPU and 32-true on a CPU.

    GPU: `is_bf16_supported(including_emulation=False)` (Ampere and newer); a T4 or V100 only emulates bf16 and gets
    16-mixed. CPU: `Cpu.fast_bf16`, a rule from the flags and the vendor that tests/test_train.py checks against every
    CPU in bench/results/train_precision_by_cpu.json; without native bf16, autocast is emulated and much slower than
    float32. bench/train_throughput.py measures both on the machine at hand and adds it to that table; `--precision`
    overrides."""
    if device_type == "cuda":
        return "bf16-mixed" if torch.cuda.is_bf16_supported(including_emulation=False) else "16-mixed"
    if device_type == "cpu":
        return "bf16-mixed" if cpu().fast_bf16 else "32-true"
    return "32-true"


def device_type(accelerator: str) -> str:
    """The device kind Fabric's accelerator choice gives (`fabric run` may set it in LT_ACCELERATOR), by Fabric's
    own rule for "auto" (TPU, then MPS, then CUDA, then CPU) and for "gpu" (MPS where there is one, else CUDA)."""
    from lightning.fabric.accelerators.mps import MPSAccelerator
    from lightning.fabric.utilities.device_parser import _select_auto_accelerator

    if accelerator == "auto":
        accelerator = os.environ.get("LT_ACCELERATOR", "auto")
    if accelerator == "auto":
        accelerator = _select_auto_accelerator()
    if accelerator == "gpu":
        accelerator = "mps" if MPSAccelerator.is_available() else "cuda"
    return accelerator


def launched_elsewhere() -> bool:
    """Processes started by `fabric run`, torchrun or SLURM (each node's, each rank's) rather than by this one."""
    return bool(os.environ.get("LT_CLI_USED") or os.environ.get("LOCAL_RANK") or os.environ.get("SLURM_NTASKS"))


# -- the trainer's flags ---------------------------------------------------------------------------------------------

PRECISIONS = ("32-true", "bf16-mixed", "16-mixed")  # the final evaluation and the saved weights need float32 weights
STRATEGIES = ("auto", "ddp")  # FSDP/DeepSpeed shard the weights and the optimizer: the loop assumes whole copies
ACCELERATORS = ("auto", "cpu", "cuda", "gpu", "mps")


def canonical_precision(value: str | None) -> str | None:
    """Fabric's name for a precision (aliases such as 'bf16' or '16' resolved), refused unless the trainer supports
    it: the -true precisions other than 32-true would hand float32 images to a bf16/fp16/fp64 network at the end."""
    from lightning.fabric.connector import _convert_precision_to_unified_args

    if value is None:
        return None
    try:
        name = _convert_precision_to_unified_args(value)
    except ValueError:
        name = value
    if name not in PRECISIONS:
        raise ValueError(f"--precision {value} is not supported: use one of {', '.join(PRECISIONS)}")
    return name


def parse_devices(value: str):
    if value == "auto":
        return "auto"
    try:
        return int(value)
    except ValueError:
        pass
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--devices must be 'auto', a count or a comma list of ids, got {value!r}") from None
