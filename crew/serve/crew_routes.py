"""crew's own API for crew clients of a server: what they expect to need next, and prefetch.

A crew pointed at a crew server does no loading of its own (`crew.residency.served`); these
let its workflow still shape residency: a forecast spares the models it will need soonest
from eviction, and a prefetch loads the next agent's model while the current one works, if
it fits without evicting anything.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from crew.serve.requests import authority

router = APIRouter(prefix="/crew/v1")


class Forecast(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: str = Field(min_length=1, max_length=200)
    models: list[str] | None = None
    """Soonest first; null withdraws the source's forecast."""


class Prefetch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1)


@router.post("/forecast")
async def forecast(request: Request, body: Forecast) -> dict[str, Any]:
    auth = authority(request)
    models = [await auth.ensure(m) for m in body.models] if body.models is not None else None
    auth.manager.forecast(models, source=f"remote {body.source}")
    return {"source": body.source, "models": models}


@router.post("/prefetch")
async def prefetch(request: Request, body: Prefetch) -> dict[str, Any]:
    auth = authority(request)
    model = await auth.ensure(body.model)
    return {"model": model, "started": await auth.manager.prefetch(model)}
