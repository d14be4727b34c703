"""`crew serve --ray` on a real local Ray (2 CPUs) with two fake Ollama hosts, each with room
for one of two models, driven by the official `ollama` client.

A separate run (`pytest -m fleet -n 0`): one Ray cluster for the module, ~25 s.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import ollama
import pytest

from crew.fleet import deployment
from crew.fleet.front import Fleet, create_front
from crew.settings import HostSettings, Settings, load_settings
from crew.terminal.cli import main
from tests.fake_ollama import GB, FakeModel, FakeOllama
from tests.serving import running, wait_until

if os.environ.get("CREW_REQUIRE_FLEET"):
    import ray  # CI: a missing Ray fails here instead of skipping
else:
    ray = pytest.importorskip("ray")
from ray import serve  # noqa: E402

pytestmark = pytest.mark.fleet

A, B = "alpha:7b", "beta:7b"
MODELS = [FakeModel(A, 6 * GB), FakeModel(B, 6 * GB)]
# How long a wait that goes through Ray may take on a busy machine (Ray's workers run at nice 15,
# so beside two CPU burners a round trip through the front can take seconds).
PATIENCE_S = 60.0
BUDGET_GB = 10  # one 6 GB model (7 GB resident at num_ctx 4096) per host, not two
APP = "fleet-test"


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    serve.start(proxy_location="Disabled")
    yield
    serve.shutdown()
    ray.shutdown()


@pytest.fixture
def hosts() -> Iterator[list[FakeOllama]]:
    fakes = [FakeOllama().start(), FakeOllama().start()]
    for fake in fakes:
        fake.reset(MODELS, capacity=BUDGET_GB * GB)
    yield fakes
    for fake in fakes:
        fake.stop()


def fleet_settings(fakes: list[FakeOllama], tmp_path: Path) -> Settings:
    hosts = [HostSettings(url=f.url, name=f"h{i}", memory_budget_gb=BUDGET_GB)
             for i, f in enumerate(fakes, 1)]
    return load_settings(hosts=hosts, serve_num_ctx=4096, allow_partial_offload=False,
                         state_dir=tmp_path / "state")


@contextmanager
def fleet(settings: Settings) -> Iterator[str]:
    """The hosts deployed on Ray Serve and the front on a loopback port; deleted on exit."""
    handle = serve.run(deployment(settings, list(settings.hosts)), name=APP, route_prefix=None)
    try:
        with running(settings, create_front(settings, Fleet(handle, [h.label for h in settings.hosts]))) as s:
            yield s.url
    finally:
        serve.delete(APP)


def chat(url: str, model: str) -> str:
    with ollama.Client(host=url, timeout=PATIENCE_S) as client:
        answer = client.chat(model=model, messages=[{"role": "user", "content": "hi"}])
    return str(answer.message.content)


def host_is(url: str, name: str, up: bool) -> bool:
    hosts = httpx.get(f"{url}/health", timeout=PATIENCE_S).json()["hosts"]
    return any(h["host"] == name and (h.get("status") == "healthy") == up for h in hosts)


def where(fakes: list[FakeOllama], model: str) -> list[int]:
    return [i for i, f in enumerate(fakes) if any(c["model"] == model for c in f.chats)]


def handed_back(fake: FakeOllama) -> bool:
    loaded = fake.load_names()[-1]
    last = [r for r in fake.requests if r["body"] and r["body"].get("model") == loaded][-1]
    return bool(last["body"]["keep_alive"] == "5m" and last["body"]["messages"] == [])


def assert_within_budget(fakes: list[FakeOllama]) -> None:
    for fake in fakes:
        assert fake.self_evictions() == [], "Ollama evicted on its own: crew went over a host's budget"
        assert fake.peak_used <= BUDGET_GB * GB


def test_alternating_models_cost_one_load_each(
    cluster: None, hosts: list[FakeOllama], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with fleet(fleet_settings(hosts, tmp_path)) as url:
        for model in [A, B] * 3:
            assert chat(url, model) == "OK"
        # A burst at once, both models: still no second load.
        with ThreadPoolExecutor(8) as pool:
            assert list(pool.map(lambda m: chat(url, m), [A, B] * 4)) == ["OK"] * 8
        loads = [f.load_names() for f in hosts]
        assert sorted(sum(loads, [])) == [A, B], loads  # one load per model, not one per switch
        assert len(where(hosts, A)) == 1 and len(where(hosts, B)) == 1 and where(hosts, A) != where(hosts, B)
        assert_within_budget(hosts)

        # The fleet seen whole: every host in /api/ps (official client), /memory and /metrics.
        with ollama.Client(host=url, timeout=PATIENCE_S) as client:
            ps = client.ps()
        assert sorted(m.model or "" for m in ps.models) == [A, B]
        memory = httpx.get(f"{url}/memory", timeout=PATIENCE_S).json()
        assert [h["host"] for h in memory["hosts"]] == ["h1", "h2"]
        assert memory["budget_bytes"] == 2 * BUDGET_GB * GB
        metrics = httpx.get(f"{url}/metrics", timeout=PATIENCE_S).text
        a_host = f"h{where(hosts, A)[0] + 1}"
        assert f'crew_model_loads_total{{host="{a_host}",model="{A}"}} 1.0' in metrics
        assert 'crew_fleet_requests_total{route="/{path:path}",status="200"}' in metrics
        # The event stream: every host's, each event naming its host (a snapshot from each first).
        with httpx.stream("GET", f"{url}/crew/v1/events", timeout=PATIENCE_S) as events:
            firsts = []
            for line in events.iter_lines():
                if line.startswith("data: "):
                    firsts.append(json.loads(line[6:]))
                if len(firsts) == 2:
                    break
        assert sorted(e["host"] for e in firsts) == ["h1", "h2"]
        assert {e["type"] for e in firsts} == {"snapshot"}
        # `crew ps` pointed at the fleet: every model with the host that holds it.
        monkeypatch.setenv("CREW_OLLAMA_HOST", url)
        assert main(["ps"]) == 0
        shown = capsys.readouterr().out
        b_host = f"h{where(hosts, B)[0] + 1}"
        assert shown.startswith("HOST ")
        assert re.search(rf"^{a_host}\s+{A}\s", shown, re.M) and re.search(rf"^{b_host}\s+{B}\s", shown, re.M)
    # Deleted with the front: each host got its model back to Ollama's expiry (keep_alive_after).
    for fake in hosts:
        assert handed_back(fake)


def test_a_host_that_stops_answering_leaves_routing_and_comes_back(
    cluster: None, hosts: list[FakeOllama], tmp_path: Path
) -> None:
    with fleet(fleet_settings(hosts, tmp_path)) as url:
        for model in [A, B]:
            chat(url, model)
        down = where(hosts, B)[0]
        port = int(hosts[down].url.rsplit(":", 1)[1])
        hosts[down].stop()
        # Not started on the dead host: retried on the other one, which makes room.
        outcomes = [_outcome(url, m) for m in [B, A, B, A]]
        assert outcomes == ["OK"] * 4, outcomes
        alive = hosts[1 - down]
        assert alive.load_names().count(B) >= 1
        wait_until(lambda: host_is(url, f"h{down + 1}", up=False), timeout=PATIENCE_S)

        back = FakeOllama(port).start()
        back.reset(MODELS, capacity=BUDGET_GB * GB)
        hosts[down] = back
        wait_until(lambda: host_is(url, f"h{down + 1}", up=True), timeout=PATIENCE_S)
        # Back in routing once its replica reports it up: a model not resident elsewhere goes there.
        models = itertools.cycle([A, B])
        wait_until(lambda: chat(url, next(models)) == "OK" and bool(back.chats), timeout=PATIENCE_S)
        assert_within_budget(hosts)


def test_a_client_that_leaves_while_its_model_loads_leaves_the_queue(
    cluster: None, hosts: list[FakeOllama], tmp_path: Path
) -> None:
    gate = threading.Event()
    for fake in hosts:
        fake.load_gate = gate  # loads wait: the request waits in its host's queue
    with fleet(fleet_settings(hosts, tmp_path)) as url:
        body = json.dumps({"model": A, "messages": [{"role": "user", "content": "first"}], "stream": False})
        host, port = url.removeprefix("http://").split(":")
        # A client that leaves when the test says so (not on a timer: a busy machine may take
        # longer than any client timeout to queue the request at all).
        with socket.create_connection((host, int(port)), timeout=PATIENCE_S) as sock:
            sock.sendall(b"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                         + f"Content-Length: {len(body)}\r\n\r\n{body}".encode())
            wait_until(lambda: _waiting(url) == {A: 1}, timeout=PATIENCE_S)  # it waits for its model
        wait_until(lambda: _waiting(url) == {}, timeout=PATIENCE_S)  # gone: out of the queue...
        gate.set()  # ...before its model is ready
        # A second request for the same model queues behind the first, if the first is still there.
        second = {**json.loads(body), "messages": [{"role": "user", "content": "second"}]}
        answer = httpx.post(f"{url}/api/chat", json=second, timeout=PATIENCE_S).json()
        assert answer["message"]["content"] == "OK"
        sent = [c["messages"][-1]["content"] for f in hosts for c in f.chats]
        assert sent == ["second"], "the request of a client that had gone still ran"


def _waiting(url: str) -> dict[str, int]:
    waiting: dict[str, int] = httpx.get(f"{url}/memory", timeout=PATIENCE_S).json()["waiting"]
    return waiting


def _outcome(url: str, model: str) -> str:
    try:
        return chat(url, model)
    except ollama.ResponseError as exc:  # cleanly failed: a status and one line
        return f"{exc.status_code}: {exc.error}"


def test_a_replica_that_dies_is_replaced_and_reconciles_from_api_ps(
    cluster: None, hosts: list[FakeOllama], tmp_path: Path
) -> None:
    with fleet(fleet_settings(hosts, tmp_path)) as url:
        for model in [A, B]:
            chat(url, model)
        replicas = _replicas()
        assert len(replicas) == 2
        for actor in replicas:
            ray.kill(ray.get_actor(actor["name"], namespace=actor["namespace"]), no_restart=True)
        # Two replicas started again at nice 15: beside two CPU burners this once took over 60 s.
        wait_until(lambda: _replaced(replicas), timeout=2 * PATIENCE_S)
        wait_until(lambda: host_is(url, "h1", up=True) and host_is(url, "h2", up=True),
                   timeout=2 * PATIENCE_S)
        for model in [A, B] * 2:
            assert chat(url, model) == "OK"
        # The new replicas read each host's /api/ps: the models were still there, no load again.
        assert sorted(sum((f.load_names() for f in hosts), [])) == [A, B]


def _replicas() -> list[dict[str, Any]]:
    return [a for a in ray.util.list_named_actors(all_namespaces=True) if "SERVE_REPLICA" in a["name"]]


def _replaced(old: list[dict[str, Any]]) -> bool:
    names = {a["name"] for a in _replicas()}
    return len(names) == 2 and not names & {a["name"] for a in old}


def test_cli_serves_a_fleet_and_hands_models_back_on_sigterm(
    cluster: None, hosts: list[FakeOllama], tmp_path: Path
) -> None:
    env = {**os.environ, "CREW_OLLAMA_HOSTS": ",".join(f"h{i}={f.url}" for i, f in enumerate(hosts, 1)),
           "CREW_MEMORY_BUDGET_GB": str(BUDGET_GB), "CREW_SERVE_NUM_CTX": "4096", "CREW_LOG": "",
           "CREW_STATE_DIR": str(tmp_path / "state")}
    address = ray.get_runtime_context().gcs_address
    proc = subprocess.Popen([sys.executable, "-m", "crew", "serve", "--port", "0", "--ray-address", address],
                            env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        line = ""
        for _ in range(10):  # Ray may have a word first; an exit ends the lines (no hang)
            line = proc.stderr.readline()
            if "listening on" in line or not line:
                break
        assert "listening on http://127.0.0.1:" in line and "h1, h2 on Ray" in line, line
        url = line.split("listening on ", 1)[1].split()[0]
        assert chat(url, A) == "OK"
        proc.terminate()
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=PATIENCE_S)
        if proc.stderr is not None:
            proc.stderr.close()
    loaded = [f for f in hosts if f.load_names()]
    assert len(loaded) == 1 and handed_back(loaded[0]), "the model stayed pinned after the fleet was gone"
