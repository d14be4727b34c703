"""Residency when the host is a `crew serve`: the server decides; this process only asks.

A `ServedResidency` is a ResidencyManager that never loads, unloads or evicts: its holds pin
nothing here, because the server holds the model for each request itself and groups requests
from every process by model. What the server did for a request (the seconds it waited, the load
it waited for) comes back in the answer's `X-Crew-*` headers and becomes this process's own
events, so `events.jsonl` still records the loads and waits its requests caused. Forecasts and
prefetches are sent to the server, which weighs them with everyone else's.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Hashable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import httpx

from crew.backends.ollama import CLIENT_NAME, SERVED_TICKET, OllamaBackend, tls_verify
from crew.events import ModelLoaded, ResidencyWaiting
from crew.residency.budget import MemoryBudget
from crew.residency.manager import ResidencyManager
from crew.residency.slots import Hold, Slot
from crew.residency.transitions import Outlook

log = logging.getLogger("crew.residency")

# A wait shorter than this is the server's bookkeeping, not a wait worth an event.
NOTABLE_WAIT_S = 0.05
# A learned forecast's models this likely to be needed are sent to the server as needed.
LIKELY = 0.5


class ServedResidency(ResidencyManager):
    """The residency manager of a process whose host is a crew server."""

    def __init__(self, backend: OllamaBackend, budget: MemoryBudget, **kwargs: Any) -> None:
        super().__init__(backend, budget, **kwargs)
        self._host = backend.label
        self._http = httpx.AsyncClient(base_url=self._host, timeout=httpx.Timeout(30.0, connect=5.0),
                                       verify=tls_verify(self._host), headers={"X-Crew-Client": CLIENT_NAME})
        self._pending: set[asyncio.Task[None]] = set()

    @asynccontextmanager
    async def hold(
        self, model: str, owner: Hashable | None = None, *, priority: int = 0
    ) -> AsyncIterator[Hold]:
        held = await self.acquire(model, owner)
        ticket: dict[str, float] = {}
        token = SERVED_TICKET.set(ticket)
        try:
            yield held
        finally:
            SERVED_TICKET.reset(token)
            self._record(model, ticket)

    def _record(self, model: str, ticket: dict[str, float]) -> None:
        waited = ticket.get("waited_s", 0.0)
        load = ticket.get("load_s")
        if waited - (load or 0.0) >= NOTABLE_WAIT_S:
            self._emit(ResidencyWaiting(model=model, bytes=int(ticket.get("load_bytes", 0)),
                                        blocked_by=[f"crew serve at {self._host} ({waited:.2f} s)"]))
        if load is not None:
            self._emit(ModelLoaded(model=model, bytes=int(ticket.get("load_bytes", 0)), seconds=load,
                                   reason=f"loaded by crew serve at {self._host} for this request"))

    async def acquire(self, model: str, owner: Hashable | None = None, *, priority: int = 0) -> Hold:
        """A hold that pins nothing here: the server holds the model for each request itself."""
        self.options(model)  # still: a model must be registered
        return Hold(model, owner or "served", Slot(model, 0, "resident", ours=False, last_used=0.0))

    def release(self, held: Hold) -> None:
        held.released = True

    async def check_fits(self, model: str) -> None:
        return None  # the server's budget decides; it answers 507 for a model that can never fit

    async def prefetch(self, model: str) -> bool:
        try:
            answer = await self._http.post("/crew/v1/prefetch", json={"model": model})
            return bool(answer.status_code == 200 and answer.json().get("started"))
        except (httpx.HTTPError, ValueError) as exc:
            log.debug("prefetch through crew serve failed: %s", exc)
            return False

    def forecast(self, models: Sequence[str] | Mapping[str, Outlook] | None, source: Hashable = None) -> None:
        # The server's route takes a list, soonest first: a learned outlook is sent as the
        # models more likely needed than not (the chances themselves stay here).
        if isinstance(models, Mapping):
            likely = sorted((o.next_use, m) for m, o in models.items() if o.p_use >= LIKELY)
            wanted: list[str] | None = [m for _, m in likely]
        else:
            wanted = list(models) if models is not None else None
        body = {"source": f"{CLIENT_NAME} {id(source):x}", "models": wanted}
        try:
            task = asyncio.get_running_loop().create_task(self._send_forecast(body))
        except RuntimeError:  # no loop (a synchronous caller): a forecast is only advice
            return
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _send_forecast(self, body: dict[str, Any]) -> None:
        try:
            await self._http.post("/crew/v1/forecast", json=body)
        except httpx.HTTPError as exc:
            log.debug("forecast to crew serve failed: %s", exc)

    async def aclose(self) -> None:
        # Nothing to hand back: the server keeps what it decided to keep.
        if self._closed:
            return
        self._closed = True
        for task in list(self._pending):
            task.cancel()
        await self._http.aclose()
        await self._backend.aclose()
