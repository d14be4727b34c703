"""What an agent's command sees: the system folders, the toolchain, the workspace and the listed
paths, shown; the homes, crew's state and what the settings hide, not there. `layout` turns
that into the mounts the sandbox makes, in order."""

from __future__ import annotations

import functools
import os
import stat
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

# What every command reads: the system, never the people on it.
SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/opt")


# Homes and crew's own folders: not there unless a visible path lies inside them.
HIDDEN_ALWAYS = ("/home", "/root", "/Users", "/var/root")


@dataclass(frozen=True)
class Mount:
    """One step of the sandbox's view: a path shown read-only (`ro`) or writable (`rw`), hidden
    (`hide`: an empty read-only tmpfs, or /dev/null for a file) or a symlink (`link`)."""

    op: Literal["ro", "rw", "hide", "link"]
    path: str
    target: str = ""
    is_dir: bool = True


def resolved(paths: Iterable[Path | str]) -> list[Path]:
    """Absolute, symlink-free paths (a bind follows links; the view must say where it lands)."""
    return [Path(os.path.realpath(os.path.abspath(os.path.expanduser(str(p))))) for p in paths if str(p)]


def _toolchain(env: Mapping[str, str]) -> list[Path]:
    """What `python -m pytest` in the workspace needs: the Python crew runs on and its venv."""
    paths: list[str] = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix]
    paths += [env[key] for key in ("VIRTUAL_ENV",) if env.get(key)]
    # Only absolute entries: a relative one (`.`) would show whatever folder crew runs in.
    paths += [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if os.path.isabs(p)]
    # Package folders a `.pth` file adds (a venv layered over another's site-packages): only
    # site-packages, never the current folder or a project that happens to be on the path.
    paths += [p for p in sys.path if p and Path(p).name in ("site-packages", "dist-packages")]
    return [p for p in resolved(paths) if p.exists()]


def _under(path: Path, parent: Path) -> bool:
    return path == parent or parent in path.parents


@functools.cache
def _private_system_files() -> tuple[str, ...]:
    """What a user could not read under `/etc` (`/etc/shadow`, ssh host keys,
    `/etc/ssl/private`, sudoers): hidden from a command crew runs as root, which keeps uid 0
    (without capabilities) and so still owns them. Read once per process; as another user the
    kernel refuses them anyway."""
    if os.geteuid() != 0:
        return ()
    private: list[str] = []
    for top in ("/etc",):
        for folder, dirs, files in os.walk(top):
            for name in [*dirs, *files]:
                path = os.path.join(folder, name)
                try:
                    mode = os.lstat(path).st_mode
                except OSError:
                    continue
                if not stat.S_ISLNK(mode) and not mode & stat.S_IROTH:
                    private.append(path)
            dirs[:] = [d for d in dirs if os.path.join(folder, d) not in private]
    return tuple(private)


def layout(workspace: Path, read_only: Sequence[Path], readable: Sequence[Path],
           hidden: Sequence[Path], env: Mapping[str, str]) -> list[Mount]:
    """The sandbox's view, in the order the mounts are made: shallow paths first, so a deeper
    path wins (the workspace under a hidden /root is there; a hidden suite under a readable
    folder is not); at equal depth the visible one wins. The workspace's own read-only paths
    come last, and are skipped when they are symlinks (a bind would follow one out)."""
    steps: list[tuple[int, int, Mount]] = []
    for name in SYSTEM_PATHS:
        path = Path(name)
        if path.is_symlink():  # /bin -> usr/bin on merged-/usr systems: the same link inside
            steps.append((1, 0, Mount("link", name, os.readlink(path))))
        elif path.is_dir():
            steps.append((1, 1, Mount("ro", name)))
    shown = [*_toolchain(env), *(p for p in resolved(readable) if p.exists())]
    steps += [(len(p.parts), 1, Mount("ro", str(p), is_dir=p.is_dir())) for p in shown]
    ws = resolved([workspace])[0]
    steps.append((len(ws.parts), 1, Mount("rw", str(ws))))
    visible = [Path(m.path) for _, _, m in steps if m.op != "link"]
    for path in resolved([*HIDDEN_ALWAYS, *_private_system_files(), *hidden]):
        # Hiding matters only inside something shown; elsewhere it is not there at all.
        if path.exists() and any(_under(path, v) and path != v for v in visible):
            steps.append((len(path.parts), 0, Mount("hide", str(path), is_dir=path.is_dir())))
    steps.sort(key=lambda step: (step[0], step[1]))
    mounts = list(dict.fromkeys(m for _, _, m in steps))
    for path in read_only:
        # Not resolved: a link here was planted by a command; lstat, never follow.
        if os.path.lexists(path) and not path.is_symlink():
            mounts.append(Mount("ro", str(ws / path.relative_to(workspace)), is_dir=path.is_dir()))
    return mounts
