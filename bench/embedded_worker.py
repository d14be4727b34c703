"""The embedded model out of crew's process: crew's own worker over a pipe, against
llama-cpp-python's OpenAI-compatible server (its `server` extra), on the bundled SmolLM2.

    python bench/embedded_worker.py [runs]

For each, per run: from spawn to ready (model loaded), one short chat answer (20 tokens, the
round trip included), and how long an answer takes to stop once cut (the worker: a cancel
line; the server: a streamed request whose connection is closed, the only way it stops early).
Needs the embedded extra, and for the server `pip install sse-starlette starlette-context`.
A measurement, not a test.
"""

from __future__ import annotations

import asyncio
import json
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from crew.backends.embedded import bundled_model_path  # noqa: E402
from crew.backends.worker import ModelWorker  # noqa: E402

SHORT = {"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 20, "temperature": 0.0}
LONG = {"messages": [{"role": "user", "content": "Write a long essay about rivers."}],
        "max_tokens": 400, "temperature": 0.0}


async def worker_run(path: Path) -> tuple[float, float, float]:
    started = time.monotonic()
    worker = ModelWorker("smollm2", {"path": str(path), "n_ctx": 2048, "threads": None, "seed": 1})
    await worker.start()
    ready = time.monotonic() - started
    started = time.monotonic()
    await worker.chat(SHORT, asked="bench", owner=1)
    short = time.monotonic() - started
    long = asyncio.ensure_future(worker.chat(LONG, asked="bench", owner=2))
    await asyncio.sleep(0.5)  # a measurement: let the answer run a little, then cut it
    started = time.monotonic()
    await worker.cut(2)
    await long
    cut = time.monotonic() - started
    await worker.stop()
    return ready, short, cut


async def server_run(path: Path) -> tuple[float, float, float]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    server = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(path), "--n_ctx", "2048",
         "--chat_format", "chatml-function-calling", "--port", str(port), "--verbose", "false"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(timeout=60) as client:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if (await client.get(url + "/v1/models")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit("the server did not start in 120 s")
                await asyncio.sleep(0.02)  # polling: the server says nothing when it is ready
            ready = time.monotonic() - started
            started = time.monotonic()
            await client.post(url + "/v1/chat/completions", json=SHORT)
            short = time.monotonic() - started
            async with client.stream("POST", url + "/v1/chat/completions",
                                     json={**LONG, "stream": True}) as stream:
                deadline = time.monotonic() + 0.5
                async for _ in stream.aiter_lines():
                    if time.monotonic() > deadline:
                        break
                started = time.monotonic()
            # The answer stopped when the next request is answered (the server has one lock).
            await client.post(url + "/v1/chat/completions", json={**SHORT, "max_tokens": 1})
            cut = time.monotonic() - started
    finally:
        server.terminate()
        server.wait(10)
    return ready, short, cut


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    path = bundled_model_path()
    assert path is not None, "install the embedded extra"
    results: dict[str, list[tuple[float, float, float]]] = {"worker": [], "server": []}
    for _ in range(runs):  # interleaved, so the machine's noise falls on both alike
        results["worker"].append(asyncio.run(worker_run(path)))
        results["server"].append(asyncio.run(server_run(path)))
    print(f"median of {runs} runs (s)    ready   20-token answer   cut (until free)")
    for name, rows in results.items():
        ready, short, cut = (statistics.median(column) for column in zip(*rows, strict=True))
        print(f"{name:<24} {ready:7.2f}   {short:15.2f}   {cut:8.2f}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
