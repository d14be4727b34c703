"""Residency policies side by side on one timing model: GB loaded, load seconds, makespan, waits.

    python bench/residency.py [--budgets 24,48,56,72,80,96] [--random 200] [--seed 29] [--parallel]

The timing model, the same for every policy and trace: loads happen one at a time and take
size / 0.7 GB/s (a Mac's cold mmap load); a model serves one request at a time
(OLLAMA_NUM_PARALLEL=1; --parallel lifts that); a call generates for 60/40/30 s on the
Architect/Coder/Reviewer; unloads are instant. Everything runs on a virtual clock (an asyncio
loop whose time moves only when every task waits), so crew's real ResidencyManager, given that
clock, sees modelled seconds. The clock is deterministic: a run repeated gives the same figures,
so the spread reported is over Ollama's possible victim orders and over random traces.

Policies:
- crew: the real ResidencyManager with the forecast the team's Selector sends now: the learned
  transitions (`crew.residency.transitions.LearnedForecast`), starting from the rule with no
  history (a new workspace), learning as the trace goes; `crew review` jobs send their own list;
- crew, rule forecast: the same manager with the forecast the Selector sent before (the rule's
  fixed list: after the Architect, Coder and Reviewer in turn; the Architect never comes back);
- crew, no forecast: the same manager without hints, as a client of `crew serve` would get it;
- ollama: its scheduler as `server/sched.go` behaves: a request for a loaded runner is served at
  once, requests that need a load wait in one FIFO queue, the victim is the first idle runner by
  keep_alive then by model path (`blobs/sha256-<digest>`), idle runners expire after 5 minutes.
  The digests fix an order that is arbitrary for a given machine's pulls, so it is run under
  all six orders of the three models and reported as min / median / max of each figure;
- lru: the same scheduler evicting the least recently used idle runner, no expiry;
- seed: the seed router as written (it never unloads: Ollama's scheduler decides, under all six
  orders; it answers 507 when available memory, budget / 0.75 less 8 GB, is under size + 2 GB).

Floors, exact by dynamic programming over resident sets (a model over the budget must be
alone): the fewest loads and the fewest GB loaded (sizes differ, so they are different floors)
for the order a policy served (each policy its own), and for multi-crew traces the bound over
every interleaving of the crews (each crew's order kept): reachable only by holding crews back.

Primary figures are GB loaded, load seconds, makespan, total wait and the worst crew's wait;
loads come second. An overrun is a load that leaves more than one model resident over budget.
Random traces (`--random`, seeded): chats with random re-plans and change requests, CI queues
of runs and reviews, and two or three crews with random arrivals, reported per budget as the
distribution (median, p90, worst) of crew's GB loaded relative to Ollama's best order and to
the floors.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import itertools
import json
import random
import selectors
import statistics
import sys
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
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
from crew.residency.transitions import LearnedForecast, Transitions  # noqa: E402
from crew.routing import CHAT_RULE, RULE, forecast  # noqa: E402
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
# Every order Ollama's digest tie-break could put the three models in (first: evicted first).
ORDERS: list[tuple[str, ...]] = list(itertools.permutations([A, C, R]))
CREW_POLICIES = {"crew": "learned", "crew, rule forecast": "rule", "crew, no forecast": "none"}
ORDERED = ("ollama", "seed")  # policies that depend on the digest order
POLICIES = [*CREW_POLICIES, "ollama", "lru", "seed"]
SHORT = {A: "A", C: "C", R: "R"}


@dataclass(frozen=True)
class Request:
    crew: int
    model: str
    path: tuple[str, ...]
    """The states the Selector saw from the crew's previous model turn (or the task) to this one."""
    rule: tuple[str, ...]
    """The fixed forecast: the rule's list (what the Selector sent before), or a review job's own."""
    mode: str
    """"run", "chat" (a person takes turns) or "review" (a `crew review` job: its own list)."""
    pause_s: float = 0.0
    """Idle time of this crew before the request (a person typing, the gap between CI jobs)."""

    @property
    def gen_s(self) -> float:
        return GEN_S[self.model]


