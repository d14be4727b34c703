"""A real `crew serve` for tests: uvicorn on a loopback port, in a thread, in front of the fake."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

from crew.serve import bind
from crew.serve.app import create_app
from crew.serve.authority import Authority
from crew.settings import Settings, load_settings
from tests.fake_ollama import FakeOllama
from tests.helpers import TEAM_BUDGET_GB

GB = 1_000_000_000


class Served:
    def __init__(self, server: uvicorn.Server, port: int, app: Any) -> None:
        self.server = server
        self.url = f"http://127.0.0.1:{port}"
        self.app = app
        self.loop: asyncio.AbstractEventLoop | None = None

    @property
    def authority(self) -> Authority:
        auth: Authority = self.app.state.authority
        return auth

    def on_loop(self, fn: Any) -> Any:
        """Run `fn()` on the server's loop (its manager is not thread-safe) and return its result."""
        assert self.loop is not None
        future: asyncio.Future[Any] = asyncio.run_coroutine_threadsafe(_call(fn), self.loop)  # type: ignore[arg-type]
        return future.result(timeout=10)

    def pins(self) -> dict[str, int]:
        return self.on_loop(lambda: {v.name: v.pins for v in self.authority.manager.snapshot().slots})


async def _call(fn: Any) -> Any:
    return fn()


def serve_settings(fake: FakeOllama, budget_gb: float = TEAM_BUDGET_GB, **overrides: Any) -> Settings:
    fake.capacity = int(budget_gb * GB)
    return load_settings(ollama_host=fake.url, memory_budget_gb=budget_gb, allow_partial_offload=False,
                         **overrides)


@contextmanager
def running(settings: Settings, app: Any = None) -> Iterator[Served]:
    """A uvicorn server with `settings` (and `app`, by default crew serve's) on a free loopback
    port; stopped (and drained) on exit."""
    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    app = app if app is not None else create_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                                           timeout_graceful_shutdown=5))
    served = Served(server, port, app)
    started = threading.Event()

    def run() -> None:
        async def main() -> None:
            served.loop = asyncio.get_running_loop()
            await server.serve(sockets=[sock])

        asyncio.run(main())
        started.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    for _ in range(1000):  # a guard: the server says when it has started
        if server.started or not thread.is_alive():
            break
        threading.Event().wait(0.01)
    assert server.started, "crew serve did not start within 10 s"
    try:
        yield served
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()
        assert not thread.is_alive(), "crew serve did not stop within 15 s"


def wait_until(check: Callable[[], bool], timeout: float = 30.0) -> None:
    """Poll `check` until true; fail (never hang) once `timeout` seconds have passed (by the
    clock: a check that is slow on a busy machine does not stretch the bound)."""
    done = threading.Event()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        done.wait(0.01)
    if check():  # one last look: the deadline may have passed during a slow check
        return
    raise AssertionError(f"condition not met within {timeout:g} s")
