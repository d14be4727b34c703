"""The agents' tools, bound to one workspace.

Every path goes through `Workspace.resolve`. Errors come back as text the model can act on,
not as exceptions. A write or edit that would leave a Python, JSON or TOML file unparsable is
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
        broken = syntax_error(path, content)
        if broken:
            return f"error: not written: {broken}; fix it and write the whole file again"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
        return f"wrote {path} ({len(content.splitlines())} lines)"

    @_escapes_as_errors
    async def edit_file(path: str, old: str, new: str) -> str:
        """Replace the exact text `old` with `new` in a file; `old` must occur exactly once."""
        target = workspace.resolve(path)
        if not target.is_file():
            return f"error: {path} does not exist; use write_file to create it"
        try:
            with target.open(newline="") as handle:  # keep the file's line endings as they are
                text = handle.read()
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
        target.write_text(edited, newline="")
        return f"edited {path}"

    async def run_command(command: str) -> str:
        """Run a shell command in the workspace (tests, linters); returns exit code and output."""
        return await run_in_workspace(workspace, command, command_timeout)

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
