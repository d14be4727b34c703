"""`crew chat`: a person joins the team as a participant, in a terminal.

The person is an AutoGen UserProxyAgent ("You") in the same SelectorGroupChat. The selector
gives them the floor when the Reviewer approves, when an agent writes `NEXT: You`, or after
a streak of agent turns; `@coder ...` addresses one agent. Slash commands are answered
locally and never reach the models. Ctrl-C during an agent's turn cuts that turn and gives
the person the floor; Ctrl-C at the prompt, `/quit` or the end of input ends the session with
its state saved (`crew chat --resume workspaces/<id>`).

Agent edits are committed after each turn, so `/undo` can take back the last one.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from autogen_agentchat.agents import UserProxyAgent
from autogen_agentchat.base import TaskResult
from autogen_agentchat.messages import BaseChatMessage, TextMessage
from autogen_core import CancellationToken

from crew.commands.run import read_spec
from crew.errors import CrewError, WorkspaceError
from crew.events import Event, RoutingDecision
from crew.residency.budget import GB
from crew.routing import HUMAN, NAMES
from crew.session import Session, open_session
from crew.settings import Settings
from crew.team import Team, record
from crew.workspace import turns

PROMPT = "you> "
COMMANDS = ("/ps", "/models", "/diff", "/undo", "/save", "/help", "/quit")
HELP = (f"{' '.join(c for c in COMMANDS if c != '/help')} — or write to the team; @coder addresses one "
        "agent; Tab completes, Alt-Enter starts a new line")


class Reader(Protocol):
    """Where the person's lines come from (the terminal's line editor, or plain stdin)."""

    async def read(self, prompt: str) -> str | None: ...


@dataclass(frozen=True)
class ChatScreen:
    """How the session meets the person: set up by the command line, which owns the terminal."""

    write: Callable[[str], None]
    reader: Callable[[Path], Reader]
    """Given the workspace (history, path completion), the person's reader."""
    show_diff: Callable[[str], None] | None = None
    """Shows /diff's output (coloured on a terminal); default: `write`."""


