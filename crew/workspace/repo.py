"""A run's workspace: a git repository holding the code, and crew's records beside it.

`workspaces/<id>/` is a fresh repository with an initial commit, or (with `--repo`) a git
worktree of the user's repository on a new branch `crew/<id>`. crew's own files
(transcript, events, summary, patch, team state) are kept out of git, so `crew.patch` holds
only the team's changes to the code. Every path a tool names is resolved here, and nothing
outside the workspace can be reached: no `..`, no absolute paths, no symlink escapes.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import uuid
from pathlib import Path
from typing import IO, Any

from crew.errors import WorkspaceError, WorkspaceEscape
from crew.files import write_atomic, write_json

RECORDS = ("crew.patch", "transcript.md", "events.jsonl", "summary.json", "state.json", "spec.md")
LOCK_FILE = ".crew.lock"
CHAT_HISTORY = "chat_history"
"""What the person wrote in `crew chat` here, for the line editor's history."""
# Every file crew keeps at the workspace root: out of git, out of the tools' reach, read-only
# in the sandbox.
CREW_FILES = (*RECORDS, "workspace.json", LOCK_FILE, CHAT_HISTORY)
_GIT_IDENTITY = ["-c", "user.name=crew", "-c", "user.email=crew@localhost", "-c", "commit.gpgsign=false"]
# An agent's command can write the workspace's git config: crew's own git calls must not run
# what it planted there: hooks, an fsmonitor command (and, for diffs, `--no-ext-diff
# --no-textconv` keep out external diff and textconv programs).
_GIT_SAFETY = ["-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false"]
# The variables git reads that could redirect it (GIT_DIR, GIT_CONFIG_*, GIT_EXTERNAL_DIFF, ...).
_GIT_ENV_DROPPED = ("GIT_",)


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]


def git(cwd: Path, *args: str) -> str:
    """Run git; its output as text (undecodable bytes replaced); a failure becomes a
    WorkspaceError with git's own words."""
    return git_bytes(cwd, *args).decode("utf-8", errors="replace")


def git_bytes(cwd: Path, *args: str) -> bytes:
    """`git`, with its output as the bytes git wrote."""
    try:
        done = subprocess.run(
            ["git", *_GIT_IDENTITY, *_GIT_SAFETY, *args], cwd=cwd, capture_output=True,
            check=False, env=_git_env(), timeout=120,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise WorkspaceError(f"could not run git in {cwd}: {exc}; is git installed?") from None
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).decode("utf-8", errors="replace").strip().splitlines()
        raise WorkspaceError(f"git {args[0]} failed in {cwd}: {detail[-1] if detail else 'no output'}")
    return done.stdout


def _git_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_GIT_ENV_DROPPED)}
    env["GIT_TERMINAL_PROMPT"] = "0"  # never wait for a password on a terminal
    return env


class Workspace:
    """Where one run writes: code under git, crew's records beside it."""

    def __init__(self, root: Path, base: str, mode: str | None = None) -> None:
        self.root = root
        self.base = base
        self.mode = mode
        """`run` or `chat`: the command that made it (None for folders older than the field)."""
        self._lock: IO[bytes] | None = None

    @property
    def id(self) -> str:
        return self.root.name

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
        return workspace

    @classmethod
    def open(cls, root: Path) -> Workspace:
        meta = root / "workspace.json"
        if not meta.is_file():
            raise WorkspaceError(
                f"{root} is not a crew workspace (no workspace.json): name a workspaces/<id>"
            )
        try:
            meta_data = json.loads(meta.read_text())
            base, mode = meta_data.get("base"), meta_data.get("mode")
        except (OSError, ValueError, AttributeError):
            base, mode = None, None
        # It is handed to git: only a commit id, never an option an agent could have planted.
        if not isinstance(base, str) or not re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", base):
            raise WorkspaceError(f"{meta} is damaged (its base is not a commit id): start a new run")
        return cls(root.resolve(), base, mode if mode in ("run", "chat") else None)

    def _exclude_records(self) -> None:
        exclude = Path(git(self.root, "rev-parse", "--git-path", "info/exclude").strip())
        if not exclude.is_absolute():
            exclude = self.root / exclude
        exclude.parent.mkdir(parents=True, exist_ok=True)
        with exclude.open("a") as handle:
            handle.write("\n".join(["", "# crew's records", *[f"/{name}" for name in CREW_FILES], ""]))

    # -- paths ----------------------------------------------------------------------------

    def resolve(self, path: str) -> Path:
        """The real path of `path` inside the workspace; WorkspaceEscape if it leaves it."""
        if not path or not path.strip():
            raise WorkspaceEscape("a path is needed, relative to the workspace (e.g. src/app.py)")
        candidate = Path(path.strip())
        if candidate.is_absolute():
            raise WorkspaceEscape(f"{path}: absolute paths are not allowed; use a path inside the workspace")
        if ".." in candidate.parts:
            raise WorkspaceEscape(f"{path}: '..' is not allowed; stay inside the workspace")
        if candidate.parts and candidate.parts[0] == ".git":
            raise WorkspaceEscape(f"{path}: the .git folder is off limits")
        full = (self.root / candidate).resolve()
        if full != self.root and self.root not in full.parents:
            raise WorkspaceEscape(f"{path}: it leads outside the workspace (symlink)")
        git_dir = self.root / ".git"
        if full == git_dir or git_dir in full.parents:  # checked again once links are resolved
            raise WorkspaceEscape(f"{path}: it leads into the .git folder, which is off limits")
        if full.name in CREW_FILES and full.parent == self.root:
            raise WorkspaceEscape(f"{path}: that name is reserved for crew's records")
        return full

    # -- records ---------------------------------------------------------------------------

    def write_json(self, name: str, data: Any) -> None:
        write_json(self.root / name, data)

    def write_patch(self) -> Path:
        """All changes since the initial commit, as a git diff that applies to it (the bytes as
        git wrote them: a file in any encoding is carried as it is)."""
        git(self.root, "add", "-A")
        diff = git_bytes(self.root, "diff", "--cached", "--binary", "--no-ext-diff", "--no-textconv",
                         self.base)
        target = self.root / "crew.patch"
        write_atomic(target, diff)
        return target

    def lock(self) -> None:
        """Take this workspace for this process; WorkspaceError if another crew works in it."""
        import fcntl

        handle = (self.root / LOCK_FILE).open("a+b")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().decode(errors="replace").strip() or "another process"
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

    def protected(self) -> list[Path]:
        """What the agents' commands must not change: the git data and crew's records."""
        return [self.root / ".git", *(self.root / name for name in CREW_FILES)]

    def files(self) -> list[str]:
        # -z: names as they are (not C-quoted), so what list_files shows read_file can open.
        listed = git(self.root, "ls-files", "-z", "--cached", "--others", "--exclude-standard")
        return sorted(name for name in listed.split("\0") if name)
