"""The cgroup a sandboxed command runs in: made, entered, removed; left-overs of dead crews swept."""

from __future__ import annotations

import subprocess

import pytest

from crew.workspace import cgroup

pytestmark = pytest.mark.skipif(not cgroup.available(), reason="no cgroup crew may make here (not root)")


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait(timeout=30)
    return child.pid  # reaped: no process has it now (pids wrap only after pid_max)


def test_a_command_enters_its_cgroup_and_nothing_is_left_after() -> None:
    group = cgroup.open_cgroup(256 << 20, 64)
    assert group is not None
    inside = subprocess.run(group.wrap(["cat", "/proc/self/cgroup"]), capture_output=True, text=True,
                            timeout=30, check=True).stdout
    assert all(folder.name in inside for folder in group.folders)
    for folder in group.folders:
        limit = folder / ("memory.max" if group.unified else "memory.limit_in_bytes")
        if limit.exists():
            assert int(limit.read_text()) == 256 << 20
    group.remove()
    assert not any(folder.exists() for folder in group.folders)


def test_what_a_killed_crew_left_is_swept_by_the_next() -> None:
    group = cgroup.open_cgroup(256 << 20, 64)
    assert group is not None
    dead = _dead_pid()
    left = [folder.with_name(f"crew-cmd-{dead}-0badf00d") if not group.unified
            else folder.with_name(f"cmd-{dead}-0badf00d") for folder in group.folders]
    group.remove()
    for folder in left:
        folder.mkdir()
    cgroup._probed.cache_clear()  # as a new crew process would
    assert cgroup.available()
    assert not any(folder.exists() for folder in left)
