"""One run: a spec in, the team at work in a workspace, code, a patch and records out.

Records are written as things happen: every event is a line of `events.jsonl`, flushed at
once; every message is appended to `transcript.md`. Whatever ends the run (approval, a limit,
an error, Ctrl-C), the team state, `crew.patch` and `summary.json` are written before it
returns, so nothing already said is lost and `--resume` can continue.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from autogen_agentchat.base import TaskResult
from autogen_agentchat.messages import (
    BaseChatMessage,
    ModelClientStreamingChunkEvent,
    TextMessage,
    ToolCallExecutionEvent,
    ToolCallRequestEvent,
)
from autogen_core import CancellationToken

from crew.errors import CrewError, InputError
from crew.events import (
    AgentMessage,
    Event,
    ModelCall,
    ModelLoaded,
    RoutingDecision,
    RunFinished,
    RunStarted,
    StreamChunk,
    ToolCall,
    ToolResult,
)
from crew.settings import Role, Settings
from crew.team import NAMES, ROLE_OF, Team, approved, build_team, open_manager
from crew.workspace import Workspace

MAX_SPEC_BYTES = 1_000_000
_NAME_OF_ROLE: dict[str, str] = {str(role): name for role, name in NAMES.items()}


def read_spec(path: Path) -> str:
    """The spec's text; InputError for a missing, empty, binary or huge file."""
    if not path.is_file():
        raise InputError(f"spec file {path} does not exist: give the path of a Markdown or text file")
    data = path.read_bytes()
    if len(data) > MAX_SPEC_BYTES:
        raise InputError(f"spec file {path} is {len(data)} bytes; keep it under {MAX_SPEC_BYTES} bytes")
    if b"\0" in data:
        raise InputError(f"spec file {path} is binary: give a text file that describes the work")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"spec file {path} is not UTF-8 text: save it as UTF-8") from None
    if not text.strip():
        raise InputError(f"spec file {path} is empty: describe what the team should build")
    return text


@dataclass
class AgentStats:
    turns: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    generation_seconds: float = 0.0
    wait_seconds: float = 0.0
    loads: int = 0
    load_seconds: float = 0.0


@dataclass
class Outcome:
    workspace: Workspace
    approved: bool
    stop_reason: str
    agents: dict[str, AgentStats] = field(default_factory=dict)


class Records:
    """Writes events.jsonl and transcript.md as the run goes, and keeps the tallies."""

    def __init__(
        self, workspace: Workspace, render: Callable[[Event], None], models: Mapping[Role, str]
    ) -> None:
        self._render = render
        self._events: TextIO = (workspace.root / "events.jsonl").open("a", buffering=1)
        self._transcript: TextIO = (workspace.root / "transcript.md").open("a", buffering=1)
        self._roles_of_model: dict[str, list[str]] = defaultdict(list)
        for role, model in models.items():
            self._roles_of_model[model].append(NAMES[role])
        self.stats: dict[str, AgentStats] = {name: AgentStats() for name in NAMES.values()}
        self.approved = False
        # The selector decides as soon as an agent's reply is complete, while the team's output
        # stream may still hold that reply: a decision waits until its message is recorded.
        self._taken: set[str] = set()
        self._held: list[RoutingDecision] = []

    def emit(self, event: Event) -> None:
        if isinstance(event, RoutingDecision) and event.after and event.after not in self._taken:
            self._held.append(event)
            return
        if not isinstance(event, StreamChunk):
            self._events.write(event.model_dump_json() + "\n")
        if isinstance(event, ModelCall):
            stats = self.stats[_NAME_OF_ROLE[event.role]]
            stats.prompt_tokens += event.prompt_tokens
            stats.completion_tokens += event.completion_tokens
            stats.generation_seconds += event.seconds
            stats.wait_seconds += event.wait_seconds
        elif isinstance(event, ModelLoaded):
            for name in self._roles_of_model.get(event.model, []):
                self.stats[name].loads += 1
                self.stats[name].load_seconds += event.seconds
        self._render(event)

    def take(self, item: Any) -> None:
        """Turn one item of the team's stream into events and transcript lines."""
        if isinstance(item, ModelClientStreamingChunkEvent):
            self.emit(StreamChunk(source=item.source, text=item.content))
        elif isinstance(item, ToolCallRequestEvent):
            for call in item.content:
                self.emit(ToolCall(source=item.source, name=call.name, arguments=call.arguments))
        elif isinstance(item, ToolCallExecutionEvent):
            for result in item.content:
                self.emit(ToolResult(source=item.source, name=result.name, is_error=bool(result.is_error),
                                     content=result.content[:2000]))
                self._transcript.write(f"> `{result.name}` -> {result.content[:500]}\n\n")
        elif isinstance(item, BaseChatMessage):
            text = item.to_text()
            if item.source in self.stats:
                self.stats[item.source].turns += 1
                if item.source == NAMES["reviewer"] and approved(text):
                    self.approved = True
            self.emit(AgentMessage(source=item.source, content=text))
            self._transcript.write(f"## {item.source}\n\n{text}\n\n")
            self.release(item.id)

    def release(self, message_id: str) -> None:
        """The message is recorded: emit the routing decisions that answer it."""
        self._taken.add(message_id)
        ready = [e for e in self._held if e.after == message_id]
        self._held = [e for e in self._held if e.after != message_id]
        for event in ready:
            self.emit(event)

    def close(self) -> None:
        for event in self._held:  # decisions whose message never came (an interrupted run)
            self._events.write(event.model_dump_json() + "\n")
        self._events.close()
        self._transcript.close()


