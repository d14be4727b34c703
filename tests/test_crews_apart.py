"""Crews on one Ollama without `crew serve`: several crew processes, each with its own manager,
started together; every one must finish, and Ollama must never have to evict on its own."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from crew.residency.host_lock import HostLock
from tests.fake_ollama import GB, FakeOllama
from tests.helpers import ARCHITECT, CODER, REVIEWER, Recorder, make_manager, run
from tests.test_residency import chat

ROOT = Path(__file__).resolve().parent.parent
BUDGET_GB = 60  # the Architect alone, or the Coder with the Reviewer
# Time scaled down ~1000 times: loads at 0.7 GB/s, answers of 60/40/30 s.
LOAD_S_PER_GB = 1 / 0.7 / 1000
ANSWER_S = {ARCHITECT: 0.06, CODER: 0.04, REVIEWER: 0.03}


def start_crews(ollama: FakeOllama, state: Path, count: int, stagger_s: float = 0.0,
                load_timeout_s: float = 20.0) -> list[subprocess.Popen[str]]:
    env = {**os.environ, "CREW_OLLAMA_HOST": ollama.url, "CREW_STATE_DIR": str(state),
           "CREW_MEMORY_BUDGET_GB": str(BUDGET_GB), "CREW_BACKEND": "ollama",
           "CREW_LOAD_TIMEOUT_S": f"{load_timeout_s:g}"}
    return [subprocess.Popen([sys.executable, "-m", "tests.crew_process", str(i * stagger_s)], cwd=ROOT,
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for i in range(count)]


@pytest.mark.slow
@pytest.mark.parametrize(("count", "stagger_s", "attempts"), [(3, 0.0, 5), (6, 0.0, 2), (6, 0.07, 2)],
                         ids=["3-together", "6-together", "6-staggered"])
def test_crews_started_together_or_staggered_all_finish_and_ollama_never_evicts(
        ollama: FakeOllama, tmp_path: Path, count: int, stagger_s: float, attempts: int) -> None:
    """Staggered by about one Coder call (0.07 s here, 70 s modelled): one crew plans while
    another codes or reviews, so the Architect and the pair keep trading places."""
    for attempt in range(attempts):
        ollama.reset(capacity=BUDGET_GB * GB, load_seconds_per_gb=LOAD_S_PER_GB)
        ollama.generate_seconds = dict(ANSWER_S)
        crews = start_crews(ollama, tmp_path / f"state{attempt}", count, stagger_s)
        outcomes = []
        for crew in crews:
            try:
                _, err = crew.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                crew.kill()
                _, err = crew.communicate()
            outcomes.append((crew.returncode, err.strip().splitlines()[-1:] if err else []))
        assert [code for code, _ in outcomes] == [0] * count, (attempt, outcomes)
        assert ollama.self_evictions() == [], (attempt, ollama.self_evictions())
        assert ollama.peak_used <= BUDGET_GB * GB


def test_a_model_granted_to_one_crew_is_not_unloaded_by_another_before_its_request_is_sent(
        ollama: FakeOllama, tmp_path: Path) -> None:
    """The race CI found: crew A is granted the resident Architect, and before its request
    reaches Ollama crew B unloads it to load the Coder; A's request then loads it again and
    Ollama evicts on its own. B must wait for A's hold to end (the model's claim)."""
    async def scenario() -> None:
        a = make_manager(ollama, host_lock=HostLock(tmp_path, ollama.url), busy_notice_s=0.0)
        b = make_manager(ollama, host_lock=HostLock(tmp_path, ollama.url), busy_notice_s=0.0)
        async with a.hold(ARCHITECT):  # loaded by A, and used
            await chat(ollama, ARCHITECT)
        held = await a.acquire(ARCHITECT)  # granted: resident, and A's request is not sent yet
        seen = Recorder(b)
        loading = asyncio.create_task(b.acquire(CODER))  # needs the Architect's room
        await seen.wait_for("residency_waiting")
        assert ollama.unloads == [] and not loading.done()
        await chat(ollama, ARCHITECT)  # A's request, sent late: served by the same runner
        a.release(held)
        b.release(await asyncio.wait_for(loading, 30))
        await a.aclose()
        await b.aclose()

    run(scenario())
    assert ollama.self_evictions() == []
    assert ollama.load_names() == [ARCHITECT, CODER]
