"""The agents' tools, bound to one workspace.

Every path is checked by `Workspace.check` and then opened through the workspace's folder
descriptor with no link followed (`crew.workspace.beneath`): a folder swapped for a link while
a tool runs leads nowhere. Writes replace the file atomically (a temporary file and a rename).
Errors, a name the system refuses included, come back as one line the model can act on, not as
exceptions. A write or edit that would leave a Python, JSON or TOML file unparsable is
refused with the parser's message (as SWE-agent refuses edits that fail its linter), and an edit
whose text differs from the file only in trailing whitespace or line endings still applies.
`run_command` runs in the workspace with a timeout that kills its whole process group, an
environment without secrets, and output cut to a bound.
"""

from __future__ import annotations

import ast
import asyncio
import functools
import json
import os
import signal
import tomllib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from crew.errors import WorkspaceError
from crew.workspace import beneath
from crew.workspace.cgroup import CommandCgroup, open_cgroup
from crew.workspace.repo import Workspace
from crew.workspace.sandbox import Sandbox

UNCONFINED = Sandbox("none", network=True)

MAX_OUTPUT_CHARS = 12_000
MAX_READ_CHARS = 60_000
MAX_READ_BYTES = 256_000
# edit_file reads the whole file to replace text in it: a bound on what it will load.
MAX_EDIT_BYTES = 4_000_000
# A command's output is kept up to this many bytes (its start and its end); the rest is counted.
MAX_OUTPUT_BYTES = 64_000
# After a kill, how long the command's processes may take to go (a guard, not a timing).
REAP_GUARD_S = 10.0
COMMAND_TIMEOUT_S = 120.0
# Only what a build or test needs; never tokens, keys or the user's shell configuration.
_SAFE_ENV = ("PATH", "LANG", "LC_ALL", "TERM", "TZ", "PYTHONPATH", "VIRTUAL_ENV")


