"""Attacks on the agents' sandbox, each tried as this process's user (root in CI) and as uid
65534, in bubblewrap and in the unshare fallback: what exists or was read OUTSIDE the
workspace afterwards is what is asserted.

The sandbox runs in `tests.sandbox_driver`, a process of its own, so it can be started as
65534 (`setpriv`); its environment holds a secret a command must not find.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from crew.workspace.sandbox import Sandbox, _works, find_bwrap

pytestmark = pytest.mark.hostile

SECRET = "sk-hostile-0123456789-secret"
NOBODY = 65534
REPO = Path(__file__).resolve().parent.parent


@dataclass
class Site:
    """A fake machine under one /tmp folder: a home with a key and the workspace, crew's state,
    a shared folder with an eval suite hidden inside it, and a folder outside everything."""

    base: Path
    home: Path
    workspace: Path
    state: Path
    shared: Path
    suite: Path
    outside: Path


@pytest.fixture
def site() -> Iterator[Site]:
    # Not under pytest's tmp_path: its folders are 0700, and 65534 must reach this one.
    base = Path(tempfile.mkdtemp(prefix="crew-hostile-", dir="/tmp"))
    base.chmod(0o755)
    home = base / "home"
    s = Site(base, home, home / "ws", base / "state", base / "shared", base / "shared" / "suite",
             base / "outside")
    for folder in (s.workspace / ".git" / "hooks", s.state, s.suite, s.outside, home / ".ssh"):
        folder.mkdir(parents=True)
    (home / ".ssh" / "id_rsa").write_text("PRIVATE-KEY-MATERIAL\n")
    (s.state / "notes.json").write_text("STATE-NOTE\n")
    (s.shared / "data.txt").write_text("SHARED-DATA\n")
    (s.suite / "solution.py").write_text("SUITE-SOLUTION\n")
    (s.workspace / ".git" / "config").write_text("[core]\n")
    (s.workspace / "events.jsonl").write_text("recorded\n")
    if os.geteuid() == 0:  # everything 65534's own: unconfined, every attack below would work
        for path in [base, *base.rglob("*")]:
            os.chown(path, NOBODY, NOBODY)
    # Root in the sandbox has no CAP_DAC_OVERRIDE: the workspace must be writable by both.
    s.workspace.chmod(0o777)
    try:
        yield s
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(params=["bwrap", "unshare"])
def kind(request: pytest.FixtureRequest) -> str:
    if request.param == "bwrap" and find_bwrap() is None and not os.environ.get("CREW_REQUIRE_SANDBOX"):
        pytest.skip("no bubblewrap here")
    if request.param == "unshare" and not _works(Sandbox("unshare")):
        pytest.skip("unprivileged namespaces are not allowed here")
    return str(request.param)


@pytest.fixture(params=["self", "nobody"])
def user(request: pytest.FixtureRequest) -> str:
    if request.param == "nobody" and os.geteuid() != 0:
        pytest.skip("only root can start the run as 65534 (CI runs this file as a user too)")
    return str(request.param)


def attack(site: Site, kind: str, user: str, command: str, **spec: object) -> str:
    """What crew shows the model after `command` ran in the sandbox, started as `user`."""
    spec = {"kind": kind, "workspace": str(site.workspace), "command": command,
            "hidden": [str(site.home), str(site.state), str(site.suite)],
            "readable": [str(site.shared)], **spec}
    argv = [sys.executable, "-m", "tests.sandbox_driver", json.dumps(spec)]
    if user == "nobody":
        argv = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *argv]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(site.home),
           "SANDBOX_TEST_SECRET": SECRET}
    done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_no_capabilities_and_no_mount_can_be_undone(site: Site, kind: str, user: str) -> None:
    ws, out = site.workspace, site.outside
    result = attack(site, kind, user, f"""
        grep CapEff /proc/self/status
        umount .git; umount -l .git; echo umount=$?
        mount -o remount,bind,rw / && echo x > {out}/remounted
        mount -o remount,bind,rw {ws}/.git && echo x > .git/hooks/remounted
        unshare -Urm sh -c 'umount -l {ws}/.git; echo x > {ws}/.git/hooks/pre-commit'; echo unshare=$?
        chroot / true; echo chroot=$?
        umount -l /proc; cat /proc/1/environ
        for f in /proc/[0-9]*/environ; do tr '\\0' '\\n' < $f; done | grep -c SANDBOX_TEST_SECRET
        echo x > .git/hooks/post-checkout; echo x > {out}/direct; echo done""")
    assert "done" in result
    assert "CapEff:\t0000000000000000" in result
    assert "unshare=0" not in result and "chroot=0" not in result and "umount=0" not in result
    assert SECRET not in result
    assert list(out.iterdir()) == []
    assert sorted(p.name for p in (ws / ".git").rglob("*")) == ["config", "hooks"]


def test_homes_state_and_hidden_paths_are_not_there_but_listed_paths_are(
    site: Site, kind: str, user: str
) -> None:
    result = attack(site, kind, user, f"""
        cat {site.home}/.ssh/id_rsa; cat {site.state}/notes.json; cat {site.suite}/solution.py
        echo "home: $(ls -A {site.home} | tr '\n' ' ')"
        cat {site.shared}/data.txt; echo "HOME=$HOME"; ls -A "$HOME" | wc -l; echo done""")
    assert "done" in result
    for secret in ("PRIVATE-KEY", "STATE-NOTE", "SUITE-SOLUTION"):
        assert secret not in result
    assert "home: ws \n" in result  # the workspace in the hidden home is there, nothing else
    assert "SHARED-DATA" in result  # sandbox_read
    assert "HOME=/tmp/home\n0\n" in result  # a private, empty HOME


FORK_UNTIL_REFUSED = """python3 -c '
import os, time
children = []
try:
    while len(children) < 3000:
        pid = os.fork()
        if pid == 0:
            time.sleep(60)
            os._exit(0)
        children.append(pid)
