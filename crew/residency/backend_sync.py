"""Keeping the manager's counts in step with the backend: reading what it has resident
(`_reconcile`), renewing the leases of the models crew keeps, and telling waiters and
subscribers that something changed. A base of `ResidencyManager`; the state it reads is the
manager's, declared here."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from crew.backends.base import Backend, Resident
from crew.errors import CrewError
from crew.events import Event, ModelAppeared, ModelLoaded, ModelUnloaded, ModelVanished
from crew.residency.budget import GB
from crew.residency.host_lock import HostLock
from crew.residency.knowledge import ModelKnowledge
from crew.residency.slots import Slot

log = logging.getLogger("crew.residency")


class BackendSync:
    """The part of the manager that keeps in step with the backend."""

    _backend: Backend
    _slots: dict[str, Slot]
    _models: ModelKnowledge
    _clock: Callable[[], float]
    _lock: asyncio.Lock
    _changed: asyncio.Event
    _subscribers: list[Callable[[Event], None]]
    _reconciled_at: float | None
    _reconcile_ttl: float
    _lease_s: float | None
    _renewer: asyncio.Task[None] | None
    _closed: bool
    _host_lock: HostLock | None

    async def _find(self, model: str) -> Resident | None:
        running = await self._backend.running()
        return next((r for r in running if r.name == model), None)

    def _ensure_renewing(self) -> None:
        if self._lease_s is None or self._renewer is not None or self._closed:
            return
        self._renewer = asyncio.create_task(self._renew_leases())
        self._renewer.add_done_callback(retrieve)

    async def _renew_leases(self) -> None:
        assert self._lease_s is not None
        period = self._lease_s / 3
        while not self._closed:
            await asyncio.sleep(period)
            # A renewal is a request: sent for a model another crew is unloading, it would load
            # it again behind every crew's back. Skipped while another crew changes memory.
            ticket = self._host_lock.try_acquire() if self._host_lock is not None else None
            if self._host_lock is not None and ticket is None:
                continue
            try:
                async with self._lock:
                    await self._reconcile(force=True)  # never renew (reload) what has gone
                    now = self._clock()
                    due = [s for s in self._slots.values()
                           if s.ours and s.state == "resident" and not s.pins and not s.mismatched
                           and now - max(s.last_used, s.renewed_at) >= period]
                    for slot in due:
                        await self._backend.renew(slot.name, self._models.profile(slot.name))
                        slot.renewed_at = self._clock()
            except CrewError as exc:
                self._reconciled_at = None
                log.debug("could not renew leases: %s", exc)
            finally:
                if ticket is not None:
                    ticket.release()

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
            slot.mismatched = self._models.mismatched(resident)
        for name, resident in seen.items():
            if name not in self._slots:
                self._slots[name] = Slot(
                    name, resident.size, "resident", ours=False, last_used=now,
                    mismatched=self._models.mismatched(resident),
                )
                self._emit(ModelAppeared(model=name, bytes=resident.size))
        return True

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _emit(self, event: Event) -> None:
        _log_event(event)
        for callback in list(self._subscribers):
            callback(event)


def retrieve(task: asyncio.Task[None]) -> None:
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
