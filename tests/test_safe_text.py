"""A terminal nobody else writes to: what a model says reaches the screen escaped.

Each attack is a model reply (and a tool call, a file name) carrying terminal sequences: OSC 52
(the clipboard), OSC 8 (a hidden link), the window title, clear screen, DCS, the one-character
C1 forms, BEL/BS/CR, and the bidi overrides of Trojan Source. The assertions are on the bytes
that reached stdout and stderr, and on events.jsonl, which must keep the exact text.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from crew.commands.review import ReviewOutcome, render_markdown
from crew.events import ModelLoaded, ModelLoadStarted, RoutingDecision, RunFinished
from crew.reports import timeline
from crew.safe_text import json_safe, safe_text
from crew.terminal import renderers
from crew.terminal.cli import main
from tests.fake_ollama import GB, FakeOllama, FakeReply
from tests.helpers import ARCHITECT, CODER, REVIEWER

OSC52 = "\x1b]52;c;cm0gLXJmIH4K\x07"  # the clipboard becomes `rm -rf ~`
OSC8 = "\x1b]8;;https://evil.example/\x1b\\docs\x1b]8;;\x1b\\"
TITLE = "\x1b]0;sudo password:\x07"
CLEAR = "\x1b[2J\x1b[H"
DCS = "\x1bP+q544e\x1b\\"
C1 = "\x9b2J\x9d0;title\x9c"
BIDI = "if admin:\u202e } \u2066x\u2069 \u202a\u202b\u202c\u202d\u2067\u2068"
SMALL = "bell\x07 back\x08 over\rwrite del\x7f"
ENTITY = "&#x202e;&#x2066;"  # Markdown turns these into the characters themselves
ATTACK = " ".join([OSC52, OSC8, TITLE, CLEAR, DCS, C1, BIDI, SMALL, ENTITY]) + "\nNEXT: Reviewer"
FILE = "hello\x1b]0;own\x07\u202e.py"

UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
RICH_OWN = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\r")  # rich's colours, cursor moves, line redraws


def unsafe_in(text: str) -> list[str]:
    return UNSAFE.findall(text.replace("\n", "").replace("\t", ""))


@pytest.fixture
def team(ollama: FakeOllama, monkeypatch: pytest.MonkeyPatch, clean_env: Path) -> FakeOllama:
    """A run whose every model answers with the attack, in text and in a tool call."""
    monkeypatch.setenv("CREW_OLLAMA_HOST", ollama.url)
    monkeypatch.setenv("CREW_MEMORY_BUDGET_GB", "60")
    ollama.capacity = 60 * GB
    ollama.script(ARCHITECT, ATTACK.replace("Reviewer", "Coder"))
    ollama.script(CODER, FakeReply("", tool_calls=[{"name": "write_file",
                                                    "arguments": {"path": FILE, "content": ATTACK}}]),
                  FakeReply("", tool_calls=[{"name": "read_file", "arguments": {"path": "no" + FILE}}]),
                  ATTACK)
    ollama.script(REVIEWER, ATTACK.replace("NEXT: Reviewer", "APPROVED"))
    (clean_env / "spec.md").write_text("Write hello.py.\n")
    return ollama


def events_of(folder: Path) -> list[dict[str, object]]:
    (workspace,) = (folder / "workspaces").iterdir()
    return [json.loads(line) for line in (workspace / "events.jsonl").read_text().splitlines()]


def assert_events_keep_the_exact_text(folder: Path) -> None:
    said = [e["content"] for e in events_of(folder) if e["type"] == "message" and e["source"] != "user"]
    assert ATTACK in said  # what the model said, byte for byte


@pytest.mark.hostile
def test_plain_output_shows_every_sequence_escaped(team: FakeOllama, clean_env: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "spec.md"]) == 0
    out, err = capsys.readouterr()
    assert unsafe_in(out) == [] and unsafe_in(err) == []
    assert "\\x1b]52;c;cm0gLXJmIH4K\\x07" in out and "\\u202e" in out and "\\x9b2J" in out
    assert "0;own" in err and "\\u202e.py" in err  # the file name, in the tool call notices
    assert_events_keep_the_exact_text(clean_env)


@pytest.mark.hostile
def test_rich_output_shows_every_sequence_escaped(team: FakeOllama, clean_env: Path,
                                                  capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(renderers, "rich_wanted", lambda: True)
    monkeypatch.setenv("FORCE_COLOR", "1")  # rich writes to a terminal: colours, live redraws
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["run", "spec.md"]) == 0
    out, err = capsys.readouterr()
    assert "\x1b[" in out  # it really was rich on a terminal
    assert "\x1b]" not in out and "\x1bP" not in out and "\x1b[2J" not in out  # no OSC, DCS of any kind
    assert unsafe_in(RICH_OWN.sub("", out)) == [] and unsafe_in(err) == []
    text = RICH_OWN.sub("", out)
    assert "\\x1b]52;c;cm0gLXJmIH4K\\x07" in text and "\\x9d0;title\\x9c" in text
    assert "\\u202e;\\u2066" in text or "\\u202e\\u2066" in text  # the entities, escaped too
    assert_events_keep_the_exact_text(clean_env)


@pytest.mark.hostile
def test_json_lines_keep_the_exact_text_without_raw_c1_or_bidi(team: FakeOllama, clean_env: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "spec.md", "--json"]) == 0
    out = capsys.readouterr().out
    assert unsafe_in(out) == []
    said = [json.loads(line) for line in out.splitlines()]
    assert ATTACK in [e.get("content") for e in said if e["type"] == "message"]
    assert_events_keep_the_exact_text(clean_env)


@pytest.mark.hostile
def test_timeline_review_and_runs_table_escape_what_they_show(
    clean_env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = "evil\x1b]52;c;eA==\x07:1b"
    events = [ModelLoadStarted(model=model, bytes=GB, reason=ATTACK, ts=1.0),
              ModelLoaded(model=model, bytes=GB, seconds=1.0, reason="r", ts=2.0),
              RoutingDecision(speaker="\x1bCoder", reason="r", ts=2.0),
              RunFinished(approved=False, stop_reason="x", ts=3.0)]
    drawn = "\n".join(timeline.render(timeline.build(events)))
    assert unsafe_in(drawn) == [] and "evil\\x1b]52;c;eA==\\x07:1b" in drawn
    review = render_markdown(ReviewOutcome(False, ATTACK, [
        {"path": FILE, "line": 1, "severity": "major", "message": ATTACK}], ["reviewer"], 3, [ATTACK]))
    assert unsafe_in(review) == []
    # `crew runs`: the table shows run folders and specs from the workspace.
    monkeypatch.setenv("CREW_WORKSPACES_DIR", str(clean_env / "ws"))
    run = clean_env / "ws" / "run\x1b]0;t\x07"
    run.mkdir(parents=True)
    (run / "summary.json").write_text(json.dumps({
        "spec": ATTACK, "started": 1.0, "seconds": 1.0, "verdict": "approved",
        "totals": {"loads": 1, "prompt_tokens": 1, "completion_tokens": 1}}))
    assert main(["runs"]) == 0
    listed = capsys.readouterr().out
    assert unsafe_in(listed) == [] and "run\\x1b]0;t\\x07" in listed


def test_safe_text_escapes_each_character_and_json_safe_keeps_the_value() -> None:
    assert safe_text("a\tb\nc") == "a\tb\nc"
    assert safe_text("x\r\ny\rz") == "x\ny\\x0dz"
    assert safe_text("\x1b]52;c;e\x07") == "\\x1b]52;c;e\\x07"
    assert safe_text("\x9b\u202e\u2069") == "\\x9b\\u202e\\u2069"
    # A sequence split across streamed chunks is escaped the same as whole.
    assert safe_text(OSC52[:3]) + safe_text(OSC52[3:]) == safe_text(OSC52)
    line = json.dumps({"t": ATTACK}, ensure_ascii=False)
    assert unsafe_in(json_safe(line)) == [] and json.loads(json_safe(line)) == {"t": ATTACK}


def test_what_a_person_cannot_see_is_shown_escaped_but_joiners_stay() -> None:
    from crew.safe_text import one_line

    hidden = "run\u200b rm\U000e0041\U000e0042 -rf\u2060 /\ufeff\u200f"
    shown = safe_text(hidden)
    assert shown == "run\\u200b rm\\U000e0041\\U000e0042 -rf\\u2060 /\\ufeff\\u200f"
    assert safe_text("👨\u200d👩\u200d👧 می\u200cخواهم") == "👨\u200d👩\u200d👧 می\u200cخواهم"
    assert one_line("a\nb\tc\x1b") == "a\\x0ab\\x09c\\x1b"
