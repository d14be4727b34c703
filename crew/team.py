"""The team: Architect, Coder and Reviewer AssistantAgents in a SelectorGroupChat.

Speaker selection is `crew.routing`'s rules (never a model call, so it never loads a model),
adapted here to AutoGen's selector function; every decision is a `routing` event. While an
agent generates, the model of the agent the workflow names next is prefetched if it fits in the
free budget. AutoGen's types are known here, in `crew.clients`, and in the commands that run a
team (`crew.commands`, `crew.session`); never below the clients (a contract in pyproject.toml).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
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
from autogen_agentchat.messages import (
    BaseAgentEvent,
    BaseChatMessage,
    ModelClientStreamingChunkEvent,
    ToolCallExecutionEvent,
    ToolCallRequestEvent,
)
from autogen_agentchat.teams import BaseGroupChat, RoundRobinGroupChat, SelectorGroupChat

from crew.backends import BackendChoice
from crew.clients import ModelClient
from crew.clients.factory import make_client
from crew.errors import CrewError
from crew.events import AgentMessage, Event, RoutingDecision, StreamChunk, ToolCall, ToolResult
from crew.prompt_files import load_prompt
from crew.records import Records
from crew.residency import ResidencyManager
from crew.residency.transitions import LearnedForecast, TransitionStore, store_key
from crew.routing import (
    CHAT_RULE,
    HUMAN,
    NAMES,
    NEXT,
    RULE,
    Speaker,
    approved,
    choose_next,
    speaker_name,
    state_of,
)
from crew.settings import ROLES, Role, Settings
from crew.workspace.repo import Workspace
from crew.workspace.sandbox import Sandbox
from crew.workspace.tools import UNCONFINED, make_tools

log = logging.getLogger("crew.team")


class Selector:
    """The selector_func: `crew.routing.choose_next` on AutoGen's thread, recorded as an event."""

    def __init__(self, manager: ResidencyManager, models: dict[Role, str], emit: Callable[[Event], None],
                 *, human: bool = False, learned: LearnedForecast | None = None):
        self._manager = manager
        self._models = models
        self._emit = emit
        self._human = human
        rule = CHAT_RULE if human else RULE
        self._learned = learned or LearnedForecast(models, TransitionStore.rule_only(rule))

    def __call__(self, thread: Sequence[BaseAgentEvent | BaseChatMessage]) -> str:
        role, reason = self.choose(thread)
        last = next((m for m in reversed(thread) if isinstance(m, BaseChatMessage)), None)
        outlook = self._learned.turn(state_of(last.source) if last else "task", role)
        if outlook is not None:
            # Eviction spares what the team is likely to ask for again (a value, read by the manager).
            self._manager.forecast(outlook, source=self)
        name = speaker_name(role)
        self._emit(RoutingDecision(speaker=name, reason=reason, after=last.id if last else None))
        model = self._models.get(role, "-") if role != "human" else "-"
        log.info("[ROUTING] next=%s model=%s | %s", name, model, reason)
        return name

    def choose(self, thread: Sequence[BaseAgentEvent | BaseChatMessage]) -> tuple[Speaker, str]:
        chat = [m for m in thread if isinstance(m, BaseChatMessage)]
        return choose_next([m.source for m in chat], chat[-1].to_text(), human=self._human,
                           resident=self._resident)

    def _resident(self, role: Role) -> bool:
        return any(v.name == self._models[role] and v.state == "resident"
                   for v in self._manager.snapshot().slots)


@dataclass
class Team:
    """The group chat and what a session needs to read back from it."""

    chat: BaseGroupChat
    clients: dict[Role, ModelClient]
    termination: TerminationCondition

    def failure(self) -> CrewError | None:
        """The typed error behind an agent failure (AutoGen only keeps its text)."""
        return next((c.failure for c in self.clients.values() if c.failure is not None), None)

    async def interrupt(self) -> None:
        """Cut every model call in flight."""
        for client in self.clients.values():
            await client.interrupt()

    def forget_failures(self) -> None:
        for client in self.clients.values():
            client.failure = None

    async def close(self) -> None:
        for client in self.clients.values():
            await client.close()


