"""The seed router's read-only routes, in its shapes with crew's fields beside them:
`/health`, `/models`, `/memory`; and `/readyz` for load balancers.

`/health` answers 200 whether or not Ollama answers, as the seed does (`"status": "unhealthy"`
and `error` when it does not); `/readyz` is the one that says 503. Memory figures are of crew's
budget (what crew may fill with models, the seed's "machine"), in crew's GB (10^9 bytes).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from crew.backends.ollama_api import ollama_errors
from crew.errors import CrewError
from crew.routing import DEFAULT_ROLE, NAMES
from crew.serve.authority import Authority
from crew.serve.requests import authority, now_iso
from crew.settings import ROLES, Role

router = APIRouter()

GB = 1_000_000_000

# The seed's MODEL_CONFIG descriptions, in English.
DESCRIPTIONS: dict[Role, str] = {
    "architect": "requirements analysis, architecture design, long-context reasoning",
    "coder": "implementation, refactoring, feature development",
    "reviewer": "code review, writing tests, pointing out bugs",
}


async def _ollama_version(auth: Authority) -> str | None:
    """Ollama's version; a CrewError when it cannot be reached."""
    async with ollama_errors(auth.host):
        answer = await auth.upstream.get("/api/version")
    data = answer.json() if answer.status_code == 200 else {}
    version = data.get("version") if isinstance(data, dict) else None
    return str(version) if version is not None else None


def memory_info(budget: int, used: int) -> dict[str, float]:
    """The seed's MemoryInfo, of the budget."""
    return {"total_gb": round(budget / GB, 3), "used_gb": round(used / GB, 3),
            "available_gb": round(max(0, budget - used) / GB, 3),
            "percent_used": round(100 * used / budget, 1) if budget else 0.0}


@router.get("/health")
async def health(request: Request) -> Response:
    auth = authority(request)
    try:
        version = await _ollama_version(auth)
    except CrewError as exc:
        return JSONResponse({"status": "unhealthy", "error": str(exc), "timestamp": now_iso(),
                             "ollama": "unreachable", "ollama_host": auth.host})
    snap = auth.manager.snapshot()
    info = memory_info(snap.budget.bytes, snap.used)
    return JSONResponse({
        "status": "healthy", "ollama": "connected",
        # The seed's shape, strings included: "used_gb": "12.3".
        "memory": {"used_gb": f"{info['used_gb']:.1f}", "available_gb": f"{info['available_gb']:.1f}",
                   "percent": info["percent_used"]},
        "timestamp": now_iso(), "ollama_host": auth.host, "ollama_version": version,
    })


@router.get("/readyz")
async def readyz(request: Request) -> Response:
    """200 when Ollama answers, else 503: what a load balancer's health check reads."""
    auth = authority(request)
    try:
        version = await _ollama_version(auth)
    except CrewError as exc:
        return JSONResponse({"ready": False, "error": str(exc)}, status_code=503)
    return JSONResponse({"ready": True, "ollama_version": version})


@router.get("/models")
async def models(request: Request) -> dict[str, Any]:
    auth = authority(request)
    out = [await _model_entry(auth, role) for role in ROLES]
    routing = {kind: auth.roles[role] for kind, role in auth.routing.items()}
    return {"models": out, "total": len(out), "routing_rules": routing, "default": auth.roles[DEFAULT_ROLE]}


async def _model_entry(auth: Authority, role: Role) -> dict[str, Any]:
    """The seed's fields for one role's model, then crew's."""
    model = auth.roles[role]
    num_ctx = auth.runner_options(model).get("num_ctx")
    entry: dict[str, Any] = {"model": model, "name": NAMES[role], "role": role, "memory_gb": 0.0,
                             "type": role, "description": DESCRIPTIONS[role],
                             "context_length": num_ctx or 0, "agent": NAMES[role], "num_ctx": num_ctx}
    try:
        facts = await auth.manager.facts(model)
        expected = await auth.manager.expected_size(model)
    except CrewError as exc:
        entry.update(pulled=False, error=str(exc))
        return entry
    entry.update(memory_gb=round(expected / GB, 1), expected_bytes=expected, pulled=True)
    if facts.context_length:
        entry["context_length"] = facts.context_length
    return entry


@router.get("/memory")
async def memory(request: Request) -> dict[str, Any]:
    auth = authority(request)
    snap = await auth.manager.refresh()
    return {
        **memory_info(snap.budget.bytes, snap.used),
        "budget_bytes": snap.budget.bytes, "budget_source": snap.budget.source,
        "used_bytes": snap.used, "free_bytes": max(0, snap.budget.bytes - snap.used),
        "resident": [{"model": v.name, "bytes": v.bytes, "state": v.state, "pins": v.pins,
                      "ours": v.ours, "idle_s": round(v.idle_seconds, 3)} for v in snap.slots],
        "waiting": auth.manager.waiting(),
    }
