"""One session's lifecycle, for `crew run` and `crew chat` alike: open, resume, save, close.

`open_session` makes (or reopens) the workspace, chooses the backend, opens the residency
manager and the records, and yields a `Session`; the command builds its team on it and runs
it. However the body ends (done, a limit, an error, Ctrl-C), closing does the same steps, each
even if an earlier one failed: the team's state to `state.json`, the team's connections
closed, `crew.patch`, the models handed back to the backend, `run_finished`, `summary.json`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crew.backends import BackendChoice, choose_backend
from crew.errors import CrewError, WorkspaceError
from crew.events import AgentMessage, Event, RunFinished, RunStarted, SandboxWarning, read_events
from crew.records import Records
from crew.residency import ResidencyManager, open_manager
from crew.routing import HUMAN, NAMES
from crew.settings import Role, Settings
from crew.workspace.repo import Workspace
from crew.workspace.sandbox import Sandbox, for_settings
from crew.workspace.tools import UNCONFINED

if TYPE_CHECKING:
    from autogen_agentchat.base import ChatAgent

    from crew.team import Team

log = logging.getLogger("crew.session")


class Session:
    """A workspace with its backend, manager, records and (once built) team."""

    def __init__(self, settings: Settings, choice: BackendChoice, workspace: Workspace,
                 manager: ResidencyManager, records: Records, *, mode: str, spec: Path | None,
                 sandbox: Sandbox = UNCONFINED) -> None:
        self.settings = settings
        self.choice = choice
        self.workspace = workspace
        self.manager = manager
        self.records = records
        self.mode = mode
        self.spec = spec
        self.started = time.time()
        self.team: Team | None = None
        self.sandbox = sandbox
        self.stop_reason = "error"
        self._observers: list[Callable[[Event], None]] = []

    def observe(self, callback: Callable[[Event], None]) -> None:
        """Also call `callback` with every event, before it is recorded."""
        self._observers.append(callback)

    def emit(self, event: Event) -> None:
        for callback in self._observers:
            callback(event)
        self.records.emit(event)

    async def build_team(self, *, max_turns: int | None = None, human: ChatAgent | None = None,
                         solo: Role | None = None) -> Team:
        from crew.team import build_team

        self.team = await build_team(self.settings, self.choice, self.manager, self.workspace, self.emit,
                                     max_turns=max_turns, human=human, sandbox=self.sandbox, solo=solo)
        return self.team

    async def restore(self) -> Restored:
        """What a stopped session left, for `--resume`, however it stopped.

        The team state it saved, if it has one that holds the last recorded message. Otherwise
        (killed with -9, a crash, a power cut: no state, or one older than the records) the
        conversation is rebuilt from `events.jsonl`, written as things happened; and a run
        stopped before anything was said starts again from its spec.md.
        """
        assert self.team is not None, "build the team first"
        history = recorded_messages(self.workspace.root)
        state = saved_state(self.workspace.root)
        if state is not None and (not history or _holds(state, history[-1][1])):
            try:
                await self.team.chat.load_state(state)
            except Exception as exc:  # noqa: BLE001 - a damaged state: the records still serve
                log.debug("saved team state unusable (%s); rebuilding from events.jsonl", exc)
            else:
                said = message_ids(state)
                for message_id in said:
                    self.records.release(message_id)
                return Restored(said=said)
        if history:
            return Restored(replay=history)
        text = read_spec(self.workspace)
        if text:
            return Restored(replay=[("user", text)], recorded=False)
        if self.mode == "chat":
            return Restored()  # a chat where nobody spoke yet: the person starts it
        raise _not_resumable(self.workspace.root)


    async def save(self) -> None:
        """Write the team's state to state.json (for --resume)."""
        if self.team is not None:
            self.workspace.write_json("state.json", await self.team.chat.save_state())

    async def close(self) -> None:
        """Every closing step, each even if one before it failed; the first failure is raised."""
        steps: list[Callable[[], Awaitable[None]]] = [
            self._save_or_note, self._close_team, self._write_patch,
            self.manager.aclose,  # its last events (models handed back) are recorded too
            self._finish, self._unlock,
        ]
        failure: BaseException | None = None
        for step in steps:
            try:
                await step()
            except Exception as exc:  # noqa: BLE001 - the rest must still run
                log.debug("closing step %s failed: %s", getattr(step, "__name__", step), exc)
                failure = failure or exc
        if failure is not None:
            raise failure

    async def _save_or_note(self) -> None:
        try:
            await self.save()
        except Exception as exc:  # noqa: BLE001 - saving must never hide the session's own outcome
            self.workspace.write_record("state.error.txt", f"could not save team state: {exc}\n".encode())

    async def _close_team(self) -> None:
        if self.team is not None:
            await self.team.close()

    async def _write_patch(self) -> None:
        patch = await asyncio.to_thread(self.workspace.write_patch)
        self.records.left_out = patch.left_out  # named in summary.json

    async def _unlock(self) -> None:
        self.workspace.unlock()

    async def _finish(self) -> None:
        try:
            self.records.emit(RunFinished(approved=self.records.approved, stop_reason=self.stop_reason))
            self.workspace.write_json(
                "summary.json",
                self.records.summary(self.workspace, self.stop_reason, self.started, self.spec, self.mode),
            )
        finally:
            self.records.close()