@dataclass
class Result:
    loads: list[str] = field(default_factory=list)
    served: list[tuple[int, str]] = field(default_factory=list)
    overruns: int = 0
    failed: int = 0
    waits: dict[int, float] = field(default_factory=lambda: defaultdict(float))
    finished: dict[int, float] = field(default_factory=dict)
    started: dict[int, float] = field(default_factory=dict)

    @property
    def gb_loaded(self) -> float:
        return sum(SIZES[m] for m in self.loads) / GB

    @property
    def load_s(self) -> float:
        return sum(SIZES[m] for m in self.loads) / BANDWIDTH

    @property
    def makespan(self) -> float:
        return max(self.finished.values(), default=0.0)

    @property
    def total_wait(self) -> float:
        return sum(self.waits.values())

    @property
    def worst_wait(self) -> float:
        return max(self.waits.values(), default=0.0)

    def order(self) -> list[str]:
        return [m for _, m in self.served]


# -- traces -----------------------------------------------------------------------------------


def script(crew: int, states: Sequence[str], mode: str, pauses: Sequence[float] = (),
           first_pause: float = 0.0) -> list[Request]:
    """A team's calls from the states its Selector goes through ("task", roles, "human"); each
    human turn takes the next of `pauses` (the person reading and typing)."""
    requests: list[Request] = []
    path: list[str] = []
    pause, humans = first_pause, iter(pauses)
    for state in states:
        path.append(state)
        if state == "human":
            pause += next(humans, 0.0)
        elif state != "task":
            role: Role = state  # type: ignore[assignment]
            rule = tuple(ROLE_MODEL[r] for r in forecast(role))
            requests.append(Request(crew, ROLE_MODEL[role], tuple(path), rule, mode, pause))
            path, pause = [state], 0.0
    return requests


def review_job(crew: int, large: bool, pause_s: float) -> list[Request]:
    """`crew review`: the Reviewer, then the Architect for a large diff (its own forecast)."""
    order = [R, A] if large else [R]
    return [Request(crew, model, (), tuple(order[i:]), "review", pause_s if i == 0 else 0.0)
            for i, model in enumerate(order)]


def run_states(rounds: int = 2) -> list[str]:
    return ["task", "architect"] + ["coder", "reviewer"] * rounds


def one_run_roles() -> list[str]:
    events = (ROOT / "bench" / "traces" / "one_run.events.jsonl").read_text().splitlines()
    return [e["role"] for e in map(json.loads, events) if e["type"] == "model_call"]


def traces() -> dict[str, list[Request]]:
    ci: list[Request] = []
    for i, job in enumerate(["run", "small", "large", "small", "run", "large", "small", "run", "small",
                             "large"]):
        gap = 20.0 if i else 0.0  # the runner picks up the next job
        ci += (script(0, run_states(), "run", first_pause=gap) if job == "run"
               else review_job(0, job == "large", gap))
    chat = ["task", "architect", "coder", "reviewer"]
    for roles in (["coder", "reviewer"], ["architect", "coder", "reviewer"], ["coder", "reviewer"],
                  ["coder", "reviewer"]):
        chat += ["human", *roles]  # the person types; once they ask for a new plan
    jobs = [req for i in range(5) for req in review_job(1, False, 100.0 if i == 0 else 150.0)]
    replans = ["task"] + ["architect", "coder", "reviewer", "coder", "reviewer"] * 4
    every = ["task"] + ["architect", "coder", "reviewer", "human"] * 6
    return {
        "one run": script(0, ["task", *one_run_roles()], "run"),
        "re-plans (A C R C R)x4": script(0, replans, "run"),
        "CI queue, 10 jobs": ci,
        "chat + 5 review jobs": script(0, chat, "chat", [180.0, 420.0, 300.0, 240.0]) + jobs,
        "four crews": [req for crew in range(4)
                       for req in script(crew, ["task", *one_run_roles()], "run", first_pause=crew * 150.0)],
        "chat, re-plan after every approval (A C R)x6": script(0, every[:-1], "chat", [120.0] * 5),
        "chat, random re-plans (seed 1)": random_chat(random.Random(1), 0, rounds=6),
    }


def random_chat(rng: random.Random, crew: int, rounds: int, first_pause: float = 0.0) -> list[Request]:
    """A person's chat: each request is planned, coded and reviewed (the Reviewer asks for
    changes now and then); after an approval the person asks for a new plan (with a chance
    drawn per chat) or a small change straight to the Coder."""
    replan = rng.random()
    states = ["task", "architect"]
    for i in range(rounds):
        states += ["coder", "reviewer"]
        while rng.random() < 0.3:
            states += ["coder", "reviewer"]
        if i < rounds - 1:  # the next request: a new plan, or straight to the Coder
            states += ["human", "architect"] if rng.random() < replan else ["human"]
    pauses = [rng.uniform(30.0, 420.0) for _ in range(rounds)]
    return script(crew, states, "chat", pauses, first_pause)


