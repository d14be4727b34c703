"""What a terminal shows: rich Markdown while a reply streams, the status line, plain text when asked."""

from __future__ import annotations

import io
import re

import pytest
from rich.console import Console

from crew.events import (
    AgentMessage,
    ModelLoaded,
    ModelLoadStarted,
    ModelUnloaded,
    ResidencyWaiting,
    RunFinished,
    RunStarted,
    StreamChunk,
)
from crew.residency.budget import GB
from crew.terminal import renderers
from crew.terminal.rich_renderer import MarkdownStream, RichRenderer
from crew.terminal.status_line import ResidencyStatus

ANSI = re.compile(r"\x1b\[[0-9;?]*[a-zA-Z]")
REPLY = ("## Plan\n\n- write `greet`\n- test it\n\n"
         "```python\ndef greet(name):\n    return name\n```\nNEXT: Reviewer\n")


def terminal() -> tuple[Console, io.StringIO]:
    screen = io.StringIO()
    return Console(file=screen, force_terminal=True, width=80, color_system="truecolor"), screen


def every_chunk_renders(monkeypatch: pytest.MonkeyPatch) -> None:
    """A clock on which a second passes between any two readings: every chunk is rendered."""
    ticks = iter(range(10**9))
    monkeypatch.setattr("crew.terminal.rich_renderer.time.monotonic", lambda: float(next(ticks)))


def test_a_streamed_reply_is_markdown_with_highlighted_code(monkeypatch: pytest.MonkeyPatch) -> None:
    every_chunk_renders(monkeypatch)  # the live part too
    console, screen = terminal()
    render = RichRenderer(console)
    render(RunStarted(workspace="w", models={"Coder": "qwen3-coder:30b"}, budget=48 * GB))
    for piece in re.findall(r".{1,7}", REPLY, re.S):
        render(StreamChunk(source="Coder", text=piece))
    render(AgentMessage(source="Coder", content=REPLY))
    render(RunFinished(approved=True, stop_reason="approved"))
    raw = screen.getvalue()
    text = ANSI.sub("", raw)
    assert "Coder (qwen3-coder:30b)" in text
    assert "## Plan" not in text and "Plan" in text  # a heading, not its source
    assert "• write greet" in text and "```" not in text
    code_line = next(line for line in raw.splitlines() if "greet" in line and "def" in line)
    assert "\x1b[38;2;" in code_line  # the code block is highlighted
    assert "NEXT: Reviewer" in text


def test_every_line_of_a_streamed_reply_is_printed_once_for_good(monkeypatch: pytest.MonkeyPatch) -> None:
    every_chunk_renders(monkeypatch)
    console, _ = terminal()
    stream = MarkdownStream(console)
    text = "".join(f"line {n}\n" for n in range(20))
    printed = []
    for piece in re.findall(r".{1,5}", text, re.S):
        printed += stream.add(piece)
    assert printed and len(printed) < 20  # the end stays live until the reply is complete
    printed += stream.finish()
    lines = ["".join(segment.text for segment in line).strip() for line in printed]
    assert [line for line in lines if line] == [f"line {n}" for n in range(20)]


def test_the_status_line_follows_the_residency_events() -> None:
    status = ResidencyStatus()
    status.observe(RunStarted(workspace="w", budget=48 * GB))
    assert status.line() == "no model resident · 0.0 of 48.0 GB (0%)"
    status.observe(ModelLoadStarted(model="qwen3:14b", bytes=9 * GB, reason="r"))
    assert status.line().endswith("loading qwen3:14b (9.0 GB)")
    status.observe(ModelLoaded(model="qwen3:14b", bytes=9 * GB, seconds=1, reason="r"))
    status.observe(ModelLoaded(model="qwen3-coder:30b", bytes=19 * GB, seconds=1, reason="r"))
    assert status.line() == "qwen3:14b 9.0 GB · qwen3-coder:30b 19.0 GB · 28.0 of 48.0 GB (58%)"
    status.observe(ResidencyWaiting(model="big", bytes=40 * GB, blocked_by=["qwen3:14b"]))
    assert status.line().endswith("waiting for memory: big (held by qwen3:14b)")
    status.observe(ModelUnloaded(model="qwen3:14b", bytes=9 * GB, seconds=1, reason="r", evicted_for="big"))
    assert status.line().startswith("qwen3-coder:30b 19.0 GB · 19.0 of 48.0 GB (40%)")


def test_the_status_line_is_drawn_under_the_reply_while_the_team_works() -> None:
    console, screen = terminal()
    render = RichRenderer(console)
    render(RunStarted(workspace="w", budget=48 * GB))
    render(ModelLoadStarted(model="qwen3:14b", bytes=9 * GB, reason="r"))
    assert "loading qwen3:14b (9.0 GB)" in ANSI.sub("", screen.getvalue())
    with render.prompting():  # the person types: nothing is drawn
        before = screen.getvalue()
        render(ModelLoaded(model="qwen3:14b", bytes=9 * GB, seconds=1, reason="r"))
        assert "0.0 of 48.0 GB" not in screen.getvalue()[len(before):]
        assert "9.0 of 48.0 GB" not in screen.getvalue()[len(before):]


@pytest.mark.parametrize(("tty", "env", "plain"), [
    (True, {}, False), (False, {}, True), (True, {"NO_COLOR": "1"}, True), (True, {"TERM": "dumb"}, True),
])
def test_plain_output_where_stdout_is_no_terminal_or_no_color_is_set(
    monkeypatch: pytest.MonkeyPatch, tty: bool, env: dict[str, str], plain: bool,
) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr("sys.stdout.isatty", lambda: tty)
    assert isinstance(renderers.for_terminal(), renderers.PlainRenderer) is plain


def test_rendering_a_long_reply_takes_at_most_a_tenth_of_a_core(monkeypatch: pytest.MonkeyPatch) -> None:
    """A render that costs 50 ms, 30 chunks a second for 60 s: without the bound it would take
    every moment of a core (and fall behind); with it, renders are spaced ten times their cost."""
    clock = [0.0]
    monkeypatch.setattr("crew.terminal.rich_renderer.time.monotonic", lambda: clock[0])
    stream = MarkdownStream(terminal()[0])
    rendered = []

    def costly() -> list:  # type: ignore[type-arg]
        clock[0] += 0.05
        rendered.append(clock[0])
        return []

    monkeypatch.setattr(stream, "_lines", costly)
    for n in range(30 * 60):
        clock[0] = max(clock[0], n / 30)
        stream.add("x")
    assert 0.05 * len(rendered) <= 0.1 * 60 + 0.05  # a tenth of the minute, give or take one render
    assert len(rendered) >= 100  # and it still renders, about twice a second
