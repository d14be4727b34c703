"""What every crew chat client does, whatever backend answers: the AutoGen contract.

A `ModelClient` is bound to one role's model. Each request runs inside the shared
ResidencyManager's hold for that model, so routing happens at the agent boundary; the client
times the wait and the generation, counts usage, keeps the typed crew error behind a failure
(AutoGen only keeps its text), warns once when the conversation nears `num_ctx`, and builds the
`CreateResult` (thinking kept in `thought`, never in content). A backend's client only says how
to ask its server: `_complete` for a whole answer and, where the server streams, `_stream`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Literal, TypedDict, Unpack

from autogen_core import CancellationToken, FunctionCall
from autogen_core.models import (
    AssistantMessage,
    ChatCompletionClient,
    CreateResult,
    LLMMessage,
    ModelCapabilities,
    ModelFamily,
    ModelInfo,
    RequestUsage,
    UserMessage,
)
from autogen_core.tools import Tool, ToolSchema
from pydantic import BaseModel

from crew.backends.base import Backend, ModelFacts
from crew.clients.convert import (
    ThinkSplitter,
    finish_reason,
    function_call,
    split_thinking,
    to_ollama_messages,
    to_tool,
)
from crew.clients.recovery import recover
from crew.clients.spin import spinning
from crew.errors import AnswerFailed, CrewError, StreamInterrupted
from crew.events import (
    ContextFull,
    Event,
    ModelCall,
    ModelCallRetried,
    ToolCallRecovered,
    ToolCallRefused,
    ToolLoopStopped,
)
from crew.residency import ResidencyManager
from crew.settings import RoleSettings

log = logging.getLogger("crew.client")

# The tools that write files: with edit_format "blocks" they run fenced edits but are not offered.
WRITING_TOOLS = frozenset({"write_file", "edit_file"})
# Servers report no tokenizer; four characters a token is the usual estimate for code and prose.
CHARS_PER_TOKEN = 4
# Warn at 90%: the estimate is rough, and the answer needs room too.
CONTEXT_WARNING_SHARE = 0.9


class CreateArgs(TypedDict, total=False):
    """The keyword arguments of AutoGen's `create` and `create_stream` (all optional)."""

    tools: Sequence[Tool | ToolSchema]
    tool_choice: Tool | Literal["auto", "required", "none"]
    json_output: bool | type[BaseModel] | None
    extra_create_args: Mapping[str, Any]
    cancellation_token: CancellationToken | None


@dataclass(frozen=True)
class Ask:
    """One request as the agent made it, before any server's wire format."""

    messages: Sequence[LLMMessage]
    tools: Sequence[Tool | ToolSchema]
    """Every tool the agent can run (calls recovered from text may name any of them)."""
    json_output: bool | type[BaseModel] | None
    extra: Mapping[str, Any]
    cancellation_token: CancellationToken | None
    advertised: Sequence[Tool | ToolSchema] = ()
    """The tools sent to the server (all of `tools`, unless edits are blocks only)."""
    retold: bool = False
    """The model was already told once what was wrong with a call in its text."""


@dataclass
class Attempt:
    """One try at an answer: when it was asked, when its model was held, whether any of it was
    shown (then it is not retried)."""

    asked: float
    started: float = 0.0
    shown: bool = False


@dataclass
class Piece:
    """What a server answered: a whole answer, or one part of a stream (usage on the last)."""

    content: str = ""
    thinking: str | None = None
    calls: list[FunctionCall] = field(default_factory=list)
    done_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    done: bool = True
    """The server marked the answer finished (a stream's last part must)."""
    interrupted: bool = False
    """The answer was cut by `interrupt()`: its tokens count, its text does not."""


