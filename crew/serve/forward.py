"""Sending a client's model request to Ollama inside a hold, whole or streamed.

A streamed answer keeps its hold until the last line is sent or the client goes away: the
response is a `HeldStream`, which closes the upstream connection (so Ollama stops generating)
and releases the hold however the response ends, even if its body was never started.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from starlette.responses import StreamingResponse
from starlette.types import Message, Receive, Scope, Send

from crew.backends.ollama_api import ollama_errors
from crew.errors import BackendError
from crew.residency import Hold
from crew.serve.authority import Authority, Client, Ticket
from crew.serve.drain import Drain, drain_of


class UpstreamRefused(BackendError):
    """Ollama answered a forwarded request with an error status: passed on as it came."""

    def __init__(self, status: int, body: bytes) -> None:
        try:
            text = str(json.loads(body).get("error") or body.decode("utf-8", "replace"))
        except (ValueError, AttributeError):
            text = body.decode("utf-8", "replace").strip()
        super().__init__(text)
        self.status = status


@dataclass
class Answer:
    """A whole answer from Ollama, and what getting its model resident cost."""

    data: dict[str, Any]
    ticket: Ticket


async def call(
    auth: Authority, client: Client, path: str, model: str, body: Mapping[str, Any], urgency: str = "normal"
) -> Answer:
    """One non-streamed request to `path`, inside a hold on `model`."""
    async with auth.hold(model, client, urgency) as ticket:
        sent = {**auth.upstream_body(model, body), "stream": False}
        async with ollama_errors(auth.host, model):
            response = await auth.upstream.post(path, json=sent)
        if response.status_code != 200:
            raise UpstreamRefused(response.status_code, response.content)
        data = response.json()
        return Answer(data if isinstance(data, dict) else {}, ticket)


class Upstream:
    """A streamed answer from Ollama, read as NDJSON lines; `aclose` ends it and the hold."""

    def __init__(
        self, auth: Authority, model: str, response: httpx.Response, held: Hold, ticket: Ticket
    ) -> None:
        self._auth = auth
        self._model = model
        self._response = response
        self._held = held
        self.ticket = ticket

    async def lines(self) -> AsyncIterator[dict[str, Any]]:
        async with ollama_errors(self._auth.host, self._model):
            async for line in self._response.aiter_lines():
                if line.strip():
                    yield json.loads(line)

    async def aclose(self) -> None:
        try:
            await self._response.aclose()
        finally:
            self._auth.release(self._held)


async def open_stream(
    auth: Authority, client: Client, path: str, model: str, body: Mapping[str, Any], urgency: str = "normal"
) -> Upstream:
    """Start a streamed request to `path` inside a hold on `model`; errors before the first line
    raise (so the client gets a status), later ones arrive as lines."""
    held, ticket = await auth.acquire(model, client, urgency)
    try:
        sent = {**auth.upstream_body(model, body), "stream": True}
        request = auth.upstream.build_request("POST", path, json=sent)
        async with ollama_errors(auth.host, model):
            response = await auth.upstream.send(request, stream=True)
        if response.status_code != 200:
            content = await response.aread()
            await response.aclose()
            raise UpstreamRefused(response.status_code, content)
    except BaseException:
        auth.release(held)
        raise
    return Upstream(auth, model, response, held, ticket)


class HeldStream(StreamingResponse):
    """A streaming response that runs `on_close` however it ends: finished, failed, or cut off
    by a client that disconnected (Starlette cancels the body then, or never starts it).

    When the server's drain grace runs out (`Drain.end`) while it still streams, it stops
    reading, sends its client the API's own error (an NDJSON `{"error": ...}` line, or an SSE
    error event) and completes the response, so the client is told and nothing is cancelled
    from outside."""

    def __init__(
        self, content: AsyncIterator[bytes], on_close: Callable[[], Awaitable[None]], **kwargs: Any
    ) -> None:
        super().__init__(content, **kwargs)
        self._content = content
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            drain = drain_of(scope)
            if drain is None:
                await super().__call__(scope, receive, send)
            else:
                await self._until_drained(drain, scope, receive, send)
        finally:
            try:
                aclose = getattr(self._content, "aclose", None)
                if aclose is not None:
                    await aclose()
            finally:
                await self._on_close()

    async def _until_drained(self, drain: Drain, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def sending(message: Message) -> None:
            nonlocal started
            started = True
            await send(message)

        body = asyncio.ensure_future(super().__call__(scope, receive, sending))
        ended = asyncio.ensure_future(drain.wait())
        try:
            done, _ = await asyncio.wait({body, ended}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ended.cancel()
            if not body.done():
                body.cancel()  # ours to cancel: the drain ended, or this request was cancelled
                with contextlib.suppress(asyncio.CancelledError):
                    await body
        if body in done:
            body.result()  # its own failure, if it had one
            return
        if not started:
            await send({"type": "http.response.start", "status": self.status_code,
                        "headers": self.raw_headers})
        await send({"type": "http.response.body", "body": self._last_words(), "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    def _last_words(self) -> bytes:
        message = ("crew serve stopped: this answer was still streaming when its drain grace "
                   "(CREW_SERVE_GRACE_S) ran out; send the request again")
        if "event-stream" in (self.media_type or ""):
            error = {"message": message, "type": "server_error", "code": 503}
            return b"data: " + json.dumps({"error": error}).encode() + b"\n\n"
        return ndjson({"error": message})


def ndjson(payload: Mapping[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode() + b"\n"
