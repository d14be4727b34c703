"""What to tell a person whose model does not fit the budget: only fixes that would work, with
the numbers that make them work (the num_ctx that fits, the `iogpu.wired_limit_mb` to set)."""

from __future__ import annotations

import math

from crew.backends.base import ModelFacts
from crew.residency.budget import GB, MemoryBudget

MIB = 1 << 20
# No context smaller than this is worth suggesting: a role's system prompt and tools alone
# take a few thousand tokens.
MIN_USEFUL_NUM_CTX = 4096
# What macOS itself needs when the GPU may wire the rest (Apple's own default leaves a quarter).
MAC_OS_RESERVE = 8 * GB


def fitting_num_ctx(facts: ModelFacts, room: int, *, minimum: int = MIN_USEFUL_NUM_CTX) -> int | None:
    """The largest num_ctx (a multiple of 1024, at least `minimum`) at which the model is
    estimated to fit in `room` bytes; None when none does (the weights alone are too big)."""
    low, high = 0, facts.context_length or 262144
    while low < high:
        mid = (low + high + 1) // 2
        if facts.estimate_size({"num_ctx": mid}) <= room:
            low = mid
        else:
            high = mid - 1
    fitting = (low // 1024) * 1024
    return fitting if fitting >= max(minimum, 1024) else None


def wired_limit_mb(need: int, budget: MemoryBudget) -> int | None:
    """The `iogpu.wired_limit_mb` that lets a model of `need` bytes on an Apple GPU, if the Mac
    can spare that much and still leave macOS its share; else None."""
    if not budget.apple_gpu or not budget.machine:
        return None
    mb = math.ceil(need / MIB / 256) * 256
    return mb if mb * MIB <= budget.machine - MAC_OS_RESERVE else None


def fixes(need: int, facts: ModelFacts | None, budget: MemoryBudget, num_ctx_setting: str) -> list[str]:
    """The fixes that would make a model of `need` bytes fit the budget, best first."""
    found: list[str] = []
    limit = wired_limit_mb(need, budget)
    if limit is not None:
        found.append(f"`sudo sysctl iogpu.wired_limit_mb={limit}` (lets the GPU use "
                     f"{limit * MIB / GB:.1f} GB; until the next restart)")
    ctx = fitting_num_ctx(facts, budget.bytes) if facts is not None else None
    if ctx is not None:
        found.append(f"set {num_ctx_setting}={ctx}")
    found.append("choose a smaller model (or quantization) for the role")
    return found


def offload_notice(model: str, need: int, facts: ModelFacts | None, budget: MemoryBudget,
                   num_ctx_setting: str = "its num_ctx") -> str:
    """The one notice for a model that runs alone, partly on the CPU."""
    on_cpu = max(0, need - budget.bytes)
    return (f"{model} (~{need / GB:.1f} GB) is larger than the {budget.gb:.1f} GB budget: it runs "
            f"alone, partly on the CPU (~{on_cpu / GB:.1f} GB of it), so it is slower. To keep it on "
            "the GPU: " + "; or ".join(fixes(need, facts, budget, num_ctx_setting)))


def split_notice(model: str, size: int, on_gpu: int, facts: ModelFacts | None,
                 budget: MemoryBudget) -> str:
    """The notice for a model the server itself split between GPU and CPU (its GPU was smaller
    than crew's budget says)."""
    room = MemoryBudget(on_gpu, "the GPU memory the server found", budget.machine, budget.apple_gpu)
    return (f"{model} runs partly on the CPU ({on_gpu / GB:.1f} of {size / GB:.1f} GB on the GPU), so "
            "it is slower. To keep it on the GPU: " + "; or ".join(fixes(size, facts, room, "its num_ctx")))
