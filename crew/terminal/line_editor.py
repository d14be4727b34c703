"""What the person types in `crew chat`: a line editor on a terminal, plain lines otherwise.

On a terminal, `PromptReader` (prompt_toolkit) edits the line, keeps a history per workspace
and across sessions, takes a paste of several lines as one message (bracketed paste; Alt-Enter
starts a new line by hand) and completes `/commands`, `@agents` and workspace paths. Without
one (a pipe, CI), `LineReader` reads standard input line by line, as scripted sessions expect.
Either way `read` returns None at the end of input and on Ctrl-C or Ctrl-D at the prompt.

The history files are opened with O_NOFOLLOW: a link planted at the workspace's `chat_history`
(created with the workspace, so a sandboxed command cannot plant one) is a WorkspaceError, and
the person's lines never go where it points.
"""

from __future__ import annotations

import asyncio
import datetime
import errno
import logging
import os
import stat
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

from prompt_toolkit import PromptSession
from prompt_toolkit.completion import CompleteEvent, Completer, Completion, PathCompleter
from prompt_toolkit.document import Document
from prompt_toolkit.history import FileHistory, History
from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent
from prompt_toolkit.patch_stdout import patch_stdout

from crew.errors import WorkspaceError
from crew.workspace.repo import CREW_FILES

Pause = Callable[[], AbstractContextManager[None]]
"""Held while the person types: the renderer's live area must not redraw over the prompt."""


log = logging.getLogger("crew.chat")


class LineReader:
    """Lines of standard input, read by a daemon thread so nothing blocks the event loop."""

    def __init__(self, write: Callable[[str], None], pause: Pause = nullcontext) -> None:
        self._write = write
        self._pause = pause
        self._loop = asyncio.get_running_loop()
        self._lines: asyncio.Queue[str | None] = asyncio.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in sys.stdin:
            self._loop.call_soon_threadsafe(self._lines.put_nowait, line.rstrip("\n"))
        self._loop.call_soon_threadsafe(self._lines.put_nowait, None)

    async def read(self, prompt: str) -> str | None:
        with self._pause():
            self._write(prompt)
            return await self._lines.get()


class _NoFollowHistory(FileHistory):
    """prompt_toolkit's FileHistory, never opening its file through a link."""

    def _open(self, flags: int) -> int:
        # O_NONBLOCK: a FIFO planted there opens without waiting for a writer, and is refused.
        flags |= os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
        try:
            fd = os.open(self.filename, flags, 0o600)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise WorkspaceError(f"{os.fsdecode(self.filename)} is a symbolic link, which crew never "
                                     "follows: "
                                     "remove it to keep the chat's history there") from None
            if exc.errno == errno.ENXIO:  # a FIFO with no reader, opened for writing
                raise WorkspaceError(f"{os.fsdecode(self.filename)} is not a regular file: remove it "
                                     "to keep the chat's history there") from None
            raise
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise WorkspaceError(f"{os.fsdecode(self.filename)} is not a regular file: remove it to keep "
                                 "the chat's history there")
        return fd

    def load_history_strings(self) -> Iterable[str]:
        # Runs in prompt_toolkit's own thread: an error here would be a traceback, not a line.
        try:
            fd = self._open(os.O_RDONLY)
        except (FileNotFoundError, WorkspaceError) as exc:
            if isinstance(exc, WorkspaceError):
                log.warning("chat history not read: %s", exc)
            return []
        with os.fdopen(fd, "rb") as handle:
            # FileHistory's own parser reads self.filename; hand it the bytes read here instead.
            lines = handle.read(16_000_000).decode("utf-8", errors="replace").splitlines()
        strings: list[str] = []
        current: list[str] = []
        for line in lines:
            if line.startswith("+"):
                current.append(line[1:])
            elif current:
                strings.append("\n".join(current))
                current = []
        if current:
            strings.append("\n".join(current))
        return list(reversed(strings))

    def store_string(self, string: str) -> None:
        fd = self._open(os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        with os.fdopen(fd, "ab") as handle:
            handle.write(f"\n# {datetime.datetime.now()}\n".encode())
            for line in string.split("\n"):
                handle.write(f"+{line}\n".encode("utf-8", errors="replace"))


class ChatHistory(History):
    """The person's messages: this workspace's first (newest first), then other sessions'."""

    def __init__(self, workspace_file: Path, shared_file: Path) -> None:
        super().__init__()
        shared_file.parent.mkdir(parents=True, exist_ok=True)
        self._files = [_NoFollowHistory(workspace_file), _NoFollowHistory(shared_file)]

    def load_history_strings(self) -> Iterable[str]:
        seen: set[str] = set()
        for history in self._files:
            for text in history.load_history_strings():
                if text not in seen:
                    seen.add(text)
                    yield text

    def store_string(self, string: str) -> None:
        for history in self._files:
            history.store_string(string)


class ChatCompleter(Completer):
    """`/commands` at the start, `@agent` names, and otherwise paths inside the workspace."""

    def __init__(self, commands: Sequence[str], agents: Sequence[str], root: Path) -> None:
        self.commands = commands
        self.agents = [f"@{name.lower()}" for name in agents]
        hidden = {".git", *CREW_FILES}
        self.paths = PathCompleter(get_paths=lambda: [str(root)],
                                   file_filter=lambda name: Path(name).name not in hidden)

    def get_completions(self, document: Document, complete_event: CompleteEvent) -> Iterator[Completion]:
        text = document.text_before_cursor
        word = document.get_word_before_cursor(WORD=True)
        if text.startswith("/") and " " not in text:
            yield from _starting(self.commands, text)
        elif word.startswith("@"):
            yield from _starting(self.agents, word, end=" ")
        elif word:
            yield from self.paths.get_completions(Document(word), complete_event)


def _starting(names: Sequence[str], typed: str, end: str = "") -> Iterator[Completion]:
    for name in names:
        if name.startswith(typed):
            yield Completion(name + end, start_position=-len(typed), display=name)


def _bindings() -> KeyBindings:
    keys = KeyBindings()

    @keys.add("escape", "enter")
    def _newline(event: KeyPressEvent) -> None:
        """Alt-Enter: a new line in the message (Enter sends it)."""
        event.current_buffer.insert_text("\n")

    return keys


class PromptReader:
    """The person's line editor on a terminal (prompt_toolkit)."""

    def __init__(self, history: History, completer: Completer, status: Callable[[], str] | None = None,
                 pause: Pause = nullcontext) -> None:
        self._pause = pause
        self._session: PromptSession[str] = PromptSession(
            history=history, completer=completer, complete_while_typing=False,
            key_bindings=_bindings(), bottom_toolbar=status, enable_suspend=True,
        )

    async def read(self, prompt: str) -> str | None:
        try:
            # patch_stdout: notices that come while the person types print above the prompt.
            # handle_sigint=False: crew's own SIGINT handler stays (prompt_toolkit would remove it).
            with self._pause(), patch_stdout(raw=True):
                return await self._session.prompt_async(prompt, handle_sigint=False)
        except (KeyboardInterrupt, EOFError):  # Ctrl-C, or Ctrl-D on an empty line
            return None
