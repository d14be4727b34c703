"""A run's workspace: a git repository holding the code, and crew's records beside it.

`workspaces/<id>/` is a fresh repository with an initial commit, or (with `--repo`) a git
worktree of the user's repository on a new branch `crew/<id>`. crew's own files
(transcript, events, summary, patch, team state) are kept out of git, so `crew.patch` holds
only the team's changes to the code.

Every path a tool names is checked here (`check`: no `..`, no absolute path, nothing the
system would refuse, not `.git` nor crew's records, compared casefolded for case-insensitive
filesystems) and then opened through the workspace's folder descriptor with no link followed
(`crew.workspace.beneath`), so a folder swapped for a link mid-call leads nowhere. crew's records
are created when the workspace is made or opened (before any agent command runs, so the sandbox
binds them read-only) and written the same way; a link found at one is an error.

`write_patch` builds `crew.patch` without running anything a command may have planted: each
file is read by crew (no link followed), stored in git's object store as read (`fast-import`, no filter),
staged in a temporary index, and diffed index-to-tree with no textconv, external diff, hook or
fsmonitor. Files over `MAX_PATCH_FILE_BYTES`, binaries, and what would pass
`MAX_PATCH_TOTAL_BYTES` are left out and named.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import re
import stat
import tempfile
import time
import unicodedata
import uuid
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from crew.errors import WorkspaceError, WorkspaceEscape
from crew.workspace import beneath
from crew.workspace.git_calls import git, git_bytes, hash_file, object_id, tree

RECORDS = ("crew.patch", "transcript.md", "events.jsonl", "summary.json", "state.json", "spec.md",
           "state.error.txt")
LOCK_FILE = ".crew.lock"
CHAT_HISTORY = "chat_history"
"""What the person wrote in `crew chat` here, for the line editor's history."""
# Every file crew keeps at the workspace root: out of git, out of the tools' reach, read-only
# in the sandbox.
CREW_FILES = (*RECORDS, "workspace.json", LOCK_FILE, CHAT_HISTORY)
_PROTECTED = frozenset(name.casefold() for name in CREW_FILES)  # as _as_stored sees them
MAX_PATCH_FILE_BYTES = 1 << 20
"""A file larger than this is left out of crew.patch (and named). 1 MiB: four times what
read_file shows an agent (256 kB), far above any source file a model writes, and small enough
that git's diff of it (several copies in memory) stays a few MiB."""
MAX_PATCH_TOTAL_BYTES = 64 << 20
"""What all the files put in crew.patch may add up to: many files just under the limit must
not take crew's memory either."""
_BINARY_PROBE = 8000  # git's own test: a NUL in the first 8000 bytes makes a file binary


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]


@dataclass(frozen=True)
class Patch:
    """What `write_patch` wrote, and the files it left out (each `name: why`)."""

    path: Path
    left_out: list[str] = field(default_factory=list)