def _clip(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return text[: limit // 2] + f"\n... [{len(text) - limit} characters cut] ...\n" + text[-limit // 2:]


def _listing(names: list[str]) -> str:
    """The names, one a line, cut to MAX_READ_CHARS like every answer (a command can make a
    million files), with how many were left out."""
    shown: list[str] = []
    size = 0
    for name in names:
        size += len(name) + 1
        if size > MAX_READ_CHARS - 200:
            rest = len(names) - len(shown)
            return "\n".join(shown) + (f"\n... and {rest} more files ({len(names)} in all): list one folder "
                                       "with run_command, e.g. `ls some/folder`")
        shown.append(name)
    return "\n".join(shown)


def _escapes_as_errors(tool: Callable[..., Awaitable[str]]) -> Callable[..., Awaitable[str]]:
    """A path outside the workspace, or one the system refuses (too long, not a folder, ...),
    becomes one line the model can act on."""

    @functools.wraps(tool)  # keeps the signature and docstring AutoGen turns into the schema
    async def guarded(*args: Any, **kwargs: Any) -> str:
        try:
            return await tool(*args, **kwargs)
        except WorkspaceError as exc:
            return f"error: {_one_line(str(exc))}"
        except FileNotFoundError:
            return f"error: {_shown(args, kwargs)} does not exist; call list_files to see what does"
        except OSError as exc:
            return f"error: {_shown(args, kwargs)}: {exc.strerror or exc}"
        except (ValueError, UnicodeError) as exc:
            return f"error: {_shown(args, kwargs)}: {_one_line(str(exc))}"

    return guarded


def _one_line(text: str) -> str:
    return " ".join(text.split())[:500]


def _shown(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """The path a tool was given, printable and short, for an error line."""
    path = kwargs.get("path", args[0] if args else "")
    return _one_line(str(path).encode("utf-8", "backslashreplace").decode())[:200] or "the path"


def _read(workspace: Workspace, path: str, limit: int) -> tuple[bytes, int]:
    return beneath.read(workspace.fd, workspace.check(path), limit)


def _write(workspace: Workspace, path: str, text: str) -> None:
    # newline="": the text's own line endings are written as they are (as open(newline="")).
    beneath.replace(workspace.fd, workspace.check(path), text.encode("utf-8", "surrogateescape"),
                    make_parents=True)


def make_tools(workspace: Workspace, *, write: bool, command_timeout: float = COMMAND_TIMEOUT_S,
               sandbox: Sandbox = UNCONFINED) -> list[Callable[..., Awaitable[str]]]:
    """Tool functions for an agent; without `write`, no write_file or edit_file."""

    async def list_files() -> str:
        """List the files of the workspace, one path per line."""
        files = await asyncio.to_thread(workspace.files)
        return _listing(files) or "(the workspace is empty)"

    @_escapes_as_errors
    async def read_file(path: str) -> str:
        """Read a text file of the workspace. `path` is relative to the workspace root."""
        # Read at most a bound: a huge (or sparse) file must not take crew's memory with it.
        data, size = await asyncio.to_thread(_read, workspace, path, MAX_READ_BYTES)
        try:
            text = data[:MAX_READ_BYTES].decode("utf-8")
        except UnicodeDecodeError as exc:
            if exc.start < MAX_READ_BYTES - 4:  # not just a character cut at the bound
                return f"error: {path} is not a UTF-8 text file"
            text = data[:exc.start].decode("utf-8")
        if len(data) > MAX_READ_BYTES:
            return (f"{_clip(text, MAX_READ_CHARS)}\n... [read the first {MAX_READ_BYTES} bytes of "
                    f"{size}: the file is larger than read_file returns]")
        return _clip(text, MAX_READ_CHARS)

    @_escapes_as_errors
    async def write_file(path: str, content: str) -> str:
        """Create or overwrite a file with `content`. `path` is relative to the workspace root."""
        workspace.check(path)
        broken = syntax_error(path, content)
        if broken:
            return f"error: not written: {broken}; fix it and write the whole file again"
        await asyncio.to_thread(_write, workspace, path, content)
        return f"wrote {path} ({len(content.splitlines())} lines)"

    @_escapes_as_errors
    async def edit_file(path: str, old: str, new: str) -> str:
        """Replace the exact text `old` with `new` in a file; `old` must occur exactly once."""
        try:
            data, _ = await asyncio.to_thread(_read, workspace, path, MAX_EDIT_BYTES)
        except FileNotFoundError:
            return f"error: {path} does not exist; use write_file to create it"
        if len(data) > MAX_EDIT_BYTES:
            return f"error: {path} is larger than {MAX_EDIT_BYTES} bytes; edit_file works on smaller files"
        try:
            text = data.decode("utf-8")  # bytes as they are: the file's line endings are kept
        except UnicodeDecodeError:
            return f"error: {path} is not a text file"
        edited = replace_once(text, old, new)
        if isinstance(edited, int):
            if edited == 0:
                return (f"error: the text to replace was not found in {path}; call read_file and "
                        "copy the exact lines, indentation included")
            return f"error: the text occurs {edited} times in {path}; include more lines so it is unique"
        broken = syntax_error(path, edited)
        if broken and not syntax_error(path, text):  # never block the repair of a broken file
            return f"error: not edited: the result would not parse: {broken}; {path} is unchanged"
        await asyncio.to_thread(_write, workspace, path, edited)
        return f"edited {path}"

    async def run_command(command: str) -> str:
        """Run a shell command in the workspace (tests, linters); returns exit code and output."""
        return await run_in_workspace(workspace, command, command_timeout, sandbox)

    tools: list[Callable[..., Awaitable[str]]] = [list_files, read_file]
    if write:
        tools += [write_file, edit_file]
    tools.append(run_command)
    return tools


def replace_once(text: str, old: str, new: str) -> str | int:
    """`text` with `old` replaced by `new`, or how many times `old` occurs when that is not once.

    Exact first; else line by line ignoring trailing whitespace and line endings, which small
    models get wrong most often. Indentation still has to match.
    """
    count = text.count(old) if old else 0
    if count != 0 or not old.strip():
        return text.replace(old, new, 1) if count == 1 else count
    lines = text.splitlines(keepends=True)
    wanted = [line.rstrip() for line in old.strip("\r\n").splitlines()]
    starts = [i for i in range(len(lines) - len(wanted) + 1)
              if [line.rstrip() for line in lines[i:i + len(wanted)]] == wanted]
    if len(starts) != 1:
        return len(starts)
    start, end = starts[0], starts[0] + len(wanted)
    last = lines[end - 1]
    ending = last[len(last.rstrip("\r\n")):]
    replacement = new.strip("\r\n") + ending if new.strip("\r\n") else ""
    return "".join(lines[:start]) + replacement + "".join(lines[end:])


def syntax_error(path: str, text: str) -> str | None:
    """Why `text` does not parse as the file type `path` names, or None (also for other types)."""
    suffix = os.path.splitext(path)[1].lower()
    try:
        if suffix in (".py", ".pyi"):
            ast.parse(text, filename=path)  # parses only: nothing in the text runs
        elif suffix == ".json" and not _jsonc(path):
            json.loads(text)
        elif suffix == ".toml":
            tomllib.loads(text)
        return None
    except SyntaxError as exc:
        return f"{path} line {exc.lineno}: {exc.msg}"
    except json.JSONDecodeError as exc:
        return f"{path} line {exc.lineno}: {exc.msg}"
    except tomllib.TOMLDecodeError as exc:
        return f"{path}: {exc}"
    except (RecursionError, MemoryError, ValueError):
        return None  # too deep or odd to check here; the tests will tell


def _jsonc(path: str) -> bool:
    # JSON with comments by convention: TypeScript's and VS Code's configuration files.
    name = os.path.basename(path).lower()
    return name.startswith(("tsconfig", "jsconfig")) or ".vscode" in path.replace("\\", "/").split("/")


def scrubbed_env(home: Path) -> dict[str, str]:
    """The environment of an agent's command (and of grading): no secrets, HOME in its folder."""
    env = {k: v for k, v in os.environ.items() if k in _SAFE_ENV}
    env["HOME"] = str(home)
    env.setdefault("PATH", "/usr/bin:/bin")
    return env


class _Output(asyncio.SubprocessProtocol):
    """A command's output as it comes, kept to a bound (its start and its end), the rest counted.

    Reading everything as it arrives keeps the pipe flowing: a command that floods its output
    still ends at its timeout, and crew's memory stays bounded.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.head = bytearray()
        self.tail = bytearray()
        self.dropped = 0
        self.exited = loop.create_future()
        self.closed = loop.create_future()
        """Exited, and every pipe read to its end."""

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        room = MAX_OUTPUT_BYTES // 2 - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        self.tail += data
        excess = len(self.tail) - MAX_OUTPUT_BYTES // 2
        if excess > 0:
            self.dropped += excess
            del self.tail[:excess]

    def process_exited(self) -> None:
        if not self.exited.done():
            self.exited.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    def text(self) -> str:
        head = self.head.decode(errors="replace")
        if not self.dropped:
            return _clip(head + self.tail.decode(errors="replace"), MAX_OUTPUT_CHARS)
        cut = f"\n... [{self.dropped} bytes of output cut] ...\n"
        return _clip(head, MAX_OUTPUT_CHARS // 2) + cut + _clip(self.tail.decode(errors="replace"),
                                                                MAX_OUTPUT_CHARS // 2)


# Process groups of the agents' commands running now: a stop kills them at once.
_RUNNING: set[int] = set()


def kill_running_commands() -> None:
    """Kill every agent command running in this process (a stop must not wait for them)."""
    for pid in list(_RUNNING):
        kill_group(pid)


async def run_in_workspace(workspace: Workspace, command: str, timeout: float,
                           sandbox: Sandbox = UNCONFINED) -> str:
    """Run `command` in `sandbox`, in its own process group; when it ends (or times out) the
    whole group goes (and, in a PID namespace, everything it started)."""
    loop = asyncio.get_running_loop()
    env = scrubbed_env(workspace.root)
    # Both read the filesystem (the view's paths, git, the cgroup tree): off the event loop.
    argv = await asyncio.to_thread(_argv, sandbox, command, workspace, env)
    group = command_cgroup(sandbox)  # kernel bookkeeping, no disk: made here, so no cancel loses it
    try:
        return await _run(loop, command, group.wrap(argv) if group else argv, workspace.root, env, timeout)
    finally:
        if group is not None:
            await asyncio.to_thread(group.remove)


def _argv(sandbox: Sandbox, command: str, workspace: Workspace, env: dict[str, str]) -> list[str]:
    # A --repo worktree's git folders are shown so git works, but not their config: it can hold
    # credentials (actions/checkout keeps the job's token there as an http.extraheader).
    configs = [folder / name for folder in workspace.git_dirs for name in ("config", "config.worktree")
               if (folder / name).is_file()]
    return sandbox.argv(command, workspace.root, env, read_only=workspace.protected(),
                        readable=workspace.git_dirs, hidden=configs)


def command_cgroup(sandbox: Sandbox) -> CommandCgroup | None:
    """A cgroup bounding a sandboxed command's memory and processes as a whole, where crew can
    make one (see crew.workspace.cgroup); unconfined commands get none."""
    if not sandbox.confines_files:
        return None
    return open_cgroup(sandbox.limits.data_bytes, sandbox.limits.processes)


async def _run(loop: asyncio.AbstractEventLoop, command: str, argv: list[str], cwd: Path,
               env: dict[str, str], timeout: float) -> str:
    transport, output = await loop.subprocess_exec(
        lambda: _Output(loop), *argv, cwd=cwd, env=env,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, start_new_session=True,
    )
    timed_out = False
    _RUNNING.add(transport.get_pid())
    try:
        await asyncio.wait_for(asyncio.shield(output.exited), timeout)
    except TimeoutError:
        timed_out = True
    finally:
        # Also when it ended: what it started in the background (`cmd &`) must not outlive it.
        _RUNNING.discard(transport.get_pid())
        kill_group(transport.get_pid())
        try:  # the last output, up to the end of the pipe
            await asyncio.wait_for(asyncio.shield(output.closed), REAP_GUARD_S)
        except TimeoutError:
            pass
        transport.close()  # closes our end of the pipe even if an escaped process still holds it
    if timed_out:
        return f"error: `{command}` took longer than {timeout:g} s and was killed\n{output.text()}".rstrip()
    return f"exit code {transport.get_returncode()}\n{output.text()}"


def kill_group(pid: int) -> None:
    """SIGKILL a process group (a command and whatever it started); gone already is fine."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
