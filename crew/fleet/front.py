"""The fleet's front: `crew serve`'s API, every request sent to the host the router chooses.

The front reads a request's model (the body's `model`; for the seed's routes, the role its task
type goes to), learns the model's size once, and sends the request to a host replica through
Ray Serve with that `Want`; the replica answers with `crew serve`'s own app. A request whose
host did not answer (Ollama never reached) goes to the next host. What describes the whole
fleet is asked of every host and merged: `/api/ps`, `/memory`, `/health`, `/metrics` (labelled
by host) and the event stream.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter as Tally
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from ray.exceptions import RayError
from ray.serve.handle import DeploymentHandle

from crew import __version__
from crew.backends.ollama_api import normalize_model
from crew.fleet.asgi import Head, Wire
from crew.fleet.policy import Want
from crew.routing import routing_table, urgent_role
from crew.serve.app import Gate, error_response
from crew.serve.browsers import Browsers
from crew.serve.requests import disconnected
from crew.settings import ROLES, Role, Settings

# A question to every host (ps, memory, health, metrics) waits this long for each.
ASK_TIMEOUT_S = 10.0
SEED_ROUTES = frozenset({"/route", "/batch", *(f"/{role}" for role in ROLES)})


class Fleet:
    """The front's side of the hosts' deployment: routed requests, questions to one host, sizes."""

    def __init__(self, handle: DeploymentHandle[Any], hosts: list[str]) -> None:
        self._handle = handle
        self.hosts = hosts
        self._sizes: dict[str, int] = {}

    async def size(self, model: str) -> int | None:
        """The model's resident size as a host would load it; None if no host can say."""
        if model not in self._sizes:
            try:
                self._sizes[model] = int(await self._handle.size.remote(Want(None), model))
            except Exception:  # noqa: BLE001 - the routed request reports what is wrong
                return None
        return self._sizes[model]

    async def open(self, want: Want, wire: Wire) -> tuple[Head, AsyncIterator[bytes]]:
        """Send `wire` where the router says; a host that was not reached passes it on."""
        for _ in self.hosts:
            pieces: Any = self._handle.options(stream=True).forward.remote(want, wire)
            try:
                head = await pieces.__anext__()
            except BaseException:
                pieces.cancel()  # the client left while it waited (for its model, say): so does it
                raise
            assert isinstance(head, Head)
            if not head.unreachable or len(want.avoid) + 1 >= len(self.hosts):
                return head, _body(pieces)
            pieces.cancel()
            want = replace(want, avoid=(*want.avoid, head.host))
        raise AssertionError("unreachable")  # the loop returns on its last host

    async def ask(self, host: str, wire: Wire) -> tuple[int, bytes]:
        """One host's whole answer to `wire`."""
        head, body = await self.open(Want(None, host=host), wire)
        return head.status, b"".join([piece async for piece in body])

    async def ask_each(self, wire: Wire) -> dict[str, tuple[int, bytes] | Exception]:
        """Every host's whole answer to `wire`, all at once; a replica that did not answer in
        time (or at all) stands as its exception."""
        async def one(host: str) -> tuple[int, bytes] | Exception:
            try:
                return await asyncio.wait_for(self.ask(host, wire), ASK_TIMEOUT_S)
            except (TimeoutError, RayError) as exc:
                return exc

        answers = await asyncio.gather(*(one(h) for h in self.hosts))
        return dict(zip(self.hosts, answers, strict=True))

    async def ask_all(self, wire: Wire) -> dict[str, Any]:
        """Every host's JSON answer to `wire`, or the error that stood for it."""
        return {host: _json_of(answer) for host, answer in (await self.ask_each(wire)).items()}


def _json_of(answer: tuple[int, bytes] | Exception) -> Any:
    if not isinstance(answer, Exception):
        status, body = answer
        try:
            data = json.loads(body)
        except ValueError as exc:
            answer = exc
        else:
            return data if status == 200 else {"error": data.get("error") if isinstance(data, dict) else data}
    return {"error": f"the host's replica did not answer ({type(answer).__name__})"}


async def _body(pieces: Any) -> AsyncIterator[bytes]:
    try:
        async for piece in pieces:
            assert isinstance(piece, bytes)
            yield piece
    finally:
        pieces.cancel()  # the client went away: the host stops generating and frees its hold


def model_of(settings: Settings, path: str, body: bytes) -> str | None:
    """The model a request asks for, if it names one (or its seed route picks one)."""
    try:
        data = json.loads(body) if body.strip() else None
    except ValueError:
        return None
    if path in SEED_ROUTES:
        items = data if isinstance(data, list) else [data]
        roles = settings.roles()
        table = routing_table(settings.routing)
        picked = Tally(normalize_model(roles[urgent_role(str(i.get("task_type") or "general"),
                                                         str(i.get("urgency") or "normal"),
                                                         _role_path(path), table)[0]].model)
                       for i in items if isinstance(i, dict))
        return picked.most_common(1)[0][0] if picked else None
    model = data.get("model") if isinstance(data, dict) else None
    return normalize_model(model) if isinstance(model, str) and model.strip() else None


def _role_path(path: str) -> Role | None:
    role = path.lstrip("/")
    return role if role in ROLES else None


async def wire_of(request: Request) -> Wire:
    peer = request.scope.get("client")
    return Wire(request.method, request.url.path, request.scope.get("query_string", b""),
                tuple(request.scope["headers"]), await request.body(), tuple(peer) if peer else None)


