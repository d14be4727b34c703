"""`crew serve` answers a client written for the seed's router (`../shared/seed/router.md`).

The seed's pydantic models and its routing rule are copied here as the seed wrote them (names,
types, defaults): the client below knows nothing of crew. Every seed route must parse into the
seed's models; crew's own fields may stand beside them.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any, Optional

import httpx
import openai
import pytest
from pydantic import BaseModel

from crew.routing import SEED_ROUTING, routing_table, urgent_role
from crew.settings import load_settings
from tests.fake_ollama import GB, FakeOllama, FakeReply
from tests.helpers import ARCHITECT, CODER, REVIEWER
from tests.serving import Served, running, serve_settings

# -- copied from the seed's router.py ------------------------------------------------------------


class LLMRequest(BaseModel):
    """LLM 요청 모델"""
    prompt: str
    task_type: str = "general"  # plan, code, review, etc.
    max_tokens: int = 4096
    temperature: float = 0.7
    context: Optional[str] = None  # noqa: UP045 - as the seed wrote it
    urgency: str = "normal"  # normal, high, critical


class LLMResponse(BaseModel):
    """LLM 응답 모델"""
    model: str
    agent: str  # Architect, Coder, Reviewer
    response: str
    tokens_generated: int
    latency_ms: float
    memory_used_gb: float
    timestamp: str


class MemoryInfo(BaseModel):
    """메모리 정보"""
    total_gb: float
    used_gb: float
    available_gb: float
    percent_used: float


SEED_ARCHITECT, SEED_CODER, SEED_REVIEWER = "qwen3-coder-next:q4_K_M", "qwen3-coder:32b", "qwen3:14b"
TASK_ROUTING = {
    "plan": SEED_ARCHITECT, "design": SEED_ARCHITECT, "architecture": SEED_ARCHITECT,
    "requirements": SEED_ARCHITECT, "strategy": SEED_ARCHITECT,
    "code": SEED_CODER, "implement": SEED_CODER, "refactor": SEED_CODER, "fix": SEED_CODER,
    "feature": SEED_CODER, "optimize": SEED_CODER,
    "review": SEED_REVIEWER, "test": SEED_REVIEWER, "qa": SEED_REVIEWER, "validate": SEED_REVIEWER,
    "debug": SEED_REVIEWER, "summary": SEED_REVIEWER,
}
DEFAULT_MODEL = SEED_ARCHITECT


def select_model(task_type: str, urgency: str = "normal") -> str:
    """The seed's LLMRouter.select_model, without its logging."""
    base_model = TASK_ROUTING.get(task_type.lower(), DEFAULT_MODEL)
    if urgency == "critical":
        if base_model == "qwen3-coder-next:q4_K_M":
            if task_type.lower() not in ["plan", "design", "architecture"]:
                base_model = "qwen3-coder:32b"
    return base_model


# The seed's models are the roles' models here.
AGENT_OF = {SEED_ARCHITECT: "Architect", SEED_CODER: "Coder", SEED_REVIEWER: "Reviewer"}
OURS = {SEED_ARCHITECT: ARCHITECT, SEED_CODER: CODER, SEED_REVIEWER: REVIEWER}


class SeedClient:
    """What a client of the seed's router calls, and how it reads the answers."""

    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=url, timeout=30)

    def ask(self, path: str, req: LLMRequest) -> LLMResponse:
        answer = self.http.post(path, json=req.model_dump())
        answer.raise_for_status()
        return LLMResponse.model_validate(answer.json())

    def batch(self, reqs: list[dict[str, Any]]) -> dict[str, Any]:
        answer = self.http.post("/batch", json=reqs)
        answer.raise_for_status()
        data: dict[str, Any] = answer.json()
        for item in data["results"]:
            if item["status"] == "success":
                LLMResponse.model_validate(item["result"])
        return data

    def memory(self) -> MemoryInfo:
        return MemoryInfo.model_validate(self.http.get("/memory").raise_for_status().json())


@pytest.fixture
def seed(ollama: FakeOllama) -> Iterator[tuple[SeedClient, Served]]:
    with running(serve_settings(ollama)) as served:
        client = SeedClient(served.url)
        try:
            yield client, served
        finally:
            client.http.close()


# -- the routing table and the urgency rule, against the seed's own function ------------------------


@pytest.mark.parametrize("urgency", ["normal", "high", "critical"])
def test_every_seed_task_type_routes_where_the_seed_routes_it(urgency: str) -> None:
    kinds = [*TASK_ROUTING, "general", "unknown-kind", "QA", "Summary", "REQUIREMENTS", "Plan"]
    for kind in kinds:
        role, _ = urgent_role(kind, urgency)
        # (The seed compares urgency exactly: "critical", as sent here.)
        assert OURS[select_model(kind, urgency)] == {"architect": ARCHITECT, "coder": CODER,
                                                     "reviewer": REVIEWER}[role], (kind, urgency)
    assert set(SEED_ROUTING) == set(TASK_ROUTING)


