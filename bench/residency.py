"""Residency policies side by side on one timing model: loads, GB loaded, makespan, waits, overruns.

    python bench/residency.py [--parallel] [--budgets 24,48,72,80,96] [--chart bench/loads.png]

The timing model, the same for every policy: loads happen one at a time and take size / 0.7 GB/s
(a Mac's cold mmap load); a model serves one request at a time (OLLAMA_NUM_PARALLEL=1;
--parallel lifts that); a call generates for 60/40/30 s on the Architect/Coder/Reviewer; unloads
are instant. Everything runs on a virtual clock (an asyncio loop whose time moves only when every
task waits), so crew's real ResidencyManager, given that clock, sees modelled seconds: its idle
discount and reload costs are in the same units as in real use.

Policies:
- floor: the fewest loads any policy could make for the order crew served (dynamic programming
  over resident sets; a model over the budget must be alone);
- crew: the real ResidencyManager with the team's workflow forecast (`crew.routing.forecast`,
  as the Selector sends it; `crew review` jobs send their own short one);
- crew, no forecast: the same manager without hints, as a client of `crew serve` would get it;
- ollama: its scheduler as `server/sched.go` behaves (v0.11.5+): a request for a loaded runner is
  served at once, requests that need a load wait in one FIFO queue, the victim is the first idle
  runner by keep_alive then by model path (a blob digest: a fixed but arbitrary order), idle
  runners expire after 5 minutes;
- lru: the same scheduler, evicting the least recently used idle runner, no expiry;
- seed: the seed router as written (../shared/seed/router.md): it never unloads (its unload
  endpoint does not exist and its list of loaded models is never filled), so Ollama's scheduler
  decides; it answers 507 when the machine's available memory is under the model's size + 2 GB
  (the machine: budget / 0.75 of RAM, 8 GB of it used by macOS and apps).
An overrun is a load that leaves more than one model resident over the budget.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import itertools
import json
import selectors
import statistics
import sys
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from crew.backends.base import ESTIMATE_MARGIN, ModelFacts  # noqa: E402
from crew.backends.simulated import SimulatedBackend  # noqa: E402
from crew.residency import ResidencyManager  # noqa: E402
from crew.residency.budget import GB, MemoryBudget  # noqa: E402
from crew.routing import forecast  # noqa: E402
from crew.settings import Role  # noqa: E402

A, C, R = "qwen3-coder-next:q4_K_M", "qwen3-coder:30b", "qwen3:14b"
ROLE_MODEL: dict[Role, str] = {"architect": A, "coder": C, "reviewer": R}
# Resident sizes at num_ctx 32768 (file + f16 KV cache + ~3% buffers), as the fake server has them.
SIZES = {A: int(54.4 * GB), C: int(22.5 * GB), R: int(15.1 * GB)}
BANDWIDTH = 0.7 * GB
GEN_S = {A: 60.0, C: 40.0, R: 30.0}
OLLAMA_KEEP_ALIVE_S = 300.0
SEED_OS_USE = 8 * GB
SEED_MARGIN = 2 * GB
POLICIES = ["floor", "crew", "crew, no forecast", "ollama", "lru", "seed"]


@dataclass(frozen=True)
class Request:
    crew: int
    model: str
    forecast: tuple[str, ...]
    """What this request's team expects to ask for, from this request on."""
    pause_s: float = 0.0
    """Idle time of this crew before the request (a person typing, the gap between CI jobs)."""

    @property
    def gen_s(self) -> float:
        return GEN_S[self.model]


@dataclass
class Result:
    loads: list[str] = field(default_factory=list)
    served: list[str] = field(default_factory=list)
    overruns: int = 0
    failed: int = 0
    waits: list[float] = field(default_factory=list)
    finished: dict[int, float] = field(default_factory=dict)
    started: dict[int, float] = field(default_factory=dict)

    @property
    def gb_loaded(self) -> float:
        return sum(SIZES[m] for m in self.loads) / GB

    @property
    def makespan(self) -> float:
        return max(self.finished.values(), default=0.0)

    @property
    def mean_run_s(self) -> float:
        return statistics.fmean(self.finished[c] - self.started[c] for c in self.finished)


