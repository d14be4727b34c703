"""`crew serve` under load: three `crew run` processes and 30 clients at once, on three models with
a budget that holds two, some clients walking away mid-stream. Judged by the fake's records."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
import ollama as ol
import openai
import pytest

from tests.fake_ollama import GB, FakeModel, FakeOllama, FakeReply
from tests.serving import running, serve_settings, wait_until

ALPHA, BETA, GAMMA = "alpha:7b", "beta:8b", "gamma:9b"
# Resident at num_ctx 32768: ~13.8, ~14.8 and ~15.9 GB. 32 GB holds any two, never three.
BUDGET_GB = 32
ROLES = {"CREW_ARCHITECT_MODEL": ALPHA, "CREW_CODER_MODEL": BETA, "CREW_REVIEWER_MODEL": GAMMA}


def _client(url: str, seed: int, outcomes: list[str]) -> None:
    rng = random.Random(seed)
    model = rng.choice([ALPHA, BETA, GAMMA])
    kind = ("ollama", "ollama-stream", "openai", "openai-stream", "route", "walk-away")[seed % 6]
    try:
        if kind.startswith("ollama"):
            with ol.Client(host=url, timeout=60) as client:  # type: ignore[attr-defined]
                messages = [{"role": "user", "content": f"client {seed}"}]
                if kind == "ollama":
                    client.chat(model=model, messages=messages, keep_alive="30m", options={"num_ctx": 4096})
                else:
                    list(client.chat(model=model, messages=messages, stream=True, keep_alive=-1))
        elif kind.startswith("openai"):
            with openai.OpenAI(base_url=f"{url}/v1", api_key="x", timeout=60) as client:
                answer: Any = client.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": "hi"}], stream=kind.endswith("stream"))
                if kind.endswith("stream"):
                    list(answer)
        elif kind == "route":
            response = httpx.post(f"{url}/route", timeout=60, json={
                "task_type": rng.choice(["plan", "code", "review"]), "prompt": "x",
                "urgency": rng.choice(["normal", "high", "critical"])})
            response.raise_for_status()
        else:
            with httpx.Client(timeout=60) as client, client.stream(
                "POST", f"{url}/api/chat",
                json={"model": model, "messages": [{"role": "user", "content": "walk away"}]},
            ) as response:
                lines = response.iter_lines()
                next(lines)  # one line, then the client is gone
        outcomes.append("ok")
    except (ol.ResponseError, openai.APIStatusError, httpx.HTTPStatusError) as exc:
        outcomes.append(f"clean error: {exc}")  # an HTTP status with a JSON error: allowed
    except Exception as exc:  # noqa: BLE001 - anything else is a failure of the server
        outcomes.append(f"FAILED {kind}: {type(exc).__name__}: {exc}")


@pytest.mark.slow
def test_three_crews_and_thirty_clients(ollama: FakeOllama, clean_env: Path) -> None:
    ollama.reset(models=[FakeModel(ALPHA, 8 * GB), FakeModel(BETA, 9 * GB), FakeModel(GAMMA, 10 * GB)])
    for model in (ALPHA, BETA, GAMMA):
        ollama.script(model, *[FakeReply("one two three four five six") for _ in range(8)])
    settings = serve_settings(ollama, BUDGET_GB, architect={"model": ALPHA}, coder={"model": BETA},
                              reviewer={"model": GAMMA})
    with running(settings) as served:
        spec = clean_env / "spec.md"
        spec.write_text("Write hello.py with a greet(name) function.\n")
        env = {**os.environ, **ROLES, "CREW_OLLAMA_HOST": served.url, "CREW_MAX_TURNS": "4",
               "CREW_MEMORY_BUDGET_GB": str(BUDGET_GB)}
        crews = [subprocess.Popen([sys.executable, "-m", "crew", "run", str(spec), "--workspace",
                                   str(clean_env / f"w{i}")], cwd=clean_env, env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                 for i in range(3)]
        outcomes: list[str] = []
        clients = [threading.Thread(target=_client, args=(served.url, i, outcomes)) for i in range(30)]
        for thread in clients:
            thread.start()
        for thread in clients:
            thread.join(120)
        codes = [(p.wait(120), p.stderr.read()) for p in crews]  # type: ignore[union-attr]
        for p in crews:
            p.stderr.close()  # type: ignore[union-attr]
        # Every request was answered or refused cleanly; every crew ran to its end.
        assert len(outcomes) == 30 and not [o for o in outcomes if o.startswith("FAILED")], outcomes
        assert all(code in (0, 1) for code, _ in codes), codes
        for i in range(3):  # and each crew's model calls went through the server
            calls = [line for line in (clean_env / f"w{i}" / "events.jsonl").read_text().splitlines()
                     if '"type":"model_call"' in line.replace(" ", "")]
            assert calls
        # Nothing pinned, nobody waiting, once everyone is gone (a stream's hold goes just after
        # its last line).
        wait_until(lambda: served.on_loop(lambda: (served.authority.manager.holders(),
                                                   served.authority.manager.waiting())) == ({}, {}))
        assert all(p == 0 for p in served.pins().values())
    # What Ollama saw: never over the budget, no eviction of its own, no reload for options, and no
    # client's keep_alive or num_ctx.
    assert ollama.peak_used <= BUDGET_GB * GB
    assert not ollama.self_evictions() and not ollama.option_reloads()
    assert len(ollama.chats) >= 30
    assert all(c["keep_alive"] == 300 and c["options"]["num_ctx"] == 32768 for c in ollama.chats)
    assert set(ollama.load_names()) == {ALPHA, BETA, GAMMA}
