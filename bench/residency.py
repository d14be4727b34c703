"""Residency policies side by side: loads, GB loaded, load time, waits and overruns.

    python bench/residency.py [--scale 0.001] [--chart bench/loads.png]

Every trace is replayed under the same catalog and budget through:
- crew: the real ResidencyManager, driven by concurrent crews in asyncio over an in-memory
  backend whose loads take size / 0.7 GB/s, with all times scaled down by --scale;
- seed: the seed router (Architect alone; Coder/Reviewer unload it; no capacity check);
- ollama: Ollama's scheduler (one FIFO queue; evict the idle runner with the shortest
  keep_alive, then by name; idle runners expire after 5 minutes);
- lru: evict the least recently used idle model;
- belady: evict the resident model used farthest in the future (offline, on the same order).
The baselines run in a discrete-event simulation of one server: a model serves one request at
a time, loads happen one at a time, different resident models generate in parallel.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import json
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from crew.backends.base import ESTIMATE_MARGIN, ModelFacts  # noqa: E402
from crew.backends.simulated import SimulatedBackend  # noqa: E402
from crew.memory import GB, MemoryBudget  # noqa: E402
from crew.residency import ResidencyManager  # noqa: E402

A, C, R = "qwen3-coder-next:q4_K_M", "qwen3-coder:30b", "qwen3:14b"
ROLE_MODEL = {"architect": A, "coder": C, "reviewer": R}
# Resident sizes at num_ctx 32768 (file + f16 KV cache + ~3% buffers), as the fake server has them.
SIZES = {A: int(54.4 * GB), C: int(22.5 * GB), R: int(15.1 * GB)}
SIM_BANDWIDTH = 0.7 * GB  # a Mac's cold mmap load, the worst common case
GEN_S = {A: 60.0, C: 40.0, R: 30.0}  # modeled generation time of one call
OLLAMA_KEEP_ALIVE_S = 300.0


@dataclass(frozen=True)
class Request:
    crew: int
    model: str
    gen_s: float
    pause_s: float = 0.0
    """Idle time of this crew before the request (a person typing, a CI stagger)."""


@dataclass
class Result:
    loads: int = 0
    gb_loaded: float = 0.0
    longest_wait_s: float = 0.0
    overruns: int = 0
    load_order: list[str] = field(default_factory=list)


# -- traces ---------------------------------------------------------------------------------


def trace_from_events(path: Path, crew: int = 0, pause_s: float = 0.0) -> list[Request]:
    """The model calls of a real run's events.jsonl, in order."""
    calls = [json.loads(line) for line in path.read_text().splitlines()]
    calls = [e for e in calls if e["type"] == "model_call"]
    return [Request(crew, ROLE_MODEL[e["role"]], GEN_S[ROLE_MODEL[e["role"]]], pause_s if i == 0 else 0.0)
            for i, e in enumerate(calls)]


def traces() -> dict[str, list[Request]]:
    one = trace_from_events(ROOT / "bench" / "traces" / "one_run.events.jsonl")
    replans = ["architect", "coder", "reviewer", "coder", "reviewer"] * 4
    long_run = [Request(0, ROLE_MODEL[r], GEN_S[ROLE_MODEL[r]]) for r in replans]
    four = [req for crew in range(4) for req in trace_from_events(
        ROOT / "bench" / "traces" / "one_run.events.jsonl", crew, pause_s=crew * 150.0)]
    pauses = [0, 120, 420, 45, 600, 30, 900, 60]
    chat = [Request(0, [C, R][i % 2], GEN_S[[C, R][i % 2]], p) for i, p in enumerate(pauses)]
    chat.insert(0, Request(0, A, GEN_S[A]))
    return {"one crew": one, "long run, re-plans": long_run, "four crews": four, "chat with pauses": chat}


# -- crew: the real manager, in scaled time ----------------------------------------------------


class TimedBackend(SimulatedBackend):
    """crew plan's in-memory backend, with loads that take size / bandwidth (scaled)."""

    def __init__(self, scale: float) -> None:
        # No KV cache and the estimate's margin taken out: the estimate is exactly SIZES.
        super().__init__({m: ModelFacts(m, round(size / ESTIMATE_MARGIN)) for m, size in SIZES.items()})
        self.scale = scale

    async def load(self, model: str, options: Mapping[str, Any]) -> None:
        await asyncio.sleep(SIZES[model] / SIM_BANDWIDTH * self.scale)
        await super().load(model, options)


async def run_crew_policy(trace: list[Request], budget: int, scale: float) -> Result:
    backend = TimedBackend(scale)
    manager = ResidencyManager(backend, MemoryBudget(budget, "bench"), allow_partial_offload=True)
    for model in SIZES:
        manager.register(model, {"num_ctx": 32768})
    result = Result()

    def check(_: object) -> None:
        resident = backend.resident_bytes()
        if len(resident) > 1 and sum(resident.values()) > budget:
            result.overruns += 1

    manager.subscribe(check)

    async def crew(requests: list[Request]) -> None:
        for req in requests:
            await asyncio.sleep(req.pause_s * scale)
            asked = time.monotonic()
            async with manager.hold(req.model):
                result.longest_wait_s = max(result.longest_wait_s, (time.monotonic() - asked) / scale)
                await asyncio.sleep(req.gen_s * scale)

    crews: dict[int, list[Request]] = {}
    for req in trace:
        crews.setdefault(req.crew, []).append(req)
    await asyncio.gather(*(crew(reqs) for reqs in crews.values()))
    await manager.aclose()
    result.loads = len(backend.loads)
    result.load_order = backend.loads
    result.gb_loaded = sum(SIZES[m] for m in backend.loads) / GB
    return result


