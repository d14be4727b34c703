"""A session's records, written as things happen: `events.jsonl`, `transcript.md`, the tallies
behind `summary.json`.

Every event becomes one JSON line, flushed at once (stream chunks are rendered, not recorded);
every message and tool result is appended to the transcript. Both are opened through the
workspace's folder descriptor (`Workspace.append_record`): a link planted at either is an
error, never followed. A routing decision is recorded
only after the message it answers: the selector decides as soon as a reply is complete, while
the team's output stream may still hold that reply.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from crew.events import (
    AgentMessage,
    Event,
    ModelCall,
    ModelCallRetried,
    ModelLoaded,
    RoutingDecision,
    StreamChunk,
    ToolCallRecovered,
    ToolCallRefused,
    ToolResult,
)
from crew.routing import NAMES, ROLE_OF, approved
from crew.settings import Role
from crew.workspace.repo import Workspace

_NAME_OF_ROLE: dict[str, str] = {str(role): name for role, name in NAMES.items()}


@dataclass
class AgentStats:
    turns: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    generation_seconds: float = 0.0
    wait_seconds: float = 0.0
    loads: int = 0
    load_seconds: float = 0.0
    recovered_calls: int = 0
    """Tool calls that arrived as text or fenced edits, and ran."""
    refused_calls: int = 0
    """Tool calls in text that could not run (incomplete, or no such tool)."""
    retries: int = 0
    """Model calls sent again after failing before any token was shown."""


class Records:
    """Writes events.jsonl and transcript.md as the session goes, and keeps the tallies."""

    def __init__(
        self, workspace: Workspace, render: Callable[[Event], None], models: Mapping[Role, str]
    ) -> None:
        self._render = render
        self._events: IO[str] = workspace.append_record("events.jsonl")
        try:
            self._transcript: IO[str] = workspace.append_record("transcript.md")
        except BaseException:
            self._events.close()
            raise
        self._roles_of_model: dict[str, list[str]] = defaultdict(list)
        for role, model in models.items():
            self._roles_of_model[model].append(NAMES[role])
        self.stats: dict[str, AgentStats] = {name: AgentStats() for name in NAMES.values()}
        self.approved = False
        self.loads = 0
        self.load_seconds = 0.0
        self._taken: set[str] = set()
        self._held: list[RoutingDecision] = []
        self.left_out: list[str] = []
        """Files `write_patch` left out of crew.patch (`name: why`), for summary.json."""

    def emit(self, event: Event) -> None:
        if isinstance(event, RoutingDecision) and event.after and event.after not in self._taken:
            self._held.append(event)
            return
        if not isinstance(event, StreamChunk):
            self._events.write(event.model_dump_json() + "\n")
        self._tally(event)
        self._render(event)

    def _tally(self, event: Event) -> None:
        if isinstance(event, ModelCall):
            stats = self.stats[_NAME_OF_ROLE[event.role]]
            stats.prompt_tokens += event.prompt_tokens
            stats.completion_tokens += event.completion_tokens
            stats.generation_seconds += event.seconds
            stats.wait_seconds += event.wait_seconds
        elif isinstance(event, ModelLoaded):
            self.loads += 1  # once, however many roles share the model
            self.load_seconds += event.seconds
            for name in self._roles_of_model.get(event.model, []):
                self.stats[name].loads += 1
                self.stats[name].load_seconds += event.seconds
        elif isinstance(event, ToolCallRecovered | ToolCallRefused | ModelCallRetried):
            stats = self.stats[_NAME_OF_ROLE[event.role]]
            if isinstance(event, ToolCallRecovered):
                stats.recovered_calls += 1
            elif isinstance(event, ToolCallRefused):
                stats.refused_calls += 1
            else:
                stats.retries += 1
        elif isinstance(event, ToolResult):
            self._transcript.write(f"> `{event.name}` -> {event.content[:500]}\n\n")
        elif isinstance(event, AgentMessage):
            if event.source in self.stats:
                self.stats[event.source].turns += 1
                if event.source == NAMES["reviewer"] and approved(event.content):
                    self.approved = True
            self._transcript.write(f"## {event.source}\n\n{event.content}\n\n")

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
        self._held = []
        self._events.close()
        self._transcript.close()

    def summary(self, workspace: Workspace, stop_reason: str, started: float, spec: Path | None,
                mode: str) -> dict[str, Any]:
        """What summary.json holds for a run or a chat; `crew runs` reads it back."""
        return {
            "id": workspace.id,
            "mode": mode,
            "spec": str(spec) if spec else None,
            "started": started,
            "seconds": round(time.time() - started, 3),
            "verdict": "approved" if self.approved else "not approved",
            "approved": self.approved,
            "stop_reason": stop_reason,
            "agents": {name: vars(stats) for name, stats in self.stats.items()},
            "totals": {
                "prompt_tokens": sum(s.prompt_tokens for s in self.stats.values()),
                "completion_tokens": sum(s.completion_tokens for s in self.stats.values()),
                "loads": self.loads,
                "load_seconds": round(self.load_seconds, 3),
                "recovered_calls": sum(s.recovered_calls for s in self.stats.values()),
            },
            "roles": {name: role for name, role in ROLE_OF.items()},
            "left_out_of_patch": list(self.left_out),
        }
