"""The command line, run as a user runs it: a subprocess, its output and its exit code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.fake_ollama import FakeOllama
from tests.helpers import REVIEWER

ROOT = Path(__file__).resolve().parent.parent


def crew(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = dict(os.environ)  # clean_env removed CREW_*, OLLAMA_* but the state dir
    full_env["PYTHONPATH"] = str(ROOT)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "crew", *args], capture_output=True, text=True, env=full_env,
        timeout=120, check=False,
    )


def test_help_lists_the_subcommands_and_exit_codes() -> None:
    result = crew("--help")
    assert result.returncode == 0
    for command in ("ps", "config"):
        assert f"    {command} " in result.stdout
    assert "Exit codes" in result.stdout


def test_help_does_not_import_autogen() -> None:
    code = ("import sys; from crew.terminal.cli import main; main(['config']); "
            "print('autogen' in ' '.join(sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True)
    assert result.stdout.strip().endswith("False")


def test_ps_reports_what_ollama_has_resident(ollama: FakeOllama) -> None:
    ollama.preload(REVIEWER, num_ctx=8192)
    result = crew("ps", "--json", env={"CREW_OLLAMA_HOST": ollama.url, "CREW_MEMORY_BUDGET_GB": "48"})
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["budget"] == {"bytes": 48_000_000_000, "source": "CREW_MEMORY_BUDGET_GB"}
    assert [m["name"] for m in data["models"]] == [REVIEWER]
    assert data["models"][0]["size"] == ollama.resident()[REVIEWER]
    assert data["models"][0]["context_length"] == 8192


def test_unreachable_ollama_is_one_line_and_exit_code_2(dead_host: str) -> None:
    result = crew("ps", env={"CREW_OLLAMA_HOST": dead_host})
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert dead_host in result.stderr and "ollama serve" in result.stderr


def test_an_invalid_setting_is_one_line_and_exit_code_2() -> None:
    result = crew("config", env={"CREW_CODER_NUM_CTX": "big"})
    assert result.returncode == 2
    assert result.stderr.startswith("crew: invalid setting coder.num_ctx (CREW_CODER_NUM_CTX)")
    assert result.stderr.count("\n") == 1
