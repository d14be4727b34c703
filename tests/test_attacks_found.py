"""Breaks found by attacking crew's defences (branch `attack`): each test shows one hole and FAILS
on the code it was written against; it passes once the hole is closed.

Each docstring says what the attack does and what it reached outside the workspace. The sandbox
attacks reuse `tests.test_sandbox_hostile`'s fake machine (`site`) and its driver, so they run
as this process's user (root in CI) and as uid 65534, in bubblewrap and in the unshare fallback.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from crew.commands.chat import ChatSession
from crew.evaluation.grading import grade
from crew.workspace.repo import Workspace
from crew.workspace.sandbox import Sandbox, detect
from crew.workspace.tools import MAX_READ_CHARS, make_tools, run_in_workspace
from tests.fake_ollama import FakeOllama
from tests.test_grading_attacks import EXERCISE
from tests.test_sandbox_hostile import Site, attack, kind, site, user  # noqa: F401  (fixtures)

pytestmark = pytest.mark.hostile

NOBODY = 65534


# Four children each take 100 MiB of heap and say so on a pipe, then wait on another until the
# parent has counted them and filled /dev/shm: all of it is held at once.
HOLD_TOGETHER = """
import os
ready_r, ready_w = os.pipe()
go_r, go_w = os.pipe()
for _ in range(4):
    if os.fork() == 0:
        try:
            block = bytearray(100 << 20)
            os.write(ready_w, b"1")
        except MemoryError:
            os.write(ready_w, b"0")
        os.close(ready_w)
        os.read(go_r, 1)
        os._exit(0)
os.close(ready_w)  # a child killed for memory says nothing: read until every child spoke or died
said = b""
while len(said) < 4:
    got = os.read(ready_r, 1)
    if not got:
        break
    said += got
try:
    with open("/dev/shm/fill", "wb") as out:
        for _ in range(300):
            out.write(bytes(1 << 20))
except OSError:
    pass
shm = os.path.getsize("/dev/shm/fill") >> 20 if os.path.exists("/dev/shm/fill") else 0
print("held=%d shm=%d" % (said.count(b"1"), shm))
os.write(go_w, b"x" * 4)
for _ in range(4):
    os.wait()
