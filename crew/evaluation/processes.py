"""The two processes of a grade: the hidden tests (pytest) and the solution, each in a sandbox.

`run_apart` starts the solution's host (solution_host.py) in a sandbox whose only writable
folder is the solution's copy, and pytest (pytest_runner.py) in another whose only writable
folder is the tests' box, each hidden from the other, each in its own PID namespace and cgroup.
They share one socket pair (the wire, wire.py) and nothing else: the report pipe and the token
go to the tests' process alone. When the tests end (or time out) both process groups are killed.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import shlex
import socket
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from crew.workspace.cgroup import CommandCgroup
from crew.workspace.sandbox import Sandbox
from crew.workspace.tools import command_cgroup, kill_group, scrubbed_env

# What a grade shows the agents of each process's output: its end.
FEEDBACK_CHARS = 6000
# After the tests end (or are killed), how long their pipes may take to close (a guard, not a timing).
REAP_GUARD_S = 10.0
MAX_REPORT_BYTES = 4_000_000
_HOST = ("import sys; sys.path.insert(0, sys.argv[1]); from crew_grading.solution_host import main; "
         "sys.exit(main(sys.argv[2:]))")


@dataclass(frozen=True)
class Apart:
    """What a grade's run left: the tests' output, the solution's, the report, pytest's exit code
    (None: timed out)."""

    tests_output: str
    solution_output: str
    report: bytes
    returncode: int | None


@dataclass(frozen=True)
class Boxes:
    """The two folders: `tests` (hidden/, grade.ini, pytest_runner.py, lib/) and `solution`
    (solution/, lib/)."""

    tests: Path
    solution: Path


def _high(fd: int) -> int:
    """`fd` moved above the single-digit fds the sandbox's shell prologue may use for itself."""
    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return high


class _Collect(asyncio.Protocol):
    """The report pipe's bytes as they come, up to a bound (a report cut there fails to parse)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, limit: int) -> None:
        self.data = bytearray()
        self.limit = limit
        self.closed = loop.create_future()

    def data_received(self, data: bytes) -> None:
        self.data += data[:max(0, self.limit - len(self.data))]

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


async def _start(argv: list[str], sandbox: Sandbox, cwd: Path, env: Mapping[str, str],
                 fds: Sequence[int], groups: list[CommandCgroup]) -> asyncio.subprocess.Process:
    group = command_cgroup(sandbox)  # bounded as run_command is
    if group is not None:
        groups.append(group)
    return await asyncio.create_subprocess_exec(
        *(group.wrap(argv) if group else argv), cwd=cwd, env=dict(env), stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, start_new_session=True,
        pass_fds=tuple(fds),
    )


async def run_apart(boxes: Boxes, names: Sequence[str], pytest_args: Sequence[str], sandbox: Sandbox,
                    token: str, timeout: float, call_timeout: float) -> Apart:
    loop = asyncio.get_running_loop()
    tests_end, solution_end = (_high(s.detach()) for s in socket.socketpair())
    read_end, low = os.pipe()
    write_end = _high(low)
    tests, solution = boxes.tests, boxes.solution
    tests_env, solution_env = scrubbed_env(tests), scrubbed_env(solution)
    tests_env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    tests_command = shlex.join([
        sys.executable, "-I", "-B", str(tests / "pytest_runner.py"), str(write_end), str(tests_end),
        str(tests / "lib"), f"{call_timeout:g}", ",".join(names), *pytest_args])
    tests_argv = sandbox.argv(tests_command, tests, tests_env, hidden=[solution],
                              read_only=[tests / "hidden", tests / "grade.ini", tests / "pytest_runner.py",
                                         tests / "lib"])
    # -u: what the solution prints is in the pipe at once (its process is killed, never flushed).
    host_command = shlex.join([sys.executable, "-I", "-B", "-u", "-c", _HOST, str(solution / "lib"),
                               str(solution_end), str(solution / "solution")])
    host_argv = sandbox.argv(host_command, solution, solution_env, hidden=[tests],
                             read_only=[solution / "lib"])
    reader = os.fdopen(read_end, "rb", buffering=0)
    groups: list[CommandCgroup] = []
    started: list[asyncio.subprocess.Process] = []
    try:
        transport, report = await loop.connect_read_pipe(lambda: _Collect(loop, MAX_REPORT_BYTES), reader)
    except BaseException:
        reader.close()
        for fd in (write_end, tests_end, solution_end):
            os.close(fd)
        raise
    try:
        try:
            started.append(await _start(host_argv, sandbox, solution, solution_env, [solution_end],
                                        groups))
            started.append(await _start(tests_argv, sandbox, tests, tests_env, [write_end, tests_end],
                                        groups))
        finally:  # the children have their own: the wire and the report end when theirs close
            for fd in (write_end, tests_end, solution_end):
                os.close(fd)
        host, pytest_process = started
        host_output = bytearray()
        host_tail = asyncio.ensure_future(_tail(host, host_output))
        tests_output, returncode = await _await_tests(pytest_process, token, timeout)
        kill_group(host.pid)
        await asyncio.wait([host_tail], timeout=REAP_GUARD_S)
        host_tail.cancel()  # (done by now, unless a child of the solution holds its pipe open)
        try:  # the report's last lines (everything holding the pipe is dead by now)
            await asyncio.wait_for(asyncio.shield(report.closed), REAP_GUARD_S)
        except TimeoutError:
            pass
    finally:
        for process in started:
            kill_group(process.pid)
            if process.returncode is None:
                await process.wait()
        transport.close()
        for group in groups:
            await asyncio.to_thread(group.remove)
    return Apart(tests_output, host_output.decode(errors="replace")[-FEEDBACK_CHARS:], bytes(report.data),
                 returncode)


async def _await_tests(process: asyncio.subprocess.Process, token: str,
                       timeout: float) -> tuple[str, int | None]:
    """pytest's output (its end) and exit code, None on a timeout; its process group killed after."""
    assert process.stdin is not None and process.stdout is not None
    try:
        process.stdin.write((token + "\n").encode())
        await process.stdin.drain()
        process.stdin.close()
    except (BrokenPipeError, ConnectionResetError):
        pass  # it did not wait for its token: its report will not carry it
    kept = bytearray()
    try:
        await asyncio.wait_for(asyncio.gather(_read_to_end(process.stdout, kept), process.wait()), timeout)
        return kept.decode(errors="replace")[-FEEDBACK_CHARS:], process.returncode
    except TimeoutError:  # what it said so far is the agents' feedback
        return kept.decode(errors="replace")[-FEEDBACK_CHARS:], None
    finally:
        kill_group(process.pid)
        if process.returncode is None:
            await process.wait()


async def _tail(process: asyncio.subprocess.Process, kept: bytearray) -> None:
    assert process.stdin is not None and process.stdout is not None
    process.stdin.close()
    await _read_to_end(process.stdout, kept)


async def _read_to_end(stream: asyncio.StreamReader, kept: bytearray) -> None:
    """The end of a stream, read into `kept` to its end: a flood of output costs no more memory
    than this, and what came before a timeout is there."""
    while chunk := await stream.read(65536):
        kept += chunk
        del kept[:-FEEDBACK_CHARS * 4]
