"""The agents' tools, bound to one workspace.

Every path goes through `Workspace.resolve`. Errors come back as text the model can act on,
not as exceptions. `run_command` runs in the workspace with a timeout that kills its whole
process group, an environment without secrets, and output cut to a bound.
"""

from __future__ import annotations

import asyncio
import functools
import os
import signal
from collections.abc import Awaitable, Callable
from typing import Any

from crew.errors import WorkspaceEscape
from crew.workspace import Workspace

MAX_OUTPUT_CHARS = 12_000
MAX_READ_CHARS = 60_000
COMMAND_TIMEOUT_S = 120.0
# Only what a build or test needs; never tokens, keys or the user's shell configuration.
_SAFE_ENV = ("PATH", "LANG", "LC_ALL", "TERM", "TZ", "PYTHONPATH", "VIRTUAL_ENV")


def _clip(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return text[: limit // 2] + f"\n... [{len(text) - limit} characters cut] ...\n" + text[-limit // 2:]


def _escapes_as_errors(tool: Callable[..., Awaitable[str]]) -> Callable[..., Awaitable[str]]:
    """A path outside the workspace becomes an error message the model can act on."""

    @functools.wraps(tool)  # keeps the signature and docstring AutoGen turns into the schema
    async def guarded(*args: Any, **kwargs: Any) -> str:
        try:
            return await tool(*args, **kwargs)
        except WorkspaceEscape as exc:
            return f"error: {exc}"

    return guarded


def make_tools(workspace: Workspace, *, write: bool, command_timeout: float = COMMAND_TIMEOUT_S
               ) -> list[Callable[..., Awaitable[str]]]:
    """Tool functions for an agent; without `write`, no write_file or edit_file."""

    async def list_files() -> str:
        """List the files of the workspace, one path per line."""
        files = await asyncio.to_thread(workspace.files)
        return "\n".join(files) or "(the workspace is empty)"

    @_escapes_as_errors
    async def read_file(path: str) -> str:
        """Read a text file of the workspace. `path` is relative to the workspace root."""
        target = workspace.resolve(path)
        if not target.is_file():
            return f"error: {path} does not exist; call list_files to see what does"
        try:
            return _clip(target.read_text(), MAX_READ_CHARS)
        except UnicodeDecodeError:
            return f"error: {path} is not a text file"

    @_escapes_as_errors
    async def write_file(path: str, content: str) -> str:
        """Create or overwrite a file with `content`. `path` is relative to the workspace root."""
        target = workspace.resolve(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
        return f"wrote {path} ({len(content.splitlines())} lines)"

    @_escapes_as_errors
    async def edit_file(path: str, old: str, new: str) -> str:
        """Replace the exact text `old` with `new` in a file; `old` must occur exactly once."""
        target = workspace.resolve(path)
        if not target.is_file():
            return f"error: {path} does not exist; use write_file to create it"
        text = target.read_text()
        count = text.count(old) if old else 0
        if count == 0:
            return (f"error: the text to replace was not found in {path}; call read_file and copy "
                    "the exact lines, whitespace included")
        if count > 1:
            return f"error: the text occurs {count} times in {path}; include more lines so it is unique"
        target.write_text(text.replace(old, new, 1))
        return f"edited {path}"

    async def run_command(command: str) -> str:
        """Run a shell command in the workspace (tests, linters); returns exit code and output."""
        return await run_in_workspace(workspace, command, command_timeout)

    tools: list[Callable[..., Awaitable[str]]] = [list_files, read_file]
    if write:
        tools += [write_file, edit_file]
    tools.append(run_command)
    return tools


def scrubbed_env(workspace: Workspace) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in _SAFE_ENV}
    env["HOME"] = str(workspace.root)
    env.setdefault("PATH", "/usr/bin:/bin")
    return env


async def run_in_workspace(workspace: Workspace, command: str, timeout: float) -> str:
    process = await asyncio.create_subprocess_shell(
        command, cwd=workspace.root, env=scrubbed_env(workspace), stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, start_new_session=True,
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), timeout)
    except (TimeoutError, asyncio.CancelledError):
        _kill_group(process)
        await process.wait()
        if asyncio.current_task() and asyncio.current_task().cancelling():  # type: ignore[union-attr]
            raise
        return f"error: `{command}` took longer than {timeout:g} s and was killed"
    text = output.decode(errors="replace")
    return f"exit code {process.returncode}\n{_clip(text, MAX_OUTPUT_CHARS)}"


def _kill_group(process: Any) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
