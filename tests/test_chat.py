"""`crew chat` driven as a person would: the real program in a pseudo-terminal, the screen read back."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import pytest

from crew.residency.budget import GB
from crew.terminal.cli import main
from tests.fake_ollama import FakeOllama, FakeReply
from tests.helpers import ARCHITECT, CODER, REVIEWER
from tests.test_run import HELLO

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "you>"  # prompt_toolkit draws the space after it by moving the cursor
ANSI = re.compile(r"\x1b\[[0-9;?]*[a-zA-Z]")


class Terminal:
    """A program on a pseudo-terminal; `expect` waits for text to appear on its screen."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str]) -> None:
        master, slave = pty.openpty()
        # A screen of 40 rows of 120 columns: prompt_toolkit and rich lay out to it.
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        self.proc = subprocess.Popen(args, cwd=cwd, env=env, stdin=slave, stdout=slave, stderr=slave,
                                     start_new_session=True)
        os.close(slave)
        self.master = master
        self.screen = ""
        self.seen = 0

    def expect(self, text: str, guard_s: float = 60) -> str:
        """Output up to and including `text` (searched after the previous match)."""
        deadline = time.monotonic() + guard_s  # a guard against a hang, not a timing
        while text not in self.screen[self.seen:]:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"never saw {text!r}; screen:\n{self.screen[-3000:]}"
            ready, _, _ = select.select([self.master], [], [], remaining)
            if ready:
                try:
                    chunk = os.read(self.master, 65536).decode(errors="replace")
                except OSError:
                    chunk = ""
                if not chunk:
                    assert text in self.screen[self.seen:], f"exited before {text!r}:\n{self.screen[-3000:]}"
                self.screen += ANSI.sub("", chunk.replace("\r", ""))
        end = self.screen.index(text, self.seen) + len(text)
        shown, self.seen = self.screen[self.seen:end], end
        return shown

    def send(self, line: str) -> None:
        """Type `line` and press Enter."""
        self.type(line + "\r")

    def ask(self, line: str, until: str) -> str:
        """Send `line`; the output up to `until`, once the prompt is back after it."""
        self.send(line)
        shown = self.expect(until)
        self.expect(PROMPT)
        return shown

    def type(self, keys: str) -> None:
        os.write(self.master, keys.encode())

    def finish(self) -> int:
        try:
            while True:
                ready, _, _ = select.select([self.master], [], [], 30)
                if not ready:
                    break
                chunk = os.read(self.master, 65536).decode(errors="replace")
                if not chunk:
                    break
                self.screen += ANSI.sub("", chunk.replace("\r", ""))
        except OSError:
            pass
        return self.proc.wait(timeout=60)


def start_env(fake: FakeOllama) -> dict[str, str]:
    env = dict(os.environ)  # clean_env removed CREW_*, OLLAMA_* but the state dir
    env.update(PYTHONPATH=str(ROOT), CREW_OLLAMA_HOST=fake.url, CREW_MEMORY_BUDGET_GB="60", TERM="xterm",
               PROMPT_TOOLKIT_NO_CPR="1")  # no terminal answers prompt_toolkit's cursor queries here
    return env


def start(fake: FakeOllama, cwd: Path, *args: str) -> Terminal:
    return Terminal([sys.executable, "-m", "crew", "chat", *args], cwd, start_env(fake))


@pytest.mark.slow
def test_a_whole_chat_session(ollama: FakeOllama, clean_env: Path) -> None:
    ollama.capacity = 60 * GB
    ollama.script(ARCHITECT, "1. Create hello.py with greet(name).\nNEXT: Coder",
                  "Noted: a README comes next time.\nNEXT: You")
    ollama.script(
        CODER,
        FakeReply(content="", tool_calls=[{"name": "write_file",
                                           "arguments": {"path": "hello.py", "content": HELLO}}]),
        "Wrote hello.py.\nNEXT: Reviewer",
        "Made it async as asked.\nNEXT: You",
    )
    ollama.script(REVIEWER, "Looks right.\nAPPROVED")
    (clean_env / "spec.md").write_text("Write hello.py with a greet(name) function.\n")
    term = start(ollama, clean_env, "spec.md")

    first = term.expect(PROMPT)
    assert "── Architect (qwen3-coder-next:q4_K_M) ──" in first
    assert "── Coder (qwen3-coder:30b) ──" in first and "Wrote hello.py." in first
    assert "── Reviewer (qwen3:14b) ──" in first and "APPROVED" in first
    assert "loading qwen3:14b" in first

    assert "qwen3:14b" in term.ask("/ps", "GB budget")
    assert "+def greet(name):" in term.ask("/diff", "+    return")
    term.ask("/frobnicate", "unknown command /frobnicate")

    shown = term.ask("@coder make it async", "Made it async")  # the person speaks, to one agent
    assert "── Coder (qwen3-coder:30b) ──" in shown
    assert "Architect" not in shown
    assert ollama.chats[-1]["model"] == CODER
    assert "make it async" in ollama.chats[-1]["messages"][-1]["content"]

    (workspace,) = (clean_env / "workspaces").iterdir()
    assert (workspace / "hello.py").exists()
    term.ask("/undo", "undone: crew turn: Coder")  # the last agent edit was the Coder's write_file
    assert not (workspace / "hello.py").exists()

    again = term.ask("plan a README for next time", "Noted: a README")  # to the team
    assert "── Architect (qwen3-coder-next:q4_K_M) ──" in again

    term.ask("/save", "saved to")

    term.send("/quit")
    term.expect("crew chat --resume")
    assert term.finish() == 0
    assert (workspace / "state.json").is_file()
    transcript = (workspace / "transcript.md").read_text()
    assert "## You" in transcript and "make it async" in transcript

    again_term = start(ollama, clean_env, "--resume", str(workspace))
    assert "(resumed)" in again_term.expect(PROMPT)
    again_term.ask("/models", "qwen3-coder:30b")
    again_term.send("/quit")
    assert again_term.finish() == 0


