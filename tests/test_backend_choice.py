"""`--backend auto`: the embedded model only for someone who never pointed crew at Ollama and has
none installed; everyone else hears that Ollama is down, with both ways out."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from crew.backends import choose_backend
from crew.backends.embedded import embedded_available
from crew.errors import BackendError
from crew.events import RunStarted
from crew.settings import load_settings
from crew.terminal.cli import main
from crew.terminal.renderers import PlainRenderer
from tests.helpers import run


@pytest.fixture
def no_ollama_here(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, dead_host: str) -> None:
    """No `ollama` on PATH, no OLLAMA_HOST; the default host answers nothing."""
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.setattr("crew.settings.DEFAULT_OLLAMA_HOST", dead_host)


def test_pointed_at_a_stopped_ollama_is_one_line_and_exit_2(
    dead_host: str, clean_env: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CREW_OLLAMA_HOST", dead_host)
    (clean_env / "spec.md").write_text("Write hello.py.\n")
    assert main(["run", "spec.md"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(errors) == 1 and dead_host in errors[0]
    assert "ollama serve" in errors[0] and "--backend embedded" in errors[0]
    assert not (clean_env / "workspaces").exists() or not any((clean_env / "workspaces").iterdir())


def test_ollama_installed_but_stopped_is_an_error_too(
    no_ollama_here: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ollama_cli = tmp_path / "bin" / "ollama"
    ollama_cli.write_text("#!/bin/sh\nexit 0\n")
    ollama_cli.chmod(ollama_cli.stat().st_mode | stat.S_IXUSR)
    with pytest.raises(BackendError, match="ollama serve.*--backend embedded"):
        run(choose_backend(load_settings()))


def test_nobody_asked_for_ollama_falls_back_and_says_so_first(
    no_ollama_here: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert "OLLAMA_HOST" not in os.environ
    if not embedded_available():
        with pytest.raises(BackendError, match="no model backend"):
            run(choose_backend(load_settings()))
        return
    choice = run(choose_backend(load_settings()))
    try:
        assert choice.name == "embedded"
        assert choice.fallback is not None and "Ollama does not answer" in choice.fallback
        PlainRenderer()(RunStarted(workspace="w", fallback=choice.fallback))
        first = capsys.readouterr().err.splitlines()[0]
        assert first.startswith("note: using the embedded backend") and "ollama serve" in first
    finally:
        run(choice.backend.aclose())