# -- traces -----------------------------------------------------------------------------------


def calls(crew: int, roles: list[Role], pause_s: float = 0.0) -> list[Request]:
    """A team's calls: each with the workflow forecast the Selector sends for its speaker."""
    return [Request(crew, ROLE_MODEL[role], tuple(ROLE_MODEL[r] for r in forecast(role)),
                    pause_s if i == 0 else 0.0) for i, role in enumerate(roles)]


def review_job(crew: int, large: bool, pause_s: float) -> list[Request]:
    """`crew review`: the Reviewer, then the Architect for a large diff (its own forecast)."""
    order = [R, A] if large else [R]
    return [Request(crew, model, tuple(order[i:]), pause_s if i == 0 else 0.0)
            for i, model in enumerate(order)]


def one_run_roles() -> list[Role]:
    events = (ROOT / "bench" / "traces" / "one_run.events.jsonl").read_text().splitlines()
    return [e["role"] for e in map(json.loads, events) if e["type"] == "model_call"]


def traces() -> dict[str, list[Request]]:
    run: list[Role] = ["architect", "coder", "reviewer", "coder", "reviewer"]
    ci: list[Request] = []
    for i, job in enumerate(["run", "small", "large", "small", "run", "large", "small", "run", "small",
                             "large"]):
        gap = 20.0 if i else 0.0  # the runner picks up the next job
        ci += calls(0, run, gap) if job == "run" else review_job(0, job == "large", gap)
    chat: list[Request] = calls(0, ["architect", "coder", "reviewer"])
    for pause, roles in ((180.0, ["coder", "reviewer"]), (420.0, ["architect", "coder", "reviewer"]),
                         (300.0, ["coder", "reviewer"]), (240.0, ["coder", "reviewer"])):
        chat += calls(0, roles, pause)  # the person types; once they ask for a new plan
    jobs = [req for i in range(5) for req in review_job(1, False, 100.0 if i == 0 else 150.0)]
    return {
        "one run": calls(0, one_run_roles()),
        "re-plans (A C R C R)x4": calls(0, run * 4),
        "CI queue, 10 jobs": ci,
        "chat + 5 review jobs": chat + jobs,
        "four crews": [req for crew in range(4) for req in calls(crew, one_run_roles(), crew * 150.0)],
    }


# -- the virtual clock ----------------------------------------------------------------------------


class _JumpingSelector:
    """A selector that never waits: when nothing is ready, the clock jumps to the next timer."""

    def __init__(self, loop: VirtualLoop, inner: selectors.BaseSelector) -> None:
        self._loop = loop
        self._inner = inner

    def select(self, timeout: float | None = None) -> list[Any]:
        events = self._inner.select(0)
        if not events and timeout is None and not self._loop.closing:
            raise RuntimeError("the simulation is stuck: every task waits and no timer is set")
        if not events and timeout:
            self._loop.now += timeout
        return events

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class VirtualLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        self.now = 0.0
        self.closing = False
        inner = selectors.DefaultSelector()
        super().__init__(inner)
        self._selector = _JumpingSelector(self, inner)  # type: ignore[assignment]

    def time(self) -> float:
        return self.now


def simulate(make: Callable[[], Any]) -> Any:
    loop = VirtualLoop()
    try:
        return loop.run_until_complete(make())
    finally:
        loop.closing = True
        loop.close()


# -- the server: what every policy shares ----------------------------------------------------------


class Server:
    """Memory, loads one at a time, one request at a time per model; it records what happened."""

    def __init__(self, budget: int, parallel: bool, result: Result) -> None:
        self.budget = budget
        self.parallel = parallel
        self.result = result
        self.resident: set[str] = set()
        self._loading = asyncio.Lock()
        self._runners: dict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    async def load(self, model: str) -> None:
        async with self._loading:
            await asyncio.sleep(SIZES[model] / BANDWIDTH)
            self.resident.add(model)
            self.result.loads.append(model)
            if len(self.resident) > 1 and sum(SIZES[m] for m in self.resident) > self.budget:
                self.result.overruns += 1

    def unload(self, model: str) -> None:
        self.resident.discard(model)

    async def generate(self, req: Request, asked: float) -> None:
        lock = self._runners[req.model]
        if not self.parallel:
            await lock.acquire()
        try:
            loop = asyncio.get_running_loop()
            self.result.waits.append(loop.time() - asked)
            self.result.served.append(req.model)
            await asyncio.sleep(req.gen_s)
        finally:
            if not self.parallel:
                lock.release()


