"""The `crew serve` application: one Authority per app, the four APIs, and the gate in front.

The gate is plain ASGI (Starlette's BaseHTTPMiddleware buffers streams and hides client
disconnects, which must release holds at once): it refuses what a web page sends (a foreign
Host or Origin, a body that is not JSON: `browsers`), checks the token, reads the body (413 over
the limit, 400 nested deeper than `MAX_DEPTH`) before the app sees it, and writes the access log
line and the request metric. Errors become one JSON line with
the status a client can act on (`status_of`); OpenAI routes get OpenAI's error shape.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from crew import __version__
from crew.errors import (
    BudgetError,
    CrewError,
    InputError,
    ModelCapabilityError,
    ModelNotPulled,
    ModelTooLarge,
    OllamaUnreachable,
    RequestTimeout,
    ResidencyDeadlock,
    SettingsError,
)
from crew.safe_text import one_line
from crew.serve.authority import Authority, ClientGone
from crew.serve.browsers import MAX_DEPTH, Browsers, too_deep
from crew.serve.drain import Drain, drain_of
from crew.serve.forward import UpstreamRefused
from crew.serve.ops import Metrics, access_log
from crew.serve.requests import client_name
from crew.settings import Settings

log = logging.getLogger("crew.serve")

# The server is the one process deciding residency, so a grant may rest on an /api/ps read this
# recent (loads and evictions always read it fresh); CREW_RECONCILE_TTL_S can only raise it.
SERVE_RECONCILE_TTL_S = 1.0
# Open connection to Ollama for the longest answer; connecting fails fast.
UPSTREAM_TIMEOUT = httpx.Timeout(None, connect=5.0)


def status_of(exc: CrewError) -> int:
    """The HTTP status for a crew error."""
    if isinstance(exc, UpstreamRefused):
        return exc.status
    if isinstance(exc, ClientGone):
        return 499  # nginx's "client closed request": nobody reads it, the access log does
    table: list[tuple[type[CrewError], int]] = [
        (InputError, 400), (ModelNotPulled, 404), (ModelCapabilityError, 400),
        (ModelTooLarge, 507), (ResidencyDeadlock, 409), (BudgetError, 507), (RequestTimeout, 504),
    ]
    return next((code for cls, code in table if isinstance(exc, cls)), 502)


def error_response(path: str, status: int, message: str) -> JSONResponse:
    """One JSON error: OpenAI's `{"error": {"message", "type", "code"}}` under /v1, else
    Ollama's `{"error": message}` (which the seed's clients read too)."""
    if path == "/v1" or path.startswith("/v1/"):
        kind = "invalid_request_error" if status < 500 else "server_error"
        if status == 401:
            kind = "authentication_error"
        # `code` is the status: OpenAI's clients read message and type; crew's always had it so.
        return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status)
    return JSONResponse({"error": message}, status_code=status)


def _field_message(exc: RequestValidationError) -> tuple[int, str]:
    first = exc.errors()[0] if exc.errors() else {}
    if first.get("type") == "json_invalid":
        return 400, "the request body is not valid JSON"
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
    return 422, f"{where}: {first.get('msg', 'invalid')}"


def create_app(
    settings: Settings, *, open_authority: Callable[[], Awaitable[Authority]] | None = None
) -> FastAPI:
    """The app; its lifespan opens the Authority (manager and upstream) and hands models back."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        auth = await (open_authority or (lambda: open_default_authority(settings)))()
        app.state.authority = auth
        app.state.metrics = Metrics(auth)
        try:
            yield
        finally:
            try:
                await auth.manager.aclose()  # idle models go back to keep_alive_after
            finally:
                await auth.upstream.aclose()

    app = FastAPI(title="crew serve", version=__version__, lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url="/crew/v1/openapi.json")
    app.state.drain = Drain()

    @app.exception_handler(CrewError)
    async def crew_error(request: Request, exc: CrewError) -> Response:
        response = error_response(request.url.path, status_of(exc), str(exc))
        if isinstance(exc, OllamaUnreachable):
            # Ollama was never reached: a fleet's front may send the request to another host.
            response.headers["X-Crew-Unreachable"] = exc.host
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        return error_response(request.url.path, *_field_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        # Starlette's own 404/405 in the API's shape, not FastAPI's {"detail": ...}.
        message = {404: f"no route {request.method} {request.url.path}",
                   405: f"{request.method} is not allowed on {request.url.path}"}.get(
                       exc.status_code, str(exc.detail))
        response = error_response(request.url.path, exc.status_code, message)
        response.headers.update(exc.headers or {})
        return response

    from crew.serve import crew_routes, ollama_routes, openai_routes, ops, seed_routes, seed_status

    app.include_router(seed_routes.router)
    app.include_router(seed_status.router)
    app.include_router(ollama_routes.router)
    app.include_router(openai_routes.router)
    app.include_router(ops.router)
    app.include_router(crew_routes.router)
    app.add_middleware(Gate, token=settings.serve_token, max_body=int(settings.serve_max_body_mb * 1_000_000),
                       browsers=Browsers.of(settings))
    return app


async def open_default_authority(settings: Settings) -> Authority:
    from crew.backends import choose_backend
    from crew.residency import open_manager

    choice = await choose_backend(settings.model_copy(update={"backend": "ollama"}))
    if choice.served:
        await choice.backend.aclose()
        raise SettingsError(f"CREW_OLLAMA_HOST ({settings.ollama_host}) is itself a crew server: point "
                            "crew serve at Ollama (e.g. http://127.0.0.1:11434)")
    ttl = max(settings.reconcile_ttl_s, SERVE_RECONCILE_TTL_S)
    derived = settings.model_copy(update={"reconcile_ttl_s": ttl})
    manager = open_manager(derived, choice, f"serve-{os.getpid()}", authority=True)
    upstream = httpx.AsyncClient(base_url=settings.ollama_host, timeout=UPSTREAM_TIMEOUT,
                                 verify=not settings.ollama_host.startswith("http://"))
    return Authority(settings, manager, upstream)


class _TooLarge(Exception):
    pass


class Gate:
    """Host, Origin and content type, token, body limit and depth, access log and request
    metric, for every HTTP request."""

    def __init__(self, app: ASGIApp, *, token: str | None, max_body: int,
                 browsers: Browsers | None = None) -> None:
        self.app = app
        self.token = token
        self.max_body = max_body
        self.browsers = browsers or Browsers.loopback()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        status = {"code": 500, "sent": False}

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                status["sent"] = True
            await send(message)

        try:
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
            refusal = self.browsers.refusal(scope["method"], headers) or self._refusal(headers)
            body = await self._body(receive) if refusal is None else b""
            if body is None:  # the client left before sending its body
                status["code"] = 499
                return
            if refusal is None and too_deep(body):
                refusal = 400, (f"the request body nests arrays or objects deeper than {MAX_DEPTH} "
                                "levels, or its brackets do not pair up: send flatter, valid JSON")
            if refusal is not None:
                await error_response(scope["path"], *refusal)(scope, receive, sending)
                return
            await self.app(scope, self._replay(body, receive), sending)
        except _TooLarge:
            if not status["sent"]:
                await error_response(scope["path"], *self._too_large())(scope, receive, sending)
        except asyncio.CancelledError:
            drain = drain_of(scope)
            if drain is None or not drain.ended:
                raise
            # uvicorn cancels what outlived the drain: finish it in one line, not a traceback.
            status["code"] = 503 if not status["sent"] else int(status["code"])
            await self._cut(scope, receive, send, bool(status["sent"]))
        finally:
            self._log(scope, int(status["code"]), time.monotonic() - started)

    @staticmethod
    async def _cut(scope: Scope, receive: Receive, send: Send, started: bool) -> None:
        """End a request the drain outlived: a 503 if nothing was sent, else end its body."""
        with contextlib.suppress(Exception):
            if started:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            else:
                message = "crew serve stopped before this request finished (drain grace over): send it again"
                await error_response(scope["path"], 503, message)(scope, receive, send)

    def _refusal(self, headers: Mapping[str, str]) -> tuple[int, str] | None:
        if self.token is not None:
            given = headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {self.token}".encode()):
                return 401, ("missing or wrong token: send the header "
                             "`Authorization: Bearer <CREW_SERVE_TOKEN>`")
        length = headers.get("content-length")
        if length and length.isdigit() and int(length) > self.max_body:
            return self._too_large()
        return None

    def _too_large(self) -> tuple[int, str]:
        return 413, (f"the request body is over {self.max_body / 1_000_000:g} MB: send less, "
                     "or raise CREW_SERVE_MAX_BODY_MB on the server")

    async def _body(self, receive: Receive) -> bytes | None:
        """The whole request body (None: the client went away); _TooLarge over the limit.
        Read here, not by the app, so its depth is known before any JSON parser recurses."""
        chunks: list[bytes] = []
        seen = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return None
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > self.max_body:
                raise _TooLarge
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    @staticmethod
    def _replay(body: bytes, receive: Receive) -> Receive:
        """The app's receive: the body read already, then the client's own messages (its
        disconnect, which releases its holds)."""
        given = False

        async def replay() -> Message:
            nonlocal given
            if not given:
                given = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return replay

    def _log(self, scope: Scope, status: int, seconds: float) -> None:
        state: MutableMapping[str, Any] = scope.get("state") or {}
        route = getattr(scope.get("route"), "path", "unmatched")
        app = scope.get("app")
        metrics: Metrics | None = getattr(getattr(app, "state", None), "metrics", None)
        if metrics is not None:
            metrics.requests.labels(route, str(status)).inc()
        # What the client sent is shown escaped, in one line: the log is read on a terminal.
        access_log.info("%s %s %s %d model=%s waited=%.3fs took=%.3fs", one_line(client_name(scope)),
                        one_line(scope["method"]), one_line(scope["path"]), status,
                        one_line(str(state.get("model", "-"))), float(state.get("waited_s", 0.0)), seconds)
