"""The embedded model's worker process, on a fake worker (tests/fake_llama_worker.py): a worker
that dies of SIGABRT mid-answer is one line naming the signal and what was asked, the turn is
retried once without the grammar, a second death ends the run with its records written (exit
2); an answer that will not end is stopped within about a second, by Ctrl-C too."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from autogen_core.models import UserMessage
from autogen_core.tools import FunctionTool

from crew.backends.embedded import bundled_model_path, embedded_available
from crew.clients.factory import make_client
from crew.errors import ModelCrashed, RequestTimeout
from crew.events import Event
from crew.settings import load_settings
from crew.terminal.cli import main
from tests.helpers import manager_for, run
from tests.test_run import default_sigint, write_spec

pytestmark = pytest.mark.skipif(not embedded_available() or bundled_model_path() is None,
                                reason="the embedded extra is not installed")

ROOT = Path(__file__).resolve().parent.parent
FAKE = (sys.executable, str(ROOT / "tests" / "fake_llama_worker.py"))


def plan(folder: Path, *steps: str) -> tuple[str, ...]:
    folder.mkdir(exist_ok=True)
    (folder / "plan.json").write_text(json.dumps(list(steps)))
    return (*FAKE, str(folder))


def asked(folder: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (folder / "requests.jsonl").read_text().splitlines()]


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie is gone too: only its parent's wait is missing.
    return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1].startswith("Z")


def write_file(path: str, content: str) -> str:
    """Write a file."""
    return "ok"


@pytest.fixture
def no_native_check(monkeypatch: pytest.MonkeyPatch, clean_env: Path) -> None:
    # The one-token check of the real library is not what is tested here.
    monkeypatch.setenv("XDG_CACHE_HOME", str(clean_env / "cache"))
    monkeypatch.setattr("crew.backends.native_check.PROBE", "")


def client_scenario(program: tuple[str, ...], timeout_s: float = 600) -> tuple[
        list[str | BaseException], list[Event]]:
    """Two requests of the coder (with a tool, so with a grammar) on a worker run by `program`."""
    settings = load_settings(backend="embedded", coder={"model": "smollm2", "num_ctx": 2048,
                                                        "timeout_s": timeout_s})
    events: list[Event] = []

    async def scenario() -> list[str | BaseException]:
        manager, choice = await manager_for(settings, "test")
        choice.backend._program = program  # type: ignore[attr-defined]
        facts = await manager.facts("smollm2")
        client = make_client(choice, manager, "coder", facts, events.append)
        tool = FunctionTool(write_file, description="Write a file.")
        said: list[str | BaseException] = []
        try:
            for _ in range(2):
                try:
                    result = await asyncio.wait_for(
                        client.create([UserMessage(content="Write hello.py", source="user")], tools=[tool]),
                        60)
                    said.append(str(result.content))
                except (ModelCrashed, RequestTimeout) as exc:
                    said.append(exc)
        finally:
            await client.close()
            await manager.aclose()
        return said

    return run(scenario()), events


def test_a_worker_that_aborts_mid_answer_is_one_line_and_the_turn_is_asked_again_without_the_grammar(
    clean_env: Path, no_native_check: None
) -> None:
    folder = clean_env / "plan"
    said, events = client_scenario(plan(folder, "abort", "answer hello", "answer again"))
    assert said == ["hello", "again"]  # the run went on
    retried = [e for e in events if e.type == "model_call_retried"]
    assert len(retried) == 1
    line = retried[0].error  # type: ignore[attr-defined]
    assert "\n" not in line and "SIGABRT" in line and "llama-grammar.cpp:1455: fatal error" in line
    assert "/build/vendor" not in line and "\x1b" not in line  # no source folders, no escapes
    assert "the coder's request (1 messages, with a grammar for tools write_file)" in line
    first, retry, after = asked(folder)
    assert first["tools"] and "tools" not in retry  # retried without the grammar
    assert after["tools"]  # and the turn after that has it again


def test_a_worker_that_dies_again_fails_the_call_with_one_line(
    clean_env: Path, no_native_check: None
) -> None:
    folder = clean_env / "plan"
    said, _ = client_scenario(plan(folder, "abort", "abort", "answer later"))
    error = said[0]
    assert isinstance(error, ModelCrashed) and error.signal_name == "SIGABRT"
    assert "\n" not in str(error) and "without a grammar" in str(error)
    assert said[1] == "later"  # a new worker serves the next call


def test_an_answer_that_will_not_end_is_stopped_at_its_timeout_and_its_worker_killed(
    clean_env: Path, no_native_check: None
) -> None:
    folder = clean_env / "plan"
    said, _ = client_scenario(plan(folder, "hang", "answer after"), timeout_s=0.5)
    assert isinstance(said[0], RequestTimeout)
    assert gone(int((folder / "answering").read_text()))  # killed: it ignored the cancel
    assert said[1] == "after"


def test_a_run_whose_worker_dies_twice_ends_with_one_line_its_records_and_exit_2(
    clean_env: Path, no_native_check: None, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr("crew.backends.worker.WORKER_PROGRAM", plan(clean_env / "plan", "abort", "abort"))
    spec = write_spec(clean_env)
    code = main(["run", str(spec), "--backend", "embedded", "--workspace", str(clean_env / "ws")])
    err = capsys.readouterr().err
    assert code == 2, err
    said = [line for line in err.splitlines() if line.startswith("crew:")]
    assert len(said) == 1 and "SIGABRT" in said[0] and "fatal error" in said[0], err
    assert "Traceback" not in err and "\x1b]52" not in err
    summary = json.loads((clean_env / "ws" / "summary.json").read_text())
    assert summary["stop_reason"].startswith("error: ") and "SIGABRT" in summary["stop_reason"]
    assert (clean_env / "ws" / "crew.patch").exists() and (clean_env / "ws" / "events.jsonl").exists()


@pytest.mark.slow
def test_ctrl_c_during_an_embedded_answer_ends_the_run_with_its_state_saved(
    clean_env: Path, no_native_check: None
) -> None:
    # A worker that ignores the cancel: only a kill ends its answer.
    program = plan(clean_env / "plan", "hang")
    cut = len(program) + 1
    launcher = (f"import sys, crew.backends.worker as w; w.WORKER_PROGRAM = tuple(sys.argv[1:{cut}]); "
                f"from crew.terminal.cli import main; sys.exit(main(sys.argv[{cut}:]))")
    spec = write_spec(clean_env)
    crew = subprocess.Popen(
        [sys.executable, "-c", launcher, *program, "run", str(spec), "--backend", "embedded",
         "--workspace", str(clean_env / "ws")],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)}, start_new_session=True,
        preexec_fn=default_sigint,  # as test_run's Ctrl-C test: a background .ci/run ignores SIGINT
    )
    answering = clean_env / "plan" / "answering"
    try:
        deadline = time.monotonic() + 120
        while not answering.exists():  # the answer has started
            assert crew.poll() is None, crew.communicate()
            assert time.monotonic() < deadline, "no answer started in 120 s"
            time.sleep(0.05)
        worker = int(answering.read_text())
        os.killpg(crew.pid, signal.SIGINT)  # as the terminal sends Ctrl-C: to the whole group
        stopped = time.monotonic()
        try:
            out, err = crew.communicate(timeout=60)  # a bound on a hang, not the measure
        except subprocess.TimeoutExpired:
            raise AssertionError(f"crew did not end within 60 s of Ctrl-C; {_signals(crew.pid)}") from None
        took = time.monotonic() - stopped
    finally:
        if crew.poll() is None:
            crew.kill()
            crew.communicate()  # reaped, pipes closed: nothing left for a later test's warnings
    assert crew.returncode == 130, err
    assert gone(worker)
    state = clean_env / "ws"
    assert (state / "state.json").exists() and (state / "crew.patch").exists()
    assert json.loads((state / "summary.json").read_text())["stop_reason"] == "interrupted"
    print(f"Ctrl-C to exit: {took:.2f} s")


def _signals(pid: int) -> str:
    """What a process that did not end on Ctrl-C says of its signals and threads (a diagnosis)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        lines = [line for line in status.splitlines() if line.startswith(("State", "Sig", "Shd", "Threads"))]
        waits = [Path(t, "wchan").read_text() for t in Path(f"/proc/{pid}/task").iterdir()]
        return "; ".join(lines) + f"; threads waiting in {sorted(set(waits))}"
    except OSError as exc:
        return f"no /proc for it ({exc})"