UP, TAB, CTRL_C, CTRL_D = "\x1b[A", "\t", "\x03", "\x04"


def paste(text: str) -> str:
    """What a terminal sends for pasted text (bracketed paste, which prompt_toolkit turns on)."""
    return f"\x1b[200~{text}\x1b[201~"


@pytest.mark.slow
def test_line_editing_paste_history_completion_and_ctrl_c(ollama: FakeOllama, clean_env: Path) -> None:
    ollama.capacity = 60 * GB
    gate = threading.Event()
    ollama.script(ARCHITECT, "Three lines read.\nNEXT: You", "Read again.\nNEXT: You", "Fine.\nNEXT: Coder",
                  FakeReply(content="A very long plan", gate=gate), "Short plan.\nNEXT: You")
    ollama.script(CODER, "Async now.\nNEXT: You", "Async again.\nNEXT: You")
    term = start(ollama, clean_env)
    try:
        term.expect(PROMPT)
        pasted = "the trace:\n  File 'a.py', line 3\nZeroDivisionError"
        term.type(paste(pasted) + "\r")
        term.expect("Three lines read.")
        term.expect(PROMPT)
        assert [c["model"] for c in ollama.chats] == [ARCHITECT]  # one message, one turn
        assert ollama.chats[0]["messages"][-1]["content"].endswith(pasted)

        term.type(UP + "\r")  # the last message, recalled and sent again
        term.expect("Read again.")
        term.expect(PROMPT)
        assert ollama.chats[-1]["messages"][-1]["content"].endswith(pasted)

        term.type("/di" + TAB)  # completes to /diff
        term.expect("/diff")  # as a person would, Enter once the completion shows
        term.type("\r")
        term.expect("(no changes yet)")
        term.expect(PROMPT)

        term.type("@co" + TAB)  # completes to "@coder "
        term.expect("@coder")
        term.type("make it async\r")
        term.expect("Async now.")
        term.expect(PROMPT)
        assert ollama.chats[-1]["model"] == CODER
        assert "make it async" in ollama.chats[-1]["messages"][-1]["content"]

        term.type(CTRL_D)  # on an empty line: the end of the session, as today
        term.expect("crew chat --resume")
        assert term.finish() == 0
    finally:
        if term.proc.poll() is None:
            term.proc.kill()

    # A new session in a new workspace: the history of the last one is there.
    later = start(ollama, clean_env)
    try:
        later.expect(PROMPT)
        later.type(UP + "\r")
        later.expect("Async again.")
        later.expect(PROMPT)
        assert ollama.chats[-1]["model"] == CODER
        assert "@coder make it async" in ollama.chats[-1]["messages"][1]["content"]  # the task

        ollama.generating.clear()
        later.send("plan a todo app")
        assert ollama.generating.wait(60)
        later.proc.send_signal(signal.SIGINT)  # Ctrl-C during a reply: the floor comes back
        later.expect("interrupted: your turn")
        later.expect(PROMPT)
        later.ask("plan it shorter", "Short plan.")
        later.type(CTRL_C)  # at the prompt: the end of the session, as today
        later.expect("crew chat --resume")
        assert later.finish() == 0
    finally:
        gate.set()
        if later.proc.poll() is None:
            later.proc.kill()


def test_piped_input_is_read_line_by_line_as_plain_text(
    ollama: FakeOllama, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    ollama.capacity = 60 * GB
    ollama.script(ARCHITECT, "First.\nNEXT: You", "Second.\nNEXT: You")
    monkeypatch.setenv("CREW_OLLAMA_HOST", ollama.url)
    monkeypatch.setenv("CREW_MEMORY_BUDGET_GB", "60")
    monkeypatch.setattr("sys.stdin", io.StringIO("one line\nanother line\n/models\n"))
    assert main(["chat"]) == 0
    # Each line a message, as before the line editor: a script's lines are not one paste.
    assert [c["messages"][-1]["content"] for c in ollama.chats] == ["one line", "[You]\nanother line"]
    out, err = capsys.readouterr()
    assert out.count("you> ") == 4 and "qwen3-coder:30b" in out
    assert "\x1b[" not in out + err  # no colour, no cursor movement
