"""The memory budget: how many bytes of models crew may keep resident, and why that number.

Ollama on Apple Silicon treats Metal's recommended working set (about 75% of RAM on large
Macs, 2/3 on small ones, or `iogpu.wired_limit_mb` when raised) as its VRAM. Elsewhere crew
cannot see a GPU without vendor tools, so it takes NVIDIA's total when `nvidia-smi` answers,
else 75% of RAM (Ollama runs on the CPU there and the OS needs the rest).
"""

from __future__ import annotations

import platform
import shutil
import subprocess
from dataclasses import dataclass

import psutil

GB = 1_000_000_000
GIB = 1 << 30
# Apple lets the GPU wire about 75% of RAM above 36 GiB and about 2/3 below.
_MAC_LARGE_RAM = 36 * GIB


@dataclass(frozen=True)
class MemoryBudget:
    """A budget in bytes and a sentence saying where it came from."""

    bytes: int
    source: str
    machine: int = 0
    """The machine's memory (RAM; unified memory on Apple Silicon); 0 if unknown. A model over
    the budget but within this can still run, split between GPU and CPU."""
    apple_gpu: bool = False
    """Apple Silicon: the budget is the GPU working set, which `iogpu.wired_limit_mb` raises."""

    @property
    def gb(self) -> float:
        return self.bytes / GB


def resolve_budget(budget_gb: float | None) -> MemoryBudget:
    """The configured budget if set, else one read from this machine."""
    if budget_gb is not None:
        return MemoryBudget(int(budget_gb * GB), "CREW_MEMORY_BUDGET_GB", machine_memory(), _apple_silicon())
    return detect_budget()


def machine_memory() -> int:
    """The machine's RAM in bytes (on Apple Silicon, the memory CPU and GPU share)."""
    return int(psutil.virtual_memory().total)


def detect_budget() -> MemoryBudget:
    total = machine_memory()
    if _apple_silicon():
        return _mac_budget(total)
    nvidia = _nvidia_total()
    if nvidia:
        return MemoryBudget(nvidia, "total VRAM reported by nvidia-smi", total)
    return MemoryBudget(int(total * 0.75), f"75% of {total / GB:.0f} GB RAM (no GPU seen)", total)


def _apple_silicon() -> bool:
    return platform.system() == "Darwin" and platform.machine() == "arm64"


def _mac_budget(total: int) -> MemoryBudget:
    wired = _sysctl_int("iogpu.wired_limit_mb")
    if wired:
        return MemoryBudget(wired * (1 << 20), "iogpu.wired_limit_mb (raised GPU working set)", total, True)
    share = 0.75 if total >= _MAC_LARGE_RAM else 2 / 3
    return MemoryBudget(
        int(total * share),
        f"macOS GPU working set (~{share:.0%} of {total / GB:.0f} GB RAM; "
        "`sudo sysctl iogpu.wired_limit_mb=N` raises it)",
        total, True,
    )


def _sysctl_int(name: str) -> int:
    try:
        out = subprocess.run(
            ["sysctl", "-n", name], capture_output=True, text=True, timeout=2, check=False
        ).stdout.strip()
        return int(out or 0)
    except (OSError, ValueError, subprocess.SubprocessError):
        return 0


def _nvidia_total() -> int:
    exe = shutil.which("nvidia-smi")
    if not exe:
        return 0
    try:
        out = subprocess.run(
            [exe, "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=5, check=False,
        ).stdout
        return sum(int(line) for line in out.split() if line.strip().isdigit()) * (1 << 20)
    except (OSError, ValueError, subprocess.SubprocessError):
        return 0
