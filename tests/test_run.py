"""`crew run`: the team on a spec against the fake server, judged by its records and the workspace."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from crew.commands.run import Outcome, run_spec
from crew.events import Event
from crew.residency.budget import GB
from crew.settings import load_settings
from crew.terminal.cli import main
from tests.fake_ollama import FakeOllama, FakeReply
from tests.helpers import ARCHITECT, CODER, REVIEWER, run

ROOT = Path(__file__).resolve().parent.parent
HELLO = "def greet(name):\n    return f'Hello, {name}!'\n"


def script_happy_path(fake: FakeOllama) -> None:
    """Architect plans; Coder writes; Reviewer asks for a change; Coder edits; Reviewer approves."""
    fake.script(ARCHITECT, FakeReply(content="1. Create hello.py with greet(name).\nNEXT: Coder"))
    fake.script(
        CODER,
        FakeReply(content="", tool_calls=[{"name": "write_file",
                                           "arguments": {"path": "hello.py", "content": HELLO}}]),
        FakeReply(content="Wrote hello.py.\nNEXT: Reviewer"),
        FakeReply(content="", tool_calls=[{"name": "edit_file", "arguments": {
            "path": "hello.py", "old": "def greet(name):\n",
            "new": 'def greet(name):\n    """Greet someone."""\n'}}]),
        FakeReply(content="Added the docstring.\nNEXT: Reviewer"),
    )
    fake.script(
        REVIEWER,
        FakeReply(content="Please add a docstring to greet.\nNEXT: Coder", thinking="no docstring"),
        FakeReply(content="Looks good.\nAPPROVED", thinking="fine now"),
    )


def write_spec(folder: Path, text: str = "Write hello.py with a greet(name) function.\n") -> Path:
    spec = folder / "spec.md"
    spec.write_text(text)
    return spec


def run_in_process(fake: FakeOllama, spec: Path | None, **kwargs: Any) -> tuple[Outcome, list[Event]]:
    settings = load_settings(ollama_host=fake.url, memory_budget_gb=fake.capacity / GB,
                             **kwargs.pop("settings", {}))
    events: list[Event] = []
    outcome = run(run_spec(settings, spec, render=events.append, **kwargs))
    return outcome, events


def test_end_to_end_run_as_a_subprocess(ollama: FakeOllama, clean_env: Path) -> None:
    ollama.capacity = 60 * GB  # the architect alone, or coder and reviewer together
    script_happy_path(ollama)
    spec = write_spec(clean_env)
    env = dict(os.environ)  # clean_env removed CREW_*, OLLAMA_* but the state dir
    env.update(PYTHONPATH=str(ROOT), CREW_OLLAMA_HOST=ollama.url, CREW_MEMORY_BUDGET_GB="60")
    result = subprocess.run([sys.executable, "-m", "crew", "run", str(spec)], cwd=clean_env, env=env,
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    assert "── Reviewer (qwen3:14b) ──" in result.stdout and "APPROVED" in result.stdout
    assert "loading qwen3:14b" in result.stderr

    (workspace,) = (clean_env / "workspaces").iterdir()
    assert (workspace / "hello.py").read_text() == HELLO.replace(
        "def greet(name):\n", 'def greet(name):\n    """Greet someone."""\n')
    # crew.patch applies cleanly to the initial commit.
    base = json.loads((workspace / "workspace.json").read_text())["base"]
    check = clean_env / "check"
    subprocess.run(["git", "clone", "-q", str(workspace), str(check)], check=True)
    subprocess.run(["git", "-C", str(check), "checkout", "-q", base], check=True)
    subprocess.run(["git", "-C", str(check), "apply", str(workspace / "crew.patch")], check=True)
    assert (check / "hello.py").read_text() == (workspace / "hello.py").read_text()

    summary = json.loads((workspace / "summary.json").read_text())
    assert summary["approved"] is True and summary["stop_reason"] == "approved"
    assert summary["totals"]["completion_tokens"] == sum(c["eval_count"] for c in ollama.chats)
    assert summary["totals"]["prompt_tokens"] == sum(c["prompt_eval_count"] for c in ollama.chats)
    assert summary["agents"]["Coder"]["turns"] == 2 and summary["agents"]["Reviewer"]["turns"] == 2
    # The fewest loads this budget allows for Architect, Coder, Reviewer, Coder, Reviewer.
    assert ollama.load_names() == [ARCHITECT, CODER, REVIEWER]
    assert summary["totals"]["loads"] == 3
    assert ollama.self_evictions() == [] and ollama.option_reloads() == []
    assert ollama.peak_used <= 60 * GB
    transcript = (workspace / "transcript.md").read_text()
    assert "## Reviewer" in transcript and "Please add a docstring" in transcript
    events = [json.loads(line) for line in (workspace / "events.jsonl").read_text().splitlines()]
    kinds = {e["type"] for e in events}
    assert {"routing", "message", "tool_call", "model_loaded", "model_call", "run_finished"} <= kinds
    # Each routing decision is recorded after the message it answers.
    flow = [e.get("source") or "-> " + e["speaker"] for e in events if e["type"] in ("message", "routing")]
    assert flow == ["user", "-> Architect", "Architect", "-> Coder", "Coder", "-> Reviewer", "Reviewer",
                    "-> Coder", "Coder", "-> Reviewer", "Reviewer"]
    # The reviewer's load was started while the coder generated (it fit beside it).
    starts = {e["model"]: e["reason"] for e in events if e["type"] == "model_load_started"}
    assert starts == {ARCHITECT: "requested", CODER: "requested", REVIEWER: "prefetch"}


def test_with_48_gb_coder_and_reviewer_stay_together_and_the_architect_loads_only_once(
    ollama: FakeOllama, clean_env: Path
) -> None:
    ollama.reset(capacity=48 * GB, system_memory=96 * GB)
    ollama.script(ARCHITECT, "Plan: edit the code.\nNEXT: Coder")
    ollama.script(CODER, *[f"Change {i} done.\nNEXT: Reviewer" for i in range(3)])
    ollama.script(REVIEWER, "Fix the edge case.\nNEXT: Coder", "One more fix.\nNEXT: Coder", "APPROVED")
    outcome, events = run_in_process(ollama, write_spec(clean_env),
                                     settings={"allow_partial_offload": True})
    assert outcome.approved
    assert ollama.load_names() == [ARCHITECT, CODER, REVIEWER]
    assert [u["model"] for u in ollama.unloads] == [ARCHITECT]
    assert [e.speaker for e in events if e.type == "routing"] == [
        "Architect", "Coder", "Reviewer", "Coder", "Reviewer", "Coder", "Reviewer"]


def test_a_reviewer_that_never_approves_stops_at_the_turn_limit_with_exit_code_1(
    ollama: FakeOllama, clean_env: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ollama.capacity = 60 * GB
    ollama.script(REVIEWER, *["NOT APPROVED: still wrong.\nNEXT: Coder"] * 5)
    spec = write_spec(clean_env)
    monkeypatch.setenv("CREW_OLLAMA_HOST", ollama.url)
    monkeypatch.setenv("CREW_MEMORY_BUDGET_GB", "60")
    assert main(["run", str(spec), "--max-turns", "4"]) == 1
    (workspace,) = (clean_env / "workspaces").iterdir()
    summary = json.loads((workspace / "summary.json").read_text())
    assert summary["approved"] is False and summary["stop_reason"].startswith("turn limit")
    assert len(ollama.chats) == 4
    assert "NOT APPROVED (turn limit" in capsys.readouterr().out


def test_malformed_tool_calls_go_back_to_the_model_and_the_run_goes_on(
    ollama: FakeOllama, clean_env: Path
) -> None:
    ollama.capacity = 60 * GB
    ollama.script(ARCHITECT, "Plan.\nNEXT: Coder")
    ollama.script(
        CODER,
        FakeReply(content="", tool_calls=[{"name": "write_file", "arguments": {"path": "a.py"}}]),
        FakeReply(content="", tool_calls=[{"name": "delete_everything", "arguments": {}}]),
        FakeReply(content="", tool_calls=[{"name": "write_file",
                                           "arguments": {"path": "../escape.py", "content": "x"}}]),
        FakeReply(content="", tool_calls=[{"name": "write_file",
                                           "arguments": {"path": "a.py", "content": "x = 1\n"}}]),
        "Done.\nNEXT: Reviewer",
    )
    ollama.script(REVIEWER, "APPROVED")
    outcome, events = run_in_process(ollama, write_spec(clean_env))
    assert outcome.approved
    results = [e for e in events if e.type == "tool_result"]
    assert [r.is_error or r.content.startswith("error:") for r in results] == [True, True, True, False]
    assert not (clean_env / "workspaces" / "escape.py").exists()
    assert (outcome.workspace.root / "a.py").read_text() == "x = 1\n"
    # The error text reached the model, so it could correct itself.
    assert any("content" in m.get("content", "") for m in ollama.chats[2]["messages"] if m["role"] == "tool")


def test_a_stream_cut_mid_answer_is_one_line_exit_2_and_the_records_are_kept(
    ollama: FakeOllama, clean_env: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ollama.capacity = 60 * GB
    ollama.script(ARCHITECT, "Plan.\nNEXT: Coder")
    ollama.script(CODER, FakeReply(content="I will now write a long answer", cut_after=3))
    spec = write_spec(clean_env)
    monkeypatch.setenv("CREW_OLLAMA_HOST", ollama.url)
    monkeypatch.setenv("CREW_MEMORY_BUDGET_GB", "60")
    assert main(["run", str(spec)]) == 2
    err = capsys.readouterr().err
    assert "closed the connection mid-request (qwen3-coder:30b)" in err and "Traceback" not in err
    (workspace,) = (clean_env / "workspaces").iterdir()
    summary = json.loads((workspace / "summary.json").read_text())
    assert summary["stop_reason"].startswith("error: ") and summary["approved"] is False
    assert "## Architect" in (workspace / "transcript.md").read_text()
    assert (workspace / "state.json").is_file()


@pytest.mark.parametrize(("content", "message"), [
    (None, "does not exist"), (b"", "is empty"), (b"  \n", "is empty"),
    (b"\x89PNG\r\n\x1a\n\0\0", "is binary"), (b"\xff\xfe bad", "not UTF-8"),
])
def test_a_bad_spec_file_is_one_line_and_exit_code_2(
    clean_env: Path, capsys: pytest.CaptureFixture[str], content: bytes | None, message: str
) -> None:
    spec = clean_env / "spec.md"
    if content is not None:
        spec.write_bytes(content)
    assert main(["run", str(spec)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (clean_env / "workspaces").exists()


def test_an_unwritable_workspace_is_one_line_and_exit_code_2(
    ollama: FakeOllama, clean_env: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (clean_env / "a-file").write_text("not a folder")
    monkeypatch.setenv("CREW_OLLAMA_HOST", ollama.url)
    assert main(["run", str(write_spec(clean_env)), "--workspace", str(clean_env / "a-file" / "ws")]) == 2
    err = capsys.readouterr().err
    assert "cannot create the workspace" in err and "writable --workspace" in err
    assert ollama.chats == []


def test_a_model_not_pulled_stops_before_the_team_starts(
    ollama: FakeOllama, clean_env: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CREW_OLLAMA_HOST", ollama.url)
    monkeypatch.setenv("CREW_CODER_MODEL", "qwen3-coder:480b")
    assert main(["run", str(write_spec(clean_env))]) == 2
    assert "`ollama pull qwen3-coder:480b`" in capsys.readouterr().err
    assert ollama.chats == [] and ollama.loads == []


def test_repo_mode_works_on_a_new_branch_of_an_existing_repository(
    ollama: FakeOllama, clean_env: Path
) -> None:
    repo = clean_env / "project"
    repo.mkdir()
    (repo / "README.md").write_text("project\n")
    for args in (["init", "-q", "-b", "main"], ["add", "."], ["-c", "user.name=t", "-c", "user.email=t@t",
                                                           "commit", "-q", "-m", "start"]):
        subprocess.run(["git", "-C", str(repo), *args], check=True)
    ollama.capacity = 60 * GB
    script_happy_path(ollama)
    outcome, _ = run_in_process(ollama, write_spec(clean_env), repo=repo)
    assert outcome.approved
    branch = subprocess.run(["git", "-C", str(outcome.workspace.root), "branch", "--show-current"],
                            capture_output=True, text=True, check=True).stdout.strip()
    assert branch == f"crew/{outcome.workspace.id}"
    patch = (outcome.workspace.root / "crew.patch").read_text()
    assert "hello.py" in patch and "README.md" not in patch and "events.jsonl" not in patch
    assert not (repo / "hello.py").exists()  # the user's checkout is untouched


def test_a_stopped_run_resumes_where_it_left_off(ollama: FakeOllama, clean_env: Path) -> None:
    ollama.capacity = 60 * GB
    script_happy_path(ollama)
    first, _ = run_in_process(ollama, write_spec(clean_env), max_turns=2)
    assert not first.approved and ollama.load_names()[:2] == [ARCHITECT, CODER]
    loads_before = len(ollama.loads)
    second, events = run_in_process(ollama, None, resume=first.workspace.root)
    assert second.approved and second.workspace.root == first.workspace.root
    assert len(ollama.loads) == loads_before  # the resumed run found its models resident
    assert [e.speaker for e in events if e.type == "routing"] == ["Reviewer", "Coder", "Reviewer"]
    # The Reviewer saw the whole conversation, including what came before the stop.
    assert any("Create hello.py" in m["content"] for m in ollama.chats[-1]["messages"])


def default_sigint() -> None:
    """In the child: Ctrl-C as a terminal delivers it. A shell runs background jobs (`.ci/run &`)
    with SIGINT ignored, and a child inherits that: it would never see the test's SIGINT."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_stops_cleanly_saves_state_and_exits_130(ollama: FakeOllama, clean_env: Path) -> None:
    ollama.capacity = 60 * GB
    gate = threading.Event()
    ollama.script(ARCHITECT, FakeReply(content="A long plan", gate=gate))
    spec = write_spec(clean_env)
    env = dict(os.environ)  # clean_env removed CREW_*, OLLAMA_* but the state dir
    env.update(PYTHONPATH=str(ROOT), CREW_OLLAMA_HOST=ollama.url, CREW_MEMORY_BUDGET_GB="60")
    proc = subprocess.Popen([sys.executable, "-m", "crew", "run", str(spec)], cwd=clean_env, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=default_sigint)
    try:
        assert ollama.generating.wait(120), "the architect never started generating"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        gate.set()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "crew run --resume" in err and "Traceback" not in err
    (workspace,) = (clean_env / "workspaces").iterdir()
    assert json.loads((workspace / "summary.json").read_text())["stop_reason"] == "interrupted"
    assert (workspace / "state.json").is_file()
    assert "Write hello.py" in (workspace / "transcript.md").read_text()