class ChatSession:
    """The person's side of a session: the prompt, slash commands, Ctrl-C."""

    def __init__(self, session: Session, screen: ChatScreen) -> None:
        self.session = session
        self.settings = session.settings
        self.workspace = session.workspace
        self.manager = session.manager
        self.records = session.records
        self.write = screen.write
        self.show_diff = screen.show_diff or self.say
        self.team: Team | None = None
        self.reader: Reader | None = None
        self.at_prompt = False
        self.quit = asyncio.Event()
        self.token: CancellationToken | None = None
        # The person's turn starts only once everything said before it is on the screen: the
        # selector hands over while the team's output stream may still hold that message.
        self.turn_after: str | None = None
        self.shown: set[str] = set()
        self.replayed: set[str] = set()
        """Messages handed back to the team on a resume without saved state: recorded already."""
        self.shown_changed = asyncio.Event()

    def observe(self, event: Event) -> None:
        if isinstance(event, RoutingDecision) and event.speaker == HUMAN:
            self.turn_after = event.after

    def mark_shown(self, message_id: str) -> None:
        self.shown.add(message_id)
        self.shown_changed.set()
        self.shown_changed = asyncio.Event()

    def say(self, text: str) -> None:
        self.write(text + "\n")

    # -- the person's turn ------------------------------------------------------------------

    async def ask(self, prompt: str = "", token: CancellationToken | None = None) -> str:
        """The input_func of the person: slash commands are handled here until a message comes."""
        assert self.reader is not None
        while self.turn_after is not None and self.turn_after not in self.shown:
            await self.shown_changed.wait()
        self.turn_after = None
        self._prefetch_likely_next()
        while True:
            self.at_prompt = True
            line_task = asyncio.ensure_future(self.reader.read(PROMPT))
            quit_task = asyncio.ensure_future(self.quit.wait())
            done, _ = await asyncio.wait({line_task, quit_task}, return_when=asyncio.FIRST_COMPLETED)
            quit_task.cancel()
            self.at_prompt = False
            line = line_task.result() if line_task in done else None
            if line_task not in done:
                line_task.cancel()
            if line is None:  # end of input or Ctrl-C at the prompt
                self.write("\n")
                return "/quit"
            line = line.strip()
            if not line:
                continue
            if line == "/quit":
                return line
            if line.startswith("/"):
                await self.command(line)
                continue
            return line

    def _prefetch_likely_next(self) -> None:
        # While the person types, the Architect (who takes new requests) may load into free room.
        task = asyncio.ensure_future(self.manager.prefetch(self.session.choice.role("architect").model))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def command(self, line: str) -> None:
        name = line.split()[0]
        handlers = {"/ps": self.cmd_ps, "/models": self.cmd_models, "/diff": self.cmd_diff,
                    "/undo": self.cmd_undo, "/save": self.cmd_save, "/help": self.cmd_help}
        handler = handlers.get(name)
        if handler is None:
            self.say(f"unknown command {name}: {HELP}")
            return
        await handler()

    async def cmd_help(self) -> None:
        self.say(HELP)

    async def cmd_ps(self) -> None:
        snapshot = await self.manager.refresh()
        for slot in snapshot.slots:
            pinned = f", pinned x{slot.pins}" if slot.pins else ""
            self.say(f"  {slot.name:<28} {slot.bytes / GB:6.1f} GB  {slot.state}{pinned}")
        budget = snapshot.budget
        self.say(f"  {snapshot.used / GB:.1f} of {budget.gb:.1f} GB budget ({budget.source})")

    async def cmd_models(self) -> None:
        for role, rs in self.session.choice.roles.items():
            self.say(f"  {NAMES[role]:<10} {rs.model:<28} num_ctx {rs.num_ctx}")

    async def cmd_diff(self) -> None:
        diff = await asyncio.to_thread(self._diff)
        if diff:
            self.show_diff(diff)
        else:
            self.say("  (no changes yet)")

    def _diff(self) -> str:
        return turns.diff(self.workspace)

    async def cmd_undo(self) -> None:
        try:
            undone = await asyncio.to_thread(turns.undo_turn, self.workspace)
        except (WorkspaceError, OSError) as exc:
            self.say(f"  could not undo: {exc}")
            return
        if undone is None:
            self.say("  nothing to undo: no agent edit since the start")
            return
        self.say(f"  undone: {undone}")

    async def cmd_save(self) -> None:
        await self.save()
        self.say(f"  saved to {self.workspace.root / 'state.json'}")

    async def save(self) -> None:
        await self.session.save()

    # -- the agents' turns ------------------------------------------------------------------

    def commit_turn(self, source: str) -> str | None:
        """Record an agent's edits for /undo (off the event loop); what to tell the person, if
        anything (said by the caller, on the loop)."""
        if source not in NAMES.values():
            return None
        try:
            turn = turns.commit_turn(self.workspace, source)
        except (WorkspaceError, OSError) as exc:
            return f"  (could not record {source}'s edits for /undo: {exc})"
        if turn.changed and turn.left_out:
            return f"  (not recorded for /undo: {'; '.join(turn.left_out)})"
        return None

    def on_sigint(self) -> None:
        if self.at_prompt or self.token is None:
            self.quit.set()
        else:
            self.say("\ninterrupted: your turn")
            self.token.cancel()
            if self.team is not None:  # cut the model call in flight, or the turn runs to its end
                asyncio.ensure_future(self.team.interrupt())

    async def run(self, first: str | list[BaseChatMessage] | None) -> str:
        """Run rounds until the person quits; the stop reason."""
        assert self.team is not None
        task = first
        while not self.quit.is_set():
            self.token = CancellationToken()
            try:
                quit_now = await self._round(task, self.token)
            except (asyncio.CancelledError, RuntimeError):
                if not self.token.is_cancelled():
                    raise
                self.team.forget_failures()
                quit_now = False
            finally:
                self.token = None
            if quit_now:
                return "the person quit"
            task = await self.ask()
            if task == "/quit":
                return "the person quit"
        return "the person quit"

    async def _round(self, task: str | list[BaseChatMessage] | None, token: CancellationToken) -> bool:
        assert self.team is not None
        async for item in self.team.chat.run_stream(task=task, cancellation_token=token):
            if isinstance(item, TaskResult):
                said_quit = any(isinstance(m, BaseChatMessage) and m.source == HUMAN
                                and m.to_text().strip() == "/quit" for m in item.messages)
                return said_quit or self.quit.is_set()
            if isinstance(item, BaseChatMessage) and item.id in self.replayed:
                self.records.release(item.id)
                continue
            if isinstance(item, BaseChatMessage) and item.source == "user":
                record(self.records, _as_person(item))
                self.records.release(item.id)
                self.mark_shown(item.id)
                continue
            record(self.records, item)
            if isinstance(item, BaseChatMessage):
                note = await asyncio.to_thread(self.commit_turn, item.source)
                if note:
                    self.say(note)
                self.mark_shown(item.id)
        return False


def _as_person(item: BaseChatMessage) -> BaseChatMessage:
    return TextMessage(source=HUMAN, content=item.to_text())


async def chat_session(
    settings: Settings, spec: Path | None, *, render: Callable[[Event], None], screen: ChatScreen,
    resume: Path | None = None, workspace_path: Path | None = None,
) -> Path:
    first: str | list[BaseChatMessage] | None = read_spec(spec) if spec is not None else None
    loop = asyncio.get_running_loop()
    async with open_session(settings, mode="chat", render=render, spec=spec, resume=resume,
                            workspace_path=workspace_path) as session:
        chat = ChatSession(session, screen)
        session.observe(chat.observe)
        chat.reader = screen.reader(session.workspace.root)
        loop.add_signal_handler(signal.SIGINT, chat.on_sigint)
        try:
            human = UserProxyAgent(HUMAN, description="The person using crew.", input_func=chat.ask)
            chat.team = await session.build_team(human=human)
            restored = await session.restore() if resume is not None else None
            for message_id in restored.said if restored else []:
                chat.mark_shown(message_id)
            if restored and restored.replay:  # no saved state (killed?): the records, replayed
                replay: list[BaseChatMessage] = [TextMessage(source=s, content=c) for s, c in restored.replay]
                for message in replay:
                    chat.replayed.add(message.id)
                    chat.mark_shown(message.id)
                first = replay
            chat.say(f"crew chat in {session.workspace.root}. {HELP}")
            if first is None and resume is None:
                first = await chat.ask()
                if first == "/quit":
                    session.stop_reason = "the person quit"
                    return session.workspace.root
            try:
                session.stop_reason = await chat.run(first)
            except RuntimeError as exc:
                raise (chat.team.failure() or CrewError(f"an agent failed: {exc}")) from None
        finally:
            loop.remove_signal_handler(signal.SIGINT)
    return session.workspace.root


__all__ = ["COMMANDS", "ChatScreen", "chat_session"]
