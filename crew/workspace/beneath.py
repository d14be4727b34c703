"""Files under a directory descriptor, reached without following any link.

A path checked by name and then opened by name can be raced: between the two, a process swaps a
folder for a symlink (to `/proc/self`, to the user's home) and the open lands outside. Here every
open, create, rename and delete starts from a descriptor of the root folder and refuses links on
the way:

- Linux 5.6+: `openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS` (the
  kernel resolves the whole path in one step; called through ctypes, Python has no wrapper);
- macOS: `O_NOFOLLOW_ANY`, which refuses a link in any component;
- elsewhere (older kernels): a walk from the root descriptor, one component at a time, each
  opened with `O_NOFOLLOW` relative to the one before.

The last component of a create, rename or delete is handled by the `*at` call on the parent's
descriptor (`os.replace(src_dir_fd=, dst_dir_fd=)`, `os.unlink(dir_fd=)`), which never follows it.
Paths given here are relative, with no `..` (callers check names: see `Workspace.check`). A link
met anywhere is `WorkspaceEscape`; other refusals are the OSError the system gave.
"""

from __future__ import annotations

import ctypes
import errno
import os
import secrets
import stat
import sys
from typing import IO

from crew.errors import WorkspaceEscape
from crew.files import NEW_FILE_MODE

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_NOFOLLOW_ANY = getattr(os, "O_NOFOLLOW_ANY", 0)  # macOS 11+
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)

_SYS_OPENAT2 = 437  # the same number on every Linux architecture (new syscalls share one table)
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE_BENEATH = 0x08
_RESOLVE = _RESOLVE_BENEATH | _RESOLVE_NO_SYMLINKS | _RESOLVE_NO_MAGICLINKS
# openat2 answers EAGAIN when a rename raced its walk under RESOLVE_BENEATH: try again, a bound.
_EAGAIN_TRIES = 64


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def _load_openat2() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    if not sys.platform.startswith("linux"):
        return None
    try:
        syscall = ctypes.CDLL(None, use_errno=True).syscall
    except (OSError, AttributeError):
        return None
    syscall.restype = ctypes.c_long
    syscall.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t]
    return syscall


_syscall = _load_openat2()
_openat2_works: bool | None = None if _syscall is not None else False
"""None until the first call tells (ENOSYS on kernels before 5.6, or a seccomp filter)."""


def uses_openat2() -> bool:
    """Whether opens go through openat2 here (after the first open has told)."""
    return bool(_openat2_works)


class LinkRefused(WorkspaceEscape):
    """A symbolic link (or a path leaving the root) was met and not followed."""


def _refused(path: str) -> LinkRefused:
    return LinkRefused(f"{path}: a symbolic link is on the way, and crew's file tools do not follow "
                       "links; name the file by its real path inside the workspace")


def split(path: str) -> list[str]:
    """The components of a relative path (`.` and empty ones dropped); ValueError for `..` or an
    absolute path, which no function here accepts."""
    if path.startswith("/"):
        raise ValueError(f"{path}: absolute")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ValueError(f"{path}: '..'")
    return parts