def random_run(rng: random.Random, crew: int, first_pause: float) -> list[Request]:
    states = ["task", "architect"] + ["coder", "reviewer"] * rng.randint(1, 3)
    return script(crew, states, "run", first_pause=first_pause)


def random_trace(rng: random.Random) -> tuple[str, list[Request]]:
    kind = rng.choice(["chat", "ci", "crews"])
    if kind == "chat":
        return kind, random_chat(rng, 0, rounds=rng.randint(3, 5))
    if kind == "ci":
        ci: list[Request] = []
        for i in range(rng.randint(4, 7)):
            gap = rng.uniform(5.0, 60.0) if i else 0.0
            job = rng.choice(["run", "small", "large"])
            ci += random_run(rng, 0, gap) if job == "run" else review_job(0, job == "large", gap)
        return kind, ci
    crews: list[Request] = []
    for crew in range(rng.randint(2, 3)):
        arrival = rng.uniform(0.0, 300.0)
        crews += random_run(rng, crew, arrival) if rng.random() < 0.6 else random_chat(rng, crew, 2, arrival)
    return kind, crews


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
            self.result.waits[req.crew] += loop.time() - asked
            self.result.served.append((req.crew, req.model))
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


async def run_crew(trace: list[Request], budget: int, parallel: bool, hints: str) -> Result:
    result = Result()
    server = Server(budget, parallel, result)
    loop = asyncio.get_running_loop()
    manager = ResidencyManager(TimedBackend(server), MemoryBudget(budget, "bench"),
                               allow_partial_offload=True, clock=loop.time)
    for model in SIZES:
        manager.register(model, {"num_ctx": 32768})
    learned: dict[tuple[int, str], LearnedForecast] = {}

    def send_forecast(req: Request) -> None:
        if hints == "none":
            return
        if hints == "rule" or req.mode == "review":
            manager.forecast(req.rule, source=req.crew)
            return
        # What the Selector sends: each transition it saw counted, then the outlook.
        team = learned.get((req.crew, req.mode))
        if team is None:
            rule = CHAT_RULE if req.mode == "chat" else RULE
            team = learned[(req.crew, req.mode)] = LearnedForecast(ROLE_MODEL, Transitions(rule))
        outlook = None
        for previous, speaker in itertools.pairwise(req.path):
            outlook = team.turn(previous, speaker)  # type: ignore[arg-type]
        manager.forecast(outlook, source=req.crew)

    async def serve(req: Request) -> None:
        asked = loop.time()
        send_forecast(req)
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


async def run_scheduler(trace: list[Request], budget: int, parallel: bool, policy: str,
                        order: tuple[str, ...] = ORDERS[0]) -> Result:
    result = Result()
    server = Server(budget, parallel, result)
    loop = asyncio.get_running_loop()
    if policy == "lru":
        scheduler = Scheduler(server, lambda r: r.last_used, expire=False)
    else:  # ollama, and the seed on top of it; every runner has the default keep_alive
        scheduler = Scheduler(server, lambda r: (OLLAMA_KEEP_ALIVE_S, order.index(r.model)), expire=True)
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


# -- the floors ---------------------------------------------------------------------------------


def _fits(models: frozenset[str], budget: int) -> bool:
    return len(models) <= 1 or sum(SIZES[m] for m in models) <= budget


def _kept(resident: frozenset[str]) -> list[frozenset[str]]:
    return [frozenset(s) for n in range(len(resident) + 1) for s in itertools.combinations(resident, n)]


def floor(order: Sequence[str], budget: int, cost: Callable[[str], float]) -> float:
    """The least total `cost` of the loads that serve `order` (exact: every resident set is a
    state): cost 1 per load gives the fewest loads, the size the fewest bytes."""
    best: dict[frozenset[str], float] = {frozenset(): 0.0}
    for model in order:
        after: dict[frozenset[str], float] = {}
        for resident, spent in best.items():
            if model in resident:
                steps = [(resident, spent)]
            else:
                steps = [(k | {model}, spent + cost(model))
                         for k in _kept(resident) if _fits(k | {model}, budget)]
            for state, total in steps:
                if total < after.get(state, float("inf")):
                    after[state] = total
        best = after
    return min(best.values())


