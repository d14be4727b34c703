"""An HTTP request carried over Ray to a host's replica, and its answer coming back in pieces.

The replica runs `crew serve`'s own app on the request (`run`), so every route behaves on a
fleet host exactly as on one machine. The answer is a `Head`, then its body as it is written;
cancelling the generator is the client going away (a streamed answer stops and frees its hold).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from starlette.types import ASGIApp, Message

# A client that went away: how long the app may take to notice and release its holds.
DISCONNECT_GRACE_S = 10.0
UNREACHABLE_HEADER = b"x-crew-unreachable"


@dataclass(frozen=True)
class Wire:
    """One HTTP request as the front received it."""

    method: str
    path: str
    query: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    client: tuple[str, int] | None


@dataclass(frozen=True)
class Head:
    """The start of an answer, and which host gave it."""

    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    host: str

    @property
    def unreachable(self) -> bool:
        """The host's Ollama was never reached: the request did not start there."""
        return any(k == UNREACHABLE_HEADER for k, _ in self.headers)


async def run(app: ASGIApp, wire: Wire, host: str) -> AsyncIterator[Head | bytes]:
    """Answer `wire` with `app`: the head, then the body's pieces."""
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": wire.method,
        "scheme": "http", "path": wire.path, "raw_path": wire.path.encode(), "query_string": wire.query,
        "root_path": "", "headers": list(wire.headers), "client": wire.client,
        "server": ("crew-fleet", 0), "state": {},
    }
    messages: asyncio.Queue[Message | None] = asyncio.Queue()
    gone = asyncio.Event()
    body_sent = False

    async def receive() -> Message:
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": wire.body, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        await messages.put(message)

    async def answer() -> None:
        try:
            await app(scope, receive, send)
        finally:
            await messages.put(None)

    task = asyncio.ensure_future(answer())
    try:
        while (message := await messages.get()) is not None:
            if message["type"] == "http.response.start":
                yield Head(message["status"], tuple(message.get("headers", ())), host)
            elif message["type"] == "http.response.body" and message.get("body"):
                yield message["body"]
    finally:
        gone.set()
        if not task.done():
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(task), DISCONNECT_GRACE_S)
            task.cancel()
