"""What an agent's command can reach: the sandbox `run_command` runs in.

On Linux, bubblewrap when it is installed: the whole filesystem read-only but the workspace, the
workspace's `.git` and crew's records read-only inside it, a private `/tmp`, its own PID
namespace (crew and every other process invisible, so no `/proc/<pid>/environ` to read), no
network unless allowed, and a scrubbed environment; when crew kills it, everything it started
dies with it. Without bubblewrap, the same with unprivileged namespaces (`unshare` and a small
mount script; a mount whose name has a space stays writable). On macOS, `sandbox-exec` with a generated
profile to the same effect. Where none can be had, commands run as the user, and crew says so
once; `CREW_SANDBOX=require` makes that an error.
"""

from __future__ import annotations

import functools
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from crew.errors import SettingsError

Kind = Literal["bwrap", "unshare", "seatbelt", "none"]

INSTALL_HINT = "install bubblewrap (`sudo apt install bubblewrap`, `sudo dnf install bubblewrap`)"


@dataclass(frozen=True)
class Sandbox:
    kind: Kind
    network: bool = False
    """Commands may use the network (CREW_TOOL_NETWORK=on)."""

    @property
    def confines_files(self) -> bool:
        return self.kind != "none"

    def describe(self) -> str:
        net = "with network" if self.network else "no network"
        return {
            "bwrap": f"bubblewrap: only the workspace is writable, .git and crew's records read-only, "
                     f"own PID namespace, {net}",
            "unshare": f"Linux namespaces (unshare): only the workspace is writable, .git and crew's "
                       f"records read-only, own PID namespace, {net}",
            "seatbelt": f"sandbox-exec: only the workspace is writable, .git and crew's records "
                        f"read-only, {net}",
            "none": f"none: agent commands run as you, with your files and network in reach ({INSTALL_HINT})",
        }[self.kind]

    def argv(self, command: str, workspace: Path, env: Mapping[str, str],
             read_only: Sequence[Path] = ()) -> list[str]:
        """The program and arguments that run `command` (a shell line) in this sandbox."""
        if self.kind == "bwrap":
            return _bwrap(command, workspace, env, read_only, self.network)
        if self.kind == "unshare":
            net = [] if self.network else ["--net"]
            return ["unshare", "--user", "--map-root-user", "--mount", "--pid", "--fork", "--mount-proc",
                    "--kill-child", *net, "sh", "-c", _UNSHARE_PROLOGUE, "crew-sandbox", command,
                    str(workspace), *(str(p) for p in read_only)]
        if self.kind == "seatbelt":
            profile = seatbelt_profile(workspace, read_only, self.network)
            return ["sandbox-exec", "-p", profile, "sh", "-c", command]
        return ["sh", "-c", command]


# Inside its own user and mount namespaces (as the mapped root): every mount read-only but a
# bind of the workspace, the protected paths bound read-only over themselves, a private /tmp
# (unless the workspace is in /tmp), then the command. A failed protection stops it (set -e).
_UNSHARE_PROLOGUE = r"""set -e
cmd=$1; ws=$2; shift 2
mount --bind "$ws" "$ws"
for m in $(awk '{print $2}' /proc/self/mounts | sort -u); do
  case "$m" in /proc|/proc/*|"$ws") continue;; esac
  mount -o remount,bind,ro "$m" 2>/dev/null || true
done
case "$ws" in /tmp|/tmp/*) ;; *) mount -t tmpfs tmpfs /tmp ;; esac
for p in "$@"; do
  if [ -e "$p" ]; then mount --bind "$p" "$p"; mount -o remount,bind,ro "$p"; fi
done
cd "$ws"
exec sh -c "$cmd"
"""


def _bwrap(command: str, workspace: Path, env: Mapping[str, str], read_only: Sequence[Path],
           network: bool) -> list[str]:
    argv = ["bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp",
            "--bind", str(workspace), str(workspace)]
    for path in read_only:
        if path.exists():  # bound over itself, read-only: it cannot be written, moved or replaced
            argv += ["--ro-bind", str(path), str(path)]
    argv += ["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--die-with-parent", "--new-session"]
    if not network:
        argv.append("--unshare-net")
    argv += ["--chdir", str(workspace), "--clearenv"]
    for key, value in env.items():
        argv += ["--setenv", key, value]
    return [*argv, "sh", "-c", command]


def seatbelt_profile(workspace: Path, read_only: Sequence[Path], network: bool) -> str:
    """A sandbox-exec profile: read anything, write only the workspace (less `read_only`), no
    network unless allowed."""
    def quoted(path: Path) -> str:
        return '"' + str(path).replace("\\", "\\\\").replace('"', '\\"') + '"'

    lines = [
        "(version 1)",
        "(allow default)",
        "(deny file-write*)",
        f"(allow file-write* (subpath {quoted(workspace)}))",
        '(allow file-write* (subpath "/private/tmp") (subpath "/private/var/folders") (literal "/dev/null"))',
    ]
    lines += [f"(deny file-write* (subpath {quoted(path)}))" for path in read_only]
    if not network:
        lines.append("(deny network*)")
    return "\n".join(lines) + "\n"


@functools.cache
def _works(kind: Kind) -> bool:
    """Whether this sandbox can start here (a real start of `true`, once per process)."""
    with tempfile.TemporaryDirectory(prefix="crew-sandbox-probe-") as folder:
        probe = Sandbox(kind).argv("true", Path(folder), {"PATH": "/usr/bin:/bin"})
        try:
            return subprocess.run(probe, capture_output=True, timeout=20, check=False).returncode == 0
        except (OSError, subprocess.SubprocessError):
            return False


def detect(mode: str, network: bool) -> Sandbox:
    """The best sandbox this machine has; with mode `require`, SettingsError if it has none."""
    if mode == "off":
        return Sandbox("none", network=True)
    candidates: list[Kind] = (["seatbelt"] if platform.system() == "Darwin" else ["bwrap", "unshare"])
    program = {"bwrap": "bwrap", "unshare": "unshare", "seatbelt": "sandbox-exec", "none": "sh"}
    for kind in candidates:
        if shutil.which(program[kind]) and _works(kind):
            return Sandbox(kind, network)
    if mode == "require":
        raise SettingsError(f"no sandbox for agent commands here (CREW_SANDBOX=require): {INSTALL_HINT}, "
                            "or set CREW_SANDBOX=auto to run them unconfined")
    return Sandbox("none", network=True)
