"""The end of a drain: when `crew serve`'s grace after SIGTERM has run out.

The server (`server.DrainingServer`) ends the drain `serve_grace_s` after shutdown begins; a
stream still running then (`forward.HeldStream`) sends its client the API's error and finishes
within `LAST_WORDS_S`, before uvicorn would cancel it; the gate answers a request cancelled
after that in one line, never a traceback.
"""

from __future__ import annotations

import asyncio

from starlette.types import Scope

# After the grace, how long streams have to send their error and finish before uvicorn cancels.
LAST_WORDS_S = 2.0


class Drain:
    """Set once, when the grace has run out."""

    def __init__(self) -> None:
        self._ended = asyncio.Event()

    def end(self) -> None:
        self._ended.set()

    @property
    def ended(self) -> bool:
        return self._ended.is_set()

    async def wait(self) -> None:
        await self._ended.wait()


def drain_of(scope: Scope) -> Drain | None:
    """The app's Drain, if it has one (an app other than crew serve's may not)."""
    drain = getattr(getattr(scope.get("app"), "state", None), "drain", None)
    return drain if isinstance(drain, Drain) else None
