"""The embedded library never takes crew down: a crash of llama.cpp (simulated here: the probe
child kills itself with SIGILL, as a native build does at the first token on some VMs) is one
line naming the cause and the fix, exit 2; the verdict is kept per build."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from crew.backends.embedded import bundled_model_path, embedded_available
from crew.terminal.cli import main
from tests.test_run import write_spec

pytestmark = pytest.mark.skipif(not embedded_available() or bundled_model_path() is None,
                                reason="the embedded extra is not installed")

CRASH = "import os, signal\nos.kill(os.getpid(), signal.SIGILL)\n"


def test_a_crashing_native_library_is_one_line_and_exit_2(
    clean_env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(clean_env / "cache"))
    monkeypatch.setattr("crew.backends.native_check.PROBE", CRASH)
    spec = write_spec(clean_env)
    assert main(["run", str(spec), "--backend", "embedded"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("crew:")]
    assert len(err) == 1 and "SIGILL" in err[0] and "CMAKE_ARGS" in err[0] and "--backend ollama" in err[0]
    verdicts = json.loads((clean_env / "cache" / "crew" / "native-check.json").read_text())
    assert [v for v in verdicts.values() if "SIGILL" in v]
    # Kept per build: the next run says so at once, without another child.
    monkeypatch.setattr("crew.backends.native_check.PROBE", "raise SystemExit('not run')")
    assert main(["run", str(spec), "--backend", "embedded"]) == 2
    assert "SIGILL" in capsys.readouterr().err