class ModelClient(ChatCompletionClient):
    """A chat client for one role; its model is made resident by the shared manager."""

    def __init__(
        self,
        manager: ResidencyManager,
        role: str,
        settings: RoleSettings,
        facts: ModelFacts,
        *,
        backend: Backend,
        emit: Callable[[Event], None] | None = None,
        on_hold: Callable[[], None] | None = None,
    ) -> None:
        self._manager = manager
        self._role = role
        self._settings = settings
        self._model = facts.name
        self._facts = facts
        self._backend = backend
        self._emit = emit or (lambda event: None)
        self._on_hold = on_hold or (lambda: None)
        self.failure: CrewError | None = None
        """The last crew error a request raised (AutoGen re-raises it as a bare RuntimeError)."""
        self._context_warned = False
        self._options = settings.options()
        manager.register(self._model, self._options)
        self._total = RequestUsage(prompt_tokens=0, completion_tokens=0)
        self._last = RequestUsage(prompt_tokens=0, completion_tokens=0)
        self._interrupts = 0

    @property
    def model(self) -> str:
        return self._model

    @property
    def role(self) -> str:
        return self._role

    # -- what a backend's client provides ------------------------------------------------

    async def _complete(self, ask: Ask) -> Piece:
        """The whole answer to `ask`; runs while the model is held."""
        raise NotImplementedError

    async def _stream(self, ask: Ask) -> AsyncIterator[Piece]:
        """The answer as it is generated; by default, the whole answer as one piece."""
        yield await self._complete(ask)

    async def close(self) -> None:
        """Free what the client holds (connections); the model stays the manager's business."""

    async def interrupt(self) -> None:
        """Cut any answer in flight (its hold is released, it is not retried); later requests run
        normally."""
        self._interrupts += 1
        await self._cut()

    async def _cut(self) -> None:
        """Stop the answer in flight, the backend's way."""

    # -- the AutoGen contract ------------------------------------------------------------

    async def create(self, messages: Sequence[LLMMessage], **args: Unpack[CreateArgs]) -> CreateResult:
        ask = self._ask(messages, args)
        stopped = self._stop_spinning(messages)
        if stopped is not None:
            return stopped
        while True:
            answer, tried = Piece(), Attempt(0.0)
            async with aclosing(self._attempts(ask, self._whole)) as attempts:
                async for attempt, piece in attempts:
                    answer, tried = piece, attempt
            usage = self._account(answer, tried.asked, tried.started)
            content, thought = split_thinking(answer.content, answer.thinking)
            outcome = self._conclude(ask, content, thought, answer.calls, answer.done_reason, usage)
            if isinstance(outcome, CreateResult):
                return outcome
            ask = outcome

    async def _whole(self, ask: Ask) -> AsyncIterator[Piece]:
        yield await self._complete(ask)

    async def _attempts(
        self, ask: Ask, answer: Callable[[Ask], AsyncIterator[Piece]]
    ) -> AsyncGenerator[tuple[Attempt, Piece], None]:
        """The pieces of one answer, each with the attempt it belongs to: the model held for the
        whole answer, the call stopped if it was interrupted while it waited, and one retry of a
        failed or cut answer, unless the consumer marked the attempt `shown` or it was
        interrupted. A new `Attempt` object means the answer starts over."""
        for number in (1, 2):
            epoch = self._interrupts
            attempt = Attempt(time.monotonic())
            try:
                # The hold spans the whole answer: released when it is consumed, fails or is closed.
                async with self._failures(), self._manager.hold(self._model):
                    self._still_wanted(ask, epoch)
                    attempt.started = time.monotonic()
                    self._on_hold()
                    last: Piece | None = None
                    async for last in answer(ask):
                        yield attempt, last
                    if last is None:  # an empty answer is still an answer, with its timing
                        last = Piece()
                        yield attempt, last
                    if not last.done:  # a partial answer is never taken as complete
                        raise StreamInterrupted(
                            f"the answer of {self._model} ended before it was complete: run again")
                return
            except (StreamInterrupted, AnswerFailed) as exc:
                # Retried only if nothing was shown: a second answer must not follow half a first.
                if attempt.shown or number == 2 or epoch != self._interrupts:
                    raise
                self._retrying(exc)

    def create_stream(
        self, messages: Sequence[LLMMessage], **args: Unpack[CreateArgs]
    ) -> AsyncGenerator[str | CreateResult, None]:
        ask = self._ask(messages, args)
        return self._streamed(ask)

    async def _streamed(self, ask: Ask) -> AsyncGenerator[str | CreateResult, None]:
        stopped = self._stop_spinning(ask.messages)
        if stopped is not None:
            yield stopped
            return
        while True:
            current: Attempt | None = None
            content: list[str] = []
            thinking: list[str] = []
            calls: list[FunctionCall] = []
            last = Piece()
            splitter = ThinkSplitter()
            # Closed with this generator: the hold ends when the agent stops reading.
            async with aclosing(self._attempts(ask, self._stream)) as attempts:
                async for attempt, piece in attempts:
                    if attempt is not current:  # the answer starts (over)
                        current, content, thinking, calls, splitter = attempt, [], [], [], ThinkSplitter()
                    last = piece
                    if piece.thinking:
                        thinking.append(piece.thinking)
                    calls.extend(piece.calls)
                    for visible in self._visible(splitter.feed(piece.content), thinking):
                        attempt.shown = True
                        content.append(visible)
                        yield visible
            for visible in self._visible(splitter.flush(), thinking):
                content.append(visible)
                yield visible
            assert current is not None
            usage = self._account(last, current.asked, current.started)
            thought = "".join(thinking).strip() or None
            outcome = self._conclude(ask, "".join(content), thought, calls, last.done_reason, usage)
            if isinstance(outcome, CreateResult):
                yield outcome
                return
            ask = outcome

    def _still_wanted(self, ask: Ask, epoch: int) -> None:
        """Raise if the call was interrupted or cancelled while it waited for its model: the cut
        found no connection to close then, and the request must not start after it."""
        token = ask.cancellation_token
        if self._interrupts != epoch or (token is not None and token.is_cancelled()):
            raise StreamInterrupted(f"the {self._role}'s answer was interrupted")

    def _stop_spinning(self, messages: Sequence[LLMMessage]) -> CreateResult | None:
        """The turn's end, without a model call, if the agent repeats one call to no effect."""
        spin = spinning(messages)
        if spin is None:
            return None
        self._emit(ToolLoopStopped(role=self._role, name=spin.name, arguments=spin.arguments,
                                   times=spin.times))
        return CreateResult(finish_reason="stop", content=spin.note(),
                            usage=RequestUsage(prompt_tokens=0, completion_tokens=0), cached=False)

    def _retrying(self, exc: CrewError) -> None:
        self.failure = None  # it is being retried: not the error behind a later failure
        log.info("[RETRY] %s: %s", self._model, exc)
        self._emit(ModelCallRetried(role=self._role, model=self._model, error=str(exc)))

    def _conclude(self, ask: Ask, content: str, thought: str | None, calls: list[FunctionCall],
                  done_reason: str | None, usage: RequestUsage) -> CreateResult | Ask:
        """The result, with tool calls recovered from the text; or, when the text holds a call
        that cannot run, the same request once more with the model told why."""
        if not calls and ask.tools:
            recovery = recover(content, _schemas(ask.tools), blocks=self._settings.edit_format != "tools")
            for found in recovery.calls:
                self._emit(ToolCallRecovered(role=self._role, model=self._model, form=found.form,
                                             name=found.name))
            calls = [function_call(found.name, found.arguments) for found in recovery.calls]
            if calls:
                thought = "\n\n".join(part for part in (thought, recovery.prose) if part) or None
            for problem in recovery.problems:
                self._emit(ToolCallRefused(role=self._role, model=self._model, problem=problem))
            if recovery.problems and not ask.retold:
                told = [*ask.messages, AssistantMessage(content=content, source=self._role),
                        UserMessage(content="crew: " + " ".join(recovery.problems), source="crew")]
                return replace(ask, messages=told, retold=True)
        return self._result(content, thought, calls, done_reason, usage)

    @staticmethod
    def _visible(split: tuple[str, str], thinking: list[str]) -> list[str]:
        visible, hidden = split
        if hidden:
            thinking.append(hidden)
        return [visible] if visible else []

    def _ask(self, messages: Sequence[LLMMessage], args: CreateArgs) -> Ask:
        offered = [] if args.get("tool_choice") == "none" else list(args.get("tools", []))
        # With edit_format "blocks" the writing tools still run fenced edits, but are not offered.
        hidden = WRITING_TOOLS if self._settings.edit_format == "blocks" else frozenset()
        advertised = [t for t in offered if _tool_name(t) not in hidden]
        self._check_context(messages, advertised)
        return Ask(messages, offered, args.get("json_output"), args.get("extra_create_args", {}),
                   args.get("cancellation_token"), advertised)

    def _result(self, content: str, thought: str | None, calls: list[FunctionCall], done_reason: str | None,
                usage: RequestUsage) -> CreateResult:
        return CreateResult(
            finish_reason="function_calls" if calls else finish_reason(done_reason),
            content=calls or content,
            usage=usage,
            cached=False,
            thought=thought,
        )

    def _check_context(self, messages: Sequence[LLMMessage], tools: Sequence[Tool | ToolSchema]) -> None:
        """Warn once when the conversation nears num_ctx: the server truncates it without a word."""
        if self._context_warned:
            return  # once is enough, and counting serialises the whole conversation
        num_ctx = int(self._options["num_ctx"])
        tokens = self.count_tokens(messages, tools=tools)
        if tokens >= CONTEXT_WARNING_SHARE * num_ctx:
            self._context_warned = True
            self._emit(ContextFull(role=self._role, model=self._model, tokens=tokens, num_ctx=num_ctx))

    def _think(self) -> bool | None:
        supported = "thinking" in self._facts.capabilities
        if self._settings.think is None:
            return True if supported else None
        if not self._settings.think and not supported:
            return None  # sending `think` at all to such a model is a 400
        return self._settings.think

    @asynccontextmanager
    async def _failures(self) -> AsyncIterator[None]:
        try:
            yield
        except CrewError as exc:
            self.failure = exc
            raise

    def _account(self, answer: Piece, asked: float, started: float) -> RequestUsage:
        """Count the answer's tokens and time (an interrupted one too), then stop if it was cut."""
        usage = RequestUsage(prompt_tokens=answer.prompt_tokens or 0,
                             completion_tokens=answer.completion_tokens or 0)
        self._last = usage
        self._total = RequestUsage(
            prompt_tokens=self._total.prompt_tokens + usage.prompt_tokens,
            completion_tokens=self._total.completion_tokens + usage.completion_tokens,
        )
        now = time.monotonic()
        self._emit(ModelCall(
            role=self._role, model=self._model, prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens, seconds=now - started,
            wait_seconds=started - asked,
        ))
        if answer.interrupted:
            raise StreamInterrupted(f"the {self._role}'s answer was interrupted")
        return usage

    def actual_usage(self) -> RequestUsage:
        return self._last

    def total_usage(self) -> RequestUsage:
        return self._total

    def count_tokens(
        self, messages: Sequence[LLMMessage], *, tools: Sequence[Tool | ToolSchema] = []
    ) -> int:
        text = json.dumps(to_ollama_messages(messages)) + json.dumps([to_tool(t) for t in tools])
        return len(text) // CHARS_PER_TOKEN

    def remaining_tokens(
        self, messages: Sequence[LLMMessage], *, tools: Sequence[Tool | ToolSchema] = []
    ) -> int:
        return int(self._options["num_ctx"]) - self.count_tokens(messages, tools=tools)

    @property
    def capabilities(self) -> ModelCapabilities:
        info = self.model_info
        return ModelCapabilities(
            vision=info["vision"], function_calling=info["function_calling"], json_output=info["json_output"]
        )

    @property
    def model_info(self) -> ModelInfo:
        caps = self._facts.capabilities
        return ModelInfo(
            vision="vision" in caps,
            function_calling="tools" in caps,
            json_output=True,
            family=ModelFamily.UNKNOWN,
            structured_output=True,
        )


def _tool_name(tool: Tool | ToolSchema) -> str:
    return str(to_tool(tool)["function"]["name"])


def _schemas(tools: Sequence[Tool | ToolSchema]) -> dict[str, dict[str, Any]]:
    """Each tool's parameters schema, by name."""
    return {spec["function"]["name"]: spec["function"]["parameters"] for spec in map(to_tool, tools)}
