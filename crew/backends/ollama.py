"""The Ollama backend: residency through Ollama's native HTTP API, via the official client.

Its exceptions become crew errors at the seam in `crew.backends.ollama_api`. `import ollama` takes
~0.25 s here (it builds ~60 pydantic models and an HTTPS client at import), so it is imported
only when a client is made. The manager reads `/api/ps` before every request: that read goes
through the official client and is parsed by `ollama_api.parse_running`, the same parser
`crew ps` uses.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, TypeVar

import httpx

from crew.backends.base import ModelFacts, Resident, kv_bytes_per_token
from crew.backends.ollama_api import METADATA_TIMEOUT_S, decode, normalize_model, ollama_errors, parse_running
from crew.errors import BackendError, ModelNotPulled

if TYPE_CHECKING:
    import ollama

log = logging.getLogger("crew.ollama")

T = TypeVar("T")

# Ollama unloads a model only once its running requests end: another client's long answer can
# hold it. The registry passes the load timeout (CREW_LOAD_TIMEOUT_S), which bounds this wait.
UNLOAD_TIMEOUT_S = 300.0
DEFAULT_LEASE_S = 300.0
# Unload returns before memory is free; /api/ps is polled with a growing pause between reads.
POLL_FIRST_S = 0.005
POLL_MAX_S = 0.25


def tls_verify(host: str) -> bool:
    # Plain-http hosts (the usual local Ollama) never use TLS; skipping the CA bundle load
    # saves ~40 ms of start-up per client. https hosts keep full verification.
    return not host.startswith("http://")


# What a `crew serve` in front of Ollama said about the request in flight in this task: the seconds
# it waited for its model and the load it waited for (response headers X-Crew-*). Set by the
# caller around a request (crew.residency.served); filled by the client's response hook.
SERVED_TICKET: ContextVar[dict[str, float] | None] = ContextVar("served_ticket", default=None)
# How a crew server names this process in its access log and `/api/ps` holders.
CLIENT_NAME = f"crew pid {os.getpid()}"


async def _note_served(response: httpx.Response) -> None:
    ticket = SERVED_TICKET.get()
    if ticket is None:
        return
    for header, key in (("x-crew-waited-s", "waited_s"), ("x-crew-load-s", "load_s"),
                        ("x-crew-load-bytes", "load_bytes")):
        value = response.headers.get(header)
        if value:
            ticket[key] = float(value)


def make_client(host: str, *, read_timeout: float | None = None) -> ollama.AsyncClient:
    """An ollama.AsyncClient whose connect phase fails fast and whose reads have a timeout.

    It names this process to a crew server and reads what the server says about residency.
    """
    import ollama

    timeout = httpx.Timeout(read_timeout, connect=5.0)
    return ollama.AsyncClient(host=host, timeout=timeout, verify=tls_verify(host),
                              headers={"X-Crew-Client": CLIENT_NAME},
                              event_hooks={"response": [_note_served]})


class OllamaBackend:
    """Residency operations on an Ollama server."""

    def __init__(
        self,
        host: str,
        *,
        keep_alive_after: str | float = "5m",
        unload_timeout: float = UNLOAD_TIMEOUT_S,
        lease_s: float = DEFAULT_LEASE_S,
    ) -> None:
        self._host = host
        self._client = make_client(host)
        self._keep_alive_after = keep_alive_after
        self._unload_timeout = unload_timeout
        self.lease_s = lease_s
        """keep_alive of every load and request: never -1, so nothing stays if crew is killed."""
        self.crew_server = False
        """The host is a `crew serve` (set when opened): it loads and unloads, not this process."""

    @property
    def label(self) -> str:
        return self._host

    async def _call(self, make: Callable[[], Awaitable[T]], model: str | None = None) -> T:
        # Idempotent calls retry once: a pooled keep-alive connection to an Ollama that
        # restarted fails on first use even though the new server is up.
        async with ollama_errors(self._host, model):
            try:
                try:
                    return await asyncio.wait_for(make(), METADATA_TIMEOUT_S)
                except (httpx.RemoteProtocolError, httpx.ReadError, ConnectionError, httpx.ConnectError):
                    return await asyncio.wait_for(make(), METADATA_TIMEOUT_S)
            except ValueError as exc:  # HTML, or JSON of the wrong shape (pydantic's errors are ValueErrors)
                raise BackendError(f"{self._host} answered with something other than Ollama's JSON "
                                   f"({type(exc).__name__}): is CREW_OLLAMA_HOST an Ollama server?") from None

    async def version(self) -> str:
        # The official client has no call for /api/version; it is read once (doctor, `auto`).
        answer = await self._version_answer()
        return str(answer.get("version", "unknown")) if isinstance(answer, dict) else "unknown"

    async def served(self) -> bool:
        """Whether the host is a `crew serve` in front of Ollama (it then decides residency)."""
        answer = await self._version_answer()
        return isinstance(answer, dict) and "crew" in answer

    async def _version_answer(self) -> Any:
        async def get() -> Any:
            timeout = httpx.Timeout(METADATA_TIMEOUT_S, connect=5.0)
            async with httpx.AsyncClient(base_url=self._host, timeout=timeout,
                                         verify=tls_verify(self._host)) as client:
                response = await client.get("/api/version")
                response.raise_for_status()
                return decode(response.content, self._host, "/api/version")

        return await self._call(get)

    async def running(self) -> list[Resident]:
        # Parsed by the same function as `crew ps`'s standard-library read.
        answer = await self._call(self._client.ps)
        return parse_running(answer.model_dump(), self._host)

    async def inspect(self, model: str) -> ModelFacts:
        tags = await self._call(self._client.list)
        file_size = next(
            (int(m.size or 0) for m in tags.models if normalize_model(m.model or "") == model), None
        )
        if file_size is None:
            raise ModelNotPulled(model, self._host)
        show = await self._call(lambda: self._client.show(model), model)
        info: Mapping[str, Any] = show.modelinfo or {}
        arch = str(info.get("general.architecture", ""))
        context = info.get(f"{arch}.context_length")
        return ModelFacts(
            name=model,
            file_size=file_size,
            architecture=arch,
            context_length=int(context) if context else None,
            kv_bytes_per_token=kv_bytes_per_token(info),
            capabilities=frozenset(show.capabilities or ()),
        )

    async def load(self, model: str, options: Mapping[str, Any]) -> None:
        # Not retried: a second load request could double a slow load. The manager's timeout
        # bounds it instead.
        async with ollama_errors(self._host, model):
            await self._client.chat(
                model=model, messages=[], options=dict(options), keep_alive=self.lease_s, stream=False
            )

    async def unload(self, model: str) -> None:
        await self._call(
            lambda: self._client.chat(model=model, messages=[], keep_alive=0, stream=False), model
        )
        await self._wait_gone(model)

    async def _wait_gone(self, model: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._unload_timeout
        pause = POLL_FIRST_S
        while any(r.name == model for r in await self.running()):
            if loop.time() > deadline:
                raise BackendError(
                    f"{model} is still resident {self._unload_timeout:g} s after crew unloaded it: "
                    "another client is still using it; raise CREW_LOAD_TIMEOUT_S, or run `crew serve` "
                    "and point every client at it so that one process decides"
                )
            await asyncio.sleep(pause)
            pause = min(pause * 2, POLL_MAX_S)

    async def renew(self, model: str, options: Mapping[str, Any]) -> None:
        # Same options as the load: Ollama re-arms the expiry without reloading.
        await self._call(
            lambda: self._client.chat(model=model, messages=[], options=dict(options),
                                      keep_alive=self.lease_s, stream=False),
            model,
        )

    async def release(self, model: str, options: Mapping[str, Any]) -> None:
        # Same options as the load, so this re-arms the expiry timer without a reload.
        await self._call(
            lambda: self._client.chat(
                model=model, messages=[], options=dict(options),
                keep_alive=self._keep_alive_after, stream=False,
            ),
            model,
        )

    async def aclose(self) -> None:
        await self._client.close()  # type: ignore[no-untyped-call]  # public, unannotated