def test_backend_ollama_with_ollama_down_is_one_line_and_exit_2(
    dead_host: str, clean_env: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CREW_OLLAMA_HOST", dead_host)
    assert main(["run", str(write_spec(clean_env)), "--backend", "ollama"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("crew:")]
    assert len(errors) == 1 and dead_host in errors[0] and "ollama serve" in errors[0]


def test_a_conversation_past_a_roles_num_ctx_is_warned_about_before_ollama_truncates_it(
    ollama: FakeOllama, clean_env: Path
) -> None:
    ollama.capacity = 60 * GB
    plan = "Plan:\n" + "".join(f"{i}. Write function f{i} with care and a test.\n" for i in range(300))
    ollama.script(ARCHITECT, FakeReply(content=plan + "NEXT: Coder", chunks=30))  # not a word at a time
    ollama.script(CODER, "Done.\nNEXT: Reviewer")
    ollama.script(REVIEWER, "APPROVED")
    outcome, events = run_in_process(ollama, write_spec(clean_env), settings={"coder": {"num_ctx": 2048}})
    assert outcome.approved
    truncated = {c["model"] for c in ollama.chats if c.get("truncated")}
    assert truncated == {CODER}  # Ollama dropped the Coder's oldest messages, and only those
    warnings = [e for e in events if e.type == "context_full"]
    assert [(w.role, w.num_ctx) for w in warnings] == [("coder", 2048)]
    assert warnings[0].tokens >= 2048
    kinds = [(e.type, getattr(e, "role", None)) for e in events]
    assert kinds.index(("context_full", "coder")) < kinds.index(("model_call", "coder"))


def test_sizes_measured_in_one_run_spare_the_next_run_a_load(ollama: FakeOllama, clean_env: Path) -> None:
    # A budget the Coder and Reviewer fit in together, but not by their estimates (+5% margin).
    coder, reviewer = ollama.models[CODER], ollama.models[REVIEWER]
    real = coder.resident_size(32768) + reviewer.resident_size(32768)
    estimated = coder.resident_size(32768) + reviewer.resident_size(32768) * 1.05 / (1 + reviewer.overhead)
    budget = int((real + estimated) / 2)

    def one_run() -> list[str]:
        ollama.reset(capacity=budget)  # Ollama restarted: nothing resident, records empty
        ollama.script(CODER, "Implemented.\nNEXT: Reviewer", "Fixed.\nNEXT: Reviewer")
        ollama.script(REVIEWER, "One fix.\nNEXT: Coder", "APPROVED")
        # The architect (never asked here) is over this machine's memory: allowed, it may be in the team.
        outcome, _ = run_in_process(ollama, write_spec(clean_env, "Implement greet(name) in hello.py.\n"),
                                    settings={"allow_partial_offload": True})
        assert outcome.approved and ollama.self_evictions() == [] and ollama.peak_used <= budget
        return ollama.load_names()

    assert one_run() == [CODER, REVIEWER, CODER]  # the estimate says they do not fit together
    assert one_run() == [CODER, REVIEWER]  # the measurements from the first run say they do
    assert ollama.unloads == []
    measured = json.loads((clean_env / "state" / "measured.json").read_text())[ollama.url]
    assert measured[f"{REVIEWER} num_ctx=32768"]["bytes"] == reviewer.resident_size(32768)


@pytest.mark.parametrize("rounds", [1, 3])
def test_with_room_for_two_models_the_workflow_forecast_makes_three_loads(
    ollama: FakeOllama, clean_env: Path, rounds: int
) -> None:
    # 80 GB holds any two of the three. Evicting by reload cost alone keeps the Architect (the
    # dearest to reload) and swaps the Coder and Reviewer at every turn; the workflow says the
    # Architect is not coming back.
    ollama.reset(capacity=80 * GB, system_memory=128 * GB)
    ollama.script(ARCHITECT, "Plan: write hello.py.\nNEXT: Coder")
    ollama.script(CODER, *[f"Change {i} done.\nNEXT: Reviewer" for i in range(rounds)])
    ollama.script(REVIEWER, *["One more fix.\nNEXT: Coder"] * (rounds - 1), "APPROVED")
    outcome, events = run_in_process(ollama, write_spec(clean_env))
    assert outcome.approved
    assert ollama.load_names() == [ARCHITECT, CODER, REVIEWER]
    assert [u["model"] for u in ollama.unloads] == [ARCHITECT]
    assert ollama.self_evictions() == [] and ollama.peak_used <= 80 * GB
    assert [e.speaker for e in events if e.type == "routing"].count("Reviewer") == rounds


def test_a_bad_command_line_is_one_line_and_exit_2(
    clean_env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for argv, said in ((["run", "spec.md", "--max-turns", "0"], "not a positive number of turns"),
                       (["run", "--frobnicate"], "unrecognized arguments: --frobnicate"),
                       (["review"], "one of the arguments --diff --base is required")):
        with pytest.raises(SystemExit) as exited:
            main(argv)
        err = capsys.readouterr().err
        assert exited.value.code == 2 and err.count("\n") == 1 and err.startswith("crew: ") and said in err
    monkeypatch.setenv("CREW_PROMPTS_DIR", str(clean_env / "no-such-folder"))
    (clean_env / "spec.md").write_text("Write hello.py.\n")
    assert main(["run", "spec.md"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "prompts_dir (CREW_PROMPTS_DIR)" in err and "must be a folder" in err


def test_a_run_folder_is_not_resumed_as_a_chat_nor_by_two_processes_at_once(
    ollama: FakeOllama, clean_env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from crew.workspace.repo import Workspace

    ollama.capacity = 60 * GB
    script_happy_path(ollama)
    outcome, _ = run_in_process(ollama, write_spec(clean_env))
    root = outcome.workspace.root
    before = {name: (root / name).read_bytes() for name in ("state.json", "summary.json", "events.jsonl")}
    monkeypatch.setenv("CREW_OLLAMA_HOST", ollama.url)
    assert main(["chat", "--resume", str(root)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "was made by `crew run`" in err and f"crew run --resume {root}" in err
    assert {name: (root / name).read_bytes() for name in before} == before  # nothing damaged
    held = Workspace.open(root)
    held.lock()  # another crew process works in it
    try:
        assert main(["run", "--resume", str(root)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"is in use by crew process {os.getpid()}" in err
    finally:
        held.unlock()
    assert {name: (root / name).read_bytes() for name in before} == before


def test_flags_resume_cannot_honour_and_an_unwritable_out_stop_before_any_model_work(
    ollama: FakeOllama, clean_env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CREW_OLLAMA_HOST", ollama.url)
    write_spec(clean_env)
    (clean_env / "a-file").write_text("not a folder")
    assert main(["run", "spec.md", "--out", str(clean_env / "a-file" / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot use --out" in err
    assert main(["run", "--resume", str(clean_env), "--repo", str(clean_env)]) == 2
    assert "cannot take a spec, --repo or --workspace" in capsys.readouterr().err
    assert ollama.chats == [] and ollama.loads == [] and not (clean_env / "workspaces").exists()


def test_an_unexpected_exception_is_one_line_and_exit_2(
    clean_env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr("crew.reports.past_runs.list_runs", broken)
    assert main(["runs"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unexpected error (ZeroDivisionError: a bug)" in err


def test_settings_and_records_that_used_to_crash_are_one_line_or_listed_as_broken(
    clean_env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CREW_MEMORY_BUDGET_GB", "inf")
    assert main(["config"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "memory_budget_gb (CREW_MEMORY_BUDGET_GB)" in err
    monkeypatch.delenv("CREW_MEMORY_BUDGET_GB")
    (clean_env / "crew.toml").write_bytes(b"memory_budget_gb = 48 # caf\xe9\n")
    assert main(["config"]) == 2
    assert "crew.toml is not UTF-8 text" in capsys.readouterr().err
    (clean_env / "crew.toml").unlink()
    run_dir = clean_env / "workspaces" / "20261101-odd"
    run_dir.mkdir(parents=True)
    (run_dir / "summary.json").write_text(json.dumps({"started": 1e20, "seconds": 1, "verdict": "approved",
                                                      "totals": {"loads": 1, "prompt_tokens": 1,
                                                                 "completion_tokens": 1}}))
    assert main(["runs", "--json"]) == 0
    (listed,) = json.loads(capsys.readouterr().out)
    assert listed["complete"] is False and "is not a time" in listed["problem"]
    assert main(["runs"]) == 0  # the table too
    capsys.readouterr()


def test_a_symlink_into_git_is_refused_by_the_file_tools(clean_env: Path) -> None:
    from crew.workspace.repo import Workspace
    from crew.workspace.tools import make_tools

    workspace = Workspace.create(clean_env / "workspaces")
    (workspace.root / "g").symlink_to(workspace.root / ".git")
    tools = {t.__name__: t for t in make_tools(workspace, write=True)}
    answer = run(tools["write_file"]("g/hooks/post-commit", "#!/bin/sh\ntouch pwned\n"))
    assert answer.startswith("error:") and "link" in answer  # no link is followed, wherever it leads
    assert not (workspace.root / ".git" / "hooks" / "post-commit").exists()


def test_more_inputs_that_used_to_crash_are_one_line_and_exit_2(
    ollama: FakeOllama, clean_env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import http.server
    import threading

    monkeypatch.setenv("CREW_OLLAMA_HOST", ollama.url)
    monkeypatch.setenv("CREW_MEMORY_BUDGET_GB", "60")
    write_spec(clean_env)
    (clean_env / "a-file").write_text("not a folder")
    assert main(["run", "spec.md", "--workspace", str(clean_env / "a-file")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    prompts = clean_env / "prompts"
    prompts.mkdir()
    (prompts / "architect.md").write_bytes(b"caf\xe9\n")
    monkeypatch.setenv("CREW_PROMPTS_DIR", str(prompts))
    assert main(["run", "spec.md"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 2 and "crew: cannot read the prompt" in err and "save it as UTF-8" in err
    monkeypatch.delenv("CREW_PROMPTS_DIR")
    monkeypatch.setattr("sys.stdin", None)
    assert main(["review", "--diff", "-"]) == 2
    assert "standard input, which is closed" in capsys.readouterr().err

    class Html(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(b"<html>not ollama</html>")

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Html)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("CREW_OLLAMA_HOST", f"http://127.0.0.1:{server.server_address[1]}")
        assert main(["plan"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "something other than Ollama's JSON" in err
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_sigterm_and_sighup_stop_like_ctrl_c_and_hand_the_models_back(
    ollama: FakeOllama, clean_env: Path, signum: int, code: int
) -> None:
    ollama.capacity = 60 * GB
    gate = threading.Event()
    ollama.script(ARCHITECT, FakeReply(content="A long plan", gate=gate))
    spec = write_spec(clean_env)
    env = dict(os.environ)  # clean_env removed CREW_*, OLLAMA_* but the state dir
    env.update(PYTHONPATH=str(ROOT), CREW_OLLAMA_HOST=ollama.url, CREW_MEMORY_BUDGET_GB="60",
               CREW_STATE_DIR=str(clean_env / "state"))
    proc = subprocess.Popen([sys.executable, "-m", "crew", "run", str(spec)], cwd=clean_env, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert ollama.generating.wait(120), "the architect never started generating"
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=120)
    finally:
        gate.set()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, err
    name = signal.Signals(signum).name
    assert f"crew: stopped by {name}; state saved" in err and "crew run --resume" in err
    assert "Traceback" not in err
    (workspace,) = (clean_env / "workspaces").iterdir()
    summary = json.loads((workspace / "summary.json").read_text())
    assert summary["stop_reason"] == "interrupted"
    assert (workspace / "state.json").is_file() and (workspace / "crew.patch").is_file()
    # The architect was handed back to Ollama's own expiry, not left pinned.
    released = [r["body"]["model"] for r in ollama.requests
                if r["path"] == "/api/chat" and r["body"].get("keep_alive") == "5m"]
    assert released == [ARCHITECT]


def test_a_model_shared_by_two_roles_is_one_load_in_the_totals(ollama: FakeOllama, clean_env: Path) -> None:
    ollama.capacity = 60 * GB
    ollama.script(ARCHITECT, "1. Write hello.py.\nNEXT: Coder")
    ollama.script(CODER, "Done.\nNEXT: Reviewer", "APPROVED")  # the Reviewer runs on the Coder's model
    outcome, _ = run_in_process(ollama, write_spec(clean_env), settings={"reviewer": {"model": CODER}})
    assert outcome.approved and ollama.load_names() == [ARCHITECT, CODER]
    summary = json.loads((outcome.workspace.root / "summary.json").read_text())
    assert summary["totals"]["loads"] == 2 == outcome.loads