"""


# -- 1. the sandbox ---------------------------------------------------------------------------


def test_root_in_the_sandbox_cannot_read_etc_shadow(site: Site, kind: str) -> None:  # noqa: F811
    """As root (CI), `cat /etc/shadow` in the sandbox prints the host's password file: /etc is
    bound read-only, and uid 0 inside is uid 0 outside, which owns the file (0640 root:shadow),
    so no capability is needed to read it. Same for /etc/gshadow. Broke in bwrap and unshare."""
    if os.geteuid() != 0:
        pytest.skip("only root owns /etc/shadow")
    host = Path("/etc/shadow").read_text().splitlines()[0]
    result = attack(site, kind, "self", "cat /etc/shadow /etc/gshadow; echo done")
    assert "done" in result
    assert host not in result


def test_a_command_s_memory_is_bounded_as_a_whole(site: Site, kind: str, user: str) -> None:  # noqa: F811
    """`Limits.data_bytes` is RLIMIT_DATA, per process: four processes each under the bound hold
    four times it together (with 4096 processes allowed, 4096 x 8 GiB by default), and under
    bubblewrap `/dev` is a tmpfs of half the machine's memory (12 GB here) that `tmp_bytes` does
    not bound, so `/dev/shm` takes the machine's memory past both. Here: bound 128 MiB, four
    processes hold 4 x 100 MiB of heap, and 300 MiB more sit in /dev/shm."""
    limits = {"data_bytes": 128 * 2**20, "tmp_bytes": 64 * 2**20, "file_bytes": 512 * 2**20}
    result = attack(site, kind, user, f"""python3 -c '{HOLD_TOGETHER}'; echo done""", limits=limits)
    assert "done" in result
    held = int(result.split("held=")[1].split()[0])
    shm = int(result.split("shm=")[1].split()[0])
    assert shm <= 64, result  # /dev/shm is bounded too
    if user == "nobody" or os.geteuid() != 0:
        # crew as a user makes no cgroup here (nothing delegated): each process is bounded on
        # its own (another test shows that bound), and `crew doctor` says so.
        return
    assert held * 100 + shm <= 128 + 64, result


# -- 3. crew's own git calls ------------------------------------------------------------------


def _plant_nested_repo(marker: Path) -> str:
    """A command that makes `sub/` a git repository of its own, in the workspace (writable in
    the sandbox), with a clean filter on every file and a file git must hash again to know if
    it changed (same size, other mtime)."""
    return f"""set -e
        mkdir sub && cd sub && git init -q . && git config user.email a@b && git config user.name a
        git config filter.evil.clean "touch {marker}; cat"
        echo '* filter=evil' > .gitattributes
        echo a > f.txt && git -c filter.evil.clean=cat add -A && git -c filter.evil.clean=cat commit -qm x
        echo b > f.txt && touch -d 2001-01-01 f.txt && echo planted"""


def _commit_turn(workspace: Workspace) -> None:
    """What `crew chat` does after each agent turn (ChatSession.commit_turn), on this workspace."""
    said: list[str] = []
    ChatSession.commit_turn(SimpleNamespace(workspace=workspace, say=said.append), "Coder")  # type: ignore[arg-type]
    ChatSession.commit_turn(SimpleNamespace(workspace=workspace, say=said.append), "Coder")  # type: ignore[arg-type]


def test_chat_s_git_calls_run_no_filter_planted_in_a_nested_repository(tmp_path: Path) -> None:
    """In the sandbox (bubblewrap or unshare, as found), a command makes `sub/` a nested git
    repository whose own `.git/config` (not crew's read-only `.git`) defines a clean filter.
    `crew chat` commits each agent turn with `git add -A` / `git status`: git looks inside the
    nested repository and runs that filter, in crew's own process, outside any sandbox; the
    marker it touches appears on the real filesystem. `write_patch` (crew run) leaves `sub/`
    out and holds; `/diff` runs the same `git add -A` and breaks the same way."""
    sandbox = detect("auto", False)
    if not sandbox.confines_files:
        pytest.skip("no sandbox here")
    outside = Path(tempfile.mkdtemp(prefix="crew-attack-outside-", dir="/tmp"))
    try:
        marker = outside / "filter-ran"
        workspace = Workspace.create(tmp_path / "workspaces")
        answer = asyncio.run(run_in_workspace(workspace, _plant_nested_repo(marker), 60, sandbox))
        assert "planted" in answer, answer
        assert not marker.exists()  # the sandbox hid it: only crew's own git can make it
        _commit_turn(workspace)
        assert not marker.exists(), "crew's git ran a filter an agent planted, outside the sandbox"
    finally:
        shutil.rmtree(outside, ignore_errors=True)


def test_chat_s_git_calls_run_no_filter_planted_without_a_sandbox(tmp_path: Path) -> None:
    """With CREW_SANDBOX=off a command writes `.git/config` (a clean filter) and a
    `.gitattributes` naming it: `crew chat`'s per-turn `git add -A` runs it. The issue asked that
    no filter an agent planted run in crew's own git calls without a sandbox either (README still
    says "not protected yet")."""
    outside = Path(tempfile.mkdtemp(prefix="crew-attack-outside-", dir="/tmp"))
    try:
        marker = outside / "filter-ran"
        workspace = Workspace.create(tmp_path / "workspaces")
        answer = asyncio.run(run_in_workspace(workspace, f"""
            git config filter.evil.clean "touch {marker}; cat" && echo '* filter=evil' > .gitattributes
            echo hi > new.txt && echo planted""", 60, Sandbox("none", network=True)))
        assert "planted" in answer, answer
        _commit_turn(workspace)
        assert not marker.exists(), "crew's git ran a filter an agent planted"
    finally:
        shutil.rmtree(outside, ignore_errors=True)


# -- 4. crew eval grading ---------------------------------------------------------------------

WRONG_BUT_PASSES = {
    # The graded code runs inside pytest's own process: it can switch the test runner off.
    "runtest-replaced": "import _pytest.python\n_pytest.python.Function.runtest = lambda self: None\n\n\n"
                        "def add(a, b):\n    return a - b\n",
    # Or rewrite each report before crew reads it.
    "report-rewritten": "import _pytest.reports as r\n_made = r.TestReport.from_item_and_call.__func__\n\n\n"
                        "def _passed(cls, item, call):\n    rep = _made(cls, item, call)\n"
                        "    rep.outcome, rep.longrepr = 'passed', None\n    return rep\n\n\n"
                        "r.TestReport.from_item_and_call = classmethod(_passed)\n\n\n"
                        "def add(a, b):\n    return a - b\n",
    # Or answer with something equal to everything (the hidden tests compare with ==).
    "always-equal": "class _Yes(int):\n    def __eq__(self, other):\n        return True\n"
                    "    __hash__ = int.__hash__\n\n\ndef add(a, b):\n    return _Yes(a - b)\n",
}


@pytest.mark.parametrize("name", sorted(WRONG_BUT_PASSES))
def test_a_wrong_add_that_patches_pytest_from_inside_does_not_pass(tmp_path: Path, name: str) -> None:
    """`add.py` alone (no conftest, no planted file: it IS the solution file, so it is copied)
    returns a - b, and at import replaces pytest's `Function.runtest`, or rewrites every
    `TestReport` to passed, or returns an int subclass equal to anything. Graded in the sandbox
    `crew eval` uses, each was "all 2 hidden tests passed" while the solution ran in pytest's
    process; in a process of its own its patches touch no pytest, and its int arrives as an int."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "add.py").write_text(WRONG_BUT_PASSES[name])
    verdict = asyncio.run(grade(work, EXERCISE, sandbox=detect("auto", False)))
    assert not verdict.passed, verdict.output