async def drive(trace: list[Request], serve: Callable[[Request], Any], result: Result) -> None:
    """Every crew of the trace, concurrently; each sends its requests one after another."""
    loop = asyncio.get_running_loop()
    crews: dict[int, list[Request]] = defaultdict(list)
    for req in trace:
        crews[req.crew].append(req)

    async def crew(number: int, requests: list[Request]) -> None:
        for i, req in enumerate(requests):
            await asyncio.sleep(req.pause_s)
            if i == 0:
                result.started[number] = loop.time()
            await serve(req)
        result.finished[number] = loop.time()

    await asyncio.gather(*(crew(n, reqs) for n, reqs in crews.items()))


# -- crew: the real manager ---------------------------------------------------------------------


class TimedBackend(SimulatedBackend):
    def __init__(self, server: Server) -> None:
        # The estimate's margin taken out: crew estimates exactly SIZES.
        super().__init__({m: ModelFacts(m, round(size / ESTIMATE_MARGIN)) for m, size in SIZES.items()})
        self.server = server

    async def load(self, model: str, options: Mapping[str, Any]) -> None:
        await self.server.load(model)
        await super().load(model, options)

    async def unload(self, model: str) -> None:
        self.server.unload(model)
        await super().unload(model)


async def run_crew(trace: list[Request], budget: int, parallel: bool, hints: bool) -> Result:
    result = Result()
    server = Server(budget, parallel, result)
    loop = asyncio.get_running_loop()
    manager = ResidencyManager(TimedBackend(server), MemoryBudget(budget, "bench"),
                               allow_partial_offload=True, clock=loop.time)
    for model in SIZES:
        manager.register(model, {"num_ctx": 32768})

    async def serve(req: Request) -> None:
        asked = loop.time()
        if hints:
            manager.forecast(req.forecast, source=req.crew)
        async with manager.hold(req.model):
            await server.generate(req, asked)

    await drive(trace, serve, result)
    await manager.aclose()
    return result


# -- Ollama's scheduler, LRU and the seed -----------------------------------------------------------


@dataclass(eq=False)
class _Runner:
    model: str
    refs: int = 0
    last_used: float = 0.0


