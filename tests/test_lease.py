"""Leases: crew never leaves a model with keep_alive -1. Every model it holds has a finite lease,
renewed (with the same options, so never a reload) while crew still wants it; a crew that is
killed leaves its models to expire within one lease. Judged by the fake's records and clock."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

from crew.backends.ollama import OllamaBackend
from crew.residency import ResidencyManager
from crew.residency.budget import GB, MemoryBudget
from tests.fake_ollama import FakeOllama, FakeReply
from tests.helpers import ARCHITECT, OPTIONS, REVIEWER, run

ROOT = Path(__file__).resolve().parent.parent


def renewals(fake: FakeOllama, model: str) -> list[dict]:
    """Empty chats for `model` with a lease, after its load: the manager's renewals."""
    empty = [r["body"] for r in fake.requests if r["path"] == "/api/chat" and r["body"]
             and r["body"].get("model") == model and r["body"].get("messages") == []
             and r["body"].get("keep_alive") not in (0, None)]
    return empty[1:]


def test_a_model_kept_longer_than_two_leases_is_renewed_not_reloaded(ollama: FakeOllama) -> None:
    lease = 0.3
    ollama.capacity = 60 * GB

    async def scenario() -> None:
        manager = ResidencyManager(OllamaBackend(ollama.url, lease_s=lease), MemoryBudget(60 * GB, "test"),
                                   lease_s=lease)
        manager.register(REVIEWER, OPTIONS)
        async with manager.hold(REVIEWER):
            pass
        # A long turn without model calls (a tool command, a person typing): wait, with a guard,
        # until the manager has renewed the lease enough times to cover more than two leases.
        deadline = 20.0
        for _ in range(int(deadline / 0.05)):
            if len(renewals(ollama, REVIEWER)) >= 7:
                break
            await asyncio.sleep(0.05)
        ollama.expire_due()
        assert REVIEWER in ollama.resident(), "the model expired while crew still wanted it"
        await manager.aclose()

    run(scenario())
    sent = renewals(ollama, REVIEWER)
    assert len(sent) >= 7
    assert all(r["keep_alive"] == lease and r["options"] == OPTIONS for r in sent[:-1])
    assert ollama.load_names() == [REVIEWER]  # renewed, never reloaded
    assert not [u for u in ollama.unloads if u["reason"] in ("expired", "reload")]


def test_after_kill_9_every_crew_model_expires_within_one_lease(ollama: FakeOllama, clean_env: Path) -> None:
    ollama.capacity = 60 * GB
    gate = threading.Event()
    ollama.script(ARCHITECT, FakeReply(content="A long plan", gate=gate))
    (clean_env / "spec.md").write_text("Write hello.py with a greet(name) function.\n")
    env = dict(os.environ)  # clean_env removed CREW_*, OLLAMA_* but the state dir
    env.update(PYTHONPATH=str(ROOT), CREW_OLLAMA_HOST=ollama.url, CREW_MEMORY_BUDGET_GB="60",
               CREW_LEASE_S="120", CREW_STATE_DIR=str(clean_env / "state"))
    proc = subprocess.Popen([sys.executable, "-m", "crew", "run", "spec.md"], cwd=clean_env, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert ollama.generating.wait(120), "the architect never started generating"
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(30) == -signal.SIGKILL
    finally:
        gate.set()  # the request in flight ends (its client is gone); the runner goes idle
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    killed_at = datetime.now(UTC)
    with urllib.request.urlopen(f"{ollama.url}/api/ps", timeout=10) as answer:
        models = json.load(answer)["models"]
    assert [m["name"] for m in models] == [ARCHITECT]
    for model in models:
        expires = datetime.fromisoformat(model["expires_at"])
        assert (expires - killed_at).total_seconds() <= 120 + 5, model["expires_at"]