async def build_team(
    settings: Settings,
    choice: BackendChoice,
    manager: ResidencyManager,
    workspace: Workspace,
    emit: Callable[[Event], None],
    *,
    max_turns: int | None = None,
    human: ChatAgent | None = None,
    sandbox: Sandbox = UNCONFINED,
    solo: Role | None = None,
) -> Team:
    """Check every role's model with the backend, then assemble the team. With `solo`, one agent
    instead: the Coder's tools and limits on `solo`'s model (`crew eval`'s baseline)."""
    if solo is not None:
        return await _solo_team(settings, choice, manager, workspace, emit, solo, max_turns, sandbox)
    models = choice.models()
    prefetches: set[asyncio.Task[bool]] = set()

    def prefetch_after(role: Role) -> Callable[[], None]:
        def start() -> None:
            task = asyncio.ensure_future(_quiet_prefetch(manager, models[NEXT[role]]))
            prefetches.add(task)
            task.add_done_callback(prefetches.discard)
        return start

    clients: dict[Role, ModelClient] = {}
    for role in ROLES:
        facts = await manager.facts(models[role])  # fails here, typed, before the team starts
        clients[role] = make_client(choice, manager, role, facts, emit, on_hold=prefetch_after(role))
    for role in ROLES:
        await manager.check_fits(models[role])  # and so does a model that can never fit
    agents: list[ChatAgent | BaseTeam] = [
        AssistantAgent(
            NAMES[role],
            model_client=clients[role],
            tools=list(_tools_for(role, workspace, settings, sandbox)),
            system_message=_system_message(settings, choice, role),
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
        selector_func=Selector(
            manager, models, emit, human=human is not None,
            learned=_learned_forecast(settings, workspace, models, chat=human is not None)),
        termination_condition=termination,
        max_turns=turns,
        allow_repeated_speaker=True,
        emit_team_events=False,
        model_client_streaming=False,
    )
    return Team(chat, clients, termination)


async def _solo_team(
    settings: Settings, choice: BackendChoice, manager: ResidencyManager, workspace: Workspace,
    emit: Callable[[Event], None], solo: Role, max_turns: int | None, sandbox: Sandbox,
) -> Team:
    model = choice.models()[solo]
    client = make_client(choice, manager, solo, await manager.facts(model), emit)
    await manager.check_fits(model)
    manager.forecast([model], source="solo")
    agent = AssistantAgent(
        NAMES["coder"], model_client=client,
        tools=list(_tools_for("coder", workspace, settings, sandbox)),
        system_message=load_prompt(settings, "solo"), description="A programmer working alone.",
        model_client_stream=True, max_tool_iterations=settings.max_tool_iterations,
        reflect_on_tool_use=False,
    )
    turns = max_turns or settings.max_turns
    done = FunctionalTermination(_solo_done) | TimeoutTermination(settings.max_seconds)
    termination = done | MaxMessageTermination(turns * 50)
    if settings.max_tokens:
        termination = termination | TokenUsageTermination(max_total_token=settings.max_tokens)
    chat = RoundRobinGroupChat([agent], termination_condition=termination, max_turns=turns,
                               emit_team_events=False)
    return Team(chat, {solo: client}, termination)


def _solo_done(messages: Sequence[Any]) -> bool:
    return any(isinstance(m, BaseChatMessage) and m.source == NAMES["coder"]
               and any(line.strip().strip("*_`") == "DONE" for line in m.to_text().splitlines())
               for m in messages)


def record(records: Records, item: Any) -> None:
    """Turn one item of the team's stream into events (and so records)."""
    if isinstance(item, ModelClientStreamingChunkEvent):
        records.emit(StreamChunk(source=item.source, text=item.content))
    elif isinstance(item, ToolCallRequestEvent):
        for call in item.content:
            records.emit(ToolCall(source=item.source, name=call.name, arguments=call.arguments))
    elif isinstance(item, ToolCallExecutionEvent):
        for result in item.content:
            records.emit(ToolResult(source=item.source, name=result.name, is_error=bool(result.is_error),
                                    content=result.content[:2000]))
    elif isinstance(item, BaseChatMessage):
        records.emit(AgentMessage(source=item.source, content=item.to_text()))
        records.release(item.id)


def _system_message(settings: Settings, choice: BackendChoice, role: Role) -> str:
    """The role's prompt, and for the writing role how it may write files (edit_format)."""
    prompt = load_prompt(settings, role)
    edit_format = choice.role(role).edit_format
    if role != "coder" or edit_format == "tools":
        return prompt
    extra = load_prompt(settings, "edit-blocks-only" if edit_format == "blocks" else "edit-blocks")
    return f"{prompt.rstrip()}\n\n{extra}"


def _tools_for(role: Role, workspace: Workspace, settings: Settings, sandbox: Sandbox
               ) -> list[Callable[..., Any]]:
    tools = make_tools(workspace, write=role == "coder", command_timeout=settings.command_timeout_s,
                       sandbox=sandbox)
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


def _learned_forecast(settings: Settings, workspace: Workspace, models: dict[Role, str], *, chat: bool
                      ) -> LearnedForecast:
    """The transitions this workspace showed before (in chats, or in runs), kept as they grow."""
    store = TransitionStore(settings.state_dir)
    key = store_key(workspace.root.resolve(), "chat" if chat else "run")
    learned = store.load(key, CHAT_RULE if chat else RULE)
    return LearnedForecast(models, learned, lambda counts: store.save(key, counts))


async def _quiet_prefetch(manager: ResidencyManager, model: str) -> bool:
    # A prefetch is a hint: its failure must not disturb the agent that is generating.
    try:
        return await manager.prefetch(model)
    except CrewError as exc:
        log.debug("prefetch of %s skipped: %s", model, exc)
        return False