# -- 6. crew serve ----------------------------------------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.mark.slow
def test_a_client_cannot_write_escape_sequences_to_the_operator_s_terminal(
    ollama: FakeOllama, clean_env: Path
) -> None:
    """`crew serve` writes one access-log line per request to its stderr, the operator's
    terminal. The client's `X-Crew-Client` header and the request path (percent-decoded) go
    into it raw: OSC 52 (writes the operator's clipboard), a clear screen, a C1 CSI, a
    right-to-left override, and a newline that forges a whole log line."""
    port = _free_port()
    env = {**os.environ, "CREW_OLLAMA_HOST": ollama.url, "CREW_MEMORY_BUDGET_GB": "48",
           "CREW_SERVE_PORT": str(port), "HOME": str(clean_env)}
    server = subprocess.Popen([sys.executable, "-m", "crew", "serve"], cwd=clean_env, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:  # polls a condition (the server answering), bounded by the deadline
            try:
                httpx.get(f"{base}/health", timeout=2)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "crew serve did not start"
                time.sleep(0.05)
        clipboard_and_clear = "evil\x1b]52;c;SGVsbG8=\x07\x1b[2J"
        httpx.get(f"{base}/health", headers={"X-Crew-Client": clipboard_and_clear}, timeout=10)
        httpx.get(f"{base}/api/ps%1b%5b31mRED%0a2026-12-06%20FORGED%20LINE", timeout=10)
        httpx.get(f"{base}/health", headers={"X-Crew-Client": "a\u009b31m\u202e".encode()}, timeout=10)
    finally:
        server.terminate()
        _, err = server.communicate(timeout=30)
    shown = err.decode("utf-8", "replace")
    # The requests were logged (uvicorn refuses ESC and BEL in a header value itself, so the
    # clipboard one never reaches crew; C1 and bidi characters in UTF-8 do).
    assert "FORGED" in shown and "31m" in shown
    for control in ("\x1b", "\x07", "\u009b", "\u202e", "\nFORGED"):
        assert control not in shown, f"{control!r} reached the operator's terminal:\n{shown!r}"


# -- 2. the file tools ------------------------------------------------------------------------


def test_list_files_answers_with_a_bounded_text(tmp_path: Path) -> None:
    """Every other tool's answer is cut to a bound (run_command 12,000 characters, read_file
    60,000); `list_files` returns every name. A command that makes 20,000 files with 200-character
    names (a second's work) makes each list_files call a 4 MB answer: into the model's context,
    `events.jsonl` and `transcript.md`, every time an agent looks. A million names is 200 MB."""
    workspace = Workspace.create(tmp_path / "workspaces")
    for i in range(2_000):  # 2,000 x 200 characters: 400 kB, enough to show it (fast)
        (workspace.root / f"{'n' * 200}{i}").touch()
    tools = {t.__name__: t for t in make_tools(workspace, write=False)}
    size = len(asyncio.run(tools["list_files"]()))
    assert size <= MAX_READ_CHARS, f"list_files answered {size:,} characters"
