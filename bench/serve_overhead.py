"""What `crew serve` adds to a request, measured request by request against a direct call.

    python bench/serve_overhead.py [--runs 5] [--calls 400] [--chunks 200]

The fake Ollama (`tests/fake_ollama.py`, loopback, no delays) answers a small non-streamed
`/api/chat` to a resident model, and a streamed one of `--chunks` pieces. Each run starts a
fresh `crew serve` process (the real CLI) in front of it; then, `--calls` times, the same request
goes straight to the fake and through the server, one right after the other, the order
alternating, so that whatever the machine is doing hits both alike. Reported per run and over
all runs: p50 and p99 of each, what the server adds at p50 and p99, and per streamed chunk
(the streamed difference at p50 over the number of chunks). A measurement, not a test.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from tests.fake_ollama import GB, FakeOllama, FakeReply  # noqa: E402

MODEL = "qwen3:14b"
OPTIONS = {"num_ctx": 32768, "temperature": 0.2}
SMALL = {"model": MODEL, "messages": [{"role": "user", "content": "ping"}], "stream": False,
         "options": OPTIONS, "keep_alive": 300}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def start_server(fake: FakeOllama) -> tuple[subprocess.Popen[str], str]:
    env = {**os.environ, "CREW_OLLAMA_HOST": fake.url, "CREW_MEMORY_BUDGET_GB": "60",
           "CREW_STATE_DIR": str(ROOT / ".bench-state")}
    proc = subprocess.Popen([sys.executable, "-m", "crew", "serve", "--port", "0"], env=env, cwd=ROOT,
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    assert proc.stderr is not None
    found = re.search(r"listening on (\S+)", proc.stderr.readline())
    if not found:
        proc.kill()
        raise SystemExit("crew serve did not start")
    threading.Thread(target=proc.stderr.read, daemon=True).start()  # the access log: drained
    return proc, found.group(1)


def timed(client: httpx.Client, body: dict[str, Any], stream: bool) -> float:
    start = time.perf_counter()
    if stream:
        with client.stream("POST", "/api/chat", json=body) as answer:
            for _ in answer.iter_raw():
                pass
            answer.raise_for_status()
    else:
        client.post("/api/chat", json=body).raise_for_status()
    return (time.perf_counter() - start) * 1000


def one_run(fake: FakeOllama, calls: int, chunks: int) -> dict[str, float]:
    fake.reset(capacity=60 * GB, load_seconds_per_gb=0.0)
    server, url = start_server(fake)
    streamed = {**SMALL, "stream": True}
    series: dict[str, list[float]] = {"direct": [], "proxied": [], "direct_s": [], "proxied_s": []}
    words = " ".join(["w"] * chunks)
    try:
        with httpx.Client(base_url=fake.url) as straight, httpx.Client(base_url=url) as through:
            through.post("/api/chat", json=SMALL).raise_for_status()  # loaded: both hit a resident model
            for i in range(calls):
                pairs = [(straight, "direct"), (through, "proxied")]
                for client, name in pairs if i % 2 == 0 else pairs[::-1]:
                    series[name].append(timed(client, SMALL, stream=False))
            for i in range(max(1, calls // 10)):
                pairs = [(straight, "direct_s"), (through, "proxied_s")]
                for client, name in pairs if i % 2 == 0 else pairs[::-1]:
                    fake.script(MODEL, FakeReply(words, chunks=chunks))
                    series[name].append(timed(client, streamed, stream=True))
    finally:
        server.terminate()
        server.wait(30)
    d, p = series["direct"], series["proxied"]
    return {
        "direct_p50": statistics.median(d), "direct_p99": pct(d, 0.99),
        "proxied_p50": statistics.median(p), "proxied_p99": pct(p, 0.99),
        "added_p50": statistics.median(p) - statistics.median(d), "added_p99": pct(p, 0.99) - pct(d, 0.99),
        "per_chunk_us": 1000 * (statistics.median(series["proxied_s"])
                                - statistics.median(series["direct_s"])) / chunks,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--calls", type=int, default=400)
    parser.add_argument("--chunks", type=int, default=200)
    args = parser.parse_args()
    fake = FakeOllama().start()
    try:
        rows = [one_run(fake, args.calls, args.chunks) for _ in range(args.runs)]
    finally:
        fake.stop()
    print(f"{args.runs} runs, {args.calls} small calls and {max(1, args.calls // 10)} streams of "
          f"{args.chunks} chunks each way per run; ms unless said")
    print("| run | direct p50 | direct p99 | proxied p50 | proxied p99 | added p50 | added p99 "
          "| per chunk µs |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for n, r in enumerate(rows, 1):
        print(f"| {n} | {r['direct_p50']:.3f} | {r['direct_p99']:.3f} | {r['proxied_p50']:.3f} | "
              f"{r['proxied_p99']:.3f} | {r['added_p50']:.3f} | {r['added_p99']:.3f} | "
              f"{r['per_chunk_us']:.1f} |")
    for key in ("added_p50", "added_p99", "per_chunk_us"):
        values = [r[key] for r in rows]
        print(f"{key}: median of runs {statistics.median(values):.3f}, "
              f"range {min(values):.3f} to {max(values):.3f}")


if __name__ == "__main__":
    main()
