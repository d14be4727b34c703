"""The ResidencyManager: which models are in memory, and when that changes.

One manager per backend (Ollama host) per process. Every model request runs inside
`async with manager.hold(model, owner):`, which makes the model resident, pins it for the
request and releases it on exit, error or cancellation (`acquire`/`release` where a hold cannot
be a block). A hold belongs to an owner: by default the current task, or any hashable id (a
process, a remote client). Decisions follow these rules:

- Truth is the backend's (`/api/ps`), read again before each decision, so models loaded or
  unloaded by someone else (or lost in a restart) are noticed.
- The resident set never exceeds the budget: a model that does not fit evicts idle models,
  chosen by the eviction policy (`crew.residency.eviction`; by default the set cheapest to
  reload, discounted by how long each has sat idle). Pinned models are never evicted; when
  they hold the room, the request waits for a release (no polling). A model larger than the
  whole budget fails fast, or, when the user allowed partial offload, runs alone with a warning.
- Requests for one model share one load. Loads start in arrival order; requests for a
  resident model go first, but a waiting load that has been passed over `fairness` times
  stops further grants until it is served, so nothing starves (`crew.residency.queue`).
- A request that needs room only its own owner's holds could free fails at once
  (ResidencyDeadlock) instead of waiting forever.
- Loads run as their own tasks: a cancelled request does not leave a load half-counted.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Hashable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from crew.backends.base import Backend, ModelFacts
from crew.errors import BackendError, CrewError, ModelTooLarge, ResidencyDeadlock
from crew.events import (
    Event,
    ModelReleased,
    ResidencyWaiting,
    ResidencyWarning,
)
from crew.residency import advice
from crew.residency.budget import MemoryBudget
from crew.residency.eviction import Candidate, EvictionPolicy, WorkflowAware
from crew.residency.knowledge import ModelKnowledge
from crew.residency.loading import Loading, log
from crew.residency.measurements import Measurements
from crew.residency.planning import Grant, Join, Load, Plan, Situation, Wait, plan
from crew.residency.queue import DEFAULT_FAIRNESS, Waiter, WaitQueue
from crew.residency.slots import Slot, SlotView, Snapshot
from crew.residency.transitions import Lookahead, Outlook, Room

DEFAULT_LOAD_TIMEOUT_S = 300.0
# An unload that takes longer than this is waiting for another client's request to end.
BUSY_NOTICE_S = 0.5


@dataclass(eq=False)
class Hold:
    """A pin on a resident model, owned by whoever asked for it; give it back with `release`."""

    model: str
    owner: Hashable
    slot: Slot
    released: bool = False


class ResidencyManager(Loading):
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
        eviction: EvictionPolicy | None = None,
        machine_memory: int | None = None,
        busy_notice_s: float = BUSY_NOTICE_S,
        lease_s: float | None = None,
    ) -> None:
        self._backend = backend
        # Models we keep between requests have a finite lease in the backend; it is renewed a
        # third of the way through, so one missed renewal never lets a model expire.
        self._lease_s = lease_s
        self._renewer: asyncio.Task[None] | None = None
        self._busy_notice_s = busy_notice_s
        self._budget = budget
        self._allow_partial = allow_partial_offload
        # With partial offload allowed, a model over this still cannot run (None: no limit).
        self._machine_memory = machine_memory
        self._offload_noted: set[str] = set()
        self._shared_noted = False
        self._load_timeout = load_timeout
        self._reconcile_ttl = reconcile_ttl
        self._clock = clock
        self._models = ModelKnowledge(backend, measurements)
        self._held_elsewhere = held_elsewhere
        self._eviction: EvictionPolicy = eviction or WorkflowAware()
        self._forecasts: dict[Hashable, dict[str, Outlook]] = {}
        self._slots: dict[str, Slot] = {}
        self._queue = WaitQueue(self._needs_load, fairness)
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
        self._models.register(model, options)

    def options(self, model: str) -> dict[str, Any]:
        return dict(self._models.profile(model))

    def forecast(self, models: Sequence[str] | Mapping[str, Outlook] | None, source: Hashable = None) -> None:
        """What `source` (a team) expects to ask for: a list, soonest first (its current
        request's model first), each surely needed; or each model's `Outlook` (the chance it is
        needed within the horizon and how soon), as a learned forecast gives it. None withdraws
        it. Eviction spares what the forecasts would cost most to reload."""
        if models is None:
            self._forecasts.pop(source, None)
        elif isinstance(models, Lookahead):
            self._forecasts[source] = models
        elif isinstance(models, Mapping):
            self._forecasts[source] = dict(models)
        else:
            outlook: dict[str, Outlook] = {}
            for i, model in enumerate(models):
                outlook.setdefault(model, Outlook(1.0, float(i)))
            self._forecasts[source] = outlook

    def _outlook(self, model: str) -> Outlook | None:
        """All sources together: needed if any needs it (independently), as soon as the soonest."""
        if not self._forecasts:
            return None
        seen = [f[model] for f in self._forecasts.values() if model in f]
        unused = 1.0
        for outlook in seen:
            unused *= 1.0 - outlook.p_use
        return Outlook(1.0 - unused, min((o.next_use for o in seen), default=float("inf")))

    def subscribe(self, callback: Callable[[Event], None]) -> Callable[[], None]:
        """Call `callback` with every residency event; returns a function that unsubscribes."""
        self._subscribers.append(callback)
        return lambda: self._subscribers.remove(callback)

    async def facts(self, model: str) -> ModelFacts:
        """What the backend says about a model (cached); raises ModelNotPulled."""
        return await self._models.facts(model)

    async def expected_size(self, model: str) -> int:
        """Learned resident size if the model was loaded before, else an estimate."""
        return await self._models.expected_size(model)

    # -- the public operations -----------------------------------------------------------

    @asynccontextmanager
    async def hold(
        self, model: str, owner: Hashable | None = None, *, priority: int = 0
    ) -> AsyncIterator[Hold]:
        """Make `model` resident and keep it pinned while the body runs.

        The hold belongs to `owner` (by default the current task): a request that needs room
        only its own owner's holds could free fails instead of waiting forever.
        """
        held = await self.acquire(model, owner, priority=priority)
        try:
            yield held
        except BackendError:
            # A failed request may mean the server restarted: re-read it before trusting state.
            self._reconciled_at = None
            raise
        finally:
            self.release(held)

    async def acquire(self, model: str, owner: Hashable | None = None, *, priority: int = 0) -> Hold:
        """Make `model` resident and pin it for `owner` until `release` (prefer `hold`).

        A higher `priority` starts its load ahead of queued lower ones (within the fairness bound).
        """
        who: Hashable = owner if owner is not None else asyncio.current_task()
        return Hold(model, who, await self._acquire(model, who, priority))

    def release(self, held: Hold) -> None:
        """Unpin a model acquired with `acquire`. Synchronous: safe in `finally` while cancelled."""
        if held.released:
            return  # a second release (a retried cleanup) must not unpin someone else's hold
        held.released = True
        slot = held.slot
        slot.pins -= 1
        slot.holders[held.owner] -= 1
        if slot.holders[held.owner] <= 0:
            del slot.holders[held.owner]
        slot.last_used = self._clock()
        self._notify()

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
            if slot is not None or self._queue.any_load_waiting():
                return False
            need = await self.expected_size(model)
            if self._used() + need > self._budget.bytes:
                return False
            self._start_load(model, need, [], reason="prefetch", partial=False)
            return True

    def registered(self, model: str) -> bool:
        return self._models.registered(model)

    def reload_seconds(self, model: str) -> float:
        """What loading `model` again would take here: measured, else estimated from its size."""
        slot = self._slots.get(model)
        size = slot.size if slot else self._models.expected_size_now(model)
        return self._models.reload_seconds(model, size)

    def waiting(self) -> dict[str, int]:
        """How many requests wait for each model (queue depth)."""
        return self._queue.depth()

    def holders(self) -> dict[str, list[Hashable]]:
        """Who holds each model now."""
        return {s.name: list(s.holders) for s in self._slots.values() if s.holders}

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
        if self._renewer is not None:
            self._renewer.cancel()
        for slot in list(self._slots.values()):
            if slot.task is not None and not slot.task.done():
                slot.task.cancel()
        try:
            running = {r.name for r in await self._backend.running()}
            for slot in list(self._slots.values()):
                if slot.ours and slot.state == "resident" and slot.name in running:
                    await self._backend.release(slot.name, self._models.profile(slot.name))
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

    async def _acquire(self, model: str, owner: Hashable, priority: int) -> Slot:
        self._require_open()
        self._models.profile(model)
        waiter = self._queue.join(model, owner, priority)
        try:
            while True:
                async with self._lock:
                    await self._check_fits_at_all(model)
                    read = await self._reconcile(force=False)
                    plan = self._plan(waiter)
                    if isinstance(plan, Load | Wait) and not read:
                        # Only a grant may rest on a recent read; loads and evictions never do.
                        await self._reconcile(force=True)
                        plan = self._plan(waiter)
                    if isinstance(plan, Grant):
                        return self._grant(waiter, plan.slot)
                    if isinstance(plan, Load):
                        need = await self.expected_size(model)
                        reason = "partial offload" if plan.partial else "requested"
                        slot = self._start_load(model, need, plan.victims, reason, plan.partial)
                        assert slot.task is not None
                        plan = Join(slot.task)
                    if isinstance(plan, Join):
                        self._reserve(waiter)
                    elif isinstance(plan, Wait):
                        changed = self._changed
                        self._note_blocked(waiter, plan)
                if isinstance(plan, Join):
                    await asyncio.shield(plan.task)
                else:
                    await changed.wait()
        finally:
            if waiter.reservation is not None:
                waiter.reservation.reserved -= 1
                waiter.reservation = None
            if self._queue.leave(waiter):
                self._notify()

    def _reserve(self, waiter: Waiter) -> None:
        # Whoever waited for a load is served before anyone may evict what it loaded.
        slot = self._slots[waiter.model]
        if waiter.reservation is not slot:
            if waiter.reservation is not None:
                waiter.reservation.reserved -= 1
            slot.reserved += 1
            waiter.reservation = slot

    def _grant(self, waiter: Waiter, slot: Slot) -> Slot:
        if waiter.reservation is not None:
            waiter.reservation.reserved -= 1
            waiter.reservation = None
        slot.pins += 1
        slot.holders[waiter.owner] += 1
        slot.last_used = self._clock()
        self._queue.granted(waiter)
        self._ensure_renewing()
        self._notify()  # the head's patience changed; deferred requests may re-plan
        return slot

    def _note_blocked(self, waiter: Waiter, plan: Wait) -> None:
        if not plan.blockers:
            return
        if plan.for_room:
            self._check_deadlock(waiter)
        if not waiter.announced:
            waiter.announced = True
            size = self._models.learned_size(waiter.model) or 0
            self._emit(ResidencyWaiting(model=waiter.model, bytes=size, blocked_by=plan.blockers))

    def _check_deadlock(self, waiter: Waiter) -> None:
        pinned = [s for s in self._slots.values() if s.pins]
        busy = [s for s in self._slots.values() if s.state != "resident"]
        if pinned and not busy and all(set(s.holders) <= {waiter.owner} for s in pinned):
            raise ResidencyDeadlock(
                f"{waiter.model} needs the memory held by {', '.join(s.name for s in pinned)}, "
                f"which {_owner_name(waiter.owner)} is still using: finish that request before "
                "starting this one"
            )

    # -- planning (crew.residency.planning decides; the manager reads the state for it) ---

    def _plan(self, waiter: Waiter) -> Plan:
        return plan(waiter, self._situation(waiter),
                    lambda candidates, shortfall: self._choose_victims(candidates, shortfall, waiter.model))

    def _situation(self, waiter: Waiter) -> Situation:
        slot = self._slots.get(waiter.model)
        # The size is known only once the model's facts are: needed only when it is not resident.
        need = 0 if slot is not None and slot.state in ("loading", "resident") and not slot.mismatched \
            else self._models.expected_size_now(waiter.model)
        return Situation(slots=self._slots, budget=self._budget.bytes, need=need,
                         starving=self._queue.starving(), load_head=self._queue.load_head(),
                         wanted=frozenset(self._queue.wanted(waiter)))

    def _choose_victims(self, candidates: list[Slot], shortfall: int, model: str) -> list[Slot] | None:
        """The idle set to evict that frees `shortfall` bytes, as the eviction policy picks it (the plan
        asks only when the candidates together free enough)."""
        # Read only here, when something must go: other crews' notes are files (crew.residency.holders).
        elsewhere = self._held_elsewhere() if self._held_elsewhere is not None else frozenset()
        if elsewhere and not self._shared_noted:
            self._shared_noted = True  # once: the person has been told, and how to fix it
            self._emit(ResidencyWarning(model=model, message=(
                f"other crews keep models on this Ollama too ({', '.join(sorted(elsewhere))}); apart, "
                "crews cannot see each other's loads in flight and evict what the others use: run "
                "`crew serve` and point every crew at it (CREW_OLLAMA_HOST=http://127.0.0.1:8000)")))
        now = self._clock()
        outlooks = {s.name: self._outlook(s.name) for s in candidates}
        offered = {
            Candidate(
                name=s.name, bytes=s.size,
                reload_seconds=self._models.reload_seconds(s.name, s.size),
                idle_seconds=now - s.last_used, kept_elsewhere=not s.ours and s.name in elsewhere,
                next_use=outlook.next_use if outlook else None, p_use=outlook.p_use if outlook else None,
            ): s
            for s in candidates for outlook in [outlooks[s.name]]
        }
        future = self._future(model, offered)
        chosen = (self._eviction.choose(list(offered), shortfall) if future is None
                  else self._eviction.choose(list(offered), shortfall, future=future))
        return None if chosen is None else [offered[c] for c in chosen]

    def _future(self, model: str, offered: Mapping[Candidate, Slot]
                ) -> Callable[[Sequence[Candidate]], float] | None:
        """The expected reload seconds over the learned forecasts' horizon if a set is evicted
        (None without such a forecast, or while a forecast model's size is unknown)."""
        ahead = [f for f in self._forecasts.values() if isinstance(f, Lookahead)]
        if not ahead:
            return None
        sizes = {s.name: s.size for s in self._slots.values()}
        for name in {m for f in ahead for m in f}:
            if name not in sizes:
                try:
                    sizes[name] = self._models.expected_size_now(name)
                except KeyError:
                    return None
        room = Room(sizes, {m: self._models.reload_seconds(m, size) for m, size in sizes.items()},
                    self._budget.bytes)
        present = frozenset(s.name for s in self._slots.values()) | {model}

        def future(combo: Sequence[Candidate]) -> float:
            after = present - {offered[c].name for c in combo}
            return sum(f.future_cost(after, room) for f in ahead)
        return future

    def _needs_load(self, model: str) -> bool:
        slot = self._slots.get(model)
        return slot is None or slot.mismatched or slot.state == "unloading"

    def _used(self) -> int:
        return sum(s.size for s in self._slots.values())

    async def check_fits(self, model: str) -> None:
        """Raise ModelTooLarge now if `model` can never be made resident here."""
        await self._check_fits_at_all(model)

    async def _check_fits_at_all(self, model: str) -> None:
        need = await self.expected_size(model)
        if need <= self._budget.bytes:
            return
        fixes = advice.fixes(need, await self.facts(model), self._budget, "its num_ctx")
        if not self._allow_partial:
            raise ModelTooLarge(model, need, self._budget.bytes, fixes)
        if self._machine_memory and need > self._machine_memory:
            raise ModelTooLarge(model, need, self._budget.bytes, fixes, machine=self._machine_memory)

    # -- loading and unloading ----------------------------------------------------------


    def _require_open(self) -> None:
        if self._closed:
            raise CrewError("the residency manager is closed; create a new one")


def _owner_name(owner: Hashable) -> str:
    return "the same task" if isinstance(owner, asyncio.Task) else f"the same owner ({owner})"