@asynccontextmanager
async def open_session(
    settings: Settings, *, mode: str, render: Callable[[Event], None], spec: Path | None = None,
    task: str | None = None, resume: Path | None = None, workspace_path: Path | None = None,
    repo: Path | None = None, hidden: Sequence[Path] = (),
) -> AsyncIterator[Session]:
    """A session in a new workspace (or `resume`'s), closed the same way on every exit path.
    `hidden`: more paths the agents' commands must not see (an eval's suite and results)."""
    # Before anything is created: CREW_SANDBOX=require with no sandbox stops here.
    found = await asyncio.to_thread(for_settings, settings)
    sandbox = replace(found, hidden=(*found.hidden, *hidden))
    # And a backend that cannot serve: no empty workspace is left behind for a run that never began.
    choice = await choose_backend(settings)
    try:
        workspace = (
            await asyncio.to_thread(Workspace.open, resume) if resume is not None
            else await asyncio.to_thread(
                Workspace.create, settings.workspaces_dir, path=workspace_path, repo=repo, mode=mode
            )
        )
        if workspace.mode not in (None, mode):
            # A team's saved state only fits a team of the same kind: loading it would damage it.
            raise WorkspaceError(f"{workspace.root} was made by `crew {workspace.mode}`: continue it "
                                 f"with `crew {workspace.mode} --resume {workspace.root}`")
    except BaseException:
        await choice.backend.aclose()
        raise
    workspace.lock()  # one process at a time in a workspace: two would interleave its records
    try:
        if task is not None and resume is None:
            workspace.write_record("spec.md", task.encode("utf-8", "surrogateescape"))
        manager = open_manager(settings, choice, workspace.id)
        records = Records(workspace, render, choice.models())
    except BaseException:
        workspace.unlock()  # from here on, closing the session unlocks it
        await choice.backend.aclose()
        raise
    session = Session(settings, choice, workspace, manager, records, mode=mode, spec=spec,
                      sandbox=sandbox)
    records.emit(RunStarted(workspace=str(workspace.root), resumed=resume is not None,
                            models={NAMES[role]: model for role, model in choice.models().items()},
                            sandbox=sandbox.kind, fallback=choice.fallback, budget=manager.budget.bytes))
    if not sandbox.confines_files:
        records.emit(SandboxWarning(kind=sandbox.kind, message=sandbox.describe()))
    manager.subscribe(session.emit)
    try:
        yield session
    except BaseException as exc:
        if isinstance(exc, asyncio.CancelledError | KeyboardInterrupt):
            session.stop_reason = "interrupted"
        elif isinstance(exc, CrewError):
            session.stop_reason = f"error: {exc}"
        try:
            await session.close()
        except Exception as closing:  # noqa: BLE001 - the session's own failure is the one to report
            log.debug("closing after a failure failed too: %s", closing)
        raise
    await session.close()


