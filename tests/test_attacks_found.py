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
from pathlib import Path
from types import SimpleNamespace

import pytest

from crew.commands.chat import ChatSession
from crew.evaluation.grading import grade
from crew.workspace.repo import Workspace
from crew.workspace.sandbox import Sandbox, detect
from crew.workspace.tools import run_in_workspace
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
        os.read(go_r, 1)
        os._exit(0)
said = b"".join(os.read(ready_r, 1) for _ in range(4))
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
    assert held * 100 + shm <= 128 + 64, result
