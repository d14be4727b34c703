"""One crew process at a time decides and loads on an Ollama host, without a server.

Crews apart each read `/api/ps`, but a load in flight from another process is invisible there:
two crews that decide at once overfill Ollama, which then evicts on its own; and a crew may
evict a model another is about to use. So every crew process on a host takes an exclusive
`flock` on `<state_dir>/hosts/<host id>.lock` from the plan of a load (read `/api/ps` again,
choose victims) until that load is done; the lock is a descriptor, released when it is closed
or the process dies, so a crash never leaves it held. While holding it, the process writes
beside the lock (`<host id>.json`) that it is deciding, then what it unloads and loads, and
clears the note once the load is done (the lock stays held until the loaded model has been
used, so no other crew evicts it in between). Another process about to grant a model named
there, or any model while the note says "deciding", takes the lock instead: it waits for the
change to end and plans again on what Ollama then has. A victim that another crew's request
brought back all the same (a grant read just before the note) is unloaded again before the
load (`Loading._unload_again`).

Models already resident are granted without the lock: only decisions that change memory wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path

import psutil

from crew.files import write_json

log = logging.getLogger("crew.residency.host_lock")


class Ticket:
    """The lock, held: `release` (idempotent) clears the note and closes the descriptor."""

    def __init__(self, lock: HostLock, fd: int) -> None:
        self._lock = lock
        self._fd: int | None = fd

    def note(self, unloading: Iterable[str], loading: str) -> None:
        """Tell other crews what this process is about to change."""
        self._lock.write_note({"pid": os.getpid(), "unloading": sorted(unloading), "loading": loading})

    def deciding(self) -> None:
        """Tell other crews that any model may change: until the plan names them, none is safe
        to grant (a grant sent now could load a model this process is about to unload)."""
        self._lock.write_note({"pid": os.getpid(), "deciding": True})

    def settled(self) -> None:
        """The change is done (the load ended): other crews may grant again; the lock stays
        held until the model has been used."""
        if self._fd is not None:  # released already: the note may be another process's by now
            self._lock.write_note({})

    def release_when_done(self, _: object) -> None:
        """A done callback that gives the lock back (a prefetch's, once its load ends)."""
        self.release()

    def release(self) -> None:
        if self._fd is None:
            return
        self._lock.write_note({})
        os.close(self._fd)  # closing the only descriptor releases the flock
        self._fd = None


class HostLock:
    """The lock and the note of one Ollama host, shared by every crew process on it."""

    def __init__(self, state_dir: Path, host: str) -> None:
        folder = state_dir / "hosts"
        name = hashlib.sha256(host.encode()).hexdigest()[:16]
        self._folder = folder
        self._path = folder / f"{name}.lock"
        self._note = folder / f"{name}.json"

    async def acquire(self) -> Ticket:
        """Wait for the lock (in a thread: the event loop goes on); cancellation is safe."""
        self._folder.mkdir(parents=True, exist_ok=True)
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)
        fd = os.open(self._path, flags, 0o600)
        waiting = asyncio.get_running_loop().run_in_executor(None, fcntl.flock, fd, fcntl.LOCK_EX)
        try:
            await asyncio.shield(waiting)
        except BaseException:
            # Cancelled while the thread still waits: close once it has the lock (or failed).
            waiting.add_done_callback(lambda _: os.close(fd))
            raise
        ticket = Ticket(self, fd)
        ticket.deciding()
        return ticket

    def try_acquire(self) -> Ticket | None:
        """The lock if no other process holds it now, else None (never waits)."""
        self._folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0), 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return None
        ticket = Ticket(self, fd)
        ticket.deciding()
        return ticket

    def changing_elsewhere(self) -> frozenset[str] | None:
        """Models another live crew process is unloading or loading now; None when it is still
        deciding (any model may change)."""
        try:
            note = json.loads(self._note.read_text())
        except (OSError, ValueError):
            return frozenset()
        if not isinstance(note, dict) or note.get("pid") in (None, os.getpid()):
            return frozenset()
        pid = note.get("pid")
        if not isinstance(pid, int) or not psutil.pid_exists(pid):
            return frozenset()  # a crashed writer: its lock is gone with it
        if note.get("deciding"):
            return None
        models = [*note.get("unloading", []), note.get("loading")]
        return frozenset(m for m in models if isinstance(m, str))

    def blocks_grant(self, model: str) -> bool:
        """Whether granting `model` now could race another crew's change (then take the lock)."""
        changing = self.changing_elsewhere()
        return changing is None or model in changing

    def write_note(self, note: dict[str, object]) -> None:
        # A failure to write only loses the hint: the lock itself still serialises the loads.
        with contextlib.suppress(OSError):
            write_json(self._note, note)