def open_at(root: int, path: str, flags: int, mode: int = 0o666) -> int:
    """A descriptor of `path` under the folder `root`, no link followed on the way or at the end."""
    parts = split(path)
    if not parts:
        return os.open(".", flags | _CLOEXEC, dir_fd=root)
    flags |= _CLOEXEC | _NOFOLLOW
    global _openat2_works
    if _openat2_works is not False:
        fd = _openat2(root, "/".join(parts), flags, mode, path)
        if fd is not None:
            _openat2_works = True
            return fd
        _openat2_works = False
    try:
        if _NOFOLLOW_ANY:
            return os.open("/".join(parts), flags | _NOFOLLOW_ANY, mode, dir_fd=root)
        return _walk(root, parts, flags, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP or exc.errno == errno.ENOTDIR and _is_link(root, "/".join(parts)):
            raise _refused(path) from None
        raise


def _is_link(root: int, joined: str) -> bool:
    """Whether the last component of `joined` is a link (O_DIRECTORY on one answers ENOTDIR):
    only to word the refusal, never to decide what is opened."""
    parts = joined.split("/")
    try:
        folder = open_at(root, "/".join(parts[:-1]), os.O_RDONLY | _DIRECTORY) if parts[:-1] else os.dup(root)
    except (OSError, WorkspaceEscape):
        return False
    try:
        return stat.S_ISLNK(os.stat(parts[-1], dir_fd=folder, follow_symlinks=False).st_mode)
    except OSError:
        return False
    finally:
        os.close(folder)


def _openat2(root: int, joined: str, flags: int, mode: int, path: str) -> int | None:
    """openat2's descriptor; None if this system has no openat2."""
    assert _syscall is not None
    how = _OpenHow(flags, mode if flags & os.O_CREAT else 0, _RESOLVE)
    encoded = os.fsencode(joined)
    if b"\0" in encoded:
        raise ValueError("embedded null byte")
    for _ in range(_EAGAIN_TRIES):
        fd = int(_syscall(_SYS_OPENAT2, root, encoded, ctypes.byref(how), ctypes.sizeof(how)))
        if fd >= 0:
            return fd
        err = ctypes.get_errno()
        if err == errno.EINTR or err == errno.EAGAIN:
            continue
        if err in (errno.ENOSYS, errno.EPERM) and _openat2_works is None:
            return None  # no openat2 here (old kernel, or a seccomp filter): the walk instead
        if err in (errno.ELOOP, errno.EXDEV) or err == errno.ENOTDIR and _is_link(root, joined):
            raise _refused(path)
        raise OSError(err, os.strerror(err), path)
    raise OSError(errno.EAGAIN, "the folder kept changing while it was opened; try again", path)


def _walk(root: int, parts: list[str], flags: int, mode: int) -> int:
    """Open component by component from `root`, each with O_NOFOLLOW."""
    current = root
    try:
        for part in parts[:-1]:
            step = os.open(part, os.O_RDONLY | _DIRECTORY | _NOFOLLOW | _CLOEXEC, dir_fd=current)
            if current != root:
                os.close(current)
            current = step
        return os.open(parts[-1], flags, mode, dir_fd=current)
    finally:
        if current != root:
            os.close(current)


def _parent(root: int, path: str, *, create: bool = False) -> tuple[int, str]:
    """A descriptor of the folder holding `path` (to close), and the last component's name."""
    parts = split(path)
    if not parts:
        raise IsADirectoryError(errno.EISDIR, "the workspace's own folder is not a file", path)
    folder = "/".join(parts[:-1])
    fd = makedirs(root, folder) if create else open_at(root, folder, os.O_RDONLY | _DIRECTORY)
    return fd, parts[-1]


def makedirs(root: int, path: str) -> int:
    """A descriptor of the folder `path` under `root`, created as needed; a link on the way is
    refused (also one swapped in just after a mkdir: each step is opened with no link followed)."""
    current = os.dup(root)
    try:
        for part in split(path):
            try:
                os.mkdir(part, 0o777, dir_fd=current)
            except FileExistsError:
                pass
            step = open_at(current, part, os.O_RDONLY | _DIRECTORY)
            os.close(current)
            current = step
    except BaseException:
        os.close(current)
        raise
    return current


def read(root: int, path: str, limit: int) -> tuple[bytes, int]:
    """At most `limit` + 1 bytes of the regular file `path`, and its size. A FIFO or device is
    refused without blocking (opened non-blocking, then checked)."""
    fd = open_at(root, path, os.O_RDONLY | _NONBLOCK | getattr(os, "O_NOCTTY", 0))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = "a folder" if stat.S_ISDIR(info.st_mode) else "not a regular file"
            raise IsADirectoryError(errno.EISDIR, kind, path) if stat.S_ISDIR(info.st_mode) else \
                OSError(errno.EINVAL, kind, path)
        chunks: list[bytes] = []
        wanted = limit + 1
        while wanted > 0:
            chunk = os.read(fd, min(wanted, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            wanted -= len(chunk)
        return b"".join(chunks), info.st_size
    finally:
        os.close(fd)


def lstat(root: int, path: str) -> os.stat_result | None:
    """The entry at `path` itself (a link is not followed); None if there is none."""
    try:
        fd, name = _parent(root, path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        return os.stat(name, dir_fd=fd, follow_symlinks=False)
    except (FileNotFoundError, NotADirectoryError):
        return None
    finally:
        os.close(fd)


def readlink(root: int, path: str) -> bytes:
    """The target of the link at `path`, as bytes (not followed)."""
    fd, name = _parent(root, path)
    try:
        return os.readlink(os.fsencode(name), dir_fd=fd)
    finally:
        os.close(fd)


def replace(root: int, path: str, data: bytes, *, mode: int | None = None,
            make_parents: bool = False) -> None:
    """Write `data` to `path` atomically: a new file beside it (created exclusively, no link
    followed), then a rename over whatever is there (a link included, which is replaced, not
    followed). A regular file replaced keeps its permissions; a new one gets `mode` (default:
    0o666 less the umask)."""
    parent, name = _parent(root, path, create=make_parents)
    try:
        try:
            old = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            old = None
        if old is not None and stat.S_ISDIR(old.st_mode):
            raise IsADirectoryError(errno.EISDIR, "a folder is there", path)
        keep = stat.S_IMODE(old.st_mode) if old is not None and stat.S_ISREG(old.st_mode) else None
        temporary = f".crew-{secrets.token_hex(8)}.tmp"  # short: the name itself may be near the limit
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC,
                     0o600, dir_fd=parent)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                new = mode if mode is not None else NEW_FILE_MODE
                os.fchmod(out.fileno(), keep if keep is not None else new)
            os.replace(temporary, name, src_dir_fd=parent, dst_dir_fd=parent)
        except BaseException:
            try:
                os.unlink(temporary, dir_fd=parent)
            except OSError:
                pass
            raise
    finally:
        os.close(parent)


def append(root: int, path: str) -> IO[str]:
    """`path` opened to append text (created if missing), line-buffered; a link there is refused."""
    fd = open_at(root, path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "a", buffering=1, encoding="utf-8", errors="replace")


def unlink(root: int, path: str) -> None:
    """Delete the file (or link) at `path`, never what a link points to."""
    parent, name = _parent(root, path)
    try:
        os.unlink(name, dir_fd=parent)
    finally:
        os.close(parent)
