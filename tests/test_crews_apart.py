"""Crews on one Ollama without `crew serve`: several crew processes, each with its own manager,
started together; every one must finish, and Ollama must never have to evict on its own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fake_ollama import GB, FakeOllama
from tests.helpers import ARCHITECT, CODER, REVIEWER

ROOT = Path(__file__).resolve().parent.parent
BUDGET_GB = 60  # the Architect alone, or the Coder with the Reviewer
# Time scaled down ~1000 times: loads at 0.7 GB/s, answers of 60/40/30 s.
LOAD_S_PER_GB = 1 / 0.7 / 1000
ANSWER_S = {ARCHITECT: 0.06, CODER: 0.04, REVIEWER: 0.03}


def start_crews(ollama: FakeOllama, state: Path, count: int) -> list[subprocess.Popen[str]]:
    env = {**os.environ, "CREW_OLLAMA_HOST": ollama.url, "CREW_STATE_DIR": str(state),
           "CREW_MEMORY_BUDGET_GB": str(BUDGET_GB), "CREW_BACKEND": "ollama", "CREW_LOAD_TIMEOUT_S": "20"}
    return [subprocess.Popen([sys.executable, "-m", "tests.crew_process"], cwd=ROOT, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(count)]


@pytest.mark.slow
def test_three_crews_started_together_all_finish_and_ollama_never_evicts(ollama: FakeOllama,
                                                                        tmp_path: Path) -> None:
    for attempt in range(5):
        ollama.reset(capacity=BUDGET_GB * GB, load_seconds_per_gb=LOAD_S_PER_GB)
        ollama.generate_seconds = dict(ANSWER_S)
        crews = start_crews(ollama, tmp_path / f"state{attempt}", 3)
        outcomes = []
        for crew in crews:
            try:
                _, err = crew.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                crew.kill()
                _, err = crew.communicate()
            outcomes.append((crew.returncode, err.strip().splitlines()[-1:] if err else []))
        assert [code for code, _ in outcomes] == [0, 0, 0], (attempt, outcomes)
        assert ollama.self_evictions() == [], (attempt, ollama.self_evictions())
        assert ollama.peak_used <= BUDGET_GB * GB