# A saved team state is a few levels deep; far deeper is damage (and would overflow the walks
# over it, `_holds` and `message_ids`).
MAX_STATE_DEPTH = 100
MAX_STATE_BYTES = 200_000_000


def saved_state(root: Path) -> Any:
    """The team state a stopped session saved in `root`, or None (missing, empty or not JSON);
    WorkspaceError for one nested too deep or read through a link."""
    data = Workspace.open(root).read_record("state.json", MAX_STATE_BYTES)
    try:
        state = json.loads(data) if data else None
    except ValueError:
        return None
    except RecursionError:
        state = None
        depth = MAX_STATE_DEPTH + 1
    else:
        depth = _depth(state)
    if depth > MAX_STATE_DEPTH:
        raise WorkspaceError(f"{root / 'state.json'} is damaged (nested deeper than {MAX_STATE_DEPTH} "
                             "levels): delete it to resume from events.jsonl")
    return state if isinstance(state, dict) else None


def _depth(value: Any) -> int:
    """How deeply `value` nests (walked with a stack, not recursion)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        deepest = max(deepest, level)
        if deepest > MAX_STATE_DEPTH:
            break
        if isinstance(item, dict):
            stack += [(v, level + 1) for v in item.values()]
        elif isinstance(item, list):
            stack += [(v, level + 1) for v in item]
    return deepest


def read_spec(workspace: Workspace) -> str:
    """The spec.md a run in `workspace` was given, or "" (never through a link)."""
    data = workspace.read_record("spec.md", 10_000_000)
    return data.decode("utf-8", errors="replace").strip() if data else ""


def recorded_messages(root: Path) -> list[tuple[str, str]]:
    """(source, content) of the conversation's messages in `root`'s events.jsonl, in order; a
    line torn by a kill is skipped."""
    speakers = {"user", HUMAN, *NAMES.values()}
    return [(e.source, e.content) for e in read_events(root / "events.jsonl")
            if isinstance(e, AgentMessage) and e.source in speakers]


def check_resumable(root: Path) -> None:
    """Raise (one line) before anything starts if a run in `root` could not be resumed."""
    workspace = Workspace.open(root)
    if saved_state(workspace.root) is None and not recorded_messages(workspace.root) and not (
        read_spec(workspace)
    ):
        raise _not_resumable(workspace.root)


def _not_resumable(root: Path) -> WorkspaceError:
    return WorkspaceError(f"{root} cannot be resumed: nothing was said in it and it has no spec.md; "
                          "start a new run with `crew run SPEC`")


@dataclass(frozen=True)
class Restored:
    """What `Session.restore` found."""

    said: list[str] = field(default_factory=list)
    """Ids of the messages in a loaded team state (their routing decisions may now be recorded)."""
    replay: list[tuple[str, str]] = field(default_factory=list)
    """(source, content) to hand the team again as its task: the conversation so far."""
    recorded: bool = True
    """The replayed messages are in events.jsonl already (not to be recorded twice)."""


def _holds(state: Any, content: str) -> bool:
    """Whether a saved team state has a message with this content (else it is older than the
    records)."""
    if isinstance(state, dict):
        return state.get("content") == content or any(_holds(v, content) for v in state.values())
    if isinstance(state, list):
        return any(_holds(v, content) for v in state)
    return False


def message_ids(state: Any) -> list[str]:
    """Ids of the chat messages held in a saved team state (any depth)."""
    if isinstance(state, dict):
        own = [state["id"]] if isinstance(state.get("id"), str) and "source" in state else []
        return own + [i for value in state.values() for i in message_ids(value)]
    if isinstance(state, list):
        return [i for value in state for i in message_ids(value)]
    return []