except OSError:
    print("refused after", len(children))
for pid in children:
    os.kill(pid, 9)
    os.waitpid(pid, 0)
'"""


def test_processes_memory_and_file_size_are_bounded(site: Site, kind: str, user: str) -> None:
    # Small limits, so the bound shows at once; as root the bound is the PID namespace's
    # pid_max, `processes` to `processes` + 300 (the kernel reserves PIDs below 300 once they wrap).
    limits = {"processes": 64, "data_bytes": 256 * 2**20, "file_bytes": 2**20}
    result = attack(site, kind, user, f"""
        {FORK_UNTIL_REFUSED}
        python3 -c 'import ctypes; print("1 GiB:", bool(ctypes.CDLL(None).malloc(1 << 30)))'
        head -c 3000000 /dev/zero > big; ls -l big | cut -d" " -f5; echo done""", limits=limits)
    assert "done" in result
    started = int(result.split("refused after ")[1].split()[0])
    assert started < 64 + 301
    assert "1 GiB: False" in result
    assert int(result.strip().splitlines()[-2]) <= 2**20


def test_a_fork_bomb_ends_as_an_error_and_crew_goes_on(site: Site, kind: str, user: str) -> None:
    result = attack(site, kind, user, ":(){ :|:& };:", limits={"processes": 128}, timeout=2)
    assert result.startswith("error: ") or result.startswith("exit code")
    assert "Traceback" not in result
    # Every process it made is gone with its PID namespace, and this one can still start others.
    after = attack(site, kind, user, "ls /proc | grep -c '^[0-9]'")
    assert after.startswith("exit code 0")
    assert subprocess.run(["true"], timeout=30, check=False).returncode == 0


def test_what_a_user_could_not_read_in_etc_root_s_commands_do_not_see(
    site: Site, kind: str, user: str
) -> None:
    # As root the command keeps uid 0 (no capabilities), so it still owns /etc/shadow; the
    # files under /etc that others may not read are not there for it.
    if not os.path.exists("/etc/shadow"):
        pytest.skip("no /etc/shadow here")
    result = attack(site, kind, user, "cat /etc/shadow; ls /etc/ssl/private 2>&1 | wc -l; echo done")
    assert "done" in result
    assert "root:" not in result


def test_the_kernel_s_settings_cannot_be_written(site: Site, kind: str, user: str) -> None:
    # As root the command keeps uid 0, which owns /proc/sys: a write there would be the host's
    # (core_pattern runs a program as root at the next crash). A harmless one is tried.
    setting = Path("/proc/sys/kernel/printk_ratelimit")
    before = setting.read_text()
    try:
        result = attack(site, kind, user, f"echo 7{before.strip()} > {setting}; cat {setting}; "
                                          "echo x > /proc/sysrq-trigger; echo done")
        after = setting.read_text()
    finally:
        if setting.read_text() != before and os.geteuid() == 0:
            setting.write_text(before)  # put back what the attack changed
    assert "done" in result
    assert after == before
