"""How events appear: JSON lines, plain text, or (on a terminal) rich Markdown with a status line.

Part of the command line, the one layer that prints: the session below emits events and
never writes to the screen. `for_terminal` picks the renderer a command's output gets.
What a model or the workspace wrote reaches the screen through `safe_text` (no terminal
escapes, C1 controls or bidi overrides); `--json` keeps the exact text, JSON-escaped.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Protocol

from crew.safe_text import json_safe, safe_text
from crew.terminal.notices import header, notice, started_notices


class Renderer(Protocol):
    workspace: str | None

    def __call__(self, event: Any) -> None: ...

    def close(self) -> None:
        """The command is over (however it ended): finish what is on the screen."""


class JsonRenderer:
    """--json: every event as one JSON line on stdout."""

    def __init__(self) -> None:
        self.workspace: str | None = None

    def __call__(self, event: Any) -> None:
        if event.type == "run_started":
            self.workspace = event.workspace
        print(json_safe(event.model_dump_json()), flush=True)

    def close(self) -> None:
        pass


class PlainRenderer:
    """Content on stdout as it streams; routing and residency notices on stderr."""

    def __init__(self) -> None:
        self.workspace: str | None = None
        self._models: dict[str, str] = {}  # by agent name, as the session's backend runs them
        self._speaking: str | None = None
        self._midline = False
        self._streamed_for: str | None = None
        self._held_notes: list[str] = []  # notices that came in the middle of a streamed line

    def _header(self, source: str) -> None:
        if self._speaking != source:
            self._end_line()
            print(safe_text(f"\n── {header(source, self._models.get(source))} ──"), flush=True)
            self._speaking = source

    def _end_line(self) -> None:
        if self._midline:
            print(flush=True)
            self._midline = False
        self._flush_notes()

    def _note(self, text: str) -> None:
        text = safe_text(text)
        if self._midline:  # never split a line being streamed: show it once the line is done
            self._held_notes.append(text)
            return
        print(text, file=sys.stderr, flush=True)

    def _flush_notes(self) -> None:
        for text in self._held_notes:
            print(text, file=sys.stderr, flush=True)
        self._held_notes.clear()

    def __call__(self, event: Any) -> None:
        kind = event.type
        if kind == "run_started":
            self.workspace = event.workspace
            self._models = dict(event.models)
            for line in started_notices(event):
                self._note(line)
        elif kind == "chunk":
            self._header(event.source)
            print(safe_text(event.text), end="", flush=True)
            self._midline = not event.text.endswith("\n")
            self._streamed_for = event.source
            if not self._midline:
                self._flush_notes()
        elif kind == "message":
            if event.source == "user":
                self._note(f"task: {event.content.strip().splitlines()[0][:100]}")
            elif self._streamed_for == event.source:
                self._end_line()  # already shown as it streamed
            else:
                self._header(event.source)
                print(safe_text(event.content), flush=True)
            self._streamed_for = None
        elif kind == "run_finished":
            self.close()
        elif (text := notice(event)) is not None:
            self._note(text)

    def close(self) -> None:
        self._end_line()  # and the notices held back by a line that never ended


def rich_wanted() -> bool:
    """Rich output: stdout is a terminal and the person did not ask for plain text (NO_COLOR, dumb)."""
    return sys.stdout.isatty() and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"


def for_terminal() -> Renderer:
    """Rich Markdown and a status line on a terminal; plain lines when piped or NO_COLOR is set."""
    if rich_wanted():
        from crew.terminal.rich_renderer import RichRenderer

        return RichRenderer()
    return PlainRenderer()
