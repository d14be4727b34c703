"""The Ollama backend: residency through Ollama's native HTTP API, via the official client.

This module is also the one seam where ollama/httpx exceptions become crew errors
(`ollama_errors`); the RoutedOllamaClient translates through it too.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import httpx
import ollama

from crew.backend import ModelFacts, Resident, kv_bytes_per_token
from crew.errors import (
    BackendError,
    CrewError,
    ModelCapabilityError,
    ModelNotPulled,
    OllamaOutOfMemory,
    OllamaUnreachable,
    RequestTimeout,
    StreamInterrupted,
)

log = logging.getLogger("crew.ollama")

T = TypeVar("T")

METADATA_TIMEOUT_S = 30.0
UNLOAD_TIMEOUT_S = 60.0
# Unload returns before memory is free; /api/ps is polled with a growing pause between reads.
POLL_FIRST_S = 0.005
POLL_MAX_S = 0.25


def normalize_model(name: str) -> str:
    """Ollama's canonical name: `qwen3` is `qwen3:latest`."""
    name = name.strip()
    last = name.rsplit("/", 1)[-1]
    return name if ":" in last else f"{name}:latest"


def translate(exc: BaseException, host: str, model: str | None = None) -> CrewError:
    """The crew error for a foreign exception raised while talking to Ollama."""
    what = f" ({model})" if model else ""
    if isinstance(exc, CrewError):
        return exc
    if isinstance(exc, ConnectionError | httpx.ConnectError):
        return OllamaUnreachable(host)
    if isinstance(exc, ollama.ResponseError):
        text = str(exc.error)
        if exc.status_code == 404 or "not found" in text and "model" in text:
            return ModelNotPulled(model or text, host)
        if "does not support" in text:
            return ModelCapabilityError(
                f"Ollama refused a request{what}: {text}; turn the option off for that role "
                "(e.g. CREW_REVIEWER_THINK=false)"
            )
        if "memory" in text:
            return OllamaOutOfMemory(
                f"Ollama ran out of memory{what}: {text}; lower the role's num_ctx or "
                "CREW_MEMORY_BUDGET_GB, or close other programs"
            )
        if exc.status_code == 503:
            return BackendError(f"Ollama is busy{what} (queue full): retry, or raise OLLAMA_MAX_QUEUE")
        code = f"HTTP {exc.status_code}" if exc.status_code > 0 else "mid-answer"
        return BackendError(f"Ollama answered with an error{what} ({code}): {text}")
    if isinstance(exc, httpx.TimeoutException | TimeoutError):
        return RequestTimeout(
            f"Ollama did not answer in time{what}: raise the role's timeout_s "
            "(e.g. CREW_CODER_TIMEOUT_S), or check the Ollama server log"
        )
    if isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError | httpx.WriteError):
        return StreamInterrupted(
            f"Ollama at {host} closed the connection mid-request{what}: it may have crashed or "
            "restarted; check `ollama ps` and run again"
        )
    if isinstance(exc, httpx.HTTPError):
        return BackendError(f"talking to Ollama at {host} failed{what}: {exc}")
    raise exc


@asynccontextmanager
async def ollama_errors(host: str, model: str | None = None) -> AsyncIterator[None]:
    """Translate ollama/httpx exceptions raised inside into crew errors."""
    try:
        yield
    except (ollama.ResponseError, ConnectionError, httpx.HTTPError, TimeoutError) as exc:
        raise translate(exc, host, model) from exc


def make_client(host: str, *, read_timeout: float | None = None) -> ollama.AsyncClient:
    """An ollama.AsyncClient whose connect phase fails fast and whose reads have a timeout."""
    # Plain-http hosts (the usual local Ollama) never use TLS; skipping the CA bundle load
    # saves ~40 ms of start-up per client. https hosts keep full verification.
    verify = not host.startswith("http://")
    return ollama.AsyncClient(host=host, timeout=httpx.Timeout(read_timeout, connect=5.0), verify=verify)


class OllamaBackend:
    """Residency operations on an Ollama server."""

    def __init__(
        self,
        host: str,
        *,
        keep_alive_after: str | float = "5m",
        unload_timeout: float = UNLOAD_TIMEOUT_S,
    ) -> None:
        self._host = host
        self._client = make_client(host)
        self._keep_alive_after = keep_alive_after
        self._unload_timeout = unload_timeout

    @property
    def label(self) -> str:
        return self._host

    async def _call(self, make: Callable[[], Awaitable[T]], model: str | None = None) -> T:
        # Idempotent calls retry once: a pooled keep-alive connection to an Ollama that
        # restarted fails on first use even though the new server is up.
        async with ollama_errors(self._host, model):
            try:
                return await asyncio.wait_for(make(), METADATA_TIMEOUT_S)
            except (httpx.RemoteProtocolError, httpx.ReadError, ConnectionError, httpx.ConnectError):
                return await asyncio.wait_for(make(), METADATA_TIMEOUT_S)

    async def version(self) -> str:
        async def get() -> str:
            response = await self._client._client.get("/api/version")
            response.raise_for_status()
            return str(response.json().get("version", "unknown"))

        return await self._call(get)

    async def running(self) -> list[Resident]:
        ps = await self._call(self._client.ps)
        return [
            Resident(
                name=normalize_model(m.name or m.model or ""),
                size=int(m.size or 0),
                size_vram=int(m.size_vram or 0),
                context_length=m.context_length,
                expires_at=m.expires_at,
            )
            for m in ps.models
        ]

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
                model=model, messages=[], options=dict(options), keep_alive=-1, stream=False
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
                    "a long request may still be running on it; check `ollama ps`"
                )
            await asyncio.sleep(pause)
            pause = min(pause * 2, POLL_MAX_S)

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
        await self._client._client.aclose()
