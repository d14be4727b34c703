"""The seed router's model routes, answer for answer: `/route` by task type and urgency, one
route per role, and `/batch` grouped by model.

A request is the seed's `LLMRequest` (every field, its defaults; unknown fields ignored, as the
seed's pydantic model ignores them) plus crew's own (`messages`, `system`, `stream`). An answer
is the seed's `LLMResponse` (`model`, `agent`, `response`, `tokens_generated`, `latency_ms`,
`memory_used_gb`, `timestamp`) plus crew's own fields beside them (`role`, `thinking`, `usage`,
`load_s`, `waited_s`, `reason`).

Routing is the seed's: its task-type table (`crew.routing.SEED_ROUTING`, with crew.toml's
`[routing]` over it), an unknown type to the Architect, and its urgency rule (`critical`
Architect work other than plan/design/architecture goes to the Coder). Urgency then changes
only when a request runs, never who answers: `high` and `critical` start their loads ahead of
queued normal requests, and a `critical` request for a resident model is granted at once, even
past a load that has waited its fairness bound.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from crew.errors import CrewError
from crew.routing import NAMES, urgent_role
from crew.serve.authority import Authority, Client, Ticket, Urgency
from crew.serve.forward import HeldStream, Upstream, call, ndjson, open_stream
from crew.serve.requests import authority, client_of, now_iso
from crew.settings import ROLES, Role

router = APIRouter()

GB = 1_000_000_000  # crew's gigabyte (memory_budget_gb), as in every other figure it reports


class RouteRequest(BaseModel):
    """The seed's LLMRequest, and crew's own fields after it."""

    model_config = ConfigDict(extra="ignore")  # as the seed's model: a newer client's extras pass

    prompt: str | None = None
    task_type: str = "general"
    max_tokens: int = Field(4096, ge=1)
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    context: str | None = None
    """Put before the prompt, as the seed does."""
    urgency: Urgency = "normal"
    messages: list[dict[str, Any]] | None = None
    system: str | None = None
    stream: bool = False

    @field_validator("urgency", mode="before")
    @classmethod
    def _urgency_any_case(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

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
    """Which role's model answers, and why: the seed's table and urgency rule."""
    chosen, why = urgent_role(task_type, urgency, role, auth.routing)
    return Routed(role=chosen, model=auth.roles[chosen], reason=why)


async def answer(
    auth: Authority, client: Client, req: RouteRequest, routed: Routed, started: float
) -> dict[str, Any]:
    result = await call(auth, client, "/api/chat", routed.model, _native(req), req.urgency)
    return _result(auth, routed, result.data, result.ticket, started)


def _native(req: RouteRequest) -> dict[str, Any]:
    return {"messages": req.chat_messages(),
            "options": {"temperature": req.temperature, "num_predict": req.max_tokens}}


def _result(auth: Authority, routed: Routed, data: dict[str, Any], ticket: Ticket,
            started: float) -> dict[str, Any]:
    """The seed's LLMResponse, then crew's fields."""
    message = data.get("message") or {}
    completion = int(data.get("eval_count") or 0)
    return {
        "model": routed.model, "agent": NAMES[routed.role], "response": message.get("content") or "",
        "tokens_generated": completion,
        "latency_ms": round((time.monotonic() - started) * 1000, 3),
        # The seed meant what answering took in memory: here, the bytes its model is resident in.
        "memory_used_gb": round(auth.resident_bytes(routed.model) / GB, 3),
        "timestamp": now_iso(),
        "role": routed.role, "thinking": message.get("thinking") or None,
        "usage": {"prompt_tokens": int(data.get("prompt_eval_count") or 0), "completion_tokens": completion},
        "load_s": ticket.load_s, "waited_s": round(ticket.waited_s, 4), "reason": routed.reason,
    }


async def _serve(request: Request, req: RouteRequest, role: Role | None = None) -> Response:
    started = time.monotonic()
    auth = authority(request)
    routed = route_for(auth, req.task_type, req.urgency, role)
    await auth.ensure(routed.model)
    client = client_of(request, auth)
    if not req.stream:
        return JSONResponse(await answer(auth, client, req, routed, started))
    upstream = await open_stream(auth, client, "/api/chat", routed.model, _native(req), req.urgency)
    return HeldStream(_pieces(auth, routed, upstream, started), upstream.aclose,
                      media_type="application/x-ndjson")


async def _pieces(
    auth: Authority, routed: Routed, upstream: Upstream, started: float
) -> AsyncIterator[bytes]:
    """The answer streamed as NDJSON: `{"response", "thinking", "done": false}` pieces, then the
    whole LLMResponse (its `response` empty, as Ollama's last line) with `"done": true`."""
    try:
        async for line in upstream.lines():
            if "error" in line:
                yield ndjson({"error": line["error"]})
                return
            message = line.get("message") or {}
            if line.get("done"):
                final = _result(auth, routed, line, upstream.ticket, started)
                yield ndjson({**final, "response": "", "thinking": None, "done": True})
            elif message.get("content") or message.get("thinking"):
                yield ndjson({"response": message.get("content") or "",
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
async def batch(request: Request, items: list[Any]) -> dict[str, Any]:
    """The seed's batch answer (`total`, `succeeded`, `failed`, `results` with `index`,
    `status`, `result` or `error`, in input order), run grouped by model, resident models first,
    so each model loads at most once (`order`). An item that is not a valid request fails alone."""
    auth = authority(request)
    results: list[dict[str, Any] | None] = [None] * len(items)
    plans: dict[int, tuple[RouteRequest, Routed]] = {}
    for i, item in enumerate(items):
        try:
            req = RouteRequest.model_validate(item)
        except ValidationError as exc:
            results[i] = {"index": i, "status": "error", "error": _invalid(exc)}
            continue
        plans[i] = req, route_for(auth, req.task_type, req.urgency)
    order = _group_order(auth, [plan.model for _, plan in plans.values()])
    client = client_of(request, auth)
    for model in order:
        await _run_group(auth, client, model, plans, results)
    done = [r for r in results if r is not None]
    ok = sum(1 for r in done if r["status"] == "success")
    return {"total": len(items), "succeeded": ok, "failed": len(done) - ok, "results": done, "order": order}


def _group_order(auth: Authority, models: list[str]) -> list[str]:
    """Each model once, resident ones first, else in order of first appearance."""
    resident = auth.resident()
    order = list(dict.fromkeys(models))
    order.sort(key=lambda m: m not in resident)  # stable
    return order


async def _run_group(
    auth: Authority, client: Client, model: str, plans: dict[int, tuple[RouteRequest, Routed]],
    results: list[dict[str, Any] | None],
) -> None:
    """One model's items under one hold (no eviction between them). The group's load, if it
    needed one, is reported by its first item: the one that waited for it."""
    indices = [i for i, (_, plan) in plans.items() if plan.model == model]
    group_started = time.monotonic()
    try:
        await auth.ensure(model)
        async with auth.hold(model, client) as ticket:
            for n, i in enumerate(indices):
                # Each item's latency is its own, as in the seed; the first's includes the load.
                began = group_started if n == 0 else time.monotonic()
                results[i] = await _one(auth, client, *plans[i], i, began)
                result = results[i]
                if n == 0 and result is not None and "result" in result:
                    result["result"]["load_s"] = ticket.load_s
                    result["result"]["waited_s"] = round(ticket.waited_s + result["result"]["waited_s"], 4)
    except CrewError as exc:
        for i in indices:
            results[i] = results[i] or {"index": i, "status": "error", "error": str(exc)}


async def _one(
    auth: Authority, client: Client, req: RouteRequest, plan: Routed, index: int, started: float
) -> dict[str, Any]:
    try:
        return {"index": index, "status": "success", "result": await answer(auth, client, req, plan, started)}
    except CrewError as exc:
        return {"index": index, "status": "error", "error": str(exc)}


def _invalid(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ())) or "item"
    return f"not a valid request: {where}: {first.get('msg', 'invalid')}"
