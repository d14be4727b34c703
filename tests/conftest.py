"""Shared fixtures: one fake Ollama server per session, reset for every test; a clean env."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fake_ollama import FakeOllama

MACHINE_MEMORY = 32_000_000_000


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """`-n auto`: one worker more than the cores. About a third of the suite's time is spent
    waiting (on crew subprocesses, servers, pseudo-terminals), which a spare worker fills:
    the fast suite takes ~28 s instead of ~30 s on 2 cores."""
    return (os.cpu_count() or 1) + 1


# Marked tests the fast suite skips; `.ci/run` runs them (CREW_FULL=1), as does naming the
# marker in -m. `hostile`: the attacks on crew's defences (races, fork bombs, each again as uid
# 65534). `slow`: a few end-to-end tests of several seconds each (a wheel built and installed, a
# whole chat, a whole eval suite).
GATED = ("hostile", "slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("CREW_FULL") == "1":
        return
    named = config.getoption("markexpr") or ""
    for marker in (m for m in GATED if m not in named):
        skip = pytest.mark.skip(reason=f"{marker}: runs with CREW_FULL=1 (.ci/run) or -m {marker}")
        for item in items:
            if marker in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def _server() -> Iterator[FakeOllama]:
    server = FakeOllama().start()
    yield server
    server.stop()


@pytest.fixture
def ollama(_server: FakeOllama) -> FakeOllama:
    """The fake Ollama server, with the default catalog, 48 GB and empty records."""
    _server.reset()
    return _server


@pytest.fixture(autouse=True)
def clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No CREW_* or OLLAMA_* from the developer's shell; run in an empty directory."""
    for name in list(os.environ):
        if name.startswith(("CREW_", "OLLAMA_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("CREW_STATE_DIR", str(tmp_path / "state"))  # never the developer's
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(autouse=True)
def machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process, crew sees a 32 GB Linux machine with no GPU, whatever runs the tests: what
    fits "the machine's memory" must not depend on the host."""
    monkeypatch.setattr("crew.residency.budget.machine_memory", lambda: MACHINE_MEMORY)
    monkeypatch.setattr("crew.residency.budget._apple_silicon", lambda: False)
    monkeypatch.setattr("crew.residency.budget._nvidia_total", lambda: 0)


@pytest.fixture
def dead_host() -> str:
    """A loopback URL where nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def pytest_unconfigure(config: pytest.Config) -> None:
    # llama-cpp-python opens os.devnull twice at import and never closes it; with warnings as
    # errors that becomes noise after pytest's summary line. Close them once the tests are done.
    import sys

    utils = sys.modules.get("llama_cpp._utils")
    for name in ("outnull_file", "errnull_file"):
        handle = getattr(utils, name, None)
        if handle is not None:
            handle.close()


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """The fleet tests start a Ray cluster (~10 s, a GB of memory; importing Ray alone takes a
    second per worker): they are collected only when asked for by name (`pytest -m fleet -n 0`,
    as `.ci/run` does), never in the fast suite."""
    asked = "fleet" in (config.getoption("markexpr") or "").split()
    return True if collection_path.name == "test_fleet.py" and not asked else None
