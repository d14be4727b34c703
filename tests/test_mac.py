"""The seed's own machine: a 64 GB Apple Silicon Mac, the default catalog, no settings."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from crew.residency.budget import GB, GIB
from crew.terminal.cli import main
from tests.fake_ollama import FakeOllama
from tests.helpers import ARCHITECT, CODER, REVIEWER

MIB = 1 << 20
MAC = 64 * GIB


@pytest.fixture
def mac(ollama: FakeOllama, monkeypatch: pytest.MonkeyPatch) -> FakeOllama:
    """A 64 GB Mac with the GPU working set at its default (75%, ~51.5 GB), Ollama on it."""
    monkeypatch.setattr("crew.residency.budget.machine_memory", lambda: MAC)
    monkeypatch.setattr("crew.residency.budget._apple_silicon", lambda: True)
    monkeypatch.setattr("crew.residency.budget._sysctl_int", lambda name: 0)  # wired limit not raised
    ollama.reset(capacity=int(MAC * 0.75), system_memory=MAC)
    monkeypatch.setenv("CREW_OLLAMA_HOST", ollama.url)
    return ollama


def json_out(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, object]]:
    code = main([*args, "--json"])
    return code, json.loads(capsys.readouterr().out)


def wired_limit(text: str) -> int:
    found = re.findall(r"sudo sysctl iogpu\.wired_limit_mb=(\d+)", text)
    assert len(found) == 1, text
    return int(found[0])


def test_the_default_team_runs_with_the_architect_alone_partly_on_the_cpu(
    mac: FakeOllama, clean_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mac.script(ARCHITECT, "Plan: write hello.py.\nNEXT: Coder")
    mac.script(CODER, "Written.\nNEXT: Reviewer")
    mac.script(REVIEWER, "Fine.\nAPPROVED")
    (clean_env / "spec.md").write_text("Write hello.py.\n")
    assert main(["run", "spec.md"]) == 0
    assert mac.load_names() == [ARCHITECT, CODER, REVIEWER]
    assert [u["model"] for u in mac.unloads] == [ARCHITECT]  # crew unloaded it before the coder
    assert mac.self_evictions() == [] and mac.waited_for_unload == 0
    assert mac.peak_used <= mac.system_memory
    architect_size = mac.loads[0]["size"]
    assert architect_size > mac.capacity  # it really did not fit the GPU: split with the CPU
    (workspace,) = (clean_env / "workspaces").iterdir()
    events = [json.loads(line) for line in (workspace / "events.jsonl").read_text().splitlines()]
    (notice,) = [e["message"] for e in events if e["type"] == "residency_warning"]
    assert "partly on the CPU" in notice and "slower" in notice
    limit = wired_limit(notice)
    assert architect_size <= limit * MIB <= MAC - 8 * GB  # it would fit, and leave macOS its share
    assert "num_ctx=" not in notice  # its weights alone are over the budget
    loaded = [e for e in events if e["type"] == "model_loaded"]
    assert [e["partial_offload"] for e in loaded] == [True, False, False]


def test_doctor_warns_with_the_computed_sysctl_line_and_plan_shows_the_architect_alone(
    mac: FakeOllama, capsys: pytest.CaptureFixture[str]
) -> None:
    code, doctor = json_out(capsys, "doctor")
    assert code == 0 and doctor["can_run"] is True and doctor["problems"] == []
    warnings = doctor["warnings"]
    assert isinstance(warnings, list) and len(warnings) == 1 and warnings[0].startswith("architect: ")
    estimated = next(r["estimated_bytes"] for r in doctor["roles"] if r["role"] == "architect")  # type: ignore[attr-defined]
    assert estimated <= wired_limit(warnings[0]) * MIB
    code, plan = json_out(capsys, "plan")
    assert code == 0 and plan["alone"] == ["architect"]
    assert plan["loads"] == [ARCHITECT, CODER, REVIEWER]
    assert mac.loads == []  # a plan is a simulation: nothing loaded


def test_a_model_larger_than_the_machine_still_fails_at_once_with_one_line(
    ollama: FakeOllama, clean_env: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The 32 GB machine of every test: the 55 GB architect cannot run even split with the CPU.
    monkeypatch.setenv("CREW_OLLAMA_HOST", ollama.url)
    (clean_env / "spec.md").write_text("Write hello.py.\n")
    assert main(["run", "spec.md"]) == 2
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if line.startswith("crew: ")]
    assert "more than this machine's 32.0 GB of memory" in line and line == err.splitlines()[-1]
    assert "Traceback" not in err and "task:" not in err  # it stopped before the first turn
    assert ollama.loads == [] and ollama.chats == []
