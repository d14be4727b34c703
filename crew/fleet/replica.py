"""One replica per Ollama host: `crew serve`'s own app and Authority for that host, on Ray Serve.

A replica takes the host of its rank (Ray gives a replacement the rank of the replica it
replaces), opens the same Authority as `crew serve` and reads what the host holds (`/api/ps`)
before its first report, answers requests with the same app, and reports its `HostState` to the
router. It watches its host: one that stops answering is reported down (and leaves routing)
until it answers again, then the manager re-reads what the host holds.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import httpx
from ray import serve

from crew.fleet.asgi import Head, Wire, run
from crew.fleet.hosts import host_settings
from crew.fleet.policy import HostState, Want
from crew.serve.authority import Authority
from crew.settings import HostSettings, Settings

log = logging.getLogger("ray.serve")

# How often a replica asks its host whether it answers (and how long it waits for the answer).
WATCH_S = 1.0
WATCH_TIMEOUT_S = 2.0


class HostReplica:
    """The deployment's class (`crew.fleet.deployment` applies Ray's options)."""

    async def __init__(self, settings: Settings, hosts: list[HostSettings]) -> None:  # type: ignore[misc]
        rank = serve.get_replica_context().rank.rank
        host = hosts[rank % len(hosts)]
        self.label = host.label
        log.info("replica of rank %d owns host %s (%s)", rank, host.label, host.url)
        from crew.serve.app import create_app

        self._app = create_app(host_settings(settings, host))
        self._lifespan = self._app.router.lifespan_context(self._app)
        await self._lifespan.__aenter__()
        self._auth: Authority = self._app.state.authority
        # The first report must say what the host holds (a replacement's host still has the
        # models its predecessor loaded): else the router places requests by chance, and a
        # model resident on one host is loaded again on another.
        self._up = await self._read_host()
        self._busy: Counter[str] = Counter()
        self._received: Counter[str] = Counter()
        self._watching = asyncio.ensure_future(self._watch())

    async def forward(self, want: Want, wire: Wire) -> AsyncIterator[Head | bytes]:
        """Answer one HTTP request with this host's `crew serve` app."""
        if want.model is not None:
            self._busy[want.model] += 1
            self._received[want.model] += 1
        try:
            async for piece in run(self._app, wire, self.label):
                if isinstance(piece, Head) and piece.unreachable:
                    self._up = False  # out of routing now, not at the next watch
                yield piece
        finally:
            if want.model is not None:
                self._busy[want.model] -= 1
                if self._busy[want.model] <= 0:
                    del self._busy[want.model]

    async def size(self, want: Want, model: str) -> int:
        """The bytes `model` takes resident on this host (ModelNotPulled if it has none)."""
        return await self._auth.manager.expected_size(await self._auth.ensure(model))

    def record_routing_stats(self) -> dict[str, Any]:
        manager = self._auth.manager
        snap = manager.snapshot()
        resident = {v.name: v.bytes for v in snap.slots if v.state in ("loading", "resident")}
        return HostState(
            host=self.label, up=self._up, budget=snap.budget.bytes, used=snap.used, resident=resident,
            reload_s={m: manager.reload_seconds(m) for m in resident},
            busy=dict(self._busy), received=dict(self._received),
        ).model_dump()

    async def _watch(self) -> None:
        while True:
            up = await self._answers()
            if up != self._up:
                log.info("host %s %s", self.label, "answers again" if up else "does not answer")
            if up and not self._up:
                up = await self._read_host()  # a restarted Ollama holds nothing
            self._up = up
            await asyncio.sleep(WATCH_S)

    async def _read_host(self) -> bool:
        """Re-read what the host holds; False when it cannot be read (reported down)."""
        try:
            await self._auth.manager.refresh()
        except Exception as exc:  # noqa: BLE001 - the watch reads it again when it answers
            log.warning("host %s: could not read what it holds: %s", self.label, exc)
            return False
        return True

    async def _answers(self) -> bool:
        try:
            answer = await self._auth.upstream.get("/api/version", timeout=WATCH_TIMEOUT_S)
        except httpx.HTTPError:
            return False
        return answer.status_code == 200

    async def __del__(self) -> None:
        self._watching.cancel()
        await self._lifespan.__aexit__(None, None, None)