async def run_spec(
    settings: Settings,
    spec: Path | None,
    *,
    render: Callable[[Event], None],
    workspace_path: Path | None = None,
    repo: Path | None = None,
    resume: Path | None = None,
    max_turns: int | None = None,
) -> Outcome:
    task = read_spec(spec) if spec is not None else None
    if task is None and resume is None:
        raise InputError("give a spec file to run, or --resume workspaces/<id> to continue a run")
    workspace = (
        Workspace.open(resume) if resume is not None
        else await asyncio.to_thread(
            Workspace.create, settings.workspaces_dir, path=workspace_path, repo=repo
        )
    )
    if task is not None and resume is None:
        (workspace.root / "spec.md").write_text(task)
    # May point roles at the embedded model.
    manager = await open_manager(settings, workspace.root.name)
    models = {role: rs.model for role, rs in settings.roles().items()}
    records = Records(workspace, render, models)
    records.emit(RunStarted(workspace=str(workspace.root), resumed=resume is not None))
    manager.subscribe(records.emit)
    stop_reason = "error"
    started = time.time()
    team = None
    try:
        team = await build_team(settings, manager, workspace, records.emit, max_turns=max_turns)
        state_file = workspace.root / "state.json"
        if resume is not None and state_file.is_file():
            state = json.loads(state_file.read_text())
            await team.chat.load_state(state)
            for message_id in message_ids(state):  # said before: decisions about them may go out
                records.release(message_id)
        elif task is not None:
            records.take(_task_message(task))
        token = CancellationToken()
        consuming = asyncio.ensure_future(_consume(team, task if resume is None else None, records, token))
        try:
            # Shielded: on Ctrl-C the team's stream must not be cancelled first, or AutoGen waits
            # for the agent's whole generation before it stops. Cut the model calls, then stop it.
            stop_reason = await asyncio.shield(consuming)
        except asyncio.CancelledError:
            token.cancel()
            await team.close()
            consuming.cancel()
            await asyncio.gather(consuming, return_exceptions=True)
            raise
        except RuntimeError as exc:
            failure = team.failure()
            raise (failure or CrewError(f"an agent failed: {exc}")) from None
    except (asyncio.CancelledError, KeyboardInterrupt):
        stop_reason = "interrupted"
        raise
    except CrewError as exc:
        stop_reason = f"error: {exc}"
        raise
    finally:
        if team is not None:
            await _save_state(team, workspace)
            await team.close()
        await asyncio.to_thread(workspace.write_patch)
        try:
            await manager.aclose()  # its last events (models handed back) are recorded too
        finally:
            records.emit(RunFinished(approved=records.approved, stop_reason=stop_reason))
            workspace.write_json("summary.json",
                                 summary_of(workspace, records, stop_reason, started, spec))
            records.close()
    return Outcome(workspace, records.approved, stop_reason, records.stats)


async def _consume(team: Team, task: str | None, records: Records, token: CancellationToken) -> str:
    """Feed the team's stream into the records; the stop reason."""
    stop_reason = "stopped"
    async for item in team.chat.run_stream(task=task, cancellation_token=token):
        if isinstance(item, TaskResult):
            stop_reason = _stop_reason(item, records.approved)
        elif task is not None and isinstance(item, BaseChatMessage) and item.source == "user":
            records.release(item.id)  # the task, recorded already; decisions about it may go out
        else:
            records.take(item)
    return stop_reason


def message_ids(state: Any) -> list[str]:
    """Ids of the chat messages held in a saved team state (any depth)."""
    if isinstance(state, dict):
        own = [state["id"]] if isinstance(state.get("id"), str) and "source" in state else []
        return own + [i for value in state.values() for i in message_ids(value)]
    if isinstance(state, list):
        return [i for value in state for i in message_ids(value)]
    return []


def _task_message(task: str) -> BaseChatMessage:
    return TextMessage(source="user", content=task)


def _stop_reason(result: TaskResult, was_approved: bool) -> str:
    if was_approved:
        return "approved"
    reason = result.stop_reason or "stopped"
    if "Maximum number of turns" in reason:
        return f"turn limit ({reason})"
    return reason


async def _save_state(team: Any, workspace: Workspace) -> None:
    try:
        state = await team.chat.save_state()
        workspace.write_json("state.json", state)
    except Exception as exc:  # noqa: BLE001 - saving must never hide the run's own outcome
        (workspace.root / "state.error.txt").write_text(f"could not save team state: {exc}\n")


def summary_of(
    workspace: Workspace, records: Records, stop_reason: str, started: float, spec: Path | None,
    mode: str = "run",
) -> dict[str, Any]:
    """What summary.json holds for a run or a chat; `crew runs` reads it back."""
    agents = {name: vars(stats) for name, stats in records.stats.items()}
    return {
        "id": workspace.id,
        "mode": mode,
        "spec": str(spec) if spec else None,
        "started": started,
        "seconds": round(time.time() - started, 3),
        "verdict": "approved" if records.approved else "not approved",
        "approved": records.approved,
        "stop_reason": stop_reason,
        "agents": agents,
        "totals": {
            "prompt_tokens": sum(s.prompt_tokens for s in records.stats.values()),
            "completion_tokens": sum(s.completion_tokens for s in records.stats.values()),
            "loads": sum(s.loads for s in records.stats.values()),
        },
        "roles": {name: role for name, role in ROLE_OF.items()},
    }