def create_front(settings: Settings, fleet: Fleet) -> FastAPI:
    """The front app: merged answers for the fleet-wide routes, routed ones for the rest."""
    app = FastAPI(title="crew serve --ray", version=__version__, docs_url=None, redoc_url=None,
                  openapi_url=None)
    registry = CollectorRegistry()
    app.state.metrics = _FrontMetrics(registry)

    @app.get("/api/ps")
    async def ps(request: Request) -> Response:
        answers = await fleet.ask_all(await wire_of(request))
        models = [{**m, "host": host} for host, a in answers.items() for m in a.get("models") or []]
        return JSONResponse({"models": models, "hosts": _host_errors(answers)})

    @app.get("/memory")
    async def memory(request: Request) -> Response:
        answers = await fleet.ask_all(await wire_of(request))
        ok = [a for a in answers.values() if "error" not in a]
        total = {k: sum(int(a.get(k) or 0) for a in ok) for k in ("budget_bytes", "used_bytes", "free_bytes")}
        waiting: Tally[str] = Tally()
        for a in ok:
            waiting.update(a.get("waiting") or {})
        return JSONResponse({**total, "waiting": dict(waiting),
                             "hosts": [{"host": h, **a} for h, a in answers.items()]})

    @app.get("/health")
    async def health(request: Request) -> Response:
        answers = await fleet.ask_all(await wire_of(request))
        healthy = [h for h, a in answers.items() if a.get("status") == "healthy"]
        status = "healthy" if len(healthy) == len(answers) else "degraded" if healthy else "unhealthy"
        return JSONResponse({"status": status, "hosts": [{"host": h, **a} for h, a in answers.items()]},
                            status_code=200 if healthy else 503)

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        answers = await fleet.ask_each(await wire_of(request))
        texts = {host: a[1].decode() for host, a in answers.items()
                 if not isinstance(a, Exception) and a[0] == 200}
        hosts = CollectorRegistry()
        hosts.register(_ByHost(texts))
        return Response(generate_latest(registry) + generate_latest(hosts), media_type=CONTENT_TYPE_LATEST)

    @app.get("/crew/v1/events")
    async def events(request: Request) -> Response:
        merged = _merged_events(fleet, await wire_of(request))
        return StreamingResponse(merged, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    @app.post("/crew/v1/forecast")
    async def forecast(request: Request) -> Response:
        # A team's forecast matters on whichever host its models end up: every host hears it.
        answers = await fleet.ask_all(await wire_of(request))
        failed = {h: a["error"] for h, a in answers.items() if "error" in a}
        return JSONResponse({"hosts": list(answers), "failed": failed}, status_code=502 if failed else 200)

    @app.api_route("/{path:path}", methods=["GET", "HEAD", "POST", "PUT", "DELETE"])
    async def routed(request: Request) -> Response:
        wire = await wire_of(request)
        model = model_of(settings, wire.path, wire.body)
        want = Want(model, await fleet.size(model) if model else None)
        opening = asyncio.ensure_future(fleet.open(want, wire))
        gone = asyncio.ensure_future(disconnected(request))
        try:
            await asyncio.wait({opening, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not opening.done():
                opening.cancel()  # out of its host's queue at once, not loading a model for nobody
        if not opening.done() or opening.cancelled():
            return Response(status_code=499)
        try:
            head, body = opening.result()
        except RayError as exc:
            return error_response(wire.path, 502, f"the fleet could not answer ({type(exc).__name__}): "
                                  "see `ray status` and the replicas' logs")
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in head.headers
                   if k.lower() not in (b"content-length", b"transfer-encoding")}
        headers["X-Crew-Host"] = head.host
        return StreamingResponse(body, status_code=head.status, headers=headers)

    app.add_middleware(Gate, token=settings.serve_token, max_body=int(settings.serve_max_body_mb * 1_000_000),
                       browsers=Browsers.of(settings))
    return app


def _host_errors(answers: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"host": h, **({"error": a["error"]} if "error" in a else {})} for h, a in answers.items()]


async def _merged_events(fleet: Fleet, wire: Wire) -> AsyncIterator[bytes]:
    """Every host's event stream as one, each event's data naming its host."""
    queue: asyncio.Queue[bytes] = asyncio.Queue()

    async def follow(host: str) -> None:
        _, body = await fleet.open(Want(None, host=host), wire)
        async for piece in body:
            await queue.put(_tag_event(piece, host))

    tasks = [asyncio.ensure_future(follow(h)) for h in fleet.hosts]
    try:
        while True:
            yield await queue.get()
    finally:
        for task in tasks:
            task.cancel()


def _tag_event(piece: bytes, host: str) -> bytes:
    lines = []
    for line in piece.decode().split("\n"):
        if line.startswith("data: "):
            data = json.loads(line[6:])
            line = "data: " + json.dumps({**data, "host": host} if isinstance(data, dict) else data)
        lines.append(line)
    return "\n".join(lines).encode()


class _FrontMetrics:
    """What the Gate counts on the front (the hosts count their own)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter("crew_fleet_requests", "Requests to the fleet's front by route and status",
                                ["route", "status"], registry=registry)


class _ByHost:
    """The hosts' metrics, each sample labelled with its host."""

    def __init__(self, texts: dict[str, str]) -> None:
        self._texts = texts

    def collect(self) -> Iterator[Metric]:
        merged: dict[str, Metric] = {}
        for host, text in self._texts.items():
            for family in text_string_to_metric_families(text):
                if family.name.endswith("_created"):
                    continue  # the parser's view of a counter's start time, not a metric
                out = merged.setdefault(family.name, Metric(family.name, family.documentation, family.type))
                for s in family.samples:
                    out.add_sample(s.name, {**s.labels, "host": host}, s.value, s.timestamp, s.exemplar)
        yield from merged.values()
