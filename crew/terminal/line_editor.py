"""What the person types in `crew chat`: a line editor on a terminal, plain lines otherwise.

On a terminal, `PromptReader` (prompt_toolkit) edits the line, keeps a history per workspace
and across sessions, takes a paste of several lines as one message (bracketed paste; Alt-Enter
starts a new line by hand) and completes `/commands`, `@agents` and workspace paths. Without
one (a pipe, CI), `LineReader` reads standard input line by line, as scripted sessions expect.
Either way `read` returns None at the end of input and on Ctrl-C or Ctrl-D at the prompt.
"""

from __future__ import annotations

import asyncio
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

from crew.workspace.repo import CREW_FILES

Pause = Callable[[], AbstractContextManager[None]]
"""Held while the person types: the renderer's live area must not redraw over the prompt."""


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


class ChatHistory(History):
    """The person's messages: this workspace's first (newest first), then other sessions'."""

    def __init__(self, workspace_file: Path, shared_file: Path) -> None:
        super().__init__()
        shared_file.parent.mkdir(parents=True, exist_ok=True)
        self._files = [FileHistory(workspace_file), FileHistory(shared_file)]

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
