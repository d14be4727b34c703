"""crew's own git calls on a workspace, safe from what an agent's command planted there
(hooks, fsmonitor, attributes, pagers, environment), and git's object ids computed by crew."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

from crew.errors import WorkspaceError
from crew.workspace import beneath

_GIT_IDENTITY = ["-c", "user.name=crew", "-c", "user.email=crew@localhost", "-c", "commit.gpgsign=false"]
# An agent's command can write the workspace's git config and attributes: crew's own git calls
# must not run what it planted there. `-c` outranks every config file: no hooks, no fsmonitor
# command, no global attributes file; never a pager. Filters (clean/smudge/process) cannot be
# turned off by name, so crew's own calls never convert a work-tree file: `write_patch` reads
# the files itself and stores the bytes it read with `fast-import`; diffs add `--no-ext-diff
# --no-textconv`.
_GIT_SAFETY = ["--no-pager", "-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false",
               "-c", "core.attributesFile=/dev/null"]
# The variables git reads that could redirect it (GIT_DIR, GIT_CONFIG_*, GIT_EXTERNAL_DIFF, ...).
_GIT_ENV_DROPPED = ("GIT_",)


def git(cwd: Path, *args: str, env: dict[str, str] | None = None) -> str:
    """Run git; its output as text (undecodable bytes replaced); a failure becomes a
    WorkspaceError with git's own words."""
    return git_bytes(cwd, *args, env=env).decode("utf-8", errors="replace")


def git_bytes(cwd: Path, *args: str, stdin: bytes | None = None, env: dict[str, str] | None = None) -> bytes:
    """`git`, with its output as the bytes git wrote; `env` is added to git's environment."""
    try:
        done = subprocess.run(
            ["git", *_GIT_SAFETY, *_GIT_IDENTITY, *args], cwd=cwd, capture_output=True, input=stdin,
            check=False, env={**_git_env(), **(env or {})}, timeout=120,
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
    env["GIT_ATTR_NOSYSTEM"] = "1"  # attributes only from the tree (and those never run a filter here)
    env["GIT_PAGER"] = env["PAGER"] = "cat"
    return env


def tree(root: Path, commit: str) -> tuple[dict[str, tuple[str, str]], dict[str, int]]:
    """path -> (mode, object id) of every file in `commit`, and path -> size of each blob."""
    listed = os.fsdecode(git_bytes(root, "ls-tree", "-r", "-z", "-l", "--full-tree", commit))
    entries: dict[str, tuple[str, str]] = {}
    sizes: dict[str, int] = {}
    for line in listed.split("\0"):
        if line:
            meta, name = line.split("\t", 1)
            mode, _kind, oid, size = meta.split()
            entries[name] = (mode, oid)
            sizes[name] = int(size) if size.isdigit() else -1
    return entries, sizes


def object_id(data: bytes, algorithm: str) -> str:
    """git's id of a blob holding `data`."""
    return hashlib.new(algorithm, b"blob %d\0" % len(data) + data).hexdigest()


def hash_file(root: int, name: str, algorithm: str) -> str:
    """git's blob id of a large file, read in pieces (memory stays bounded)."""
    fd = beneath.open_at(root, name, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        size = os.fstat(fd).st_size
        digest = hashlib.new(algorithm, b"blob %d\0" % size)
        while chunk := os.read(fd, 1 << 20):
            digest.update(chunk)
        return digest.hexdigest()
    finally:
        os.close(fd)
