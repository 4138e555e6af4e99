"""What machine this is: the CPU's name, vendor, family, nominal clock and flags (from /proc/cpuinfo), read in one
place for the trainer's defaults and provenance and for the benchmarks' headers."""

from __future__ import annotations

import functools
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path

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
