"""The ResidencyManager: which models are in memory, and when that changes.

One manager per backend (Ollama host) per process. Every model request runs inside
`async with manager.hold(model):`, which makes the model resident, pins it for the request
and releases it on exit, error or cancellation. Decisions follow these rules:

- Truth is the backend's (`/api/ps`), read again before each decision, so models loaded or
  unloaded by someone else (or lost in a restart) are noticed.
- The resident set never exceeds the budget: a model that does not fit evicts idle models,
  chosen so that the time it would cost to reload them, discounted by how long they have sat
  idle, is least. Pinned models are never evicted; when they hold the room, the request waits
  for a release (no polling). A model larger than the whole budget fails fast, or, when the
  user allowed partial offload, runs alone with a warning.
- Requests for one model share one load. Loads start in arrival order; requests for a
  resident model go first, but a waiting load that has been passed over `fairness` times
  stops further grants until it is served, so nothing starves.
- Loads run as their own tasks: a cancelled request does not leave a load half-counted.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

from crew.backend import Backend, ModelFacts, Resident
from crew.errors import BackendError, CrewError, LoadTimeout, ModelTooLarge, ResidencyDeadlock
from crew.events import (
    Event,
    ModelAppeared,
    ModelLoaded,
    ModelLoadStarted,
    ModelReleased,
    ModelUnloaded,
    ModelVanished,
    ResidencyWaiting,
    ResidencyWarning,
)
from crew.measured import Measurement, Measurements
from crew.memory import GB, MemoryBudget

log = logging.getLogger("crew.residency")

DEFAULT_LOAD_TIMEOUT_S = 300.0
# What evicting a model another live crew process keeps is counted as, in reload seconds.
ELSEWHERE_PENALTY_S = 3600.0
DEFAULT_FAIRNESS = 4
# Bytes per second assumed for a model never loaded here (between a Mac's mmap and Linux).
ASSUMED_LOAD_BANDWIDTH = 1 * GB
# Victim sets are searched exhaustively up to this many candidates, greedily beyond.
_EXHAUSTIVE_LIMIT = 10

State = Literal["loading", "resident", "unloading"]


@dataclass(eq=False)
class _Slot:
    name: str
    size: int
    state: State
    ours: bool
    last_used: float
    pins: int = 0
    reserved: int = 0
    """Requests that started or joined this model's load and are yet to pin it."""
    holders: Counter[asyncio.Task[Any] | None] = field(default_factory=Counter)
    task: asyncio.Task[None] | None = None
    mismatched: bool = False
    """Resident with other runner options than ours: Ollama would reload it on our request."""
    partial: bool = False


@dataclass(eq=False)
class _Waiter:
    model: str
    seq: int
    task: asyncio.Task[Any] | None
    reservation: _Slot | None = None
    passed: int = 0
    """Grants to other models while this request waited at the head of the load queue."""
    announced: bool = False


@dataclass(frozen=True)
class _Grant:
    slot: _Slot


@dataclass(frozen=True)
class _Join:
    task: asyncio.Task[None]


@dataclass(frozen=True)
class _Load:
    victims: list[_Slot]
    partial: bool = False


@dataclass(frozen=True)
class _Wait:
    blockers: list[str] = field(default_factory=list)
    for_room: bool = True
    """False when the room exists but fairness makes this request wait its turn."""


_Plan = _Grant | _Join | _Load | _Wait


@dataclass(frozen=True)
class SlotView:
    """One resident (or loading/unloading) model as the manager counts it."""

    name: str
    bytes: int
    state: State
    pins: int
    ours: bool
    idle_seconds: float
    partial_offload: bool


@dataclass(frozen=True)
class Snapshot:
    budget: MemoryBudget
    used: int
    slots: list[SlotView]