def test_crew_toml_overrides_one_entry_and_keeps_the_rest(clean_env) -> None:  # type: ignore[no-untyped-def]
    (clean_env / "crew.toml").write_text('[routing]\nSummary = "Coder"\nchangelog = "reviewer"\n')
    table = routing_table(load_settings().routing)
    assert table["summary"] == "coder" and table["changelog"] == "reviewer" and table["qa"] == "reviewer"
    assert urgent_role("SUMMARY", "normal", None, table)[0] == "coder"


# -- the seed's client against crew serve -------------------------------------------------------


def test_a_seed_client_reads_every_route(seed: tuple[SeedClient, Served], ollama: FakeOllama) -> None:
    client, _ = seed
    ollama.script(CODER, "def add(a, b): return a + b")
    routed = client.ask("/route", LLMRequest(prompt="add()", task_type="implement", context="math.py"))
    assert (routed.agent, routed.model, routed.response) == ("Coder", CODER, "def add(a, b): return a + b")
    assert routed.tokens_generated > 0 and routed.latency_ms > 0
    assert routed.memory_used_gb == round(ollama.resident()[CODER] / 1e9, 3)
    # The context goes before the prompt, as the seed puts it.
    assert ollama.chats[-1]["messages"][-1]["content"] == "## Context\nmath.py\n\n## Task\nadd()"
    assert ollama.chats[-1]["options"]["num_predict"] == 4096
    for path, agent, model in (("/architect", "Architect", ARCHITECT), ("/coder", "Coder", CODER),
                               ("/reviewer", "Reviewer", REVIEWER)):
        answer = client.ask(path, LLMRequest(prompt="x", task_type="summary", urgency="critical"))
        assert (answer.agent, answer.model) == (agent, model)

    health = client.http.get("/health")
    assert health.status_code == 200
    body = health.json()
    assert body["status"] == "healthy" and body["ollama"] == "connected" and body["timestamp"]
    assert set(body["memory"]) >= {"used_gb", "available_gb", "percent"}
    memory = client.memory()
    assert memory.total_gb == 60.0 and memory.used_gb == round(sum(ollama.resident().values()) / 1e9, 3)
    assert memory.available_gb == round(memory.total_gb - memory.used_gb, 3)
    assert memory.percent_used == round(100 * memory.used_gb / memory.total_gb, 1)

    models = client.http.get("/models").json()
    assert models["total"] == 3
    for entry in models["models"]:
        assert {"model", "name", "role", "memory_gb", "type", "description", "context_length"} <= set(entry)
        assert entry["memory_gb"] > 0 and entry["context_length"] > 0
    assert [m["name"] for m in models["models"]] == ["Architect", "Coder", "Reviewer"]
    assert models["routing_rules"] == {kind: OURS[m] for kind, m in TASK_ROUTING.items()}


def test_extra_fields_are_ignored_as_the_seed_ignores_them(seed: tuple[SeedClient, Served]) -> None:
    client, _ = seed
    answer = client.http.post("/route", json={"prompt": "x", "task_type": "qa", "client_version": "9",
                                              "tags": ["a"]})
    assert answer.status_code == 200 and LLMResponse.model_validate(answer.json()).agent == "Reviewer"


def test_batch_with_a_bad_item(seed: tuple[SeedClient, Served], ollama: FakeOllama) -> None:
    client, _ = seed
    items = [{"prompt": "a", "task_type": "code"}, {"task_type": "review"},  # no prompt
             {"prompt": "b", "task_type": "code", "max_tokens": 0}, {"prompt": "c", "task_type": "review"},
             {"prompt": "d", "task_type": "code"}]
    data = client.batch(items)
    assert (data["total"], data["succeeded"], data["failed"]) == (5, 3, 2)
    assert [r["index"] for r in data["results"]] == list(range(5))
    assert [r["status"] for r in data["results"]] == ["success", "error", "error", "success", "success"]
    assert "prompt" in data["results"][1]["error"] and "max_tokens" in data["results"][2]["error"]
    assert data["results"][0]["result"]["response"] == "OK"
    # The loads happened, and the item that waited for each says so.
    first = {r["result"]["model"]: r["result"]["load_s"] for r in reversed(data["results"]) if "result" in r}
    assert all(load is not None and load > 0 for load in first.values())
    assert data["results"][4]["result"]["load_s"] is None  # its model was resident already
    assert sorted(ollama.load_names()) == sorted([CODER, REVIEWER])


def test_ollama_down_the_seeds_way() -> None:
    fake = FakeOllama().start()
    try:
        with running(serve_settings(fake)) as served, httpx.Client(base_url=served.url, timeout=30) as http:
            fake.stop()
            health = http.get("/health")
            assert health.status_code == 200
            assert health.json()["status"] == "unhealthy" and "cannot reach Ollama" in health.json()["error"]
            assert http.get("/readyz").status_code == 503
            routed = http.post("/route", json={"prompt": "x", "task_type": "code"})
            assert routed.status_code >= 500 and "cannot reach Ollama" in routed.json()["error"]
            data = http.post("/batch", json=[{"prompt": "x", "task_type": "code"}, {"prompt": "y"}]).json()
            assert (data["total"], data["succeeded"], data["failed"]) == (2, 0, 2)
            assert all("cannot reach Ollama" in r["error"] for r in data["results"])
    finally:
        fake.stop()


