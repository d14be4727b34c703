"""Typed events: what crew did, as data.

The same objects feed `events.jsonl`, `--json` output and the terminal renderer, so each
carries a `type` literal and parses back without ambiguity (`parse_event`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, Field, TypeAdapter


class BaseEvent(BaseModel):
    """Fields every event has."""

    ts: float = Field(default_factory=time.time)
    """Wall-clock time the event happened (Unix seconds)."""


class ModelLoadStarted(BaseEvent):
    """A model began loading."""

    type: Literal["model_load_started"] = "model_load_started"
    model: str
    bytes: int
    """Expected resident size (learned from an earlier load, else estimated)."""
    reason: str


class ModelLoaded(BaseEvent):
    """A model is resident and ready."""

    type: Literal["model_loaded"] = "model_loaded"
    model: str
    bytes: int
    """Resident size as the backend reports it."""
    seconds: float
    reason: str
    partial_offload: bool = False


class ModelUnloaded(BaseEvent):
    """A model left memory (its memory is free when this is emitted)."""

    type: Literal["model_unloaded"] = "model_unloaded"
    model: str
    bytes: int
    seconds: float
    reason: str
    evicted_for: str | None = None
    """The model whose load made room by evicting this one, if any."""


class ModelReleased(BaseEvent):
    """crew stopped keeping a model (at exit): it stays until the backend's own expiry."""

    type: Literal["model_released"] = "model_released"
    model: str
    bytes: int


class ModelVanished(BaseEvent):
    """A model crew counted as resident is gone (unloaded by someone else, or a restart)."""

    type: Literal["model_vanished"] = "model_vanished"
    model: str
    bytes: int


class ModelAppeared(BaseEvent):
    """A model crew did not load is resident (loaded by someone else)."""

    type: Literal["model_appeared"] = "model_appeared"
    model: str
    bytes: int


class ResidencyWaiting(BaseEvent):
    """A request waits because models in use hold the memory it needs."""

    type: Literal["residency_waiting"] = "residency_waiting"
    model: str
    bytes: int
    blocked_by: list[str]


class ResidencyWarning(BaseEvent):
    """Something works, but not as well as it could (e.g. partial CPU offload)."""

    type: Literal["residency_warning"] = "residency_warning"
    model: str
    message: str


class ModelCall(BaseEvent):
    """One request to a model finished."""

    type: Literal["model_call"] = "model_call"
    role: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    seconds: float
    """Generation time, from the model being resident to the last token."""
    wait_seconds: float
    """Time spent waiting for the model to become resident (loads, evictions, queueing)."""


class ContextFull(BaseEvent):
    """A role's conversation nears its num_ctx: past it, Ollama silently drops the oldest messages."""

    type: Literal["context_full"] = "context_full"
    role: str
    model: str
    tokens: int
    """Estimated tokens of the request (messages and tool schemas, 4 characters a token)."""
    num_ctx: int


class ToolCallRecovered(BaseEvent):
    """A tool call that arrived as text (or a file edit written as a fenced block) was run."""

    type: Literal["tool_call_recovered"] = "tool_call_recovered"
    role: str
    model: str
    form: str
    """xml (qwen3-coder's call format), json, fenced (a whole file) or search_replace."""
    name: str


class ToolCallRefused(BaseEvent):
    """A tool call in text was incomplete or named no tool of the agent: nothing ran, the model
    was told why and asked once more."""

    type: Literal["tool_call_refused"] = "tool_call_refused"
    role: str
    model: str
    problem: str


class ToolLoopStopped(BaseEvent):
    """An agent made the same tool call with the same result three times in one turn: the turn
    ended with a note instead of another model call."""

    type: Literal["tool_loop_stopped"] = "tool_loop_stopped"
    role: str
    name: str
    arguments: str
    times: int


