"""Eight crews over two Ollama hosts on Ray Serve: crew's router against Ray's own multiplex
routing and against a static split of crews per host.

    python bench/fleet.py [--crews 8] [--scale 50] [--gaps 0,20]

Needs the `ray` extra. Two fake Ollama hosts on loopback (`tests/fake_ollama.py`: Ollama's
scheduler, loads at 0.7 GB/s), each with 60 GB: the Architect (54.4 GB at num_ctx 32768) fits
alone, or the Coder (22.5) with the Reviewer (15.1). Every crew runs the team's workflow
(Architect, Coder, Reviewer, Coder, Reviewer; answers of 60/40/30 s), crews starting `--gaps`
modelled seconds apart (all at once, and staggered); time is real but scaled down `--scale`
times. One local Ray cluster; the hosts' deployment (one replica per host, each with crew's
ResidencyManager for its host) is the same in every mode, only the routing differs:

- crew: `crew serve --ray`'s router (`crew.fleet.router`): resident, then fits, then cheapest;
- ray: Ray Serve's default router with model multiplexing (`@serve.multiplexed`, Ray's default of
  3 models per replica, counted not weighed; requests carry `multiplexed_model_id`);
- split: crews 0-3 on the first host, 4-7 on the second (a team's usual static setup).

Reports loads, GB loaded, makespan, mean run time, Ollama's own evictions and errors.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import ray  # noqa: E402
from ray import serve  # noqa: E402

# The same team, workflow and timing as the one-machine benchmark.
from bench.serve import BANDWIDTH_GB_S, CAPACITY_GB, GEN_S, WORKFLOW, A, C, R  # noqa: E402
from crew.fleet import deployment  # noqa: E402
from crew.fleet.asgi import Head, Wire  # noqa: E402
from crew.fleet.policy import Want  # noqa: E402
from crew.fleet.replica import HostReplica  # noqa: E402
from crew.settings import HostSettings, load_settings  # noqa: E402
from tests.fake_ollama import GB, FakeOllama  # noqa: E402

MODES = ("crew", "ray", "split")


class MultiplexReplica(HostReplica):
    """The same replica, telling Ray's default router which models it "has" (Ray's multiplexing)."""

    @serve.multiplexed()
    async def _model(self, model_id: str) -> str:
        return model_id

    async def forward(self, want: Want, wire: Wire) -> AsyncIterator[Head | bytes]:
        await self._model(serve.get_multiplexed_model_id())
        async for piece in super().forward(want, wire):
            yield piece


def app(mode: str, settings: Any, hosts: list[HostSettings]) -> Any:
    if mode != "ray":
        return deployment(settings, hosts)
    return serve.deployment(name="hosts", num_replicas=len(hosts), max_ongoing_requests=10_000,
                            ray_actor_options={"num_cpus": 0})(MultiplexReplica).bind(settings, hosts)


async def crew_run(mode: str, handle: Any, index: int, crews: int, sizes: dict[str, int],
                   delay: float) -> dict[str, Any]:
    await asyncio.sleep(delay)
    started = time.monotonic()
    error = None
    try:
        for step, model in enumerate(WORKFLOW):
            body = json.dumps({"model": model, "messages": [{"role": "user", "content": f"step {step}"}],
                               "stream": False}).encode()
            wire = Wire("POST", "/api/chat", b"", ((b"content-type", b"application/json"),), body,
                        (f"crew-{index}", 0))
            want = Want(model, sizes[model], host=f"h{1 + index * 2 // crews}" if mode == "split" else None)
            options: dict[str, Any] = {"stream": True}
            if mode == "ray":
                options["multiplexed_model_id"] = model
            pieces = [p async for p in handle.options(**options).forward.remote(want, wire)]
            head = pieces[0]
            if not isinstance(head, Head) or head.status != 200:
                raise RuntimeError(f"{model}: {getattr(head, 'status', head)} {b''.join(pieces[1:])[:200]!r}")
    except Exception as exc:  # noqa: BLE001 - counted and shown, not raised
        error = f"{type(exc).__name__}: {exc}"
    return {"seconds": time.monotonic() - started, "error": error}


async def run_mode(mode: str, handle: Any, crews: int, scale: float, gap: float) -> dict[str, Any]:
    sizes = {m: int(await handle.size.remote(Want(None), m)) for m in (A, C, R)}
    started = time.monotonic()
    results = await asyncio.gather(*(crew_run(mode, handle, i, crews, sizes, i * gap / scale)
                                     for i in range(crews)))
    return {"mode": mode, "makespan_s": (time.monotonic() - started) * scale,
            "mean_run_s": statistics.mean(r["seconds"] for r in results) * scale,
            "errors": [r["error"] for r in results if r["error"]]}


def measure(mode: str, gap: float, fakes: list[FakeOllama], args: argparse.Namespace, state: str
            ) -> dict[str, Any]:
    for fake in fakes:
        fake.reset(capacity=CAPACITY_GB * GB, load_seconds_per_gb=1 / BANDWIDTH_GB_S / args.scale)
        fake.generate_seconds = {m: s / args.scale for m, s in GEN_S.items()}
    hosts = [HostSettings(url=f.url, name=f"h{i}", memory_budget_gb=CAPACITY_GB)
             for i, f in enumerate(fakes, 1)]
    settings = load_settings(hosts=hosts, state_dir=Path(state) / mode, allow_partial_offload=False)
    handle = serve.run(app(mode, settings, hosts), name=f"bench-{mode}", route_prefix=None)
    try:
        row = asyncio.run(run_mode(mode, handle, args.crews, args.scale, gap))
    finally:
        serve.delete(f"bench-{mode}")
    loads = [load for fake in fakes for load in fake.loads]
    return {**row, "gap": gap, "loads": len(loads), "gb_loaded": sum(load["size"] for load in loads) / GB,
            "per_host": [len(f.loads) for f in fakes],
            "ollama_evictions": sum(len(f.self_evictions()) for f in fakes),
            "peak_gb": max(f.peak_used for f in fakes) / GB}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crews", type=int, default=8)
    parser.add_argument("--scale", type=float, default=50.0)
    parser.add_argument("--gaps", default="0,20",
                        help="modelled seconds between crew starts, one set of rows each")
    parser.add_argument("--modes", default=",".join(MODES))
    args = parser.parse_args()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    serve.start(proxy_location="Disabled")
    fakes = [FakeOllama().start(), FakeOllama().start()]
    state = tempfile.mkdtemp(prefix="crew-bench-fleet-")
    try:
        rows = [measure(mode, float(gap), fakes, args, state)
                for gap in args.gaps.split(",") for mode in args.modes.split(",")]
    finally:
        for fake in fakes:
            fake.stop()
        serve.shutdown()
        ray.shutdown()
    print(f"{args.crews} crews over 2 hosts of {CAPACITY_GB} GB; time scaled 1/{args.scale:g} "
          "(figures in modelled seconds)")
    print("| start gap s | routing | loads (per host) | GB loaded | makespan s | mean run s "
          "| Ollama's own evictions | peak GB | errors |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        per_host = " + ".join(map(str, r["per_host"]))
        print(f"| {r['gap']:g} | {r['mode']} | {r['loads']} ({per_host}) | {r['gb_loaded']:.1f} "
              f"| {r['makespan_s']:.0f} | {r['mean_run_s']:.0f} | {r['ollama_evictions']} "
              f"| {r['peak_gb']:.1f} | {len(r['errors'])} |")
    for r in rows:
        for error in r["errors"]:
            print(f"  {r['mode']}: {error}")


if __name__ == "__main__":
    main()