def floor_any_order(trace: list[Request], budget: int, cost: Callable[[str], float]) -> float:
    """The least `cost` over every interleaving of the crews (each crew's own order kept): the
    foresight bound, reachable only by holding crews back until others catch up (Dijkstra)."""
    crews: dict[int, list[str]] = defaultdict(list)
    for req in trace:
        crews[req.crew].append(req.model)
    orders = list(crews.values())
    start: tuple[tuple[int, ...], frozenset[str]] = (tuple(0 for _ in orders), frozenset())
    best = {start: 0.0}
    heap: list[tuple[float, int, tuple[tuple[int, ...], frozenset[str]]]] = [(0.0, 0, start)]
    tie = itertools.count(1)
    while heap:
        spent, _, state = heapq.heappop(heap)
        if spent > best[state]:
            continue
        positions, resident = state
        if all(p == len(o) for p, o in zip(positions, orders, strict=True)):
            return spent
        for i, order in enumerate(orders):
            if positions[i] == len(order):
                continue
            model = order[positions[i]]
            moved = positions[:i] + (positions[i] + 1,) + positions[i + 1:]
            if model in resident:
                steps = [((moved, resident), 0.0)]
            else:
                steps = [((moved, k | {model}), cost(model))
                         for k in _kept(resident) if _fits(k | {model}, budget)]
            for after, extra in steps:
                if spent + extra < best.get(after, float("inf")):
                    best[after] = spent + extra
                    heapq.heappush(heap, (spent + extra, next(tie), after))
    raise AssertionError("unreachable")


def one_load(model: str) -> float:
    return 1.0


def gb_of(model: str) -> float:
    return SIZES[model] / GB


# -- running and reporting ------------------------------------------------------------------------


@dataclass
class Row:
    """One trace at one budget: every policy's results (six for those the digest order
    decides), and the floors."""

    results: dict[str, list[Result]]
    any_order: tuple[float, float] | None = None
    """(loads, GB) over every interleaving, for traces of several crews."""

    def best(self, policy: str, key: Callable[[Result], float]) -> float:
        return min(key(r) for r in self.results[policy])


def run_trace(trace: list[Request], budget_gb: int, parallel: bool, policies: Sequence[str] = POLICIES,
              any_order: bool = True) -> Row:
    budget = budget_gb * GB
    results: dict[str, list[Result]] = {}
    for policy in policies:
        if policy in CREW_POLICIES:
            results[policy] = [simulate(partial(run_crew, trace, budget, parallel, CREW_POLICIES[policy]))]
        elif policy in ORDERED:
            results[policy] = [simulate(partial(run_scheduler, trace, budget, parallel, policy, order))
                               for order in ORDERS]
        else:
            results[policy] = [simulate(partial(run_scheduler, trace, budget, parallel, policy))]
    row = Row(results)
    if any_order and len({req.crew for req in trace}) > 1:
        row.any_order = (floor_any_order(trace, budget, one_load), floor_any_order(trace, budget, gb_of))
    return row


def spread(values: Sequence[float], fmt: str = "{:.0f}") -> str:
    """One value, or min–median–max when the victim order changes it."""
    low, mid, high = min(values), statistics.median(values), max(values)
    if low == high:
        return fmt.format(low)
    return f"{fmt.format(low)}–{fmt.format(mid)}–{fmt.format(high)}"


def print_budget(rows: dict[str, Row], budget_gb: int) -> None:
    print(f"\n### {budget_gb} GB budget\n")
    print("| trace | policy | GB loaded | load s | makespan s | total wait s | worst crew wait s | loads "
          "| GB floor, own order | loads floor, own order | overruns | refused |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    budget = budget_gb * GB
    for name, row in rows.items():
        for policy, results in row.results.items():
            gb_floor = [floor(r.order(), budget, gb_of) for r in results]
            load_floor = [floor(r.order(), budget, one_load) for r in results]
            print(f"| {name} | {policy} | {spread([r.gb_loaded for r in results], '{:.1f}')} "
                  f"| {spread([r.load_s for r in results])} | {spread([r.makespan for r in results])} "
                  f"| {spread([r.total_wait for r in results])} | {spread([r.worst_wait for r in results])} "
                  f"| {spread([len(r.loads) for r in results])} | {spread(gb_floor, '{:.1f}')} "
                  f"| {spread(load_floor)} | {spread([r.overruns for r in results])} "
                  f"| {spread([r.failed for r in results])} |")
        if row.any_order is not None:
            loads, gb = row.any_order
            print(f"| {name} | floor, any order | {gb:.1f} | {gb * GB / BANDWIDTH:.0f} | | | | {loads:.0f} "
                  "| | | | |")


def print_summary(table: dict[int, dict[str, Row]]) -> None:
    """GB loaded: crew (learned) / crew (rule forecast) / Ollama over its six orders / GB floor."""
    budgets = sorted(table)
    print("\n### GB loaded: crew / crew with the rule's forecast / ollama (min–median–max over the six "
          "victim orders) / floor for crew's order\n")
    print("| trace | " + " | ".join(f"{b} GB" for b in budgets) + " |")
    print("| --- |" + " --- |" * len(budgets))
    for name in table[budgets[0]]:
        cells = []
        for b in budgets:
            row = table[b][name]
            crew, rule = row.results["crew"][0], row.results["crew, rule forecast"][0]
            ollama = [r.gb_loaded for r in row.results["ollama"]]
            own = floor(crew.order(), b * GB, gb_of)
            mark = "**" if crew.gb_loaded <= min(ollama) + 0.05 else ""
            cells.append(f"{mark}{crew.gb_loaded:.0f}{mark} / {rule.gb_loaded:.0f} / {spread(ollama)} "
                         f"/ {own:.0f}")
        print(f"| {name} | " + " | ".join(cells) + " |")


def quantiles(values: Sequence[float]) -> str:
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))]
    return f"{statistics.median(ordered):.3f} / {p90:.3f} / {ordered[-1]:.3f}"


