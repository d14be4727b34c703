"""`crew` on a terminal: replies as Markdown while they stream, and a residency status line.

A reply is re-rendered as Markdown as it grows. Its lines that can no longer change are
printed once, for good (so the terminal's scrollback holds the whole conversation); its last
few lines and the status line below them live in a `rich.live.Live` area that is redrawn.
While the person types (`prompting`), the live area is gone and nothing redraws.

Model text goes through `safe_text` twice: before Markdown parses it (so what is escaped is
laid out at its shown width) and on every segment Markdown renders (Markdown makes characters
of its own: `&#x202e;` is a bidi override). Links show their address instead of hiding it in
an OSC 8 hyperlink.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console, ConsoleOptions, RenderableType, RenderResult
from rich.live import Live
from rich.markdown import Markdown
from rich.rule import Rule
from rich.segment import Segment, Segments
from rich.text import Text

from crew.routing import HUMAN
from crew.safe_text import safe_text
from crew.terminal.notices import header, notice, started_notices
from crew.terminal.status_line import ResidencyStatus

Lines = list[list[Segment]]


class ChatMarkdown(Markdown):
    """Markdown where a line break stays a line break, as in chat: agents end a reply with
    `NEXT: Coder` on a line of its own, which CommonMark would join to the sentence before.
    A link shows its address: no OSC 8 hyperlink hides where it goes."""

    def __init__(self, markup: str) -> None:
        super().__init__(safe_text(markup), code_theme="monokai", hyperlinks=False)
        for token in self.parsed:
            for child in token.children or []:
                if child.type == "softbreak":
                    child.type = "hardbreak"


class Escaped:
    """A renderable with the text of every segment it renders passed through `safe_text`."""

    def __init__(self, renderable: RenderableType) -> None:
        self.renderable = renderable

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        for segment in console.render(self.renderable, options):
            yield segment if segment.control else Segment(safe_text(segment.text), segment.style)


def shown(markup: str) -> Escaped:
    """A reply as the terminal shows it: chat Markdown, escaped before and after rendering."""
    return Escaped(ChatMarkdown(markup))


class MarkdownStream:
    """A reply rendered as Markdown while it streams."""

    LIVE_LINES = 6
    """The last lines of a reply may still change (a paragraph reflows, a table grows)."""
    RENDER_EVERY_S = 0.1
    """Re-rendering the whole reply on every token would cost O(n²) on a long one."""
    CPU_SHARE = 0.1
    """At most this share of a core goes to rendering: the gap between two renders grows with
    their cost (an 8 KB reply takes ~0.05 s to render), so a model on the same CPU keeps the rest."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.text = ""
        self.printed = 0
        self.tail: Lines = []
        self._next_render = 0.0

    def _lines(self) -> Lines:
        return self.console.render_lines(shown(self.text), self.console.options, pad=False)

    def add(self, text: str) -> Lines:
        """Take streamed text; the lines that became final (to print once), if it was time to render."""
        self.text += text
        started = time.monotonic()
        if started < self._next_render:
            return []
        lines = self._lines()
        cost = time.monotonic() - started
        self._next_render = started + max(self.RENDER_EVERY_S, cost / self.CPU_SHARE)
        stable = max(self.printed, len(lines) - self.LIVE_LINES)
        final, self.printed, self.tail = lines[self.printed:stable], stable, lines[stable:]
        return final

    def finish(self) -> Lines:
        """The reply is complete: every line not printed yet."""
        lines = self._lines()
        self.tail = []
        return lines[self.printed:]


def _segments(lines: Lines) -> Segments:
    return Segments(segment for line in lines for segment in (*line, Segment.line()))


class _LiveArea:
    """What the live area shows: the unfinished end of a reply, then the status line."""

    def __init__(self, renderer: RichRenderer) -> None:
        self.renderer = renderer

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        stream = self.renderer.stream
        if stream is not None and stream.tail:
            yield _segments(stream.tail)
        yield Text(self.renderer.status.line(), style="reverse", no_wrap=True, overflow="ellipsis")


class RichRenderer:
    """Events on a terminal with rich; notices dimmed, the residency status line at the bottom."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(highlight=False)
        self.workspace: str | None = None
        self.status = ResidencyStatus()
        self.stream: MarkdownStream | None = None
        self._stream_source: str | None = None
        self._models: dict[str, str] = {}
        self._speaking: str | None = None
        self._live: Live | None = None
        self._running = False
        self._paused = False

    # -- the live area ----------------------------------------------------------------------

    def _refresh(self) -> None:
        if not self._running or self._paused:
            return
        if self._live is None:
            self._live = Live(_LiveArea(self), console=self.console, auto_refresh=False, transient=True,
                              redirect_stdout=True, redirect_stderr=True)
            self._live.start()
        self._live.refresh()

    def _stop_live(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    @contextmanager
    def prompting(self) -> Iterator[None]:
        """While the person types: no live area, nothing redrawn over their prompt."""
        self._paused = True
        self._stop_live()
        try:
            yield
        finally:
            self._paused = False

    def close(self) -> None:
        self._end_stream()
        self._running = False
        self._stop_live()

    # -- output ----------------------------------------------------------------------------

    def _note(self, text: str) -> None:
        self.console.print(Text(safe_text(text), style="dim"))

    def _header(self, source: str) -> None:
        if self._speaking != source:
            self._end_stream()
            title = Text(safe_text(header(source, self._models.get(source))))
            self.console.print(Rule(title, style="cyan"))
            self._speaking = source

    def _end_stream(self) -> None:
        if self.stream is not None:
            self.console.print(_segments(self.stream.finish()))
            self.stream = None
            self._stream_source = None

    def __call__(self, event: Any) -> None:
        self.status.observe(event)
        kind = event.type
        if kind == "run_started":
            self.workspace = event.workspace
            self._models = dict(event.models)
            self._running = True
            for line in started_notices(event):
                self._note(line)
        elif kind == "chunk":
            self._header(event.source)
            if self.stream is None:
                self.stream, self._stream_source = MarkdownStream(self.console), event.source
            final = self.stream.add(event.text)
            if final:
                self.console.print(_segments(final))
        elif kind == "message":
            if event.source == "user":
                self._note(f"task: {event.content.strip().splitlines()[0][:100]}")
            elif event.source == HUMAN:
                pass  # already on the screen, as the person typed it at the prompt
            elif self._stream_source == event.source:
                self._end_stream()
            else:
                self._header(event.source)
                self.console.print(shown(event.content))
        elif kind == "run_finished":
            self.close()
            return
        elif (text := notice(event)) is not None:
            self._note(text)
        self._refresh()
