"""Running `crew serve`: checking what it may bind, binding, and serving an app until a signal.

On SIGTERM or Ctrl-C the server stops accepting, lets requests in flight finish for
`serve_grace_s`, then ends the drain (`crew.serve.drain`): streams still running get the API's
error and finish; it hands its models back to Ollama's expiry and exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import math
import signal
import socket
import sys
from collections.abc import Callable
from typing import Any

from crew.errors import InputError, SettingsError
from crew.serve.browsers import is_loopback
from crew.serve.drain import LAST_WORDS_S, Drain, drain_of
from crew.settings import Settings


def check_exposure(settings: Settings) -> None:
    """Binding anything but loopback needs a token: the server loads models for whoever asks."""
    if not is_loopback(settings.serve_host) and not settings.serve_token:
        raise SettingsError(
            f"crew serve will not listen on {settings.serve_host} without a token: set "
            "CREW_SERVE_TOKEN (clients send `Authorization: Bearer <token>`), or bind 127.0.0.1"
        )


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so a port in use is one clear line, not uvicorn's exit."""
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP, and
    # without it every answer waits ~40 ms for a delayed ACK (Nagle) between its header and body.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        raise InputError(
            f"crew serve cannot listen on {host}:{port} ({exc.strerror}): stop what uses it, or "
            "choose another port with --port (CREW_SERVE_PORT)"
        ) from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def serve(settings: Settings, on_ready: Callable[[str], None] | None = None) -> None:
    """Run the server until SIGTERM or Ctrl-C; then drain within `serve_grace_s` and return."""
    from crew.serve.app import create_app

    check_exposure(settings)
    sock = bind(settings.serve_host, settings.serve_port)
    run_app(create_app(settings), settings, sock, on_ready,
            f"is Ollama at {settings.ollama_host} reachable?")


def draining_server(config: Any, grace_s: float, drain: Drain | None) -> Any:
    """A uvicorn Server that ends `drain` `grace_s` after its shutdown begins."""
    import uvicorn

    class DrainingServer(uvicorn.Server):
        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            ending = asyncio.get_running_loop().call_later(grace_s, drain.end) if drain else None
            try:
                await super().shutdown(sockets)
            finally:
                if ending is not None:
                    ending.cancel()

    return DrainingServer(config)


def run_app(
    app: Any, settings: Settings, sock: socket.socket, on_ready: Callable[[str], None] | None, check: str
) -> None:
    """Serve `app` on `sock` with uvicorn until SIGTERM or Ctrl-C, draining within `serve_grace_s`;
    `check` says what to look at if it cannot start."""
    import uvicorn

    port = sock.getsockname()[1]
    access = logging.getLogger("crew.serve.access")
    if not access.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        access.addHandler(handler)
        access.setLevel(logging.INFO)
        access.propagate = False
    config = uvicorn.Config(
        app, log_level="warning", access_log=False, lifespan="on",
        # The grace, then the streams' last words (drain.LAST_WORDS_S), then uvicorn cancels.
        timeout_graceful_shutdown=math.ceil(settings.serve_grace_s + LAST_WORDS_S), timeout_keep_alive=30,
    )
    server = draining_server(config, settings.serve_grace_s, drain_of({"app": app}))
    if on_ready is not None:
        on_ready(f"http://{settings.serve_host}:{port}")
    # uvicorn drains on SIGTERM, then raises it again under the handler it found: with this
    # one, a drained server exits 0 instead of dying by the signal.
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        asyncio.run(server.serve(sockets=[sock]))
    finally:
        signal.signal(signal.SIGTERM, previous)
    if not server.started:
        raise SettingsError(f"crew serve could not start ({check}): see the lines above")
