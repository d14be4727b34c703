"""Attacks on the file tools, crew's records and crew's own git calls (crew issue 27).

Each attack asserts on what exists or was read OUTSIDE the workspace afterwards. The whole file
runs as root and, through `test_the_attacks_hold_as_an_unprivileged_user`, again as uid 65534.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from crew.errors import WorkspaceError
from crew.workspace import beneath
from crew.workspace.repo import MAX_PATCH_FILE_BYTES, Workspace
from crew.workspace.tools import make_tools
from tests.helpers import run

SECRET = "crew-test-secret-4f1c9a"
CHILD = "CREW_FILE_RACE_CHILD"

ROUNDS = 2_500
"""read_file + write_file pairs per run of the race: 5,000 calls as root, 5,000 as uid 65534."""


def _swap_forever(pairs: list[tuple[str, str]], ready: int) -> None:
    """A process left running by an agent's command: swaps entries back and forth as fast as it
    can (renameat2 RENAME_EXCHANGE: at every instant one name is a folder, the other a link).
    Forked, not exec'd: it needs nothing but libc."""
    libc = ctypes.CDLL(None, use_errno=True)
    encoded = [(a.encode(), b.encode()) for a, b in pairs]
    os.write(ready, b"r")
    os.close(ready)
    while True:  # until the test kills it
        for a, b in encoded:
            libc.renameat2(-100, a, -100, b, 2)


