"""What an agent's command can reach, tried as an attacker would: for real, in bubblewrap.

`.ci/run` installs bubblewrap and sets CREW_REQUIRE_SANDBOX=1, so these never skip there.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import psutil
import pytest

from crew.terminal.cli import main
from crew.workspace.repo import Workspace
from crew.workspace.sandbox import Sandbox, _works, detect, seatbelt_profile
from crew.workspace.tools import UNCONFINED, run_in_workspace
from tests.fake_ollama import FakeOllama
from tests.helpers import run

if not os.environ.get("CREW_REQUIRE_SANDBOX") and not shutil.which("bwrap"):
    pytest.skip("bubblewrap is not installed", allow_module_level=True)

SECRET = "sk-test-0123456789-secret"


@pytest.fixture
def workspace(clean_env: Path) -> Workspace:
    ws = Workspace.create(clean_env / "workspaces")
    for name in ("events.jsonl", "transcript.md"):
        (ws.root / name).write_text("recorded\n")
    return ws


@pytest.fixture(params=["bwrap", "unshare"])
def bwrap(request: pytest.FixtureRequest) -> Sandbox:
    """Each Linux sandbox in turn: bubblewrap, and the namespaces crew falls back to without it."""
    kind = request.param
    if kind == "bwrap":
        sandbox = detect("require", network=False)
        assert sandbox.kind == "bwrap"
        return sandbox
    if not _works(Sandbox("unshare")):
        pytest.skip("unprivileged namespaces are not allowed here")
    return Sandbox("unshare")


def sh(workspace: Workspace, command: str, sandbox: Sandbox) -> str:
    return run(run_in_workspace(workspace, command, 60, sandbox))


def test_crews_secrets_and_processes_are_out_of_sight(workspace: Workspace, bwrap: Sandbox) -> None:
    # A process that holds a secret in its environment, as crew does when started with one.
    holder = subprocess.Popen(["sleep", "120"], env={**os.environ, "OPENAI_API_KEY": SECRET})
    try:
        # Counted inside the command: every environment dumped would overflow the output bound.
        snoop = ('(env; for f in /proc/[0-9]*/environ; do tr "\\0" "\\n" < "$f"; done) 2>/dev/null '
                 f'| grep -c "{SECRET}"; ls /proc')
        # Unconfined, every process's environment of this user is a file away: a leak shows.
        leaked = sh(workspace, snoop, UNCONFINED).splitlines()[1]
        assert int(leaked) >= 1
        seen = sh(workspace, snoop, bwrap)
        assert seen.splitlines()[1] == "0" and SECRET not in seen
        assert str(holder.pid) not in seen.split() and str(os.getpid()) not in seen.split()
    finally:
        holder.kill()
        holder.wait(timeout=30)


def test_only_the_workspace_is_writable_and_git_and_records_are_read_only(
    workspace: Workspace, bwrap: Sandbox, clean_env: Path
) -> None:
    outside = clean_env / "outside.txt"
    config = (workspace.root / ".git" / "config").read_text()
    result = sh(workspace, f"echo x > {outside}; echo x > inside.txt; echo x > /tmp/scratch && echo tmp-ok; "
                           "git config core.fsmonitor 'touch pwned'; echo x >> events.jsonl; "
                           "rm -f workspace.json; ln -sf /etc/passwd transcript.md; echo done", bwrap)
    assert "done" in result
    # A private /tmp in both, also when the workspace is in /tmp (as these tests' are).
    assert "tmp-ok" in result
    assert not outside.exists()
    assert (workspace.root / "inside.txt").read_text() == "x\n"
    assert (workspace.root / ".git" / "config").read_text() == config
    assert (workspace.root / "events.jsonl").read_text() == "recorded\n"
    assert (workspace.root / "workspace.json").is_file()
    assert not (workspace.root / "transcript.md").is_symlink()


def test_no_network_unless_allowed(workspace: Workspace, bwrap: Sandbox, ollama: FakeOllama) -> None:
    url = f"{ollama.url}/api/version"
    fetch = f"python3 -c \"import urllib.request; print(urllib.request.urlopen('{url}').read())\""
    closed = sh(workspace, fetch, bwrap)
    assert closed.startswith("exit code 1") and "0.13.0" not in closed
    opened = sh(workspace, fetch, Sandbox(bwrap.kind, network=True))
    assert opened.startswith("exit code 0") and "0.13.0" in opened


def test_everything_a_command_started_ends_with_it(workspace: Workspace, bwrap: Sandbox) -> None:
    # A sleep that escapes the process group (setsid) and the output pipe; its length marks it as
    # this test's (tests run in parallel, each sandbox's with its own).
    marker = f"300.{os.getpid()}{id(workspace) % 10_000}"
    result = sh(workspace, f"setsid sleep {marker} > /dev/null 2>&1 < /dev/null & echo started", bwrap)
    assert "started" in result

    def alive() -> list[psutil.Process]:
        found = []
        for proc in psutil.process_iter(["cmdline", "status"]):
            if marker in (proc.info["cmdline"] or []) and proc.info["status"] != psutil.STATUS_ZOMBIE:
                found.append(proc)
        return found

    # The PID namespace's init ended with the command, and the kernel reaped its namespace first.
    assert alive() == []


def test_a_non_utf8_file_and_a_non_ascii_name_go_through_patch_and_tools(
    workspace: Workspace, bwrap: Sandbox
) -> None:
    from crew.workspace.tools import make_tools

    sh(workspace, "printf 'caf\\351\\n' > latin1.txt; printf 'ok\\n' > 'café.txt'", bwrap)
    tools = {t.__name__: t for t in make_tools(workspace, write=True, sandbox=bwrap)}
    listed = run(tools["list_files"]())
    assert "café.txt" in listed.splitlines()
    assert run(tools["read_file"]("café.txt")) == "ok\n"
    assert "not a UTF-8 text file" in run(tools["read_file"]("latin1.txt"))
    patch = workspace.write_patch().path.read_bytes()
    assert b"caf\xe9" in patch


def test_the_macos_profile_confines_writes_and_network() -> None:
    root = Path("/Users/me/work/ws")
    profile = seatbelt_profile(root, [root / ".git", root / "events.jsonl"], network=False)
    assert '(allow file-write* (subpath "/Users/me/work/ws"))' in profile
    assert '(deny file-write* (subpath "/Users/me/work/ws/.git"))' in profile
    assert "(deny network*)" in profile
    assert profile.index("(deny file-write*)") < profile.index("(allow file-write*")
    assert "(deny network*)" not in seatbelt_profile(root, [], network=True)
    argv = Sandbox("seatbelt").argv("make test", root, {}, [])
    assert argv[:2] == ["sandbox-exec", "-p"] and argv[-1] == "make test" and "ulimit" in argv[-2]


def test_require_without_any_sandbox_stops_before_anything_is_made(
    ollama: FakeOllama, clean_env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("crew.workspace.sandbox.shutil.which", lambda name, path=None: None)
    monkeypatch.setattr("crew.workspace.sandbox.find_bwrap", lambda: None)
    monkeypatch.setenv("CREW_OLLAMA_HOST", ollama.url)
    monkeypatch.setenv("CREW_SANDBOX", "require")
    (clean_env / "spec.md").write_text("Write hello.py.\n")
    assert main(["run", "spec.md"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bubblewrap" in err and "CREW_SANDBOX" in err
    assert not (clean_env / "workspaces").exists() and ollama.chats == []


def test_a_run_records_its_sandbox_and_doctor_names_it(
    ollama: FakeOllama, clean_env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CREW_OLLAMA_HOST", ollama.url)
    monkeypatch.setenv("CREW_MEMORY_BUDGET_GB", "60")
    assert main(["doctor", "--json"]) == 0
    doctor = json.loads(capsys.readouterr().out)
    assert doctor["sandbox"].startswith("bubblewrap") and not any("sandbox" in w for w in doctor["warnings"])


def test_a_coder_that_attacks_through_run_command_reaches_nothing(
    ollama: FakeOllama, clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from crew.residency.budget import GB
    from tests.fake_ollama import FakeReply
    from tests.helpers import ARCHITECT, CODER, REVIEWER

    outside = clean_env / "outside.txt"
    attack = (f'(for f in /proc/[0-9]*/environ; do tr "\\0" "\\n" < "$f"; done) 2>/dev/null '
              f'| grep -c "{SECRET}"; '
              f"echo pwned > {outside}; git config core.fsmonitor 'touch {clean_env}/fsmonitor-ran'; "
              "echo forged > workspace.json; echo done")
    holder = subprocess.Popen(["sleep", "120"], env={**os.environ, "OPENAI_API_KEY": SECRET})
    try:
        ollama.reset(capacity=60 * GB)
        ollama.script(ARCHITECT, "Plan: check the machine.\nNEXT: Coder")
        ollama.script(CODER, FakeReply(content="", tool_calls=[{"name": "run_command", "arguments": {
            "command": attack}}]), "Checked.\nNEXT: Reviewer")
        ollama.script(REVIEWER, "APPROVED")
        (clean_env / "spec.md").write_text("Write hello.py.\n")
        monkeypatch.setenv("CREW_OLLAMA_HOST", ollama.url)
        monkeypatch.setenv("CREW_MEMORY_BUDGET_GB", "60")
        monkeypatch.setenv("CREW_SANDBOX", "require")
        assert main(["run", "spec.md"]) == 0
    finally:
        holder.kill()
        holder.wait(timeout=30)
    # What the model was shown: no secret found, every write outside refused, and it went on.
    shown = next(m["content"] for c in ollama.chats for m in c["messages"] if m["role"] == "tool")
    assert shown.splitlines()[1] == "0" and SECRET not in shown and "done" in shown
    assert not outside.exists() and not (clean_env / "fsmonitor-ran").exists()
    (workspace,) = (clean_env / "workspaces").iterdir()
    assert "fsmonitor" not in (workspace / ".git" / "config").read_text()
    assert json.loads((workspace / "workspace.json").read_text())["mode"] == "run"
    assert json.loads((workspace / "summary.json").read_text())["approved"] is True


def test_git_works_in_a_repo_worktree_under_a_hidden_home_and_its_git_folder_is_read_only(
    clean_env: Path, bwrap: Sandbox
) -> None:
    from dataclasses import replace

    home = clean_env / "home"
    project = home / "project"
    project.mkdir(parents=True)
    for args in (["init", "-q", "-b", "main"], ["commit", "-q", "--allow-empty", "-m", "the first commit"]):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=project, check=True)
    # What actions/checkout leaves in a clone's config: the job's token.
    subprocess.run(["git", "config", "http.https://github.com/.extraheader", "AUTHORIZATION: SECRET-TOKEN-1"],
                   cwd=project, check=True)
    ws = Workspace.create(project / "workspaces", repo=project)
    sandbox = replace(bwrap, hidden=(home,))  # the person's home: hidden, as crew hides it
    out = sh(ws, "git log --format=%s; echo x > $(git rev-parse --git-common-dir)/planted; "
                 "git config --get-regexp extraheader; cat $(git rev-parse --git-common-dir)/config", sandbox)
    assert "the first commit" in out
    assert not (project / ".git" / "planted").exists()
    assert "SECRET-TOKEN-1" not in out