class ModelCallRetried(BaseEvent):
    """A model call failed before showing any token and was sent once more."""

    type: Literal["model_call_retried"] = "model_call_retried"
    role: str
    model: str
    error: str


class RoutingDecision(BaseEvent):
    """The team chose who speaks next, and why."""

    type: Literal["routing"] = "routing"
    speaker: str
    reason: str
    after: str | None = None
    """Id of the message the decision answers."""


class AgentMessage(BaseEvent):
    """A message in the team's conversation (the task, an agent's reply, a stop)."""

    type: Literal["message"] = "message"
    source: str
    content: str


class ToolCall(BaseEvent):
    """An agent asked for a tool."""

    type: Literal["tool_call"] = "tool_call"
    source: str
    name: str
    arguments: str


class ToolResult(BaseEvent):
    """A tool answered (errors go back to the agent, which carries on)."""

    type: Literal["tool_result"] = "tool_result"
    source: str
    name: str
    is_error: bool
    content: str


class StreamChunk(BaseEvent):
    """Streamed text of a reply still being generated (rendered, not recorded)."""

    type: Literal["chunk"] = "chunk"
    source: str
    text: str


class RunStarted(BaseEvent):
    """A run began (or resumed) in a workspace."""

    type: Literal["run_started"] = "run_started"
    workspace: str
    resumed: bool = False
    models: dict[str, str] = Field(default_factory=dict)
    """The model each agent runs on (after the backend's choice), by agent name."""
    sandbox: str = "none"
    """Where agent commands run: bwrap, unshare, seatbelt or none (see crew.workspace.sandbox)."""
    fallback: str | None = None
    """Why `--backend auto` chose the backend it did, when it fell back."""
    budget: int = 0
    """The memory budget models are kept within, in bytes (0 in records older than the field)."""


class SandboxWarning(BaseEvent):
    """Agent commands run without a filesystem sandbox here (said once, at the start)."""

    type: Literal["sandbox_warning"] = "sandbox_warning"
    kind: str
    message: str


class RunFinished(BaseEvent):
    """The run ended."""

    type: Literal["run_finished"] = "run_finished"
    approved: bool
    stop_reason: str


Event = Annotated[
    ModelLoadStarted
    | ModelLoaded
    | ModelUnloaded
    | ModelReleased
    | ModelVanished
    | ModelAppeared
    | ResidencyWaiting
    | ResidencyWarning
    | ModelCall
    | ContextFull
    | ToolCallRecovered
    | ToolCallRefused
    | ToolLoopStopped
    | ModelCallRetried
    | RoutingDecision
    | AgentMessage
    | ToolCall
    | ToolResult
    | StreamChunk
    | RunStarted
    | SandboxWarning
    | RunFinished,
    Field(discriminator="type"),
]

_EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)


def parse_event(line: str | bytes) -> Event:
    """Parse one JSON line (as written to events.jsonl) back into its event class."""
    return _EVENT_ADAPTER.validate_json(line)


def read_events(path: Path) -> list[Event]:
    """The events of an events.jsonl in order; none if it is missing or unreadable, and a line
    torn by a kill (or any line that is not an event) is skipped."""
    try:
        lines = path.read_text(errors="replace").splitlines() if path.is_file() else []
    except OSError:
        return []
    events: list[Event] = []
    for line in lines:
        try:
            events.append(parse_event(line))
        except ValueError:
            continue
    return events


LOADING, RESIDENT = "loading", "resident"


def residency_change(event: Event) -> tuple[str, str | None] | None:
    """What `event` says about a model's residency: (model, `loading`, `resident`, or None when
    it left memory); None if it says nothing. The status line and the timeline read it alike."""
    if isinstance(event, ModelLoadStarted):
        return event.model, LOADING
    if isinstance(event, ModelLoaded | ModelAppeared):
        return event.model, RESIDENT
    if isinstance(event, ModelUnloaded | ModelVanished | ModelReleased):
        return event.model, None
    return None
