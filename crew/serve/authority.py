"""The one residency authority behind `crew serve`: a ResidencyManager that owns an Ollama host,
the catalog of runner options it enforces, and the upstream connection requests go through.

Every model request a client sends runs inside `Authority.hold`, owned by that request (named
after its client), so the budget, the grouping of requests by resident model and the fairness
bound span every process on the machine. The server, not the client, decides runner options and
`keep_alive` (crew's lease, renewed by the manager): `upstream_body` rewrites what a client sent
before it reaches Ollama.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx

from crew.backends.ollama_api import normalize_model
from crew.errors import CrewError
from crew.events import Event, ModelLoaded, ResidencyWaiting
from crew.residency import Hold, ResidencyManager
from crew.residency.queue import URGENT
from crew.routing import routing_table
from crew.settings import Role, Settings

# Options that shape the runner: a request that changes one makes Ollama reload the model.
RUNNER_OPTIONS = frozenset({"num_ctx", "num_batch", "num_gpu", "main_gpu", "use_mmap", "num_thread"})

Urgency = Literal["normal", "high", "critical"]
PRIORITY: dict[str, int] = {"normal": 0, "high": 1, "critical": URGENT}


class ClientGone(CrewError):
    """The client disconnected before its request could run."""


@dataclass(frozen=True)
class Client:
    """Who sent a request: the `X-Crew-Client` header, else the peer address."""

    name: str
    route: str
    seq: int
    gone: Callable[[], Awaitable[object]] | None = field(default=None, compare=False)
    """Returns when the client has disconnected: a request that waits for its model leaves the
    queue then, instead of loading a model for nobody."""
    noted: Callable[[str, float | None], None] | None = field(default=None, compare=False)
    """Told the model a request asks for, then the seconds it waited (the access log)."""

    def __str__(self) -> str:
        return f"{self.name} {self.route} #{self.seq}"


@dataclass
class Ticket:
    """What getting a model resident cost one request."""

    model: str
    waited_s: float = 0.0
    load_s: float | None = None
    """Seconds of the load this request waited for, if it waited for one."""
    load_bytes: int | None = None
    events: list[Event] = field(default_factory=list)

    def headers(self) -> dict[str, str]:
        """What the answer tells a crew client (it records its own events from them)."""
        out = {"X-Crew-Waited-S": f"{self.waited_s:.6f}"}
        if self.load_s is not None:
            out["X-Crew-Load-S"] = f"{self.load_s:.6f}"
            out["X-Crew-Load-Bytes"] = str(self.load_bytes or 0)
        return out


class Authority:
    """The manager, the catalog and the upstream client of one `crew serve`."""

    def __init__(self, settings: Settings, manager: ResidencyManager, upstream: httpx.AsyncClient) -> None:
        self.settings = settings
        self.manager = manager
        self.upstream = upstream
        self.host = settings.ollama_host
        self.roles: dict[Role, str] = {}
        self.routing: dict[str, Role] = routing_table(settings.routing)
        """Task type -> role: the seed's table with crew.toml's `[routing]` over it."""
        self._seq = itertools.count(1)
        self._register_lock = asyncio.Lock()
        self.wait_observers: list[Callable[[str, float], None]] = []
        """Called with the model and the seconds each request waited for it (the metrics)."""
        for role, rs in settings.roles().items():
            model = normalize_model(rs.model)
            self.roles.setdefault(role, model)
            if not manager.registered(model):
                manager.register(model, {"num_ctx": rs.num_ctx})

    def client(
        self, name: str, route: str, gone: Callable[[], Awaitable[object]] | None = None,
        noted: Callable[[str, float | None], None] | None = None,
    ) -> Client:
        return Client(name, route, next(self._seq), gone, noted)

    def role_of(self, model: str) -> Role | None:
        return next((role for role, m in self.roles.items() if m == model), None)

    async def ensure(self, model: str, body: Mapping[str, Any] | None = None) -> str:
        """The model's canonical name, registered with the manager; ModelNotPulled if unknown.

        A model outside the roles runs at `serve_num_ctx`, or, where crew.toml allows it
        (`serve_client_num_ctx`), at the num_ctx of the first request that names it.
        """
        model = normalize_model(model)
        facts = await self.manager.facts(model)  # 404 for a model Ollama does not have
        if not self.manager.registered(model):
            async with self._register_lock:
                if not self.manager.registered(model):
                    num_ctx = self._client_num_ctx(body) or self.settings.serve_num_ctx
                    if facts.context_length:
                        num_ctx = min(num_ctx, facts.context_length)
                    self.manager.register(model, {"num_ctx": num_ctx})
        return model

    def _client_num_ctx(self, body: Mapping[str, Any] | None) -> int | None:
        options = (body or {}).get("options")
        asked = options.get("num_ctx") if isinstance(options, dict) else None
        if not self.settings.serve_client_num_ctx or not isinstance(asked, int) or isinstance(asked, bool):
            return None
        return asked if asked >= 512 else None

    def runner_options(self, model: str) -> dict[str, Any]:
        return {k: v for k, v in self.manager.options(model).items() if k in RUNNER_OPTIONS}

    def upstream_body(self, model: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """What Ollama receives: the client's request with crew's runner options and keep_alive."""
        sent = {k: v for k, v in body.items() if k != "keep_alive"}
        options = body.get("options")
        if not isinstance(options, dict):
            options = {}
        kept = {k: v for k, v in options.items() if k not in RUNNER_OPTIONS}
        sent["model"] = model
        sent["options"] = {**kept, **self.runner_options(model)}
        sent["keep_alive"] = self.settings.lease_s
        return sent

    async def acquire(self, model: str, client: Client, urgency: str = "normal") -> tuple[Hold, Ticket]:
        """Make `model` resident for one request of `client`; give the Hold back with `release`."""
        ticket = Ticket(model)

        def seen(event: Event) -> None:
            if getattr(event, "model", None) == model and isinstance(event, ModelLoaded | ResidencyWaiting):
                ticket.events.append(event)
                if isinstance(event, ModelLoaded):
                    ticket.load_s = event.seconds
                    ticket.load_bytes = event.bytes

        if client.noted is not None:
            client.noted(model, None)
        started = time.monotonic()
        unsubscribe = self.manager.subscribe(seen)
        try:
            held = await self._acquire_while_connected(model, client, urgency)
        finally:
            unsubscribe()
            ticket.waited_s = time.monotonic() - started
            for observe in self.wait_observers:
                observe(model, ticket.waited_s)
            if client.noted is not None:
                client.noted(model, ticket.waited_s)
        return held, ticket

    async def _acquire_while_connected(self, model: str, client: Client, urgency: str) -> Hold:
        acquiring = asyncio.ensure_future(
            self.manager.acquire(model, str(client), priority=PRIORITY.get(urgency, 0)))
        if client.gone is None:
            return await acquiring
        watching = asyncio.ensure_future(client.gone())
        try:
            await asyncio.wait({acquiring, watching}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watching.cancel()
            if not acquiring.done():
                acquiring.cancel()  # the client left while waiting: out of the queue at once
                raise ClientGone(f"{client} disconnected while waiting for {model}")
        return acquiring.result()

    def release(self, held: Hold) -> None:
        self.manager.release(held)

    @asynccontextmanager
    async def hold(self, model: str, client: Client, urgency: str = "normal") -> AsyncIterator[Ticket]:
        """Make `model` resident for one request of `client` and keep it pinned meanwhile."""
        held, ticket = await self.acquire(model, client, urgency)
        try:
            yield ticket
        finally:
            self.release(held)

    def resident(self) -> set[str]:
        return {v.name for v in self.manager.snapshot().slots if v.state == "resident"}

    def resident_bytes(self, model: str) -> int:
        """What `model` takes in memory now (0 if it is not resident)."""
        return next((v.bytes for v in self.manager.snapshot().slots if v.name == model), 0)