def random_study(count: int, seed: int, budgets: Sequence[int], parallel: bool) -> None:
    rng = random.Random(seed)
    generated = [random_trace(rng) for _ in range(count)]
    kinds: dict[str, int] = defaultdict(int)
    for kind, _ in generated:
        kinds[kind] += 1
    mix = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
    print(f"\n### {count} random traces (seed {seed}: {mix})\n")
    print("Each cell: median / p90 / worst over the traces; a ratio under 1 favours crew.\n")
    print("| budget | crew GB / ollama's best order | crew GB / ollama's median order | crew GB / GB floor "
          "(crew's order) | crew GB / GB floor (any order) | rule-forecast crew GB / ollama's best "
          "| crew makespan / ollama's best | traces where crew loads more GB than ollama's best order "
          "(chat / ci / crews) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for budget_gb in budgets:
        vs_ollama, vs_median, vs_floor, vs_any, rule_vs, span = [], [], [], [], [], []
        worse: dict[str, int] = defaultdict(int)
        for kind, trace in generated:
            row = run_trace(trace, budget_gb, parallel, ["crew", "crew, rule forecast", "ollama"])
            crew = row.results["crew"][0]
            best = row.best("ollama", lambda r: r.gb_loaded)
            vs_ollama.append(crew.gb_loaded / best)
            vs_median.append(crew.gb_loaded / statistics.median(r.gb_loaded for r in row.results["ollama"]))
            rule_vs.append(row.results["crew, rule forecast"][0].gb_loaded / best)
            own = floor(crew.order(), budget_gb * GB, gb_of)
            vs_floor.append(crew.gb_loaded / own)
            vs_any.append(crew.gb_loaded / (row.any_order[1] if row.any_order else own))
            span.append(crew.makespan / row.best("ollama", lambda r: r.makespan))
            worse[kind] += crew.gb_loaded > best + 0.05
        split = " / ".join(str(worse[k]) for k in ("chat", "ci", "crews"))
        print(f"| {budget_gb} GB | {quantiles(vs_ollama)} | {quantiles(vs_median)} | {quantiles(vs_floor)} "
              f"| {quantiles(vs_any)} | {quantiles(rule_vs)} | {quantiles(span)} "
              f"| {sum(worse.values())} of {count} ({split}) |")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--parallel", action="store_true", help="a model serves requests in parallel")
    parser.add_argument("--budgets", default="24,48,56,72,80,96", help="GB, comma-separated")
    parser.add_argument("--random", type=int, default=200, help="random traces (0: none)")
    parser.add_argument("--random-budgets", default="56,72,80,96", help="GB, comma-separated")
    parser.add_argument("--seed", type=int, default=29)
    args = parser.parse_args()
    budgets = [int(b) for b in args.budgets.split(",")]
    named = traces()
    table = {b: {name: run_trace(trace, b, args.parallel) for name, trace in named.items()} for b in budgets}
    print_summary(table)
    for budget_gb in budgets:
        print_budget(table[budget_gb], budget_gb)
    if args.random:
        random_study(args.random, args.seed, [int(b) for b in args.random_budgets.split(",")], args.parallel)


if __name__ == "__main__":
    main()