# -- baselines: a discrete-event simulation of one server ----------------------------------------

def simulate(trace: list[Request], budget: int, policy: str) -> Result:
    """FIFO service of the crews' requests; the policy picks evictions."""
    result = Result()
    resident: dict[str, float] = {}  # model -> last used time
    busy_until: dict[str, float] = {}
    queue: list[tuple[float, int, Request]] = []
    next_index = {c: 0 for c in {r.crew for r in trace}}
    per_crew: dict[int, list[Request]] = {}
    for req in trace:
        per_crew.setdefault(req.crew, []).append(req)
    seq = 0
    for reqs in per_crew.values():
        heapq.heappush(queue, (reqs[0].pause_s, seq, reqs[0]))
        seq += 1
    server_free = 0.0  # loads are serialized
    order: list[str] = []
    while queue:
        arrival, _, req = heapq.heappop(queue)
        now = max(arrival, server_free)
        if policy == "ollama":  # idle runners expire after keep_alive
            for model, last in list(resident.items()):
                idle_since = max(last, busy_until.get(model, 0))
                if busy_until.get(model, 0) <= now and now - idle_since > OLLAMA_KEEP_ALIVE_S:
                    del resident[model]
        order.append(req.model)
        if req.model not in resident:
            if policy == "seed":
                victims = [m for m in resident if m != req.model] if req.model == A else (
                    [A] if A in resident else [])
                for v in victims:
                    now = max(now, busy_until.get(v, 0))
                    del resident[v]
            else:
                while resident and sum(SIZES[m] for m in resident) + SIZES[req.model] > budget:
                    victim = _victim(policy, resident, busy_until, now, req, trace, len(order))
                    now = max(now, busy_until.get(victim, 0))
                    del resident[victim]
            load_s = SIZES[req.model] / SIM_BANDWIDTH
            now += load_s
            server_free = now
            resident[req.model] = now
            result.loads += 1
            result.gb_loaded += SIZES[req.model] / GB
            result.load_order.append(req.model)
            if len(resident) > 1 and sum(SIZES[m] for m in resident) > budget:
                result.overruns += 1
        start = max(now, busy_until.get(req.model, 0))
        result.longest_wait_s = max(result.longest_wait_s, start - arrival)
        busy_until[req.model] = start + req.gen_s
        resident[req.model] = start + req.gen_s
        nxt = next_index[req.crew] = next_index[req.crew] + 1
        if nxt < len(per_crew[req.crew]):
            follow = per_crew[req.crew][nxt]
            heapq.heappush(queue, (start + req.gen_s + follow.pause_s, seq, follow))
            seq += 1
    return result


def _victim(policy: str, resident: dict[str, float], busy_until: dict[str, float], now: float,
            req: Request, trace: list[Request], position: int) -> str:
    idle = [m for m in resident if m != req.model]
    if policy == "ollama":  # all runners have the default keep_alive: the order is by name
        return sorted(idle)[0]
    if policy == "lru":
        return min(idle, key=lambda m: resident[m])
    # belady: farthest next use in the remaining order of this trace
    future = [r.model for r in trace][position:]
    return max(idle, key=lambda m: future.index(m) if m in future else len(future) + 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=0.001, help="real seconds per modeled second")
    parser.add_argument("--chart", type=Path, help="write a PNG chart of loads per policy per trace")
    args = parser.parse_args()
    policies = ["crew", "seed", "ollama", "lru", "belady"]
    table: dict[tuple[str, str, int], Result] = {}
    for budget_gb in (48, 24, 96):
        print(f"\n## {budget_gb} GB budget\n")
        print("| trace | policy | loads | GB loaded | load s @0.7 GB/s | load s @6 GB/s "
              "| longest wait s | overruns |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for name, trace in traces().items():
            for policy in policies:
                if policy == "crew":
                    res = asyncio.run(run_crew_policy(trace, budget_gb * GB, args.scale))
                else:
                    res = simulate(trace, budget_gb * GB, policy)
                table[(name, policy, budget_gb)] = res
                print(f"| {name} | {policy} | {res.loads} | {res.gb_loaded:.1f} | "
                      f"{res.gb_loaded / 0.7:.0f} | {res.gb_loaded / 6:.0f} | "
                      f"{res.longest_wait_s:.0f} | {res.overruns} |")
    if args.chart:
        _chart(table, policies, args.chart)


def _chart(table: dict[tuple[str, str, int], Result], policies: list[str], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("\n(matplotlib is not installed: `pip install matplotlib` for the chart)")
        return
    names = list(traces())
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5), sharey=False)
    for ax, budget in zip(axes, (48, 24, 96), strict=True):
        width = 0.16
        for i, policy in enumerate(policies):
            ax.bar([x + i * width for x in range(len(names))],
                   [table[(n, policy, budget)].loads for n in names], width, label=policy)
        ax.set_title(f"{budget} GB budget")
        ax.set_xticks([x + 2 * width for x in range(len(names))], names, rotation=15, fontsize=8)
        ax.set_ylabel("model loads")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"\nchart: {path}")


if __name__ == "__main__":
    main()
