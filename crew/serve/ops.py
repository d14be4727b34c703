"""Operating `crew serve`: Prometheus metrics, the residency event stream, the access log.

Metrics live in the app's own registry (two servers in one process, as in tests, do not mix).
Counters and histograms follow the manager's events; gauges are read at scrape time.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from crew.events import Event, ModelLoaded, ModelUnloaded
from crew.serve.authority import Authority

access_log = logging.getLogger("crew.serve.access")
router = APIRouter()

# Buckets from a cached reload of a small model to a cold 52 GB load on a Mac.
LOAD_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 300)
WAIT_BUCKETS = (0.001, 0.01, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
# A slow reader of the event stream loses old events rather than slowing the server.
EVENT_BACKLOG = 1000


class Metrics:
    def __init__(self, auth: Authority) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.loads = Counter("crew_model_loads", "Model loads", ["model"], registry=r)
        self.unloads = Counter("crew_model_unloads", "Model unloads", ["model", "reason"], registry=r)
        self.evictions = Counter("crew_model_evictions", "Models evicted for another",
                                 ["model", "evicted_for"], registry=r)
        self.load_seconds = Histogram("crew_model_load_seconds", "Seconds a load took", ["model"],
                                      buckets=LOAD_BUCKETS, registry=r)
        self.wait_seconds = Histogram("crew_wait_seconds", "Seconds a request waited for its model",
                                      ["model"], buckets=WAIT_BUCKETS, registry=r)
        self.resident = Gauge("crew_resident_bytes", "Bytes resident per model", ["model"], registry=r)
        self.used = Gauge("crew_used_bytes", "Bytes resident in all", registry=r)
        self.budget = Gauge("crew_budget_bytes", "The memory budget", registry=r)
        self.queue = Gauge("crew_queue_depth", "Requests waiting per model", ["model"], registry=r)
        self.requests = Counter("crew_requests", "Requests by route and status", ["route", "status"],
                                registry=r)
        self._auth = auth
        auth.manager.subscribe(self._on_event)
        auth.wait_observers.append(lambda model, s: self.wait_seconds.labels(model).observe(s))

    def _on_event(self, event: Event) -> None:
        if isinstance(event, ModelLoaded):
            self.loads.labels(event.model).inc()
            self.load_seconds.labels(event.model).observe(event.seconds)
        elif isinstance(event, ModelUnloaded):
            kind = "evicted" if event.evicted_for else "options" if "options" in event.reason else "other"
            self.unloads.labels(event.model, kind).inc()
            if event.evicted_for:
                self.evictions.labels(event.model, event.evicted_for).inc()

    def scrape(self) -> bytes:
        snap = self._auth.manager.snapshot()
        self.budget.set(snap.budget.bytes)
        self.used.set(snap.used)
        self.resident.clear()
        for view in snap.slots:
            self.resident.labels(view.name).set(view.bytes)
        self.queue.clear()
        for model, depth in self._auth.manager.waiting().items():
            self.queue.labels(model).set(depth)
        return generate_latest(self.registry)


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    scraped: Metrics = request.app.state.metrics
    return Response(scraped.scrape(), media_type=CONTENT_TYPE_LATEST)


@router.get("/crew/v1/events")
async def events(request: Request) -> Response:
    """Residency events as server-sent events, from now on (a snapshot comes first)."""
    auth: Authority = request.app.state.authority
    queue: asyncio.Queue[Event] = asyncio.Queue(EVENT_BACKLOG)

    def push(event: Event) -> None:
        if queue.full():
            queue.get_nowait()
        queue.put_nowait(event)

    unsubscribe = auth.manager.subscribe(push)
    snap = auth.manager.snapshot()
    first = {"type": "snapshot", "budget": snap.budget.bytes, "used": snap.used,
             "resident": [{"model": v.name, "bytes": v.bytes, "state": v.state} for v in snap.slots]}

    async def stream() -> AsyncIterator[bytes]:
        try:
            yield f"event: snapshot\ndata: {json.dumps(first)}\n\n".encode()
            while True:
                event = await queue.get()
                yield f"event: {event.type}\ndata: {event.model_dump_json()}\n\n".encode()
        finally:
            unsubscribe()

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache"})
