"""A cgroup for one agent command: its memory (the pages of its tmpfs files included) and its
processes bounded as a whole, where crew can make one.

Rlimits bound each process on its own: four processes under an 8 GiB data limit hold 32 GiB.
A cgroup bounds them together. crew makes one per command under its own cgroup (cgroup v1's
`memory` and `pids` hierarchies) or under `/sys/fs/cgroup/crew` (cgroup v2), moves the command's
first process into it before anything else runs (a shell that writes its pid, then execs the
sandbox), and removes it when the command is over; those a crew killed with -9 left behind are
removed by the next crew that starts one. That takes root (as CI runs) or a delegated cgroup;
elsewhere `open_cgroup` returns None and the rlimits stay the only bound.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("crew.sandbox")

ROOT = Path("/sys/fs/cgroup")
# How long removing a cgroup may wait for its last processes to be gone (they were killed).
REMOVE_GUARD_S = 2.0

# Writes the wrapper's own pid into each `cgroup.procs` given before `--`, then execs the rest:
# the command starts inside the cgroup, and so does everything it starts.
_ENTER = ('for f; do [ "$f" = -- ] && break; echo $$ > "$f" || exit 125; done; '
          'while [ "$1" != -- ]; do shift; done; shift; exec "$@"')


@dataclass(frozen=True)
class CommandCgroup:
    folders: tuple[Path, ...]
    """One per hierarchy: the v2 cgroup, or v1's memory and pids cgroups."""
    unified: bool = False
    """cgroup v2: `cgroup.kill` ends everything in it at once."""

    def wrap(self, argv: Sequence[str]) -> list[str]:
        procs = [str(folder / "cgroup.procs") for folder in self.folders]
        return ["sh", "-c", _ENTER, "crew-cgroup", *procs, "--", *argv]

    def remove(self) -> None:
        """Kill what is left in it and remove it (waits at most REMOVE_GUARD_S)."""
        if self.unified:
            for folder in self.folders:
                _write(folder / "cgroup.kill", "1", missing_ok=True)  # Linux 5.14+
        deadline = time.monotonic() + REMOVE_GUARD_S
        for folder in self.folders:
            while True:
                try:
                    folder.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:  # busy while its killed processes finish exiting
                    if time.monotonic() > deadline:
                        log.debug("could not remove %s: %s", folder, exc)
                        break
                    time.sleep(0.01)


def open_cgroup(memory_bytes: int, processes: int) -> CommandCgroup | None:
    """A new cgroup bounding a command's memory and processes together; None where crew cannot
    make one (not root and nothing delegated, or no such controllers)."""
    make = _maker()
    if make is None:
        return None
    try:
        return make(memory_bytes, processes, f"cmd-{os.getpid()}-{secrets.token_hex(4)}")
    except OSError as exc:
        log.debug("no cgroup for this command: %s", exc)
        return None


def available() -> bool:
    """Whether commands here get a cgroup (what `crew doctor` says)."""
    return _maker() is not None


_Maker = Callable[[int, int, str], "CommandCgroup"]


_FIRST = threading.Lock()


def _maker() -> _Maker | None:
    with _FIRST:  # commands started together ask at once: one probe, one answer
        return _probed()


@functools.cache
def _probed() -> _Maker | None:
    """The way this machine makes a command's cgroup, tried once per process, after removing
    the cgroups crews that are gone left behind (killed with -9, their commands died with them)."""
    for maker, parents in ((_v2, _v2_parents), (_v1, _v1_parents)):
        try:
            _sweep(parents())
            probe = maker(1 << 30, 64, f"probe-{os.getpid()}-{secrets.token_hex(4)}")
        except OSError:
            continue
        probe.remove()
        return maker
    return None


_LEFT = re.compile(r"(?:crew-)?(?:cmd|probe)-(\d+)(?:-[0-9a-f]+)?")


def _sweep(parents: list[Path]) -> None:
    """Remove the empty cgroups of crew processes that no longer exist."""
    for parent in parents:
        for folder in parent.glob("*"):
            found = _LEFT.fullmatch(folder.name)
            if found is None or _alive(int(found[1])):
                continue
            try:
                folder.rmdir()
            except OSError:
                pass  # still holds a process: not ours to end


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _v2_parents() -> list[Path]:
    return [ROOT / "crew"] if (ROOT / "crew").is_dir() else []


def _v1_parents() -> list[Path]:
    found = []
    for controller in ("memory", "pids"):
        try:
            found.append(_v1_own(controller))
        except OSError:
            pass
    return found


def _v2(memory_bytes: int, processes: int, name: str) -> CommandCgroup:
    if not (ROOT / "cgroup.controllers").is_file():
        raise OSError("no cgroup v2 here")
    base = ROOT / "crew"
    base.mkdir(exist_ok=True)
    # The root cgroup hands memory and pids down to crew's, which hands them to each command
    # (crew's own folder holds no process: cgroup v2's rule for a folder with children).
    _write(ROOT / "cgroup.subtree_control", "+memory +pids")
    _write(base / "cgroup.subtree_control", "+memory +pids")
    folder = base / name
    folder.mkdir()
    try:
        _write(folder / "memory.max", str(memory_bytes))
        _write(folder / "memory.swap.max", "0", missing_ok=True)
        _write(folder / "pids.max", str(processes))
    except OSError:
        folder.rmdir()
        raise
    return CommandCgroup((folder,), unified=True)


def _v1(memory_bytes: int, processes: int, name: str) -> CommandCgroup:
    made: list[Path] = []
    try:
        memory = _v1_child("memory", name)
        made.append(memory)
        _write(memory / "memory.limit_in_bytes", str(memory_bytes))
        _write(memory / "memory.memsw.limit_in_bytes", str(memory_bytes), missing_ok=True)  # no swap
        pids = _v1_child("pids", name)
        made.append(pids)
        _write(pids / "pids.max", str(processes))
    except OSError:
        CommandCgroup(tuple(made)).remove()
        raise
    return CommandCgroup(tuple(made))


def _v1_own(controller: str) -> Path:
    """This process's own cgroup in v1's hierarchy of `controller`."""
    mount = ROOT / controller
    if not (mount / "cgroup.procs").is_file():
        raise OSError(f"no cgroup v1 {controller} hierarchy")
    own = "/"
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            own = path
    return mount / own.lstrip("/")


def _v1_child(controller: str, name: str) -> Path:
    """A new cgroup under this process's own, in v1's hierarchy of `controller`."""
    folder = _v1_own(controller) / f"crew-{name}"
    folder.mkdir()
    return folder


def _write(path: Path, text: str, *, missing_ok: bool = False) -> None:
    try:
        path.write_text(text)
    except FileNotFoundError:
        if not missing_ok:
            raise
