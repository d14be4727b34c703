"""Reading a request the same way on every route: its JSON body, who sent it, and what the
access log and the metrics should say about it."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from fastapi import Request
from starlette.types import Scope

from crew.errors import InputError
from crew.serve.authority import Authority, Client

CLIENT_HEADER = "x-crew-client"


async def json_body(request: Request) -> dict[str, Any]:
    """The body as a JSON object; InputError (400) naming what is wrong otherwise."""
    raw = await request.body()
    try:
        body = json.loads(raw) if raw.strip() else {}
    except ValueError as exc:
        raise InputError(f"the request body is not valid JSON ({exc})") from None
    if not isinstance(body, dict):
        raise InputError("the request body must be a JSON object")
    return body


def authority(request: Request) -> Authority:
    """The app's Authority (made by its lifespan)."""
    auth: Authority = request.app.state.authority
    return auth


def client_name(scope: Scope) -> str:
    """Who sent a request: its `X-Crew-Client` header (crew sends its run), else the peer."""
    wanted = CLIENT_HEADER.encode()
    name = next((v.decode("latin-1") for k, v in scope["headers"] if k.lower() == wanted), "")
    if not name:
        peer = scope.get("client")
        name = f"{peer[0]}:{peer[1]}" if peer else "unknown"
    return name[:120]


def client_of(request: Request, auth: Authority) -> Client:
    """The request's client, as the hold's owner."""
    return auth.client(client_name(request.scope), request.url.path, gone=lambda: disconnected(request),
                       noted=lambda model, waited: note(request, model, waited))


async def disconnected(request: Request) -> None:
    """Returns when the client has gone away (once its body has been read)."""
    # The body has been read: the next ASGI message is the client going away.
    while (await request.receive())["type"] != "http.disconnect":
        pass


def note(request: Request, model: str, waited_s: float | None = None) -> None:
    """What the access log line says about this request."""
    request.state.model = model
    if waited_s is not None:
        request.state.waited_s = waited_s


def now_iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")