class ResidencyManager:
    """Keeps the right models resident in a backend, within a memory budget."""

    def __init__(
        self,
        backend: Backend,
        budget: MemoryBudget,
        *,
        allow_partial_offload: bool = False,
        load_timeout: float = DEFAULT_LOAD_TIMEOUT_S,
        fairness: int = DEFAULT_FAIRNESS,
        reconcile_ttl: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        measurements: Measurements | None = None,
        held_elsewhere: Callable[[], frozenset[str]] | None = None,
    ) -> None:
        self._backend = backend
        self._budget = budget
        self._allow_partial = allow_partial_offload
        self._load_timeout = load_timeout
        self._fairness = fairness
        self._reconcile_ttl = reconcile_ttl
        self._clock = clock
        self._measurements = measurements
        self._held_elsewhere = held_elsewhere
        self._profiles: dict[str, dict[str, Any]] = {}
        self._facts: dict[str, ModelFacts] = {}
        self._learned_size: dict[str, int] = {}
        self._learned_load_s: dict[str, float] = {}
        self._slots: dict[str, _Slot] = {}
        self._waiters: list[_Waiter] = []
        self._seq = itertools.count()
        self._lock = asyncio.Lock()
        self._changed = asyncio.Event()
        self._reconciled_at: float | None = None
        self._subscribers: list[Callable[[Event], None]] = []
        self._closed = False

    # -- setup -------------------------------------------------------------------------

    @property
    def backend(self) -> Backend:
        return self._backend

    @property
    def budget(self) -> MemoryBudget:
        return self._budget

    def register(self, model: str, options: Mapping[str, Any]) -> None:
        """Declare the runner options every request for `model` will use."""
        known = self._profiles.get(model)
        if known is not None and known.get("num_ctx") != options.get("num_ctx"):
            raise CrewError(
                f"{model} is registered twice with different num_ctx ({known.get('num_ctx')} and "
                f"{options.get('num_ctx')}); Ollama would reload it at every switch: use one"
            )
        self._profiles[model] = dict(options)
        self._recall(model)

    def _recall(self, model: str) -> None:
        """Start from an earlier run's measurement of this model at these options, if any."""
        facts, profile = self._facts.get(model), self._profiles.get(model)
        if self._measurements is None or facts is None or profile is None or model in self._learned_size:
            return
        known = self._measurements.recall(model, int(profile.get("num_ctx") or 0), facts.file_size)
        if known is not None:
            self._learned_size[model] = known.bytes
            self._learned_load_s[model] = known.load_seconds

    def options(self, model: str) -> dict[str, Any]:
        return dict(self._require_profile(model))

    def subscribe(self, callback: Callable[[Event], None]) -> Callable[[], None]:
        """Call `callback` with every residency event; returns a function that unsubscribes."""
        self._subscribers.append(callback)
        return lambda: self._subscribers.remove(callback)

    async def facts(self, model: str) -> ModelFacts:
        """What the backend says about a model (cached); raises ModelNotPulled."""
        if model not in self._facts:
            self._facts[model] = await self._backend.inspect(model)
            self._recall(model)
        return self._facts[model]

    async def expected_size(self, model: str) -> int:
        """Learned resident size if the model was loaded before, else an estimate."""
        if model in self._learned_size:
            return self._learned_size[model]
        facts = await self.facts(model)
        return facts.estimate_size(self._require_profile(model))

    # -- the public operations -----------------------------------------------------------

    @asynccontextmanager
    async def hold(self, model: str) -> AsyncIterator[None]:
        """Make `model` resident and keep it pinned while the body runs."""
        task = asyncio.current_task()
        slot = await self._acquire(model, task)
        try:
            yield
        except BackendError:
            # A failed request may mean the server restarted: re-read it before trusting state.
            self._reconciled_at = None
            raise
        finally:
            self._release(slot, task)

    async def prefetch(self, model: str) -> bool:
        """Start loading `model` if it fits in the free budget now; never evicts.

        Returns True when the model is resident or loading afterwards.
        """
        self._require_open()
        async with self._lock:
            await self._reconcile(force=True)
            slot = self._slots.get(model)
            if slot is not None and slot.state in ("loading", "resident") and not slot.mismatched:
                return True
            if slot is not None or any(self._needs_load(w.model) for w in self._waiters):
                return False
            need = await self.expected_size(model)
            if self._used() + need > self._budget.bytes:
                return False
            self._start_load(model, need, [], reason="prefetch", partial=False)
            return True

    def snapshot(self) -> Snapshot:
        now = self._clock()
        views = [
            SlotView(s.name, s.size, s.state, s.pins, s.ours, now - s.last_used, s.partial)
            for s in self._slots.values()
        ]
        return Snapshot(self._budget, self._used(), views)

    async def refresh(self) -> Snapshot:
        """Reconcile with the backend now and return what is resident."""
        async with self._lock:
            await self._reconcile(force=True)
        return self.snapshot()

    async def aclose(self) -> None:
        """Stop loading, hand our idle models back to the backend's expiry, close the backend."""
        if self._closed:
            return
        self._closed = True
        for slot in list(self._slots.values()):
            if slot.task is not None and not slot.task.done():
                slot.task.cancel()
        try:
            running = {r.name for r in await self._backend.running()}
            for slot in list(self._slots.values()):
                if slot.ours and slot.state == "resident" and slot.name in running:
                    await self._backend.release(slot.name, self._require_profile(slot.name))
                    self._emit(ModelReleased(model=slot.name, bytes=slot.size))
        except CrewError as exc:
            log.debug("could not hand models back on close: %s", exc)
        finally:
            await self._backend.aclose()

    async def __aenter__(self) -> ResidencyManager:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- acquiring and releasing --------------------------------------------------------

    async def _acquire(self, model: str, task: asyncio.Task[Any] | None) -> _Slot:
        self._require_open()
        self._require_profile(model)
        waiter = _Waiter(model, next(self._seq), task)
        self._waiters.append(waiter)
        try:
            while True:
                async with self._lock:
                    await self._check_fits_at_all(model)
                    read = await self._reconcile(force=False)
                    plan = self._plan(waiter)
                    if isinstance(plan, _Load | _Wait) and not read:
                        # Only a grant may rest on a recent read; loads and evictions never do.
                        await self._reconcile(force=True)
                        plan = self._plan(waiter)
                    if isinstance(plan, _Grant):
                        return self._grant(waiter, plan.slot)
                    if isinstance(plan, _Load):
                        need = await self.expected_size(model)
                        reason = "partial offload" if plan.partial else "requested"
                        slot = self._start_load(model, need, plan.victims, reason, plan.partial)
                        assert slot.task is not None
                        plan = _Join(slot.task)
                    if isinstance(plan, _Join):
                        self._reserve(waiter)
                    elif isinstance(plan, _Wait):
                        changed = self._changed
                        self._note_blocked(waiter, plan)
                if isinstance(plan, _Join):
                    await asyncio.shield(plan.task)
                else:
                    await changed.wait()
        finally:
            if waiter.reservation is not None:
                waiter.reservation.reserved -= 1
                waiter.reservation = None
            if waiter in self._waiters:
                self._waiters.remove(waiter)
                self._notify()

    def _reserve(self, waiter: _Waiter) -> None:
        # Whoever waited for a load is served before anyone may evict what it loaded.
        slot = self._slots[waiter.model]
        if waiter.reservation is not slot:
            if waiter.reservation is not None:
                waiter.reservation.reserved -= 1
            slot.reserved += 1
            waiter.reservation = slot

    def _grant(self, waiter: _Waiter, slot: _Slot) -> _Slot:
        if waiter.reservation is not None:
            waiter.reservation.reserved -= 1
            waiter.reservation = None
        slot.pins += 1
        slot.holders[waiter.task] += 1
        slot.last_used = self._clock()
        head = self._load_head()
        if head is not None and head.model != waiter.model:
            head.passed += 1
        self._waiters.remove(waiter)
        self._notify()  # the head's patience changed; deferred requests may re-plan
        return slot

    def _release(self, slot: _Slot, task: asyncio.Task[Any] | None) -> None:
        # Synchronous on purpose: it runs in `finally`, also while being cancelled.
        slot.pins -= 1
        slot.holders[task] -= 1
        if slot.holders[task] <= 0:
            del slot.holders[task]
        slot.last_used = self._clock()
        self._notify()

    def _note_blocked(self, waiter: _Waiter, plan: _Wait) -> None:
        if not plan.blockers:
            return
        if plan.for_room:
            self._check_deadlock(waiter)
        if not waiter.announced:
            waiter.announced = True
            size = self._learned_size.get(waiter.model, 0)
            self._emit(ResidencyWaiting(model=waiter.model, bytes=size, blocked_by=plan.blockers))

    def _check_deadlock(self, waiter: _Waiter) -> None:
        pinned = [s for s in self._slots.values() if s.pins]
        busy = [s for s in self._slots.values() if s.state != "resident"]
        if pinned and not busy and all(set(s.holders) <= {waiter.task} for s in pinned):
            raise ResidencyDeadlock(
                f"{waiter.model} needs the memory held by {', '.join(s.name for s in pinned)}, "
                "which the same task is still using: finish that request before starting this one"
            )

    # -- planning -----------------------------------------------------------------------

    def _plan(self, waiter: _Waiter) -> _Plan:
        slot = self._slots.get(waiter.model)
        if slot is not None and slot.state == "loading":
            assert slot.task is not None
            return _Join(slot.task)
        starving = self._starving()
        if slot is not None and slot.state == "resident" and not slot.mismatched:
            if waiter.reservation is slot:
                return _Grant(slot)
            if starving is not None and starving.model != waiter.model:
                return _Wait([starving.model], for_room=False)
            return _Grant(slot)
        if slot is not None and slot.state == "unloading":
            return _Wait()
        head = self._load_head()
        if head is not None and head.model != waiter.model:
            return _Wait()  # loads start in arrival order
        need = self._expected_size_now(waiter.model)
        others = [s for s in self._slots.values() if s.name != waiter.model]
        forced = [slot] if slot is not None else []
        if need > self._budget.bytes:
            # Allowed partial offload (checked before): the model must be alone.
            busy = [s.name for s in others if s.pins or s.reserved or s.state != "resident"]
            return _Wait(busy) if busy else _Load(others + forced, partial=True)
        shortfall = self._used() + need - self._budget.bytes
        if shortfall <= 0 and not forced:
            return _Load([])
        # Models other requests are queued for stay, unless this request has waited its bound.
        wanted = {w.model for w in self._waiters if w is not waiter}
        candidates = [
            s for s in others
            if s.state == "resident" and not s.pins and not s.reserved
            and (waiter is starving or s.name not in wanted)
        ]
        victims = self._choose_victims(candidates, shortfall - sum(s.size for s in forced))
        if victims is None:
            return _Wait([s.name for s in others if s not in candidates] or ["a load in progress"])
        return _Load(victims + forced)

    def _choose_victims(self, candidates: list[_Slot], shortfall: int) -> list[_Slot] | None:
        """The idle set to evict that frees `shortfall` bytes at the least reload cost."""
        if shortfall <= 0:
            return []
        if sum(s.size for s in candidates) < shortfall:
            return None
        # Read only here, when something must go: other crews' notes are files (crew.holders).
        elsewhere = self._held_elsewhere() if self._held_elsewhere is not None else frozenset()

        def value(slot: _Slot) -> float:
            # Another live crew keeps it: evicting it costs that crew a reload mid-run, so it
            # goes only when nothing else frees the room (never a hard pin: no cross-process
            # deadlock).
            courtesy = ELSEWHERE_PENALTY_S if not slot.ours and slot.name in elsewhere else 0.0
            return self._keep_value(slot) + courtesy

        if len(candidates) > _EXHAUSTIVE_LIMIT:
            chosen: list[_Slot] = []
            for slot in sorted(candidates, key=value):
                chosen.append(slot)
                if sum(s.size for s in chosen) >= shortfall:
                    return chosen
            return None
        best: tuple[float, int] | None = None
        best_set: list[_Slot] = []
        for r in range(1, len(candidates) + 1):
            for combo in itertools.combinations(candidates, r):
                freed = sum(s.size for s in combo)
                if freed < shortfall:
                    continue
                key = (sum(value(s) for s in combo), freed)
                if best is None or key < best:
                    best, best_set = key, list(combo)
        return best_set

    def _keep_value(self, slot: _Slot) -> float:
        """Seconds it would cost to reload, discounted by how long the model has been idle."""
        reload_s = self._learned_load_s.get(slot.name, slot.size / ASSUMED_LOAD_BANDWIDTH)
        idle = max(0.0, self._clock() - slot.last_used)
        return reload_s / (1.0 + idle)

    def _load_head(self) -> _Waiter | None:
        """The earliest request whose model must be loaded: loads start in this order."""
        return next((w for w in self._waiters if self._needs_load(w.model)), None)

    def _starving(self) -> _Waiter | None:
        head = self._load_head()
        return head if head is not None and head.passed >= self._fairness else None

    def _needs_load(self, model: str) -> bool:
        slot = self._slots.get(model)
        return slot is None or slot.mismatched or slot.state == "unloading"

    def _used(self) -> int:
        return sum(s.size for s in self._slots.values())

    def _expected_size_now(self, model: str) -> int:
        if model in self._learned_size:
            return self._learned_size[model]
        return self._facts[model].estimate_size(self._profiles[model])

    async def _check_fits_at_all(self, model: str) -> None:
        need = await self.expected_size(model)
        if need > self._budget.bytes and not self._allow_partial:
            raise ModelTooLarge(model, need, self._budget.bytes)

    # -- loading and unloading ----------------------------------------------------------

    def _start_load(
        self, model: str, need: int, victims: list[_Slot], reason: str, partial: bool
    ) -> _Slot:
        old = self._slots.get(model)
        for victim in victims:
            victim.state = "unloading"
        # A mismatched copy of this model is replaced in place: count both until it is gone.
        reserve = need + (old.size if old is not None else 0)
        slot = _Slot(model, reserve, "loading", ours=True, last_used=self._clock(), partial=partial)
        self._slots[model] = slot
        others = [v for v in victims if v is not old]
        slot.task = asyncio.create_task(self._load(slot, need, others, old, reason))
        slot.task.add_done_callback(_retrieve)
        self._notify()
        return slot

    async def _load(
        self, slot: _Slot, need: int, victims: list[_Slot], old: _Slot | None, reason: str
    ) -> None:
        model = slot.name
        try:
            if old is not None:
                await self._unload(old, f"runner options differ from {model}'s", evicted_for=None)
                slot.size = need
            for victim in victims:
                await self._unload(victim, f"evicted to make room for {model}", evicted_for=model)
            self._emit(ModelLoadStarted(model=model, bytes=need, reason=reason))
            if slot.partial:
                self._emit(ResidencyWarning(
                    model=model,
                    message=f"{model} (~{need / GB:.1f} GB) is larger than the "
                    f"{self._budget.gb:.1f} GB budget: it runs alone, partly on the CPU (slow)",
                ))
            started = self._clock()
            try:
                await asyncio.wait_for(
                    self._backend.load(model, self._profiles[model]), self._load_timeout
                )
            except TimeoutError:
                raise LoadTimeout(model, self._load_timeout) from None
            seconds = self._clock() - started
            resident = await self._find(model)
        except BaseException:
            if self._slots.get(model) is slot:
                del self._slots[model]
            self._reconciled_at = None
            self._notify()
            raise
        slot.size = resident.size if resident else need
        slot.state = "resident"
        slot.last_used = self._clock()
        slot.task = None
        self._learned_size[model] = slot.size
        self._learned_load_s[model] = seconds
        if self._measurements is not None and resident is not None:
            self._measurements.remember(
                model, int(self._profiles[model].get("num_ctx") or 0), self._facts[model].file_size,
                Measurement(resident.size, seconds),
            )
        self._emit(ModelLoaded(
            model=model, bytes=slot.size, seconds=seconds, reason=reason, partial_offload=slot.partial
        ))
        if resident and resident.size_vram < resident.size and not slot.partial:
            self._emit(ResidencyWarning(
                model=model,
                message=f"{model} runs partly on the CPU ({resident.size_vram / GB:.1f} of "
                f"{resident.size / GB:.1f} GB on the GPU): lower its num_ctx to keep it on the GPU",
            ))
        self._notify()

    async def _unload(self, slot: _Slot, reason: str, evicted_for: str | None) -> None:
        started = self._clock()
        try:
            await self._backend.unload(slot.name)
        except BaseException:
            slot.state = "resident"  # still there, as far as we know; reconcile will tell
            self._reconciled_at = None
            self._notify()
            raise
        if self._slots.get(slot.name) is slot:
            del self._slots[slot.name]
        self._emit(ModelUnloaded(
            model=slot.name, bytes=slot.size, seconds=self._clock() - started,
            reason=reason, evicted_for=evicted_for,
        ))
        self._notify()

    async def _find(self, model: str) -> Resident | None:
        running = await self._backend.running()
        return next((r for r in running if r.name == model), None)

    # -- reconciling with the backend ---------------------------------------------------

    async def _reconcile(self, *, force: bool) -> bool:
        """Read what the backend has resident and correct our counts; False if skipped."""
        now = self._clock()
        if (
            not force
            and self._reconciled_at is not None
            and now - self._reconciled_at < self._reconcile_ttl
        ):
            return False
        running = await self._backend.running()
        now = self._clock()
        self._reconciled_at = now
        seen = {r.name: r for r in running}
        for name, slot in list(self._slots.items()):
            if slot.state != "resident":
                continue
            resident = seen.get(name)
            if resident is None:
                if slot.pins == 0:
                    del self._slots[name]
                    self._emit(ModelVanished(model=name, bytes=slot.size))
                    self._notify()
                continue
            slot.size = resident.size
            slot.mismatched = self._mismatched(resident)
        for name, resident in seen.items():
            if name not in self._slots:
                self._slots[name] = _Slot(
                    name, resident.size, "resident", ours=False, last_used=now,
                    mismatched=self._mismatched(resident),
                )
                self._emit(ModelAppeared(model=name, bytes=resident.size))
        return True

    def _mismatched(self, resident: Resident) -> bool:
        profile = self._profiles.get(resident.name)
        if profile is None or resident.context_length is None:
            return False
        wanted = int(profile.get("num_ctx") or 0)
        facts = self._facts.get(resident.name)
        if facts is not None and facts.context_length:
            wanted = min(wanted, facts.context_length)
        return bool(wanted) and resident.context_length != wanted

    # -- plumbing -----------------------------------------------------------------------

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _emit(self, event: Event) -> None:
        _log_event(event)
        for callback in list(self._subscribers):
            callback(event)

    def _require_profile(self, model: str) -> dict[str, Any]:
        try:
            return self._profiles[model]
        except KeyError:
            raise CrewError(f"{model} was not registered with the residency manager") from None

    def _require_open(self) -> None:
        if self._closed:
            raise CrewError("the residency manager is closed; create a new one")


def _retrieve(task: asyncio.Task[None]) -> None:
    # Joiners receive a failed load's exception; this keeps asyncio from also logging it.
    if not task.cancelled():
        task.exception()


def _log_event(event: Event) -> None:
    if isinstance(event, ModelLoaded):
        log.info("[MODEL] LOAD %s (%.1f GB) %.2fs %s", event.model, event.bytes / GB,
                 event.seconds, event.reason)
    elif isinstance(event, ModelUnloaded):
        log.info("[MODEL] UNLOAD %s (%.1f GB) %.2fs %s", event.model, event.bytes / GB,
                 event.seconds, event.reason)
    else:
        log.debug("[MODEL] %s", event.model_dump_json())
