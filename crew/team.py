"""The team: Architect, Coder and Reviewer AssistantAgents in a SelectorGroupChat.

Speaker selection is a plain function (never a model call, so it never loads a model):
an explicit handoff line (`NEXT: Coder`) wins; else the workflow (task -> Architect ->
Coder -> Reviewer -> Coder ...); the task itself is routed by the seed's task types; and a
choice the workflow leaves open prefers the agent whose model is already resident. While an
agent generates, the model of the agent the workflow names next is prefetched if it fits in
the free budget. The Reviewer ends the run with a line `APPROVED`.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autogen_agentchat.agents import AssistantAgent
from autogen_agentchat.base import ChatAgent, TerminationCondition
from autogen_agentchat.base import Team as BaseTeam
from autogen_agentchat.conditions import (
    FunctionalTermination,
    MaxMessageTermination,
    TimeoutTermination,
    TokenUsageTermination,
)
from autogen_agentchat.messages import BaseAgentEvent, BaseChatMessage
from autogen_agentchat.teams import SelectorGroupChat

from crew.backend import Backend, ModelFacts
from crew.client import RoutedOllamaClient
from crew.embedded_backend import BUNDLED_ALIAS, INSTALL_HINT, EmbeddedBackend, embedded_available
from crew.embedded_client import EmbeddedChatClient
from crew.errors import BackendError, CrewError, OllamaUnreachable, SettingsError
from crew.events import Event, RoutingDecision
from crew.holders import HolderRecord
from crew.measured import Measurements
from crew.memory import resolve_budget
from crew.ollama_backend import OllamaBackend
from crew.residency import ResidencyManager
from crew.settings import ROLES, Role, Settings
from crew.tools import make_tools
from crew.workspace import Workspace

log = logging.getLogger("crew.team")

NAMES: dict[Role, str] = {"architect": "Architect", "coder": "Coder", "reviewer": "Reviewer"}
ROLE_OF = {name: role for role, name in NAMES.items()}
# What the workflow does after each speaker.
NEXT: dict[Role, Role] = {"architect": "coder", "coder": "reviewer", "reviewer": "coder"}
# The seed's task-type routing.
TASK_TYPES: dict[Role, tuple[str, ...]] = {
    "architect": ("plan", "design", "architecture", "requirements", "strategy"),
    "coder": ("code", "implement", "fix", "refactor", "feature", "optimize"),
    "reviewer": ("review", "test", "validate", "debug"),
}
_HANDOFF = re.compile(r"(?im)^\W*(?:next|handoff)\W*:?\s*(architect|coder|reviewer|you)\b")
_MENTION = re.compile(r"(?i)(?<![\w@])@(architect|coder|reviewer)\b")
HUMAN = "You"
# In a chat, the person gets the floor after this many agent turns in a row.
MAX_AGENT_STREAK = 6
PROMPTS_DIR = Path(__file__).resolve().parent.parent / "prompts"


def approved(text: str) -> bool:
    """A line that says only APPROVED (markdown emphasis allowed); 'NOT APPROVED' is not."""
    return any(line.strip().strip("*_`#> ").upper() == "APPROVED" for line in text.splitlines())


def task_type(text: str) -> Role | None:
    """The seed's task type, read from the request's opening words (its first line of prose).

    Only the opening counts: a spec that says "write X and a test for it" is coding work,
    not a review.
    """
    lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    words = re.findall(r"[a-z]+", lines[0].lower())[:12] if lines else []
    for word in words:
        for role, keywords in TASK_TYPES.items():
            if word in keywords:
                return role
    return None


class Selector:
    """The selector_func: who speaks next, with the reason recorded as an event."""

    def __init__(self, manager: ResidencyManager, models: dict[Role, str], emit: Callable[[Event], None],
                 *, human: bool = False):
        self._manager = manager
        self._models = models
        self._emit = emit
        self._human = human

    def __call__(self, thread: Sequence[BaseAgentEvent | BaseChatMessage]) -> str:
        role, reason = self.choose(thread)
        name = HUMAN if role == "human" else NAMES[role]
        last = next((m for m in reversed(thread) if isinstance(m, BaseChatMessage)), None)
        self._emit(RoutingDecision(speaker=name, reason=reason, after=last.id if last else None))
        model = self._models.get(role, "-")
        log.info("[ROUTING] next=%s model=%s | %s", name, model, reason)
        return name

    def choose(self, thread: Sequence[BaseAgentEvent | BaseChatMessage]) -> tuple[Any, str]:
        chat = [m for m in thread if isinstance(m, BaseChatMessage)]
        last = chat[-1]
        text = last.to_text()
        source = ROLE_OF.get(last.source)
        if self._human and last.source == HUMAN:
            mention = _MENTION.findall(text)
            if mention:
                target: Role = mention[0].lower()
                return target, f"the person addressed {NAMES[target]}"
        handoff = _HANDOFF.findall(text)
        if handoff and handoff[-1].lower() != source:
            wanted = handoff[-1].lower()
            if wanted == "you":
                if self._human:
                    return "human", f"{last.source} asked the person"
            else:
                return wanted, f"{last.source} handed off to {NAMES[wanted]}"
        if source is None:
            kind = task_type(text)
            if kind is not None and kind != "architect":
                return kind, f"the request is of type '{kind}' work"
            return "architect", "a new request starts with a plan"
        if self._human:
            streak = 0
            for message in reversed(chat):
                if message.source not in ROLE_OF:
                    break
                streak += 1
            if streak >= MAX_AGENT_STREAK:
                return "human", f"{streak} agent turns in a row: the person's turn"
        if source == "reviewer":
            if self._human and approved(text):
                return "human", "the Reviewer approved: the person's turn"
            kind = task_type(text)
            if kind == "architect":
                return self._prefer_resident(["architect", "coder"], "the review questions the design")
            return "coder", "the Reviewer asked for changes"
        nxt = NEXT[source]
        return nxt, f"workflow: {NAMES[source]} -> {NAMES[nxt]}"

    def _prefer_resident(self, roles: list[Role], why: str) -> tuple[Role, str]:
        resident = {v.name for v in self._manager.snapshot().slots if v.state == "resident"}
        for role in roles:
            if self._models[role] in resident:
                return role, f"{why}; {NAMES[role]}'s model is already resident"
        return roles[0], why


@dataclass
class Team:
    """The group chat and what the run needs to read back from it."""

    chat: SelectorGroupChat
    clients: dict[Role, RoutedOllamaClient]
    termination: TerminationCondition

    def failure(self) -> CrewError | None:
        """The typed error behind an agent failure (AutoGen only keeps its text)."""
        return next((c.failure for c in self.clients.values() if c.failure is not None), None)

    async def close(self) -> None:
        for client in self.clients.values():
            await client.close()


async def open_manager(settings: Settings, run: str) -> ResidencyManager:
    """The process's residency manager on the chosen backend (see `choose_backend`).

    On Ollama, the models it keeps are noted for `crew ps` and other crews under `run`
    (see `crew.holders`).
    """
    backend = await choose_backend(settings)
    # On Ollama, other crew processes may share the server: note what this one keeps, and
    # prefer not to evict what they keep. Sizes and load times come from earlier runs.
    record = (HolderRecord(settings.state_dir / "holders", settings.ollama_host, run)
              if isinstance(backend, OllamaBackend) else None)
    manager = ResidencyManager(
        backend,
        resolve_budget(settings.memory_budget_gb),
        allow_partial_offload=settings.allow_partial_offload,
        load_timeout=settings.load_timeout_s,
        reconcile_ttl=settings.reconcile_ttl_s,
        measurements=Measurements(settings.state_dir, settings.ollama_host) if record else None,
        held_elsewhere=record.held_elsewhere if record else None,
    )
    if record is not None:
        manager.subscribe(record)
    return manager


async def choose_backend(settings: Settings) -> Backend:
    """Ollama if chosen or if it answers; else the embedded backend if installed; else an error.

    With the embedded backend, roles still naming Ollama tags run the bundled small model.
    """
    if settings.backend in ("auto", "ollama"):
        ollama = OllamaBackend(settings.ollama_host, keep_alive_after=settings.keep_alive_after)
        if settings.backend == "ollama":
            return ollama
        try:
            await ollama.version()
            return ollama
        except OllamaUnreachable:
            await ollama.aclose()
            if not embedded_available():
                raise BackendError(
                    f"no model backend: Ollama does not answer at {settings.ollama_host} (start it with "
                    f"`ollama serve`) and the embedded backend is not installed ({INSTALL_HINT})"
                ) from None
    for role, rs in settings.roles().items():
        if not rs.model.endswith(".gguf") and rs.model.split(":")[0] != BUNDLED_ALIAS:
            setattr(settings, role, rs.model_copy(update={"model": BUNDLED_ALIAS,
                                                          "num_ctx": min(rs.num_ctx, 4096)}))
    return EmbeddedBackend()


def make_client(
    manager: ResidencyManager, settings: Settings, role: Role, facts: ModelFacts,
    emit: Callable[[Event], None], *, on_hold: Callable[[], None] | None = None,
) -> RoutedOllamaClient:
    """The chat client for a role, on whichever backend the manager drives."""
    if isinstance(manager.backend, EmbeddedBackend):
        return EmbeddedChatClient(manager, role, settings.role(role), facts, backend=manager.backend,
                                  emit=emit, on_hold=on_hold)
    return RoutedOllamaClient(manager, role, settings.role(role), facts, host=settings.ollama_host,
                              emit=emit, on_hold=on_hold)


def load_prompt_file(settings: Settings, name: str) -> str:
    """prompts/<name>.md, or the user's copy in CREW_PROMPTS_DIR."""
    for folder in (settings.prompts_dir, PROMPTS_DIR):
        if folder is not None and (folder / f"{name}.md").is_file():
            return (folder / f"{name}.md").read_text()
    raise SettingsError(f"no prompt {name}.md: put it in CREW_PROMPTS_DIR or reinstall crew")


