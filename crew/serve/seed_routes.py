"""The seed router's API, done right: `/route` by task type and urgency, one route per role,
`/batch` grouped by model, and `/health`, `/models`, `/memory` that tell the truth.

Routing uses crew's task-type table (`crew.routing.TASK_TYPES`); an unknown task type goes to
the Architect, as in the seed. `urgency: high` starts its load ahead of queued normal requests;
`critical` takes a role model that is already resident rather than wait for a load.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, model_validator

from crew.backends.ollama_api import ollama_errors
from crew.errors import CrewError
from crew.routing import DEFAULT_ROLE, NAMES, TASK_TYPES, role_for
from crew.serve.authority import Authority, Client, Urgency
from crew.serve.forward import HeldStream, Upstream, call, ndjson, open_stream
from crew.serve.requests import authority, client_of
from crew.settings import ROLES, Role

router = APIRouter()



class RouteRequest(BaseModel):
    """One request to a role's model."""

    model_config = ConfigDict(extra="forbid")

    task_type: str = "general"
    prompt: str | None = None
    messages: list[dict[str, Any]] | None = None
    system: str | None = None
    context: str | None = None
    urgency: Urgency = "normal"
    max_tokens: int = Field(4096, ge=1)
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    stream: bool = False

    @model_validator(mode="after")
    def _has_input(self) -> RouteRequest:
        if not self.prompt and not self.messages:
            raise ValueError("give prompt or messages")
        return self

    def chat_messages(self) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = []
        if self.system:
            messages.append({"role": "system", "content": self.system})
        messages.extend(self.messages or [])
        if self.prompt:
            text = f"## Context\n{self.context}\n\n## Task\n{self.prompt}" if self.context else self.prompt
            messages.append({"role": "user", "content": text})
        return messages


class Routed(BaseModel):
    role: Role
    model: str
    reason: str


def route_for(auth: Authority, task_type: str, urgency: str, role: Role | None = None) -> Routed:
    """Which role's model answers, and why."""
    chosen, why = role_for(task_type, role)
    model = auth.roles[chosen]
    if urgency == "critical":
        resident = auth.resident()
        if model not in resident:
            ready = [r for r in ROLES if auth.roles[r] in resident]
            if ready:
                return Routed(role=ready[0], model=auth.roles[ready[0]],
                              reason=f"{why}; critical: {NAMES[ready[0]]}'s model is resident, "
                                     f"{model} would need a load")
    return Routed(role=chosen, model=model, reason=why)


async def answer(auth: Authority, client: Client, req: RouteRequest, routed: Routed) -> dict[str, Any]:
    started = time.monotonic()
    result = await call(auth, client, "/api/chat", routed.model, _native(req), req.urgency)
    return _result(routed, result.data, result.ticket.waited_s, result.ticket.load_s, started)


def _native(req: RouteRequest) -> dict[str, Any]:
    return {"messages": req.chat_messages(),
            "options": {"temperature": req.temperature, "num_predict": req.max_tokens}}


def _result(routed: Routed, data: dict[str, Any], waited: float, load: float | None,
            started: float) -> dict[str, Any]:
    message = data.get("message") or {}
    return {
        "model": routed.model, "role": routed.role, "agent": NAMES[routed.role],
        "content": message.get("content") or "", "thinking": message.get("thinking") or None,
        "usage": {"prompt_tokens": int(data.get("prompt_eval_count") or 0),
                  "completion_tokens": int(data.get("eval_count") or 0)},
        "latency_s": round(time.monotonic() - started, 4), "load_s": load,
        "waited_s": round(waited, 4), "reason": routed.reason,
    }


async def _serve(request: Request, req: RouteRequest, role: Role | None = None) -> Response:
    auth = authority(request)
    routed = route_for(auth, req.task_type, req.urgency, role)
    await auth.ensure(routed.model)
    client = client_of(request, auth)
    if not req.stream:
        result = await answer(auth, client, req, routed)
        return JSONResponse(result)
    started = time.monotonic()
    upstream = await open_stream(auth, client, "/api/chat", routed.model, _native(req), req.urgency)
    return HeldStream(_pieces(routed, upstream, started), upstream.aclose, media_type="application/x-ndjson")


