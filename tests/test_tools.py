"""Agent tools stay inside the workspace; commands are bounded; the selector routes as documented."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from autogen_agentchat.messages import TextMessage

from crew.errors import WorkspaceError, WorkspaceEscape
from crew.residency import ResidencyManager
from crew.routing import approved, task_type
from crew.team import Selector
from crew.workspace.git_calls import git
from crew.workspace.repo import Workspace
from crew.workspace.tools import (
    MAX_OUTPUT_CHARS,
    MAX_READ_BYTES,
    MAX_READ_CHARS,
    make_tools,
    run_in_workspace,
)
from tests.fake_ollama import FakeOllama
from tests.helpers import CODER, REVIEWER, make_manager, run


def ended(pid: int, guard_s: float = 10.0) -> bool:
    """Whether the process is gone or a zombie (dead, waiting for init to reap it), polled until
    `guard_s` runs out: a SIGKILLed process can take a moment to finish exiting."""
    status = Path(f"/proc/{pid}/status")
    deadline = time.monotonic() + guard_s
    while time.monotonic() < deadline:
        try:
            state = status.read_text().split("State:")[1].split()[0]
        except (OSError, IndexError):
            return True  # gone
        if state in ("Z", "X"):
            return True
        time.sleep(0.01)  # a poll of a condition, bounded by the guard
    return False


@pytest.fixture
def workspace(clean_env: Path) -> Workspace:
    return Workspace.create(clean_env / "workspaces")


def tools(workspace: Workspace, write: bool = True, timeout: float = 30) -> dict[str, Any]:
    return {t.__name__: t for t in make_tools(workspace, write=write, command_timeout=timeout)}


@pytest.mark.parametrize(
    "path", ["../outside.py", "/etc/passwd", "a/../../x", ".git/config", "", "crew.patch"]
)
def test_paths_outside_the_workspace_are_refused(workspace: Workspace, path: str) -> None:
    with pytest.raises(WorkspaceEscape):
        workspace.resolve(path)
    result = run(tools(workspace)["write_file"](path, "x"))
    assert result.startswith("error:")
    assert not (workspace.root.parent / "outside.py").exists()


def test_a_symlink_cannot_lead_out(workspace: Workspace, clean_env: Path) -> None:
    secret = clean_env / "secret.txt"
    secret.write_text("token")
    (workspace.root / "link").symlink_to(clean_env)
    assert run(tools(workspace)["read_file"]("link/secret.txt")).startswith("error:")
    assert run(tools(workspace)["write_file"]("link/secret.txt", "pwned")).startswith("error:")
    assert secret.read_text() == "token"


def test_edit_file_needs_one_exact_match_and_says_how_to_fix_it(workspace: Workspace) -> None:
    t = tools(workspace)
    run(t["write_file"]("src/app.py", "a = 1\na = 1\nb = 2\n"))
    assert "not found" in run(t["edit_file"]("src/app.py", "c = 3", "c = 4"))
    assert "occurs 2 times" in run(t["edit_file"]("src/app.py", "a = 1", "a = 9"))
    assert run(t["edit_file"]("src/app.py", "b = 2", "b = 3")) == "edited src/app.py"
    assert (workspace.root / "src/app.py").read_text() == "a = 1\na = 1\nb = 3\n"
    assert run(t["list_files"]()) == "src/app.py"


def test_the_reviewer_gets_no_write_tools(workspace: Workspace) -> None:
    assert set(tools(workspace, write=False)) == {"list_files", "read_file", "run_command"}


def test_commands_run_in_the_workspace_without_secrets(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GITHUB_TOKEN", "ghp_secret")
    out = run(tools(workspace)["run_command"]("pwd; env"))
    assert out.startswith("exit code 0")
    assert str(workspace.root) in out and "ghp_secret" not in out and "GITHUB_TOKEN" not in out


def test_a_command_that_outlives_its_timeout_is_killed_with_its_children(workspace: Workspace) -> None:
    pidfile = workspace.root / "child.pid"
    out = run(run_in_workspace(workspace, f"sleep 60 & echo $! > {pidfile}; wait", timeout=0.5))
    assert "was killed" in out
    assert ended(int(pidfile.read_text()))


def test_long_output_is_cut_to_a_bound(workspace: Workspace) -> None:
    out = run(tools(workspace)["run_command"]("python3 -c \"print('x' * 100000)\""))
    assert len(out) < 13_000 and "characters cut" in out


def test_repo_mode_needs_a_git_repository(clean_env: Path) -> None:
    (clean_env / "plain").mkdir()
    with pytest.raises(WorkspaceError, match="is not a git repository"):
        Workspace.create(clean_env / "workspaces", repo=clean_env / "plain")


def test_approval_is_a_line_that_says_only_approved() -> None:
    assert approved("Looks good.\nAPPROVED")
    assert approved("**APPROVED**")
    assert not approved("NOT APPROVED: tests fail")
    assert not approved("I have not APPROVED this yet")


def test_task_types_follow_the_seeds_routing() -> None:
    assert task_type("Review the attached module for bugs") == "reviewer"
    assert task_type("Implement a CSV parser") == "coder"
    assert task_type("Design the storage layer") == "architect"
    assert task_type("Hello there") is None


def test_the_selector_follows_handoffs_the_workflow_and_resident_models(ollama: FakeOllama) -> None:
    def msg(source: str, text: str) -> TextMessage:
        return TextMessage(source=source, content=text)

    async def scenario() -> None:
        async with make_manager(ollama) as manager:
            selector = _selector(manager)
            assert selector.choose([msg("user", "Build a todo app")])[0] == "architect"
            assert selector.choose([msg("user", "Fix the crash in parser.py")])[0] == "coder"
            assert selector.choose([msg("user", "x"), msg("Architect", "Plan")])[0] == "coder"
            assert selector.choose([msg("user", "x"), msg("Coder", "Done")])[0] == "reviewer"
            task = msg("user", "x")
            assert selector.choose([task, msg("Reviewer", "Rename it.\nNEXT: Coder")])[0] == "coder"
            assert selector.choose([task, msg("Coder", "Unsure.\nNEXT: Architect")])[0] == "architect"
            # The reviewer questions the design: open between Architect and Coder; the coder is resident.
            async with manager.hold(CODER):
                pass
            role, reason = selector.choose([msg("user", "x"), msg("Reviewer", "The design is wrong.")])
            assert role == "coder" and "resident" in reason

    run(scenario())
    assert ollama.load_names() == [CODER]  # choosing never loaded anything


def _selector(manager: ResidencyManager) -> Selector:
    models = {"architect": "qwen3-coder-next:q4_K_M", "coder": CODER, "reviewer": REVIEWER}
    return Selector(manager, models, lambda event: None)  # type: ignore[arg-type]


def test_a_write_or_edit_that_would_not_parse_is_refused_with_the_parsers_line(
    workspace: Workspace,
) -> None:
    t = tools(workspace)
    result = run(t["write_file"]("app.py", "def f(:\n    return 1\n"))
    assert result.startswith("error: not written") and "app.py line 1" in result
    assert not (workspace.root / "app.py").exists()
    assert run(t["write_file"]("app.py", "def f():\n    return 1\n")).startswith("wrote")
    result = run(t["edit_file"]("app.py", "    return 1\n", "    return (1\n"))
    assert result.startswith("error: not edited") and "unchanged" in result
    assert (workspace.root / "app.py").read_text() == "def f():\n    return 1\n"
    assert run(t["write_file"]("data.json", '{"a": 1,}')).startswith("error: not written")
    jsonc = "{\"a\": 1, // comments are allowed here\n}"
    assert run(t["write_file"]("tsconfig.json", jsonc)).startswith("wrote")
    assert run(t["write_file"]("notes.txt", "def f(:")).startswith("wrote")  # not a checked type


def test_an_already_broken_file_can_still_be_edited(workspace: Workspace) -> None:
    (workspace.root / "half.py").write_text("def f(:\n    return 1\n")
    assert run(tools(workspace)["edit_file"]("half.py", "def f(:", "def f(x:")) == "edited half.py"


def test_an_edit_whose_text_differs_only_in_trailing_whitespace_still_applies(
    workspace: Workspace,
) -> None:
    (workspace.root / "m.py").write_bytes(b"def f():  \r\n    return 1\r\n\r\nx = f()\r\n")
    t = tools(workspace)
    assert run(t["edit_file"]("m.py", "def f():\n    return 1", "def f():\n    return 2")) == "edited m.py"
    # The file keeps its CRLF endings outside the edited lines.
    assert (workspace.root / "m.py").read_bytes() == b"def f():\n    return 2\r\n\r\nx = f()\r\n"
    # Indentation is not guessed: a different indent is still "not found".
    assert "not found" in run(t["edit_file"]("m.py", "def f():\n  return 2", "pass"))


def test_a_command_that_floods_its_output_still_ends_at_its_timeout(workspace: Workspace) -> None:
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = run(asyncio.wait_for(tools(workspace, timeout=0.5)["run_command"]("yes"), 60))
    assert result.startswith("error: `yes` took longer than 0.5 s and was killed")
    assert "bytes of output cut" in result and len(result) < MAX_OUTPUT_CHARS + 200
    grown_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kb < 200_000  # the flood is counted, not kept (it used to reach 1.6 GB)


def test_what_a_command_starts_in_the_background_ends_with_it(workspace: Workspace) -> None:
    result = run(tools(workspace)["run_command"]("sleep 300 & echo $! > bg.pid; echo started"))
    assert result.startswith("exit code 0") and "started" in result
    # Killed when the command ended (it may still be finishing its exit: polled, with a guard).
    assert ended(int((workspace.root / "bg.pid").read_text()))


def test_read_file_reads_at_most_a_bound_of_a_huge_file(workspace: Workspace) -> None:
    with (workspace.root / "huge.txt").open("wb") as handle:
        handle.truncate(1 << 30)  # 1 GB, sparse: costs no disk, would cost 1 GB of memory to read
    result = run(tools(workspace)["read_file"]("huge.txt"))
    assert f"read the first {MAX_READ_BYTES} bytes of {1 << 30}" in result
    assert len(result) < MAX_READ_CHARS + 500


def test_crews_own_git_calls_do_not_run_what_an_agent_planted_in_the_git_config(
    workspace: Workspace, clean_env: Path
) -> None:
    marker = clean_env / "planted-ran"
    planted = (f"git config core.fsmonitor 'touch {marker}; false' && "
               f"mkdir -p .git/hooks && printf '#!/bin/sh\\ntouch {marker}\\n' > .git/hooks/pre-commit && "
               f"chmod +x .git/hooks/pre-commit && git config diff.external 'sh -c \"touch {marker}\"'")
    assert run(tools(workspace)["run_command"](planted)).startswith("exit code 0")
    (workspace.root / "app.py").write_text("x = 1\n")
    patch = workspace.write_patch().path.read_text()  # git add -A, git diff: where fsmonitor would run
    git(workspace.root, "commit", "-q", "--allow-empty", "-m", "crew turn: Coder")  # where a hook would run
    assert "+x = 1" in patch
    assert not marker.exists()