def _start_swapper(root: Path, pairs: list[tuple[str, str]]) -> int:
    """The swapper's pid, once it runs (in `root`)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.close(read_end)
            os.chdir(root)
            _swap_forever(pairs, write_end)
        finally:
            os._exit(1)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as ready:
        assert ready.read(1) == b"r"
    return pid


def _tools(workspace: Workspace) -> dict[str, object]:
    return {t.__name__: t for t in make_tools(workspace, write=True)}


def _outside(base: Path) -> Path:
    outside = base / "outside"
    outside.mkdir()
    outside.chmod(0o777)  # writable by anyone: a write that escaped would land
    (outside / "environ").write_text(f"outside {SECRET}\n")
    (outside / "environ").chmod(0o644)
    return outside


@pytest.mark.hostile
def test_a_folder_swapped_for_a_link_never_leads_a_tool_outside(clean_env: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CREW_TEST_SECRET", SECRET)  # in crew's own /proc/self/environ
    outside = _outside(clean_env)
    workspace = Workspace.create(clean_env / "workspaces")
    root = workspace.root
    (root / "d").mkdir()
    (root / "d" / "environ").write_text("inside\n")
    (root / "p").symlink_to("/proc/self")
    (root / "e").mkdir()
    (root / "m").symlink_to(outside)
    swapper = _start_swapper(root, [("d", "p"), ("e", "m")])
    try:
        tools = _tools(workspace)

        async def attack() -> list[str]:
            results = []
            for i in range(ROUNDS):
                results.append(await tools["read_file"]("d/environ"))  # type: ignore[operator]
                results.append(await tools["write_file"](f"e/x{i}.txt", "pwned"))  # type: ignore[operator]
            return results

        results = asyncio.run(attack())
    finally:
        os.kill(swapper, signal.SIGKILL)
        os.waitpid(swapper, 0)  # SIGKILL cannot be ignored: this returns
    leaked = [r for r in results if SECRET in r]  # in the outside file and in crew's environ
    assert not leaked, f"{len(leaked)} of {len(results)} calls read outside: {leaked[0]!r}"
    assert sorted(p.name for p in outside.iterdir()) == ["environ"], "a write landed outside"
    refused = [r for r in results if r.startswith("error:")]
    assert all("\n" not in r for r in refused)
    assert {r for r in results if not r.startswith(("error:", "wrote "))} <= {"inside\n"}
    assert refused, "the swapper never won a race: the test proved nothing"
    assert len(refused) < len(results)


@pytest.mark.hostile
@pytest.mark.parametrize("path", ["a" * 300, "b/" + "c" * 300 + "/d.py", "x\0y.py", "\ud800.py",
                                  ".GIT/config", ".Git/hooks/pre-commit", "EVENTS.JSONL",
                                  "Chat_History", "sub/.git/config", ".",
                                  # what HFS+ ignores in a name: there these are .git and a record
                                  ".G\u200cIT/config", "events\u200d.jsonl"])
def test_a_name_the_system_refuses_is_one_line(clean_env: Path, path: str) -> None:
    workspace = Workspace.create(clean_env / "workspaces")
    tools = _tools(workspace)
    for answer in (run(tools["read_file"](path)), run(tools["write_file"](path, "x")),  # type: ignore[operator]
                   run(tools["edit_file"](path, "x", "y"))):  # type: ignore[operator]
        assert answer.startswith("error:") and "\n" not in answer, answer
    assert not (workspace.root / ".git" / "hooks" / "pre-commit").exists()
    assert (workspace.root / "events.jsonl").read_text() == ""


@pytest.mark.hostile
def test_a_link_planted_at_a_record_is_refused_not_followed(clean_env: Path) -> None:
    from crew.records import Records
    from crew.terminal.line_editor import ChatHistory

    outside = _outside(clean_env)
    target = outside / "environ"
    workspace = Workspace.create(clean_env / "workspaces")
    root = workspace.root
    for name in ("chat_history", "events.jsonl", "summary.json"):
        assert (root / name).is_file()  # made with the workspace: the sandbox binds them read-only
    # Without a sandbox an agent can replace them: crew must still not write through a link.
    for name in ("chat_history", "events.jsonl", "spec.md", "state.error.txt", "crew.patch"):
        (root / name).unlink()
        (root / name).symlink_to(target)
    history = ChatHistory(root / "chat_history", clean_env / "state" / "chat_history")
    with pytest.raises(WorkspaceError, match="symbolic link"):
        history.store_string("the person's next line")
    assert list(history.load_history_strings()) == []  # not read through it either, and no traceback
    fifo = clean_env / "fifo-history"
    os.mkfifo(fifo)  # planted where the history goes: opening it must not wait for a writer
    with pytest.raises(WorkspaceError, match="not a regular file"):
        ChatHistory(fifo, clean_env / "state" / "chat_history").store_string("a line")
    with pytest.raises(WorkspaceError, match="symbolic link"):
        Records(workspace, lambda event: None, {})
    with pytest.raises(WorkspaceError, match="symbolic link"):
        Workspace.open(root)
    workspace.write_record("spec.md", b"replaced, not followed")
    workspace.write_patch()
    assert target.read_text() == f"outside {SECRET}\n"
    assert (root / "spec.md").read_bytes() == b"replaced, not followed"


@pytest.mark.hostile
def test_a_deep_state_json_is_a_damaged_folder(clean_env: Path) -> None:
    from crew.session import saved_state

    workspace = Workspace.create(clean_env / "workspaces")
    (workspace.root / "state.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(WorkspaceError, match="damaged"):
        saved_state(workspace.root)
    (workspace.root / "state.json").write_text("[" * 500 + "]" * 500)
    with pytest.raises(WorkspaceError, match="damaged"):
        saved_state(workspace.root)


@pytest.mark.hostile
def test_large_files_and_binaries_are_left_out_of_the_patch(clean_env: Path) -> None:
    workspace = Workspace.create(clean_env / "workspaces")
    root = workspace.root
    (root / "app.py").write_text("x = 1\n")
    with open(root / "big.bin", "wb") as handle:  # sparse: 3 GB on paper, nothing on disk
        handle.truncate(3 << 30)
    (root / "big.txt").write_text("y\n" * (MAX_PATCH_FILE_BYTES // 2 + 1))
    (root / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0")
    patch = workspace.write_patch()
    text = patch.path.read_text()
    assert "+x = 1" in text
    assert "big.bin" not in text and "big.txt" not in text and "image.png" not in text
    assert sorted(n.split(":")[0] for n in patch.left_out) == ["big.bin", "big.txt", "image.png"]


_PLANTS = {
    "filter": "git config filter.evil.clean 'touch {m}-clean; cat' && git config filter.evil.smudge "
              "'touch {m}-smudge; cat' && git config filter.evil.process 'touch {m}-process'",
    "textconv": "git config diff.evil.textconv 'touch {m}-textconv; cat'",
    "external diff": "git config diff.evil.command 'touch {m}-diffcmd' && "
                     "git config diff.external 'touch {m}-ext'",
    "hooks": "for h in pre-commit post-commit post-index-change reference-transaction post-checkout; do "
             "printf '#!/bin/sh\\ntouch {m}-hook\\n' > .git/hooks/$h; chmod +x .git/hooks/$h; done",
    "hooksPath": "mkdir -p .h && printf '#!/bin/sh\\ntouch {m}-hookspath\\n' > .h/post-index-change && "
                 "chmod +x .h/post-index-change && git config core.hooksPath .h",
    "fsmonitor": "git config core.fsmonitor 'touch {m}-fsmonitor; false'",
    "pager and editor": "git config core.pager 'touch {m}-pager; cat' && "
                        "git config core.editor 'touch {m}-editor'",
    "attributes": "printf '* filter=evil diff=evil\\n' > .gitattributes && mkdir -p .git/info && "
                  "printf '* filter=evil diff=evil\\n' > .git/info/attributes",
}


@pytest.mark.hostile
def test_crews_git_runs_nothing_planted_in_the_workspace(clean_env: Path) -> None:
    outside = _outside(clean_env)
    marker = outside / "ran"
    workspace = Workspace.create(clean_env / "workspaces")
    root = workspace.root
    (root / "old.py").write_text("a = 1\n")
    plant = " && ".join(p.format(m=marker) for p in _PLANTS.values())
    subprocess.run(["sh", "-c", plant], cwd=root, check=True, env={"PATH": os.environ["PATH"]})
    (root / "app.py").write_text("x = 1\n")
    text = workspace.write_patch().path.read_text()
    workspace.files()
    assert "+x = 1" in text and "+a = 1" in text
    assert sorted(p.name for p in outside.iterdir()) == ["environ"], "crew's git ran planted code"


@pytest.mark.hostile
def test_chat_turns_diff_and_undo_run_nothing_planted(clean_env: Path) -> None:
    from crew.workspace import turns

    outside = _outside(clean_env)
    marker = outside / "ran"
    workspace = Workspace.create(clean_env / "workspaces")
    root = workspace.root
    (root / "app.py").write_text("x = 1\n")
    assert turns.commit_turn(workspace, "Coder").changed
    plant = " && ".join(p.format(m=marker) for p in _PLANTS.values())
    subprocess.run(["sh", "-c", plant], cwd=root, check=True, env={"PATH": os.environ["PATH"]})
    (root / "app.py").write_text("x = 2\n")
    (root / "new.py").write_text("n = 1\n")
    assert "+x = 2" in turns.diff(workspace)
    assert turns.commit_turn(workspace, "Reviewer").changed
    assert not turns.commit_turn(workspace, "Reviewer").changed  # nothing changed since
    assert turns.undo_turn(workspace) == "crew turn: Reviewer"
    assert (root / "app.py").read_text() == "x = 1\n" and not (root / "new.py").exists()
    assert not (root / ".gitattributes").exists()  # planted in the undone turn
    assert turns.undo_turn(workspace) == "crew turn: Coder"
    assert not (root / "app.py").exists()
    assert turns.undo_turn(workspace) is None  # the start is not a turn
    assert sorted(p.name for p in outside.iterdir()) == ["environ"], "crew's git ran planted code"
    # The plant is live: git's own porcelain, as crew chat used it, runs it.
    (root / "again.py").write_text("a = 1\n")
    subprocess.run(["git", "add", "-A"], cwd=root, capture_output=True, check=False)
    assert sorted(p.name for p in outside.iterdir()) != ["environ"]


@pytest.mark.hostile
@pytest.mark.skipif(os.environ.get(CHILD) == "1", reason="already the unprivileged run")
@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root and setpriv")
def test_the_attacks_hold_as_an_unprivileged_user() -> None:
    """This file's attacks again, as uid 65534 (crew's workspace and files belong to it)."""
    base = Path(tempfile.mkdtemp(prefix="crew-nobody-"))  # pytest's own folders are root's alone
    base.chmod(0o777)
    try:
        _run_as_nobody(base)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _run_as_nobody(base: Path) -> None:
    env = {"PATH": os.environ["PATH"], "HOME": str(base), CHILD: "1", "LANG": "C.UTF-8"}
    done = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m", "pytest",
         "-q", "-n0", "-p", "no:cacheprovider", f"--basetemp={base / 't'}", "-m", "hostile", __file__],
        cwd=Path(__file__).parent.parent, env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "passed" in done.stdout and "failed" not in done.stdout


def test_beneath_reports_which_way_it_opens() -> None:
    """On Linux 5.6+ the opens go through openat2 (one kernel walk); elsewhere the O_NOFOLLOW walk."""
    fd = os.open(".", os.O_RDONLY)
    try:
        beneath.replace(fd, "probe.txt", b"x")
        assert beneath.read(fd, "probe.txt", 10) == (b"x", 1)
    finally:
        os.close(fd)
    release = tuple(int(x) for x in os.uname().release.split(".")[:2] if x.isdigit())
    if sys.platform.startswith("linux") and release >= (5, 6):
        assert beneath.uses_openat2()