async def _pieces(routed: Routed, upstream: Upstream, started: float) -> AsyncIterator[bytes]:
    try:
        async for line in upstream.lines():
            if "error" in line:
                yield ndjson({"error": line["error"]})
                return
            message = line.get("message") or {}
            if line.get("done"):
                final = _result(routed, line, upstream.ticket.waited_s, upstream.ticket.load_s, started)
                yield ndjson({**final, "content": "", "thinking": None, "done": True})
            elif message.get("content") or message.get("thinking"):
                yield ndjson({"content": message.get("content") or "",
                              "thinking": message.get("thinking") or None, "done": False})
    except CrewError as exc:
        yield ndjson({"error": str(exc)})


@router.post("/route")
async def route(request: Request, req: RouteRequest) -> Response:
    return await _serve(request, req)


def _role_route(role: Role) -> Any:
    async def one_role(request: Request, req: RouteRequest) -> Response:
        return await _serve(request, req, role)
    return one_role


for _role in ROLES:
    router.add_api_route(f"/{_role}", _role_route(_role), methods=["POST"],
                         summary=f"Ask the {NAMES[_role]}'s model")


@router.post("/batch")
async def batch(request: Request, reqs: list[RouteRequest]) -> dict[str, Any]:
    """Requests grouped by model, resident models first, so each model loads at most once;
    results in input order, each with its own status."""
    auth = authority(request)
    plans = [route_for(auth, r.task_type, r.urgency) for r in reqs]
    resident = auth.resident()
    order: list[str] = []
    for plan in plans:
        if plan.model not in order:
            order.append(plan.model)
    order.sort(key=lambda m: m not in resident)  # stable: first appearance within each group
    results: list[dict[str, Any] | None] = [None] * len(reqs)
    client = client_of(request, auth)
    for model in order:
        indices = [i for i, p in enumerate(plans) if p.model == model]
        try:
            await auth.ensure(model)
            async with auth.hold(model, client):  # one hold per group: no eviction between its items
                for i in indices:
                    results[i] = await _one(auth, client, reqs[i], plans[i], i)
        except CrewError as exc:
            for i in indices:
                results[i] = results[i] or {"index": i, "status": "error", "error": str(exc)}
    done = [r for r in results if r is not None]
    ok = sum(1 for r in done if r["status"] == "success")
    return {"total": len(reqs), "succeeded": ok, "failed": len(done) - ok, "order": order, "results": done}


async def _one(
    auth: Authority, client: Client, req: RouteRequest, plan: Routed, index: int
) -> dict[str, Any]:
    try:
        return {"index": index, "status": "success", "result": await answer(auth, client, req, plan)}
    except CrewError as exc:
        return {"index": index, "status": "error", "error": str(exc)}


# -- the seed's read-only routes ----------------------------------------------------------------


@router.get("/health")
async def health(request: Request) -> Response:
    auth = authority(request)
    try:
        async with ollama_errors(auth.host):
            version = (await auth.upstream.get("/api/version")).json().get("version")
        body = {"status": "healthy", "ollama": auth.host, "ollama_version": version}
        return JSONResponse(body)
    except CrewError as exc:
        return JSONResponse({"status": "unhealthy", "ollama": auth.host, "error": str(exc)}, status_code=503)


@router.get("/models")
async def models(request: Request) -> dict[str, Any]:
    auth = authority(request)
    out = []
    for role in ROLES:
        model = auth.roles[role]
        entry: dict[str, Any] = {"role": role, "agent": NAMES[role], "model": model,
                                 "num_ctx": auth.runner_options(model).get("num_ctx")}
        try:
            entry["expected_bytes"] = await auth.manager.expected_size(model)
            entry["pulled"] = True
        except CrewError as exc:
            entry.update(pulled=False, error=str(exc))
        out.append(entry)
    routing = {kind: auth.roles[role] for role, kinds in TASK_TYPES.items() for kind in kinds}
    return {"models": out, "total": len(out), "routing_rules": routing, "default": auth.roles[DEFAULT_ROLE]}


@router.get("/memory")
async def memory(request: Request) -> dict[str, Any]:
    auth = authority(request)
    snap = await auth.manager.refresh()
    return {
        "budget_bytes": snap.budget.bytes, "budget_source": snap.budget.source,
        "used_bytes": snap.used, "free_bytes": max(0, snap.budget.bytes - snap.used),
        "resident": [{"model": v.name, "bytes": v.bytes, "state": v.state, "pins": v.pins,
                      "ours": v.ours, "idle_s": round(v.idle_seconds, 3)} for v in snap.slots],
        "waiting": auth.manager.waiting(),
    }