class Scheduler:
    """Ollama's scheduler on the shared server; `victim` orders idle runners for eviction."""

    def __init__(self, server: Server, victim: Callable[[_Runner], Any], expire: bool) -> None:
        self.server = server
        self.victim = victim
        self.expire = expire
        self.runners: dict[str, _Runner] = {}
        self.pending: deque[tuple[str, asyncio.Future[None]]] = deque()
        self.changed = asyncio.Event()
        self.task = asyncio.ensure_future(self._schedule())

    @asynccontextmanager
    async def request(self, model: str) -> AsyncIterator[None]:
        runner = self.runners.get(model)
        if runner is not None:  # the fast path: a loaded runner serves at once
            runner.refs += 1
        else:
            done = asyncio.get_running_loop().create_future()
            self.pending.append((model, done))
            self._kick()
            await done
            runner = self.runners[model]
        try:
            yield
        finally:
            runner.refs -= 1
            runner.last_used = asyncio.get_running_loop().time()
            if runner.refs == 0 and self.expire:
                asyncio.get_running_loop().call_later(OLLAMA_KEEP_ALIVE_S, self._expire, runner,
                                                      runner.last_used)
            self._kick()

    def _kick(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()

    def _expire(self, runner: _Runner, idle_since: float) -> None:
        if runner.refs == 0 and runner.last_used == idle_since and self.runners.get(runner.model) is runner:
            self._unload(runner.model)

    def _unload(self, model: str) -> None:
        del self.runners[model]
        self.server.unload(model)
        self._kick()

    async def _schedule(self) -> None:
        while True:
            while not self.pending:
                await self.changed.wait()
            model, done = self.pending[0]
            if model not in self.runners:
                await self._make_room(model)
                await self.server.load(model)
                self.runners[model] = _Runner(model)
            self.runners[model].refs += 1
            self.pending.popleft()
            done.set_result(None)

    async def _make_room(self, model: str) -> None:
        size = SIZES[model]
        while self.runners and sum(SIZES[m] for m in self.runners) + size > self.server.budget:
            idle = [r for r in self.runners.values() if r.refs == 0]
            if idle:
                self._unload(min(idle, key=self.victim).model)
            else:
                await self.changed.wait()


def _digest(model: str) -> str:
    return hashlib.sha256(model.encode()).hexdigest()


async def run_scheduler(trace: list[Request], budget: int, parallel: bool, policy: str) -> Result:
    result = Result()
    server = Server(budget, parallel, result)
    loop = asyncio.get_running_loop()
    if policy == "lru":
        scheduler = Scheduler(server, lambda r: r.last_used, expire=False)
    else:  # ollama, and the seed on top of it; every runner has the default keep_alive
        scheduler = Scheduler(server, lambda r: (OLLAMA_KEEP_ALIVE_S, _digest(r.model)), expire=True)
    machine = budget / 0.75

    async def serve(req: Request) -> None:
        asked = loop.time()
        if policy == "seed":
            available = machine - SEED_OS_USE - sum(SIZES[m] for m in server.resident)
            if available < SIZES[req.model] + SEED_MARGIN:
                result.failed += 1  # 507: the call fails, the crew goes on
                return
        async with scheduler.request(req.model):
            await server.generate(req, asked)

    await drive(trace, serve, result)
    scheduler.task.cancel()
    return result


# -- the floor ----------------------------------------------------------------------------------


def floor(order: list[str], budget: int) -> int:
    """The fewest loads that serve `order` (exact: every resident set is a state)."""
    def fits(models: frozenset[str]) -> bool:
        return len(models) <= 1 or sum(SIZES[m] for m in models) <= budget

    best: dict[frozenset[str], int] = {frozenset(): 0}
    for model in order:
        after: dict[frozenset[str], int] = {}
        for resident, loads in best.items():
            if model in resident:
                options, cost = [resident], loads
            else:
                kept = [frozenset(s) for n in range(len(resident) + 1)
                        for s in itertools.combinations(resident, n)]
                options, cost = [k | {model} for k in kept if fits(k | {model})], loads + 1
            for state in options:
                if cost < after.get(state, 1 << 30):
                    after[state] = cost
        best = after
    return min(best.values())


def floor_any_order(trace: list[Request], budget: int) -> int:
    """The fewest loads over every interleaving of the crews (each crew's own order kept): the
    foresight bound, reachable only by holding crews back until others catch up."""
    crews: dict[int, list[str]] = defaultdict(list)
    for req in trace:
        crews[req.crew].append(req.model)
    orders = list(crews.values())

    def fits(models: frozenset[str]) -> bool:
        return len(models) <= 1 or sum(SIZES[m] for m in models) <= budget

    start: tuple[tuple[int, ...], frozenset[str]] = (tuple(0 for _ in orders), frozenset())
    best = {start: 0}
    queue = deque([start])
    while queue:  # 0-1 breadth-first search: a step costs a load or nothing
        state = queue.popleft()
        positions, resident = state
        cost = best[state]
        if all(p == len(o) for p, o in zip(positions, orders, strict=True)):
            return cost
        for i, order in enumerate(orders):
            if positions[i] == len(order):
                continue
            model = order[positions[i]]
            moved = positions[:i] + (positions[i] + 1,) + positions[i + 1:]
            if model in resident:
                steps = [((moved, resident), 0)]
            else:
                kept = [frozenset(s) for n in range(len(resident) + 1)
                        for s in itertools.combinations(resident, n)]
                steps = [((moved, k | {model}), 1) for k in kept if fits(k | {model})]
            for after, extra in steps:
                if cost + extra < best.get(after, 1 << 30):
                    best[after] = cost + extra
                    (queue.appendleft if extra == 0 else queue.append)(after)
    raise AssertionError("unreachable")


# -- the table ----------------------------------------------------------------------------------


def run_all(budgets: list[int], parallel: bool) -> dict[tuple[str, int], dict[str, Result | int]]:
    table: dict[tuple[str, int], dict[str, Result | int]] = {}
    for budget_gb in budgets:
        budget = budget_gb * GB
        for name, trace in traces().items():
            row: dict[str, Result | int] = {
                "crew": simulate(partial(run_crew, trace, budget, parallel, hints=True)),
                "crew, no forecast": simulate(partial(run_crew, trace, budget, parallel, hints=False)),
            }
            for policy in ("ollama", "lru", "seed"):
                row[policy] = simulate(partial(run_scheduler, trace, budget, parallel, policy))
            crew = row["crew"]
            assert isinstance(crew, Result)
            row["floor"] = floor(crew.served, budget)
            if len({req.crew for req in trace}) > 1:
                row["floor, any order"] = floor_any_order(trace, budget)
            table[(name, budget_gb)] = row
    return table


def print_table(table: dict[tuple[str, int], dict[str, Result | int]], budgets: list[int]) -> None:
    for budget_gb in budgets:
        print(f"\n### {budget_gb} GB budget\n")
        print("| trace | policy | loads | GB loaded | load s @0.7 GB/s | makespan s | mean run s "
              "| longest wait s | overruns | failed (507) |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for (name, b), row in table.items():
            if b != budget_gb:
                continue
            for policy in POLICIES + ["floor, any order"]:
                res = row.get(policy)
                if res is None:
                    continue
                if isinstance(res, int):
                    print(f"| {name} | {policy} | {res} | | | | | | | |")
                    continue
                print(f"| {name} | {policy} | {len(res.loads)} | {res.gb_loaded:.1f} | "
                      f"{res.gb_loaded * GB / BANDWIDTH:.0f} | {res.makespan:.0f} | {res.mean_run_s:.0f} | "
                      f"{max(res.waits, default=0):.0f} | {res.overruns} | {res.failed} |")


def chart(table: dict[tuple[str, int], dict[str, Result | int]], budgets: list[int], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("\n(matplotlib is not installed: `pip install matplotlib` for the chart)")
        return
    names = list(traces())
    fig, axes = plt.subplots(1, len(budgets), figsize=(4.2 * len(budgets), 4.8), sharey=True)
    width = 0.8 / len(POLICIES)
    for ax, budget in zip(axes, budgets, strict=True):
        for i, policy in enumerate(POLICIES):
            xs = [x + i * width for x in range(len(names))]
            cells = [table[(n, budget)][policy] for n in names]
            loads = [c if isinstance(c, int) else len(c.loads) for c in cells]
            bars = ax.bar(xs, loads, width, label=policy)
            for bar, cell in zip(bars, cells, strict=True):
                if isinstance(cell, Result) and cell.overruns:  # over the budget: not a fair win
                    bar.set_hatch("xx")
                    bar.set_edgecolor("red")
                elif isinstance(cell, Result) and cell.failed:  # fewer loads by refusing calls
                    bar.set_hatch("//")
                    bar.set_edgecolor("black")
        ax.set_title(f"{budget} GB budget")
        ax.set_xticks([x + 0.4 for x in range(len(names))], names, rotation=30, ha="right", fontsize=7)
    axes[0].set_ylabel("model loads (xx red: overran the budget; //: refused calls)")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"\nchart: {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--parallel", action="store_true", help="a model serves requests in parallel")
    parser.add_argument("--budgets", default="24,48,72,80,96", help="GB, comma-separated")
    parser.add_argument("--chart", type=Path, help="write a PNG chart of loads per policy")
    args = parser.parse_args()
    budgets = [int(b) for b in args.budgets.split(",")]
    table = run_all(budgets, args.parallel)
    print_table(table, budgets)
    if args.chart:
        chart(table, budgets, args.chart)


if __name__ == "__main__":
    main()
