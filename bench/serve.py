"""Four crews on one Ollama, as four processes: each with its own manager, all through one
`crew serve`, and on Ollama's scheduler alone. Then the proxy's own cost per request.

    python bench/serve.py [--crews 4] [--scale 50] [--repeat 5] [--calls 400] [--modes own,serve,ollama]

Every crew is a process that runs the team's workflow (Architect, Coder, Reviewer, Coder,
Reviewer: one plan and two review rounds) against the fake Ollama on loopback, whose scheduler
is Ollama's (`tests/fake_ollama.py`: loads one at a time, evicts the idle runner with the
shortest keep_alive when a load does not fit, holds a runner while a request runs on it). Time
is real but scaled down `--scale` times: loads at 0.7 GB/s (a Mac's cold mmap load), answers of
60/40/30 s per Architect/Coder/Reviewer call, crews starting `--gaps` (modelled) seconds apart:
all at once, and staggered so that one crew plans while another codes or reviews. The crews
are released at wall-clock times fixed before they start (process start-up is not counted), and
the makespan runs from the first release; each row is run `--repeat` times and reported as
min–median–max, since real time on a shared machine is noisy. The fake serves a loaded model at
once while another loads, as sched.go does.
Ollama's memory is 60 GB, the budget crew gets: the Architect (54.4 GB at num_ctx 32768) fits
alone, or the Coder (22.5) with the Reviewer (15.1).

- own: each crew has its own ResidencyManager on Ollama (crew without a server, as `crew run`
  opens it: the holders notes and the host lock of `crew.residency.host_lock`): holds, the
  forecast the Selector sends (learned transitions over the rule, from a new workspace),
  keep_alive -1 and a hand-back at the end;
- serve: every crew sends its calls to one `crew serve` process (the real CLI) with the same
  forecast as a list (what the server's route takes: the models more likely needed than not);
  the server holds, loads and evicts;
- ollama: plain clients that send the role's num_ctx and nothing else; Ollama's scheduler decides.

Reports loads, GB loaded, makespan, mean run time, Ollama's own evictions, peak GB and errors,
side by side. Then the proxy's overhead: the same tiny non-streamed chat to a resident model,
`--calls` times, straight to the fake and through `crew serve`, alternating in blocks.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fake_ollama import GB, FakeOllama  # noqa: E402

A, C, R = "qwen3-coder-next:q4_K_M", "qwen3-coder:30b", "qwen3:14b"
WORKFLOW = [A, C, R, C, R]
ROLES = ["architect", "coder", "reviewer", "coder", "reviewer"]
# Seconds of wall time the crew processes get to start before the first is released.
STARTUP_S = 3.0
GEN_S = {A: 60.0, C: 40.0, R: 30.0}
BANDWIDTH_GB_S = 0.7
CAPACITY_GB = 60
OPTIONS = {"num_ctx": 32768, "temperature": 0.2}
MODES = ("own", "serve", "ollama")
BLOCK = 50


# -- one crew, in its own process ---------------------------------------------------------------


async def crew_worker(mode: str, url: str, release: float) -> dict[str, Any]:
    import httpx
    import ollama

    from crew.backends.ollama import OllamaBackend
    from crew.residency import ResidencyManager
    from crew.residency.budget import MemoryBudget
    from crew.residency.transitions import LearnedForecast, Transitions
    from crew.routing import RULE

    # Released at a wall-clock time fixed by the parent: process start-up is not the crew's time.
    await asyncio.sleep(max(0.0, release - time.time()))
    started = time.time()
    client = ollama.AsyncClient(host=url)
    manager = None
    http = httpx.AsyncClient(base_url=url)
    if mode == "own":
        # As `crew run` opens it: each crew notes the models it keeps (crew.residency.holders), and the
        # others' notes steer its evictions.
        from crew.residency.holders import HolderRecord
        from crew.residency.host_lock import HostLock

        state = Path(os.environ["BENCH_STATE"])
        record = HolderRecord(state / "holders", url, f"bench-{os.getpid()}")
        manager = ResidencyManager(OllamaBackend(url), MemoryBudget(CAPACITY_GB * GB, "bench"),
                                   held_elsewhere=record.held_elsewhere, host_lock=HostLock(state, url))
        manager.subscribe(record)
        for model in (A, C, R):
            manager.register(model, OPTIONS)
    # The forecast the team's Selector sends: learned transitions over the rule, new workspace.
    team = LearnedForecast({"architect": A, "coder": C, "reviewer": R}, Transitions(RULE))
    previous = "task"
    try:
        for step, model in enumerate(WORKFLOW):
            role = ROLES[step]
            outlook = team.turn(previous, role)
            previous = role
            assert outlook is not None
            # crew serve's route takes a list: the models more likely needed than not, soonest first.
            ahead = [m for _, m in sorted((o.next_use, m) for m, o in outlook.items() if o.p_use >= 0.5)]
            messages = [{"role": "user", "content": f"step {step}"}]
            if manager is not None:
                manager.forecast(outlook, source="crew")
                async with manager.hold(model):
                    await client.chat(model=model, messages=messages, options=OPTIONS, keep_alive=-1)
            elif mode == "serve":
                await http.post("/crew/v1/forecast", json={"source": f"bench {os.getpid()}", "models": ahead})
                await client.chat(model=model, messages=messages)
            else:
                await client.chat(model=model, messages=messages, options=OPTIONS)
        error = None
    except Exception as exc:  # noqa: BLE001 - counted and shown, not raised
        error = f"{type(exc).__name__}: {exc}"
    finally:
        if manager is not None:
            await manager.aclose()
        await http.aclose()
        await client.close()  # type: ignore[no-untyped-call]
    return {"released": started, "finished": time.time(), "error": error}


# -- the runs ------------------------------------------------------------------------------------


def reset(fake: FakeOllama, scale: float) -> None:
    fake.reset(capacity=CAPACITY_GB * GB, load_seconds_per_gb=1 / BANDWIDTH_GB_S / scale)
    fake.generate_seconds = {m: s / scale for m, s in GEN_S.items()}


def start_server(fake: FakeOllama) -> tuple[subprocess.Popen[str], str]:
    env = {**os.environ, "CREW_OLLAMA_HOST": fake.url, "CREW_MEMORY_BUDGET_GB": str(CAPACITY_GB),
           "CREW_STATE_DIR": str(ROOT / ".bench-state")}
    proc = subprocess.Popen([sys.executable, "-m", "crew", "serve", "--port", "0"], env=env, cwd=ROOT,
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    assert proc.stderr is not None
    line = proc.stderr.readline()
    found = re.search(r"listening on (\S+)", line)
    if not found:
        proc.kill()
        raise SystemExit(f"crew serve did not start: {line}")
    # The access log goes on to stderr: drain it, or the server blocks on a full pipe.
    threading.Thread(target=proc.stderr.read, daemon=True).start()
    return proc, found.group(1)


def run_mode(fake: FakeOllama, mode: str, crews: int, scale: float, gap: float) -> dict[str, Any]:
    reset(fake, scale)
    server = None
    url = fake.url
    if mode == "serve":
        server, url = start_server(fake)
    epoch = time.time() + STARTUP_S
    state = tempfile.mkdtemp(prefix="crew-bench-")
    workers = [subprocess.Popen([sys.executable, __file__, "--worker", mode, url,
                                 str(epoch + i * gap / scale)], stdout=subprocess.PIPE, text=True,
                                env={**os.environ, "BENCH_STATE": state})
               for i in range(crews)]
    results = [json.loads(w.communicate()[0]) for w in workers]
    late = max(r["released"] - (epoch + i * gap / scale) for i, r in enumerate(results))
    if late > 0.05:
        print(f"  (a crew was released {late:.2f} s late: the machine is too busy for this scale)")
    makespan = max(r["finished"] for r in results) - epoch
    if server is not None:
        server.terminate()
        server.wait(30)
    return {
        "mode": mode,
        "gap": gap,
        "loads": len(fake.loads),
        "gb_loaded": sum(load["size"] for load in fake.loads) / GB,
        "makespan_s": makespan * scale,
        "mean_run_s": statistics.mean(r["finished"] - r["released"] for r in results) * scale,
        "ollama_evictions": len(fake.self_evictions()),
        "option_reloads": len(fake.option_reloads()),
        "peak_gb": fake.peak_used / GB,
        "errors": [r["error"] for r in results if r["error"]],
    }


def overhead(fake: FakeOllama, calls: int) -> dict[str, float]:
    import httpx

    fake.reset(capacity=CAPACITY_GB * GB, load_seconds_per_gb=0.0)
    server, url = start_server(fake)
    body = {"model": R, "messages": [{"role": "user", "content": "ping"}], "stream": False,
            "options": OPTIONS, "keep_alive": -1}
    direct: list[float] = []
    proxied: list[float] = []
    try:
        with httpx.Client(base_url=fake.url) as straight, httpx.Client(base_url=url) as through:
            through.post("/api/chat", json=body).raise_for_status()  # load it: both hit a resident model
            for _ in range(max(1, calls // BLOCK)):
                for client, out in ((straight, direct), (through, proxied)):
                    for _ in range(BLOCK):
                        t = time.perf_counter()
                        client.post("/api/chat", json=body).raise_for_status()
                        out.append((time.perf_counter() - t) * 1000)
    finally:
        server.terminate()
        server.wait(30)
    return {"direct_ms": statistics.median(direct), "proxied_ms": statistics.median(proxied),
            "overhead_ms": statistics.median(proxied) - statistics.median(direct)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crews", type=int, default=4)
    parser.add_argument("--scale", type=float, default=50.0)
    parser.add_argument("--calls", type=int, default=400)
    parser.add_argument("--gaps", default="0,30,75",
                        help="seconds (modelled) between crew starts, one table row set each")
    parser.add_argument("--repeat", type=int, default=5, help="runs of each row (the spread is reported)")
    parser.add_argument("--modes", default=",".join(MODES), help="which of own,serve,ollama to run")
    parser.add_argument("--overhead-only", action="store_true", help="only the proxy's cost per request")
    parser.add_argument("--worker", nargs=3, metavar=("MODE", "URL", "DELAY"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        mode, url, delay = args.worker
        print(json.dumps(asyncio.run(crew_worker(mode, url, float(delay)))))
        return
    fake = FakeOllama().start()
    try:
        gaps = [] if args.overhead_only else [float(g) for g in args.gaps.split(",")]
        rows = [[run_mode(fake, mode, args.crews, args.scale, gap) for _ in range(args.repeat)]
                for gap in gaps for mode in args.modes.split(",")]
        cost = overhead(fake, args.calls)
    finally:
        fake.stop()
    if rows:
        table(rows, args)
    print(f"\nproxy overhead ({args.calls} calls each, median): direct {cost['direct_ms']:.2f} ms, "
          f"through crew serve {cost['proxied_ms']:.2f} ms, overhead {cost['overhead_ms']:.2f} ms")


def table(rows: list[list[dict[str, Any]]], args: argparse.Namespace) -> None:
    print(f"{args.crews} crews, time scaled 1/{args.scale:g} (figures in modelled seconds), each row run "
          f"{args.repeat} times: min–median–max")
    print("| start gap s | mode | GB loaded | makespan s | mean run s | loads | Ollama's own evictions "
          "| peak GB | errors |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for runs in rows:
        first = runs[0]

        def cell(key: str, fmt: str = "{:.0f}", runs: list[dict[str, Any]] = runs) -> str:
            values = [r[key] if not isinstance(r[key], list) else len(r[key]) for r in runs]
            low, mid, high = min(values), statistics.median(values), max(values)
            if low == high:
                return fmt.format(low)
            return f"{fmt.format(low)}–{fmt.format(mid)}–{fmt.format(high)}"

        print(f"| {first['gap']:g} | {first['mode']} | {cell('gb_loaded', '{:.1f}')} "
              f"| {cell('makespan_s')} | {cell('mean_run_s')} | {cell('loads')} "
              f"| {cell('ollama_evictions')} | {cell('peak_gb', '{:.1f}')} | {cell('errors')} |")
    for runs in rows:
        for r in runs:
            for error in r["errors"]:
                print(f"  {r['mode']}: {error}")


if __name__ == "__main__":
    main()