def _close(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


class Workspace:
    """Where one run writes: code under git, crew's records beside it."""

    def __init__(self, root: Path, base: str, mode: str | None = None) -> None:
        self.root = root
        self.base = base
        self.mode = mode
        """`run` or `chat`: the command that made it (None for folders older than the field)."""
        self._lock: IO[bytes] | None = None
        self._fd: int | None = None

    @property
    def id(self) -> str:
        return self.root.name

    @property
    def fd(self) -> int:
        """A descriptor of the workspace's folder, opened once: every file crew opens in the
        workspace is reached from it, with no link followed."""
        if self._fd is None:
            try:
                self._fd = os.open(self.root, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | os.O_CLOEXEC)
            except OSError as exc:
                raise WorkspaceError(f"cannot open the workspace {self.root}: {exc.strerror}") from None
            weakref.finalize(self, _close, self._fd)
        return self._fd

    @classmethod
    def create(cls, workspaces_dir: Path, *, path: Path | None = None, repo: Path | None = None,
               mode: str = "run") -> Workspace:
        root = (path or workspaces_dir / new_run_id()).resolve()
        if root.exists() and not root.is_dir():
            raise WorkspaceError(f"{root} is a file, not a folder: choose another --workspace")
        if root.exists() and any(root.iterdir()):
            raise WorkspaceError(f"{root} already exists and is not empty: choose another --workspace")
        try:
            root.parent.mkdir(parents=True, exist_ok=True)
            if repo is None:
                root.mkdir(exist_ok=True)
        except OSError as exc:
            raise WorkspaceError(
                f"cannot create the workspace {root}: {exc.strerror}; choose a writable --workspace"
            ) from None
        if repo is None:
            git(root, "init", "-q", "-b", "main")
            git(root, "commit", "-q", "--allow-empty", "-m", "crew: initial commit")
        else:
            repo = repo.resolve()
            if not (repo / ".git").exists():
                raise WorkspaceError(f"{repo} is not a git repository: run `git init` there or drop --repo")
            git(repo, "worktree", "add", "-q", "-b", f"crew/{root.name}", str(root))
        workspace = cls(root, git(root, "rev-parse", "HEAD").strip())
        workspace._exclude_records()
        workspace.mode = mode
        workspace.write_json("workspace.json", {"base": workspace.base, "mode": mode})
        workspace.ensure_records()
        return workspace

    @classmethod
    def open(cls, root: Path) -> Workspace:
        meta = root / "workspace.json"
        if not root.is_dir():
            raise WorkspaceError(f"{root} is not a crew workspace (no such folder): name a workspaces/<id>")
        workspace = cls(root.resolve(), "")
        data = workspace.read_record("workspace.json", 64_000)
        if data is None:
            raise WorkspaceError(
                f"{root} is not a crew workspace (no workspace.json): name a workspaces/<id>"
            )
        try:
            meta_data = json.loads(data)
            base, mode = meta_data.get("base"), meta_data.get("mode")
        except (ValueError, AttributeError, RecursionError):
            base, mode = None, None
        # It is handed to git: only a commit id, never an option an agent could have planted.
        if not isinstance(base, str) or not re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", base):
            raise WorkspaceError(f"{meta} is damaged (its base is not a commit id): start a new run")
        workspace.base = base
        workspace.mode = mode if mode in ("run", "chat") else None
        workspace.ensure_records()
        return workspace

    def _exclude_records(self) -> None:
        exclude = Path(git(self.root, "rev-parse", "--git-path", "info/exclude").strip())
        if not exclude.is_absolute():
            exclude = self.root / exclude
        exclude.parent.mkdir(parents=True, exist_ok=True)
        with exclude.open("a") as handle:
            handle.write("\n".join(["", "# crew's records", *[f"/{name}" for name in CREW_FILES], ""]))

    # -- paths ----------------------------------------------------------------------------

    def check(self, path: str) -> str:
        """`path` as a clean relative path inside the workspace (components joined by `/`);
        WorkspaceEscape if it may not be used: empty, absolute, `..`, a name the system would
        refuse (NUL, not encodable), the `.git` folder or one of crew's records. Names are
        compared as a case-insensitive filesystem compares them (casefolded, normalized, with the
        characters HFS+ ignores taken out): there `.GIT` is `.git`. Links are not
        resolved here: the opens refuse them (see `crew.workspace.beneath`)."""
        if not isinstance(path, str) or not path.strip():
            raise WorkspaceEscape("a path is needed, relative to the workspace (e.g. src/app.py)")
        text = path.strip()
        shown = text.encode("utf-8", "backslashreplace").decode()[:200]
        if "\0" in text:
            raise WorkspaceEscape(f"{shown!r}: a path cannot hold a NUL character")
        try:
            os.fsencode(text)
        except UnicodeError:
            raise WorkspaceEscape(f"{shown}: the path holds characters no file name can have") from None
        if text.startswith("/") or Path(text).is_absolute():
            raise WorkspaceEscape(f"{shown}: absolute paths are not allowed; use a path inside the workspace")
        parts = [p for p in text.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise WorkspaceEscape(f"{shown}: '..' is not allowed; stay inside the workspace")
        if not parts:
            raise WorkspaceEscape(f"{shown}: that is the workspace itself; name a file in it")
        if any(_as_stored(p) == ".git" for p in parts):
            raise WorkspaceEscape(f"{shown}: the .git folder is off limits")
        if len(parts) == 1 and _as_stored(parts[0]) in _PROTECTED:
            raise WorkspaceEscape(f"{shown}: that name is reserved for crew's records")
        return "/".join(parts)

    def resolve(self, path: str) -> Path:
        """Where `path` is inside the workspace (checked by `check`; links not resolved, as the
        opens refuse them)."""
        return self.root / self.check(path)

    # -- records ---------------------------------------------------------------------------

    def ensure_records(self) -> None:
        """Create each of crew's records that is missing (empty), before any agent command can
        run: the sandbox binds what exists read-only, so none can later be planted as a link or
        a folder. A link or anything but a file found at one is a WorkspaceError."""
        for name in CREW_FILES:
            try:
                fd = beneath.open_at(self.fd, name, os.O_WRONLY | os.O_CREAT | getattr(os, "O_NONBLOCK", 0))
            except (OSError, WorkspaceEscape) as exc:
                raise self._record_error(name, exc) from None
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise self._record_error(name, OSError(errno.EINVAL, "not a regular file"))
            finally:
                os.close(fd)

    def _record_error(self, name: str, exc: BaseException) -> WorkspaceError:
        if isinstance(exc, WorkspaceEscape):
            what = "is a symbolic link, which crew never follows"
        else:
            what = f"cannot be used ({getattr(exc, 'strerror', None) or exc})"
        return WorkspaceError(f"{self.root / name} {what}: the workspace's records were tampered "
                              "with; remove that entry, or start a new run")

    def write_record(self, name: str, data: bytes) -> None:
        """Replace the record `name` atomically (a link there is replaced, never followed)."""
        try:
            beneath.replace(self.fd, name, data)
        except (OSError, WorkspaceEscape) as exc:
            raise self._record_error(name, exc) from None

    def write_json(self, name: str, data: Any) -> None:
        self.write_record(name, json.dumps(data, indent=2, default=str).encode())

    def read_record(self, name: str, limit: int) -> bytes | None:
        """The record `name` (None if missing or empty); WorkspaceError for a link, a record
        that is not a file, or one larger than `limit` bytes."""
        try:
            data, _ = beneath.read(self.fd, name, limit)
        except FileNotFoundError:
            return None
        except (OSError, WorkspaceEscape) as exc:
            raise self._record_error(name, exc) from None
        if len(data) > limit:
            raise WorkspaceError(f"{self.root / name} is larger than {limit} bytes: it is damaged; "
                                 "remove it, or start a new run")
        return data or None

    def append_record(self, name: str) -> IO[str]:
        """The record `name` opened to append text, line-buffered; a link there is an error."""
        try:
            return beneath.append(self.fd, name)
        except (OSError, WorkspaceEscape) as exc:
            raise self._record_error(name, exc) from None

    def write_patch(self) -> Patch:
        """All changes since the initial commit, as a git diff that applies to it (the bytes as
        git wrote them: a file in any encoding is carried as it is), in `crew.patch`.

        Nothing a command planted runs: the diff is of `files_index` (the files as crew read
        them) against the base, with no textconv or external diff. Binaries, files over
        MAX_PATCH_FILE_BYTES, and files past MAX_PATCH_TOTAL_BYTES are left out and named."""
        diff, left_out = self.diff_bytes()
        self.write_record("crew.patch", diff)
        return Patch(self.root / "crew.patch", left_out)

    def diff_bytes(self) -> tuple[bytes, list[str]]:
        """The diff of the work tree against the base, and what it left out (see write_patch)."""
        with self.files_index(self.base) as (env, left_out):
            diff = git_bytes(self.root, "diff", "--cached", "--binary", "--no-ext-diff", "--no-textconv",
                             "--no-color", "--no-relative", "--src-prefix=a/", "--dst-prefix=b/",
                             "--submodule=short", self.base, "--", env=env)
        return diff, left_out

    @contextmanager
    def files_index(self, against: str) -> Iterator[tuple[dict[str, str], list[str]]]:
        """A temporary git index holding the work tree's files as crew read them (no link
        followed, no filter run: `fast-import` of the bytes read), on top of commit `against`;
        yields the environment that points git at it, and the files left out. The real index
        is untouched."""
        staged, left_out = self._snapshot(against)
        with tempfile.TemporaryDirectory(prefix="crew-index-") as folder:
            env = {"GIT_INDEX_FILE": str(Path(folder) / "index")}
            git_bytes(self.root, "read-tree", against, env=env)
            if staged:
                git_bytes(self.root, "update-index", "-z", "--index-info", stdin=b"".join(staged), env=env)
            yield env, left_out

    def _snapshot(self, against: str) -> tuple[list[bytes], list[str]]:
        """`--index-info` lines for what changed since commit `against`, and what was left out."""
        algorithm = "sha1" if len(self.base) == 40 else "sha256"
        base, sizes = tree(self.root, against)
        listed = git_bytes(self.root, "ls-files", "-z", "--cached", "--others", "--exclude-standard")
        names = sorted({n for n in os.fsdecode(listed).split("\0") if n} | set(base))
        staged: list[bytes] = []
        blobs: list[bytes] = []
        left_out: list[str] = []
        total = 0
        for name in names:
            was = base.get(name)
            if was is not None and was[0] == "160000":
                continue  # a submodule: kept as it is
            if name.endswith("/"):
                left_out.append(f"{name}: a nested git repository")
                continue
            try:
                entry, why = self._entry(name, was, sizes.get(name, -1), algorithm,
                                         MAX_PATCH_TOTAL_BYTES - total)
            except (OSError, WorkspaceEscape) as exc:
                entry, why = None, f"unreadable ({getattr(exc, 'strerror', None) or exc})"
            if why:
                left_out.append(f"{name}: {why}")
                continue
            if entry is None:
                if was is not None:  # gone: removed from the staged tree
                    staged.append(f"0 {'0' * len(self.base)}\t{name}\0".encode("utf-8", "surrogateescape"))
                continue
            mode, oid, data = entry
            if was == (mode, oid):
                continue
            total += len(data)
            blobs.append(data)
            staged.append(f"{mode} {oid}\t{name}\0".encode("utf-8", "surrogateescape"))
        if blobs:  # one process stores them all, as the bytes crew read (no filter can apply)
            stream = b"".join(b"blob\ndata %d\n%s\n" % (len(b), b) for b in blobs)
            git_bytes(self.root, "fast-import", "--quiet", stdin=stream)
        return staged, left_out

    def _entry(self, name: str, was: tuple[str, str] | None, was_size: int, algorithm: str,
               room: int) -> tuple[tuple[str, str, bytes] | None, str]:
        """(mode, object id, bytes) of the file `name` now, or None if it is gone; or why it is
        left out of the patch."""
        info = beneath.lstat(self.fd, name)
        if info is None or stat.S_ISDIR(info.st_mode):
            return None, ""
        if stat.S_ISLNK(info.st_mode):
            data, mode = beneath.readlink(self.fd, name), "120000"
        elif stat.S_ISREG(info.st_mode):
            mode = "100755" if info.st_mode & stat.S_IXUSR else "100644"
            if info.st_size > MAX_PATCH_FILE_BYTES:
                # A large file the base holds, of the same size: unchanged if its id matches
                # (hashed in pieces); anything else that large is left out unread.
                if was is not None and was_size == info.st_size and \
                        was == (mode, hash_file(self.fd, name, algorithm)):
                    return (mode, was[1], b""), ""
                return None, f"{info.st_size} bytes, over the {MAX_PATCH_FILE_BYTES}-byte limit"
            data, _ = beneath.read(self.fd, name, MAX_PATCH_FILE_BYTES)
            if len(data) > MAX_PATCH_FILE_BYTES:
                return None, f"over the {MAX_PATCH_FILE_BYTES}-byte limit"
        else:
            return None, "not a regular file"
        oid = object_id(data, algorithm)
        if was == (mode, oid):
            return (mode, oid, data), ""
        if b"\0" in data[:_BINARY_PROBE]:
            return None, "binary"
        if len(data) > room:
            return None, f"the patch would pass {MAX_PATCH_TOTAL_BYTES} bytes"
        return (mode, oid, data), ""

    def lock(self) -> None:
        """Take this workspace for this process; WorkspaceError if another crew works in it."""
        import fcntl

        try:
            handle = os.fdopen(beneath.open_at(self.fd, LOCK_FILE, os.O_RDWR | os.O_CREAT), "r+b")
        except (OSError, WorkspaceEscape) as exc:
            raise self._record_error(LOCK_FILE, exc) from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read(100).decode(errors="replace").strip() or "another process"
            handle.close()
            raise WorkspaceError(f"{self.root} is in use by crew process {holder}: wait for it to end, "
                                 "or stop it") from None
        handle.truncate(0)
        handle.write(str(os.getpid()).encode())
        handle.flush()
        self._lock = handle

    def unlock(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    @functools.cached_property
    def git_dirs(self) -> tuple[Path, ...]:
        """The repository's git folders outside the work tree (a `--repo` worktree's), which the
        agents' commands may read, not write, so that git works for them in the sandbox."""
        try:
            listed = git(self.root, "rev-parse", "--absolute-git-dir", "--git-common-dir").split("\n")
        except WorkspaceError:
            return ()  # no repository git can read (a command broke it): nothing more to show
        found = {(self.root / line.strip()).resolve() for line in listed if line.strip()}
        inside = self.root.resolve()
        return tuple(sorted(p for p in found if not (p == inside or inside in p.parents)))

    def protected(self) -> list[Path]:
        """What the agents' commands must not change: the git data and crew's records."""
        return [self.root / ".git", *(self.root / name for name in CREW_FILES)]

    def files(self) -> list[str]:
        # -z: names as they are (not C-quoted), so what list_files shows read_file can open.
        # git lists a link as an entry and never enters it.
        listed = git(self.root, "ls-files", "-z", "--cached", "--others", "--exclude-standard")
        return sorted(name for name in listed.split("\0") if name)


# What a case-insensitive filesystem ignores when it compares names (HFS+ skips these, as git's
# own check of `.git` does since CVE-2014-9390): joiners, direction marks, BOM, and the like.
_IGNORED_BY_FILESYSTEMS = dict.fromkeys(map(ord, "\u200c\u200d\u200e\u200f\u202a\u202b\u202c"
                                        "\u202d\u202e\u206a\u206b\u206c\u206d\u206e\u206f\ufeff"))


def _as_stored(name: str) -> str:
    """A name as a case-insensitive, normalizing filesystem compares it: `.G\u200cIT` is `.git`."""
    return unicodedata.normalize("NFC", name.translate(_IGNORED_BY_FILESYSTEMS)).casefold()
