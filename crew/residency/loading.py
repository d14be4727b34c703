"""Acting on the plan: starting a load as its own task (evicting its victims first), and
unloading. A base of `ResidencyManager`, above the part that keeps in step with the backend."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

from crew.backends.base import ModelFacts
from crew.errors import BackendError, LoadTimeout
from crew.events import ModelLoaded, ModelLoadStarted, ModelUnloaded, ResidencyWaiting, ResidencyWarning
from crew.residency import advice
from crew.residency.backend_sync import BackendSync, log, retrieve
from crew.residency.budget import MemoryBudget
from crew.residency.host_lock import Claim, Ticket
from crew.residency.slots import Slot

__all__ = ["Loading", "log", "retrieve"]

# How many times a victim another crew brought back is unloaded again before loading anyway.
RESEND_ROUNDS = 3


class Loading(BackendSync):
    """The part of the manager that loads and unloads."""

    _budget: MemoryBudget
    _load_timeout: float
    _busy_notice_s: float
    _offload_noted: set[str]

    async def facts(self, model: str) -> ModelFacts:
        raise NotImplementedError

    def _start_load(self, model: str, need: int, victims: list[Slot], reason: str, partial: bool) -> Slot:
        """Start the load as a task (the host lock, if any, is held by whoever planned it)."""
        old = self._slots.get(model)
        for victim in victims:
            victim.state = "unloading"
        # A mismatched copy of this model is replaced in place: count both until it is gone.
        reserve = need + (old.size if old is not None else 0)
        slot = Slot(model, reserve, "loading", ours=True, last_used=self._clock(), partial=partial)
        self._slots[model] = slot
        others = [v for v in victims if v is not old]
        slot.task = asyncio.create_task(self._load(slot, need, others, old, reason))
        slot.task.add_done_callback(retrieve)
        self._notify()
        return slot

    async def _load(
        self, slot: Slot, need: int, victims: list[Slot], old: Slot | None, reason: str
    ) -> None:
        model = slot.name
        claims: list[Claim] = []  # no other crew process uses a victim until this load is done
        try:
            if old is not None:
                claims.extend(await self._claim(old, model))
                await self._unload(old, f"runner options differ from {model}'s", evicted_for=None)
                slot.size = need
            for victim in victims:
                claims.extend(await self._claim(victim, model))
                await self._unload(victim, f"evicted to make room for {model}", evicted_for=model)
            await self._unload_again([v.name for v in victims])
            self._emit(ModelLoadStarted(model=model, bytes=need, reason=reason))
            if slot.partial and model not in self._offload_noted:
                self._offload_noted.add(model)  # once: the person has been told, and how to fix it
                facts = await self.facts(model)
                self._emit(ResidencyWarning(
                    model=model, message=advice.offload_notice(model, need, facts, self._budget),
                ))
            started = self._clock()
            try:
                await asyncio.wait_for(
                    self._backend.load(model, self._models.profile(model)), self._load_timeout
                )
            except TimeoutError:
                raise LoadTimeout(model, self._load_timeout) from None
            seconds = self._clock() - started
            resident = await self._find(model)
        except BaseException:
            if self._slots.get(model) is slot:
                del self._slots[model]
            for victim in victims:  # not unloaded after all: waiters must not wait for it
                if victim.state == "unloading" and self._slots.get(victim.name) is victim:
                    victim.state = "resident"
            self._reconciled_at = None
            self._notify()
            raise
        finally:
            for claim in claims:
                claim.release()
        slot.size = resident.size if resident else need
        slot.state = "resident"
        slot.last_used = self._clock()
        slot.task = None
        self._models.learn(model, slot.size, seconds, measured=resident is not None)
        self._emit(ModelLoaded(
            model=model, bytes=slot.size, seconds=seconds, reason=reason, partial_offload=slot.partial
        ))
        if resident and resident.size_vram < resident.size and not slot.partial:
            facts = await self.facts(model)
            self._emit(ResidencyWarning(model=model, message=advice.split_notice(
                model, resident.size, resident.size_vram, facts, self._budget)))
        self._notify()

    async def _host_turn(self, waiting: Awaitable[Ticket], what: str, model: str) -> Ticket:
        """Wait for the host lock or a claim, bounded: a crew process stopped (SIGSTOP) or
        stuck while holding it must not stall this one forever."""
        try:
            return await asyncio.wait_for(waiting, self._load_timeout)
        except TimeoutError:
            raise BackendError(
                f"another crew process has held {what} for {self._load_timeout:g} s while {model} "
                "waited: it may be stopped or stuck (see `crew ps`); resume or end it, or run "
                "`crew serve` and point every crew at it so that one process decides"
            ) from None

    async def _claim(self, victim: Slot, loading: str) -> list[Claim]:
        """The victim's exclusive claim, on a host other crew processes share: it waits for every
        crew process using the victim to end its request (bounded by the load timeout)."""
        if self._host_lock is None:
            return []
        claiming = asyncio.ensure_future(self._host_lock.claim(victim.name, exclusive=True))
        try:
            done, _ = await asyncio.wait({claiming}, timeout=self._busy_notice_s)
            if not done:
                self._emit(ResidencyWaiting(model=loading, bytes=victim.size, blocked_by=[
                    f"{victim.name} (another crew process is using it; waiting up to CREW_LOAD_TIMEOUT_S)"]))
            return [await asyncio.wait_for(claiming, self._load_timeout)]
        except TimeoutError:
            raise BackendError(
                f"{victim.name} was still in use by another crew process {self._load_timeout:g} s "
                f"after crew chose to unload it for {loading}: that process may be stopped or stuck "
                "(see `crew ps`); or run `crew serve` and point every crew at it so that one "
                "process decides"
            ) from None
        except BaseException:
            claiming.cancel()  # an abandoned wait must not take the claim later and keep it
            raise

    async def _unload_again(self, victims: list[str]) -> None:
        """Send the unload again for a victim another crew's request brought back (it was
        granted from a read made just before our unload): else this load would overfill Ollama,
        which then evicts on its own. Only on a host other crew processes share."""
        if self._host_lock is None or not victims:
            return
        for _ in range(RESEND_ROUNDS):
            back = [r.name for r in await self._backend.running() if r.name in victims]
            if not back:
                return
            for name in back:
                log.debug("%s is back (another crew's request): unloading it again", name)
                await self._backend.unload(name)

    async def _unload(self, slot: Slot, reason: str, evicted_for: str | None) -> None:
        started = self._clock()
        unloading = asyncio.ensure_future(self._backend.unload(slot.name))
        try:
            done, _ = await asyncio.wait({unloading}, timeout=self._busy_notice_s)
            if not done:
                # Ollama keeps a model until its requests end: someone else is using this one.
                self._emit(ResidencyWaiting(
                    model=evicted_for or slot.name, bytes=slot.size,
                    blocked_by=[f"{slot.name} (another client is still using it; waiting up to "
                                "CREW_LOAD_TIMEOUT_S for its requests to end)"],
                ))
            await unloading
        except BaseException:
            unloading.cancel()
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
