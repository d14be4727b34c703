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
from collections.abc import AsyncIterator, Callable, Hashable, Mapping
from contextlib import asynccontextmanager
from typing import Any

from crew.backends.base import Backend, ModelFacts
from crew.errors import BackendError, CrewError, ModelTooLarge, ResidencyDeadlock
from crew.events import (
    Event,
    ModelReleased,
    ResidencyWaiting,
)
from crew.residency import advice
from crew.residency.budget import MemoryBudget
from crew.residency.eviction import EvictionPolicy, WorkflowAware
from crew.residency.forecasting import Forecasting
from crew.residency.host_lock import Claim, HostLock, Ticket
from crew.residency.knowledge import ModelKnowledge
from crew.residency.loading import Loading, log
from crew.residency.measurements import Measurements
from crew.residency.planning import Grant, Join, Load, Plan, Situation, Wait, plan
from crew.residency.queue import DEFAULT_FAIRNESS, Waiter, WaitQueue
from crew.residency.slots import Hold, Slot, SlotView, Snapshot
from crew.residency.transitions import Outlook

DEFAULT_LOAD_TIMEOUT_S = 300.0
# An unload that takes longer than this is waiting for another client's request to end.
BUSY_NOTICE_S = 0.5


class ResidencyManager(Loading, Forecasting):
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
        host_lock: HostLock | None = None,
    ) -> None:
        self._backend = backend
        # Crew processes apart on one Ollama take turns to change its memory (crew.residency.host_lock).
        self._host_lock = host_lock
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
        claims: list[Claim] = []
        slot = await self._acquire(model, who, priority, claims)
        return Hold(model, who, slot, claim=claims[0] if claims else None)

    def release(self, held: Hold) -> None:
        """Unpin a model acquired with `acquire`. Synchronous: safe in `finally` while cancelled."""
        if held.released:
            return  # a second release (a retried cleanup) must not unpin someone else's hold
        held.released = True
        if held.claim is not None:
            held.claim.release()
        slot = held.slot
        slot.pins -= 1
        slot.holders[held.owner] -= 1
        if slot.holders[held.owner] <= 0:
            del slot.holders[held.owner]
        slot.last_used = self._clock()
        self._notify()

    async def prefetch(self, model: str) -> bool:
        """Start loading `model` if it fits in the free budget now; never evicts, and never
        waits for another crew process's turn (with a host lock, it is skipped instead).

        Returns True when the model is resident or loading afterwards.
        """
        self._require_open()
        ticket = self._host_lock.try_acquire() if self._host_lock is not None else None
        if self._host_lock is not None and ticket is None:
            return False
        try:
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
                slot = self._start_load(model, need, [], reason="prefetch", partial=False)
                if ticket is not None:
                    assert slot.task is not None
                    slot.task.add_done_callback(ticket.release_when_done)
                    ticket = None
                return True
        finally:
            if ticket is not None:
                ticket.release()

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
        ticket: Ticket | None = None
        try:
            if self._host_lock is not None:
                # Handing back is a request per model: sent for one another crew is unloading,
                # it would load it again. So it waits for this host's turn (bounded).
                ticket = await asyncio.wait_for(self._host_lock.acquire(), self._load_timeout)
            running = {r.name: r for r in await self._backend.running()}
            for slot in list(self._slots.values()):
                # Not one another client reloaded with its own options: ours would reload it.
                if slot.ours and slot.state == "resident" and slot.name in running \
                        and not self._models.mismatched(running[slot.name]):
                    await self._backend.release(slot.name, self._models.profile(slot.name))
                    self._emit(ModelReleased(model=slot.name, bytes=slot.size))
        except CrewError as exc:
            log.debug("could not hand models back on close: %s", exc)
        except TimeoutError:
            log.debug("no turn on the host to hand models back: their leases will end them")
        finally:
            if ticket is not None:
                ticket.release()
            await self._backend.aclose()

    async def __aenter__(self) -> ResidencyManager:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- acquiring and releasing --------------------------------------------------------

    async def _acquire(self, model: str, owner: Hashable, priority: int,
                       granted: list[Claim] | None = None) -> Slot:
        self._require_open()
        self._models.profile(model)
        waiter = self._queue.join(model, owner, priority)
        ticket: Ticket | None = None
        claim: Claim | None = None
        wants_host = wants_claim = loaded = False
        load_task: asyncio.Task[None] | None = None
        try:
            while True:
                if wants_host and ticket is None and self._host_lock is not None:
                    ticket = await self._host_turn(self._host_lock.acquire(), "the host lock", model)
                if wants_claim and claim is None and self._host_lock is not None:
                    claim = await self._host_turn(self._host_lock.claim(model, exclusive=False),
                                                  f"{model}'s claim", model)
                async with self._lock:
                    await self._check_fits_at_all(model)
                    # Under the host lock or a claim, what other crews changed must be read afresh.
                    read = await self._reconcile(force=ticket is not None or claim is not None)
                    plan = self._plan(waiter)
                    if isinstance(plan, Load | Wait) and not read:
                        # Only a grant may rest on a recent read; loads and evictions never do.
                        await self._reconcile(force=True)
                        plan = self._plan(waiter)
                    if ticket is None and self._host_lock is not None and isinstance(plan, Load):
                        if claim is not None:  # never wait for the host lock holding a claim
                            claim.release()
                            claim, wants_claim = None, False
                        wants_host = True  # a load is planned again under the host lock
                        continue
                    if isinstance(plan, Grant) and self._host_lock is not None and claim is None:
                        wants_claim = True  # claimed first, then read again: see host_lock
                        continue
                    if isinstance(plan, Grant):
                        slot = self._grant(waiter, plan.slot)
                        if granted is not None and claim is not None:
                            granted.append(claim)  # kept until the hold ends
                            claim = None
                        return slot  # the host lock goes back: the claim keeps the model
                    if isinstance(plan, Load):
                        need = await self.expected_size(model)
                        reason = "partial offload" if plan.partial else "requested"
                        slot = self._start_load(model, need, plan.victims, reason, plan.partial)
                        loaded = ticket is not None
                        load_task = slot.task
                        assert slot.task is not None
                        plan = Join(slot.task)
                    if isinstance(plan, Join):
                        self._reserve(waiter)
                    elif isinstance(plan, Wait):
                        changed = self._changed
                        self._note_blocked(waiter, plan)
                    if ticket is not None and not loaded:  # nothing of ours to change: others may
                        ticket.release()
                        ticket = None
                    if claim is not None:  # the model is not there to use: nothing to keep
                        claim.release()
                        claim, wants_claim = None, False
                if isinstance(plan, Join):
                    await asyncio.shield(plan.task)
                else:
                    await changed.wait()
        finally:
            if ticket is not None and loaded and load_task is not None and not load_task.done():
                # This request goes first (a cancel) but Ollama goes on loading, unseen in
                # /api/ps: the host lock stays with the load until it ends.
                load_task.add_done_callback(ticket.release_when_done)
                ticket = None
            for lock in (ticket, claim):
                if lock is not None:
                    lock.release()
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