def load_prompt(settings: Settings, role: Role) -> str:
    return load_prompt_file(settings, role)


async def build_team(
    settings: Settings,
    manager: ResidencyManager,
    workspace: Workspace,
    emit: Callable[[Event], None],
    *,
    max_turns: int | None = None,
    human: ChatAgent | None = None,
) -> Team:
    """Check every role's model with the backend, then assemble the team."""
    models = {role: rs.model for role, rs in settings.roles().items()}
    prefetches: set[asyncio.Task[bool]] = set()

    def prefetch_after(role: Role) -> Callable[[], None]:
        def start() -> None:
            task = asyncio.ensure_future(_quiet_prefetch(manager, models[NEXT[role]]))
            prefetches.add(task)
            task.add_done_callback(prefetches.discard)
        return start

    clients: dict[Role, RoutedOllamaClient] = {}
    for role in ROLES:
        facts = await manager.facts(models[role])  # fails here, typed, before the team starts
        clients[role] = make_client(manager, settings, role, facts, emit, on_hold=prefetch_after(role))
    agents: list[ChatAgent | BaseTeam] = [
        AssistantAgent(
            NAMES[role],
            model_client=clients[role],
            tools=list(_tools_for(role, workspace, settings)),
            system_message=load_prompt(settings, role),
            description=f"The {NAMES[role]}.",
            model_client_stream=True,
            max_tool_iterations=settings.max_tool_iterations,
            reflect_on_tool_use=False,
        )
        for role in ROLES
    ]
    turns = max_turns or settings.max_turns
    if human is not None:
        agents.append(human)
        # A chat ends when the person says so; limits apply per request, not to the session.
        done: TerminationCondition = FunctionalTermination(_person_quit)
    else:
        done = FunctionalTermination(_reviewer_approved) | TimeoutTermination(settings.max_seconds)
    termination = done | MaxMessageTermination(turns * 50)  # tool events count as messages too
    if settings.max_tokens:
        termination = termination | TokenUsageTermination(max_total_token=settings.max_tokens)
    chat = SelectorGroupChat(
        agents,
        model_client=clients["reviewer"],  # never called: the selector function always answers
        selector_func=Selector(manager, models, emit, human=human is not None),
        termination_condition=termination,
        max_turns=turns,
        allow_repeated_speaker=True,
        emit_team_events=False,
        model_client_streaming=False,
    )
    return Team(chat, clients, termination)


def _tools_for(role: Role, workspace: Workspace, settings: Settings) -> list[Callable[..., Any]]:
    tools = make_tools(workspace, write=role == "coder", command_timeout=settings.command_timeout_s)
    if role == "architect":  # reads, plans; runs nothing
        return [t for t in tools if t.__name__ in ("list_files", "read_file")]
    return list(tools)


def _person_quit(messages: Sequence[Any]) -> bool:
    return any(isinstance(m, BaseChatMessage) and m.source == HUMAN and m.to_text().strip() == "/quit"
               for m in messages)


def _reviewer_approved(messages: Sequence[Any]) -> bool:
    return any(
        isinstance(m, BaseChatMessage) and m.source == NAMES["reviewer"] and approved(m.to_text())
        for m in messages
    )


async def _quiet_prefetch(manager: ResidencyManager, model: str) -> bool:
    # A prefetch is a hint: its failure must not disturb the agent that is generating.
    try:
        return await manager.prefetch(model)
    except CrewError as exc:
        log.debug("prefetch of %s skipped: %s", model, exc)
        return False