# -- urgency: the seed's rule with each role resident --------------------------------------------


@pytest.mark.parametrize("resident", [ARCHITECT, CODER, REVIEWER])
def test_critical_follows_the_seeds_rule_whatever_is_resident(
    seed: tuple[SeedClient, Served], ollama: FakeOllama, resident: str
) -> None:
    client, _ = seed
    client.ask("/route", LLMRequest(prompt="warm", task_type={ARCHITECT: "plan", CODER: "code",
                                                               REVIEWER: "review"}[resident]))
    assert set(ollama.resident()) == {resident}
    for kind in ("plan", "requirements", "strategy", "implement", "review", "general"):
        answer = client.ask("/route", LLMRequest(prompt="now", task_type=kind, urgency="critical"))
        assert answer.model == OURS[select_model(kind, "critical")], (kind, resident)


# -- OpenAI's shape under /v1 -------------------------------------------------------------------


def test_openai_models_retrieve_and_errors_in_openais_shape(seed: tuple[SeedClient, Served]) -> None:
    _, served = seed
    with openai.OpenAI(base_url=f"{served.url}/v1", api_key="unused", max_retries=0) as client:
        assert client.models.retrieve(REVIEWER).id == REVIEWER
        assert client.models.retrieve("qwen3-coder-next:q4_K_M").id == ARCHITECT
        with pytest.raises(openai.NotFoundError) as missing:
            client.models.retrieve("missing:1b")
        assert "ollama pull missing:1b" in missing.value.message
        assert missing.value.type == "invalid_request_error"
        with pytest.raises(openai.BadRequestError) as bad:
            client.chat.completions.create(model=REVIEWER, messages=[])
        assert "messages is required" in bad.value.message
    for method, path in (("GET", "/v1/nothing"), ("DELETE", "/v1/models")):
        answer = httpx.request(method, f"{served.url}{path}")
        assert answer.status_code in (404, 405)
        assert set(answer.json()["error"]) == {"message", "type", "code"}, answer.text


# -- the drain: a stream that outlives the grace -----------------------------------------------


@pytest.mark.slow
def test_sigterm_with_streams_past_the_grace_ends_them_with_an_error(ollama: FakeOllama, clean_env) -> None:  # type: ignore[no-untyped-def]
    ollama.capacity = 60 * GB
    env = {**os.environ, "CREW_OLLAMA_HOST": ollama.url, "CREW_MEMORY_BUDGET_GB": "60", "CREW_LOG": "",
           "CREW_SERVE_GRACE_S": "0.5"}
    proc = subprocess.Popen([sys.executable, "-m", "crew", "serve", "--port", "0"], cwd=clean_env, env=env,
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    gate = threading.Event()
    try:
        assert proc.stderr is not None
        found = re.search(r"listening on (\S+)", proc.stderr.readline())
        assert found
        url = found.group(1)
        ollama.script(REVIEWER, *[FakeReply("first then never", gate=gate, gate_after=1)] * 3)
        streams = {
            "ollama": ("/api/chat", {"model": REVIEWER, "messages": [{"role": "user", "content": "x"}]}),
            "openai": ("/v1/chat/completions", {"model": REVIEWER, "stream": True,
                                                "messages": [{"role": "user", "content": "x"}]}),
            "seed": ("/route", {"prompt": "x", "task_type": "review", "stream": True}),
        }
        got: dict[str, list[str]] = {}
        begun = threading.Semaphore(0)

        def read(name: str) -> None:
            path, body = streams[name]
            lines: list[str] = []
            with httpx.Client(base_url=url, timeout=20) as http, \
                    http.stream("POST", path, json=body) as answer:
                for line in answer.iter_lines():
                    if line.strip():
                        lines.append(line)
                        if len(lines) == 1:
                            begun.release()
            got[name] = lines

        readers = [threading.Thread(target=read, args=(name,)) for name in streams]
        for reader in readers:
            reader.start()
        for _ in streams:
            assert begun.acquire(timeout=20)
        proc.send_signal(signal.SIGTERM)
        for reader in readers:
            reader.join(20)
        assert proc.wait(20) == 0
        err = proc.stderr.read()
    finally:
        gate.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
    # Each client was told, in its API's own way, before its connection closed.
    assert "drain grace" in json.loads(got["ollama"][-1])["error"]
    assert "drain grace" in json.loads(got["seed"][-1])["error"]
    assert "drain grace" in json.loads(got["openai"][-1].removeprefix("data: "))["error"]["message"]
    assert "Traceback" not in err and "CancelledError" not in err, err
