"""`crew chat` driven as a person would: the real program in a pseudo-terminal, the screen read back."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from crew.memory import GB
from tests.fake_ollama import FakeOllama, FakeReply
from tests.helpers import ARCHITECT, CODER, REVIEWER
from tests.test_run import HELLO

ROOT = Path(__file__).resolve().parent.parent
ANSI = re.compile(r"\x1b\[[0-9;?]*[a-zA-Z]")


class Terminal:
    """A program on a pseudo-terminal; `expect` waits for text to appear on its screen."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str]) -> None:
        master, slave = pty.openpty()
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
        os.write(self.master, (line + "\n").encode())

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


def start(fake: FakeOllama, cwd: Path, *args: str) -> Terminal:
    env = dict(os.environ)  # clean_env removed CREW_*, OLLAMA_* but the state dir
    env.update(PYTHONPATH=str(ROOT), CREW_OLLAMA_HOST=fake.url, CREW_MEMORY_BUDGET_GB="60", TERM="xterm")
    return Terminal([sys.executable, "-m", "crew", "chat", *args], cwd, env)


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

    first = term.expect("you> ")
    assert "── Architect (qwen3-coder-next:q4_K_M) ──" in first
    assert "── Coder (qwen3-coder:30b) ──" in first and "Wrote hello.py." in first
    assert "── Reviewer (qwen3:14b) ──" in first and "APPROVED" in first
    assert "loading qwen3:14b" in first

    term.send("/ps")
    ps = term.expect("you> ")
    assert "qwen3:14b" in ps and "GB budget" in ps

    term.send("/diff")
    assert "+def greet(name):" in term.expect("you> ")

    term.send("/frobnicate")
    assert "unknown command /frobnicate" in term.expect("you> ")

    term.send("@coder make it async")  # the person speaks, to one agent
    shown = term.expect("you> ")
    assert "── Coder (qwen3-coder:30b) ──" in shown and "Made it async" in shown
    assert "Architect" not in shown
    assert ollama.chats[-1]["model"] == CODER
    assert "make it async" in ollama.chats[-1]["messages"][-1]["content"]

    (workspace,) = (clean_env / "workspaces").iterdir()
    assert (workspace / "hello.py").exists()
    term.send("/undo")  # the last agent edit was the Coder's write_file
    assert "undone: crew turn: Coder" in term.expect("you> ")
    assert not (workspace / "hello.py").exists()

    term.send("plan a README for next time")  # the person speaks again, to the team
    again = term.expect("you> ")
    assert "── Architect (qwen3-coder-next:q4_K_M) ──" in again and "Noted: a README" in again

    term.send("/save")
    assert "saved to" in term.expect("you> ")

    term.send("/quit")
    term.expect("crew chat --resume")
    assert term.finish() == 0
    assert (workspace / "state.json").is_file()
    transcript = (workspace / "transcript.md").read_text()
    assert "## You" in transcript and "make it async" in transcript

    again_term = start(ollama, clean_env, "--resume", str(workspace))
    assert "(resumed)" in again_term.expect("you> ")
    again_term.send("/models")
    assert "qwen3-coder:30b" in again_term.expect("you> ")
    again_term.send("/quit")
    assert again_term.finish() == 0


def test_ctrl_c_interrupts_a_turn_then_a_second_ends_the_session(ollama: FakeOllama, clean_env: Path) -> None:
    ollama.capacity = 60 * GB
    gate = threading.Event()
    ollama.script(ARCHITECT, FakeReply(content="A very long plan", gate=gate), "Short plan.\nNEXT: You")
    term = start(ollama, clean_env)
    try:
        term.expect("you> ")
        term.send("plan a todo app")
        assert ollama.generating.wait(60)
        term.proc.send_signal(signal.SIGINT)
        term.expect("interrupted: your turn")
        term.expect("you> ")
        term.send("plan it shorter")
        assert "Short plan." in term.expect("you> ")
        term.proc.send_signal(signal.SIGINT)  # at the prompt: end the session
        term.expect("crew chat --resume")
        assert term.finish() == 0
    finally:
        gate.set()
        if term.proc.poll() is None:
            term.proc.kill()
