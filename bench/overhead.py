"""The cost of routing: time per call through RoutedOllamaClient against the raw ollama client.

    python bench/overhead.py [calls] [reconcile_ttl_s]

Both talk to the fake Ollama server on loopback with no delays, in the same run, alternating
in blocks so that machine noise hits both alike. Reports median and p99 of each, their
difference and ratio. A third series times a bare `GET /api/ps` on the raw client: with the
strict default (reconcile_ttl_s 0) crew reads it before every request, so the difference less
that round trip is crew's own cost; the round trip itself is the fake server's (a Python HTTP
server), and a Go Ollama answers it faster. A measurement, not a test.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import ollama  # noqa: E402
from autogen_core.models import UserMessage  # noqa: E402

from crew.backends.ollama import OllamaBackend  # noqa: E402
from crew.clients.ollama import RoutedOllamaClient  # noqa: E402
from crew.residency import ResidencyManager  # noqa: E402
from crew.residency.budget import GB, MemoryBudget  # noqa: E402
from crew.settings import RoleSettings  # noqa: E402
from tests.fake_ollama import FakeOllama  # noqa: E402

MODEL = "qwen3:14b"
BLOCK = 50


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure(fake: FakeOllama, calls: int) -> tuple[list[float], list[float], list[float]]:
    settings = RoleSettings(model=MODEL, num_ctx=8192, think=False)
    ttl = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0
    manager = ResidencyManager(OllamaBackend(fake.url), MemoryBudget(48 * GB, "bench"), reconcile_ttl=ttl)
    facts = await manager.facts(MODEL)
    routed = RoutedOllamaClient(manager, "reviewer", settings, facts, backend=manager.backend)
    raw = ollama.AsyncClient(host=fake.url)
    messages = [UserMessage(content="ping", source="user")]
    raw_messages = [{"role": "user", "content": "ping"}]
    await routed.create(messages)  # load once, outside the timing
    routed_t: list[float] = []
    raw_t: list[float] = []
    ps_t: list[float] = []
    for _ in range(calls // BLOCK):
        for _ in range(BLOCK):
            start = time.perf_counter()
            await routed.create(messages)
            routed_t.append(time.perf_counter() - start)
        for _ in range(BLOCK):
            start = time.perf_counter()
            await raw.chat(model=MODEL, messages=raw_messages, options=settings.options(), keep_alive=-1)
            raw_t.append(time.perf_counter() - start)
        for _ in range(BLOCK):
            start = time.perf_counter()
            (await raw._client.get("/api/ps")).raise_for_status()
            ps_t.append(time.perf_counter() - start)
    await routed.close()
    await raw._client.aclose()
    await manager.aclose()
    return routed_t, raw_t, ps_t


def main() -> None:
    calls = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    fake = FakeOllama().start()
    fake.reset(load_seconds_per_gb=0.0, unload_delay=0.0)
    routed, raw, ps = asyncio.run(measure(fake, calls))
    fake.stop()
    print(f"{calls} calls each, ms        median     p99")
    for name, t in (("raw ollama.AsyncClient", raw), ("RoutedOllamaClient", routed), ("GET /api/ps", ps)):
        print(f"{name:<24} {1000 * statistics.median(t):>9.3f} {1000 * pct(t, 0.99):>7.3f}")
    diff = statistics.median(routed) - statistics.median(raw)
    ratio = statistics.median(routed) / statistics.median(raw)
    print(f"difference of medians    {1000 * diff:>9.3f} ms; ratio {ratio:.2f}")
    if len(sys.argv) <= 2 or float(sys.argv[2]) == 0:  # strict: one /api/ps read per request
        print(f"less one /api/ps read    {1000 * (diff - statistics.median(ps)):>9.3f} ms (crew's own cost)")


if __name__ == "__main__":
    main()
