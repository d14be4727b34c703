"""`crew chat`'s history of agent turns in the workspace's git: each turn a commit, `/undo` back
one, `/diff` since the start; none of it runs what an agent planted.

An agent (with `CREW_SANDBOX=off`, or through anything it wrote) can put a clean or smudge filter
in `.gitattributes` and `.git/config`, and `git add`, `git status`, `git diff` and `git reset
--hard` would run it. So nothing here lets git read or write a work-tree file: a turn is
committed from `Workspace.files_index` (the files as crew read them) with plumbing
(`write-tree`, `commit-tree`, `update-ref`, which run no hook); `/undo` writes the files of the
commit before back through the workspace's descriptor (`cat-file blob` applies no filter), then
moves the branch.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field

from crew.errors import WorkspaceError
from crew.workspace import beneath
from crew.workspace.git_calls import git, git_bytes
from crew.workspace.repo import Workspace

TURN_PREFIX = "crew turn: "


def diff(workspace: Workspace) -> str:
    """The work tree against the start, as `/diff` shows it (left-out files named after it)."""
    data, left_out = workspace.diff_bytes()
    text = data.decode("utf-8", errors="replace")
    return text + "".join(f"(left out: {why})\n" for why in left_out)


@dataclass(frozen=True)
class Turn:
    changed: bool
    """A commit was made (the work tree differed from the last one)."""
    left_out: list[str] = field(default_factory=list)
    """Files not recorded (`name: why`: binaries, large files), which /undo cannot bring back."""


def commit_turn(workspace: Workspace, source: str) -> Turn:
    """Record the work tree as a commit `crew turn: <source>`."""
    head = git(workspace.root, "rev-parse", "HEAD").strip()
    with workspace.files_index(head) as (env, left_out):
        tree = git(workspace.root, "write-tree", env=env).strip()
    if tree == git(workspace.root, "rev-parse", "HEAD^{tree}").strip():
        return Turn(False, left_out)
    commit = git(workspace.root, "commit-tree", tree, "-p", head, "-m", TURN_PREFIX + source).strip()
    git(workspace.root, "update-ref", "HEAD", commit, head)
    git(workspace.root, "read-tree", "HEAD")  # the index follows; no work-tree file is touched
    return Turn(True, left_out)


def undo_turn(workspace: Workspace) -> str | None:
    """Put the work tree and the branch back to before the last agent turn; its subject, or None
    if the last commit is not an agent's turn."""
    head, _, subject = git(workspace.root, "log", "-1", "--format=%H %s").strip().partition(" ")
    if not subject.startswith(TURN_PREFIX):
        return None
    parent = git(workspace.root, "rev-parse", f"{head}~1").strip()
    changed = git_bytes(workspace.root, "diff-tree", "-r", "-z", "--no-renames", parent, head)
    fields = os.fsdecode(changed).split("\0")
    entries = [(name, *meta.lstrip(":").split()[0:3:2]) for meta, name in zip(fields[0::2], fields[1::2],
                                                                              strict=False) if meta]
    for name, mode, _oid in entries:  # all checked before any file is touched: no half undo
        if int(mode, 8) != 0 and not stat.S_ISREG(int(mode, 8)):
            raise WorkspaceError(f"cannot undo {name}: a {mode} entry (link or submodule) changed in "
                                 "that turn; restore it with git yourself")
    for name, mode, oid in entries:
        _restore(workspace, name, mode, oid)
    git(workspace.root, "update-ref", "HEAD", parent, head)
    git(workspace.root, "read-tree", "HEAD")
    return subject


def _restore(workspace: Workspace, name: str, mode: str, oid: str) -> None:
    """One file as commit `oid` holds it (gone if the mode is 0), written through the workspace's
    descriptor with no link followed."""
    if int(mode, 8) == 0:
        if beneath.lstat(workspace.fd, name) is not None:
            beneath.unlink(workspace.fd, name)
        return
    data = git_bytes(workspace.root, "cat-file", "blob", oid)
    beneath.replace(workspace.fd, name, data, mode=0o755 if mode == "100755" else 0o644, make_parents=True)
