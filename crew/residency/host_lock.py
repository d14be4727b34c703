"""Crew processes on one Ollama host, without a server, take turns to change its memory.

Crews apart each read `/api/ps`, but a load in flight from another process is invisible there,
and a read is stale as soon as it is made. Two locks, both `flock`s on files in
`<state_dir>/hosts/` (descriptors: released when closed or when the process dies, so a crash
never leaves one held):

- **The host lock** (`<host id>.lock`, exclusive): held from the plan of a load (read `/api/ps`
  again, choose victims) until that load is done and the request it was for holds the model's
  claim (so no other crew evicts it before its first use; other crews then plan their own loads
  while it is used). Lease renewals, prefetches and the hand-back on close take it too: each is
  a request that could load a model again.
- **A model's claim** (`<host id>.<model id>.model`): shared while a crew process uses the model
  (taken before `/api/ps` is read for the grant, kept until the hold ends), exclusive while one
  unloads it (as a victim, or to reload it with other options) until its load is done. So a model
  another crew is using, or has just been granted, is never unloaded under it, and a grant never
  rests on a read made before another crew's unload (its request would load the victim again,
  and Ollama would evict on its own to make room).

Models already resident are granted under their claim alone: only decisions that change memory
take the host lock. An exclusive claim is only ever taken under the host lock, and a shared one
never waits for the host lock while the same hold waits for it, so the two never deadlock.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import threading
from pathlib import Path


class Ticket:
    """A lock or a claim, held: `release` (idempotent) closes the descriptor, ending the flock."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    def release_when_done(self, _: object) -> None:
        """A done callback that gives it back (a prefetch's, once its load ends)."""
        self.release()

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor releases the flock
            self._fd = None


# A model's claim is the same kind of thing as the host lock's ticket.
Claim = Ticket


async def _flock(path: Path, operation: int) -> int:
    """A descriptor of `path` holding `operation`, waited for on a daemon thread of its own (the
    event loop goes on). Not the default executor: waits for another crew can be many and long,
    and would take every thread of the pool (then this process's own lock holder could not take
    a claim), and a wait given up on must not keep the process from exiting. Cancellation is
    safe: the descriptor is closed once the thread has the lock."""
    flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags, 0o600)
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def wait() -> None:
        error: OSError | None = None
        try:
            fcntl.flock(fd, operation)
        except OSError as exc:
            error = exc
        try:
            loop.call_soon_threadsafe(_settle, done, fd, error)
        except RuntimeError:  # the loop is closed: nobody wants the lock any more
            _close(fd)

    threading.Thread(target=wait, name="crew-flock", daemon=True).start()
    await done
    return fd


def _settle(done: asyncio.Future[None], fd: int, error: OSError | None) -> None:
    if done.cancelled() or error is not None:
        _close(fd)  # given up on (or failed): the lock goes back at once
    if error is not None and not done.cancelled():
        done.set_exception(error)
    elif not done.cancelled():
        done.set_result(None)


class HostLock:
    """The host lock and the model claims of one Ollama host, shared by every crew process on it."""

    def __init__(self, state_dir: Path, host: str) -> None:
        self._folder = state_dir / "hosts"
        self._name = hashlib.sha256(host.encode()).hexdigest()[:16]
        self._path = self._folder / f"{self._name}.lock"

    async def acquire(self) -> Ticket:
        """Wait for the host lock (in a thread: the event loop goes on); cancellation is safe."""
        self._folder.mkdir(parents=True, exist_ok=True)
        return Ticket(await _flock(self._path, fcntl.LOCK_EX))

    def try_acquire(self) -> Ticket | None:
        """The host lock if no other process holds it now, else None (never waits)."""
        self._folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0), 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return None
        return Ticket(fd)

    async def claim(self, model: str, *, exclusive: bool) -> Claim:
        """Wait for `model`'s claim: shared to use it, exclusive to unload it."""
        self._folder.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256(model.encode()).hexdigest()[:16]
        path = self._folder / f"{self._name}.{digest}.model"
        return Claim(await _flock(path, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH))


def _close(fd: int) -> None:
    # Already closed only if someone closed a descriptor that was not theirs (a test cleaning up
    # what it thinks leaked): the lock is gone either way.
    with contextlib.suppress(OSError):
        os.close(fd)
