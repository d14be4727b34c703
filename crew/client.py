"""RoutedOllamaClient: an AutoGen ChatCompletionClient bound to one role's model.

Every request runs inside the shared ResidencyManager's hold for its model, so routing
happens at the agent boundary. It also fixes what AutoGen's stock Ollama client gets wrong
(notes/autogen-facts.md): a real per-request timeout; Qwen3 thinking kept in
`CreateResult.thought` (from `message.thinking`, or from inline `<think>` text, which never
leaks into content); `think` sent only to models that support it; the role's options (same
`num_ctx` as the preload) on every call; usage passed through; token counting that works
offline; a single-chunk stream that keeps its content; model_info for qwen3 tags AutoGen
does not know; tool results that keep their tool name; malformed tool arguments that reach
the agent as an error rather than crash the run.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, Literal

import ollama
from autogen_core import CancellationToken, FunctionCall
from autogen_core.models import (
    AssistantMessage,
    ChatCompletionClient,
    CreateResult,
    FunctionExecutionResultMessage,
    LLMMessage,
    ModelCapabilities,
    ModelFamily,
    ModelInfo,
    RequestUsage,
    SystemMessage,
    UserMessage,
)
from autogen_core.tools import Tool, ToolSchema
from pydantic import BaseModel

from crew.backend import ModelFacts
from crew.errors import CrewError
from crew.events import ContextFull, Event, ModelCall
from crew.ollama_api import ollama_errors
from crew.ollama_backend import make_client
from crew.residency import ResidencyManager
from crew.settings import RoleSettings

# Ollama reports no tokenizer; four characters a token is the usual estimate for code and prose.
CHARS_PER_TOKEN = 4
# Warn at 90%: the estimate is rough, and the answer needs room too.
CONTEXT_WARNING_SHARE = 0.9
_THINK = re.compile(r"<think>(.*?)(?:</think>|$)", re.DOTALL)

FinishReason = Literal["stop", "length", "function_calls", "content_filter", "unknown"]


class RoutedOllamaClient(ChatCompletionClient):
    """A chat client for one role; its model is made resident by the shared manager."""

    def __init__(
        self,
        manager: ResidencyManager,
        role: str,
        settings: RoleSettings,
        facts: ModelFacts,
        *,
        host: str,
        emit: Callable[[Event], None] | None = None,
        on_hold: Callable[[], None] | None = None,
    ) -> None:
        self._manager = manager
        self._role = role
        self._settings = settings
        self._model = facts.name
        self._facts = facts
        self._host = host
        self._emit = emit or (lambda event: None)
        self._on_hold = on_hold or (lambda: None)
        self.failure: CrewError | None = None
        """The last crew error a request raised (AutoGen re-raises it as a bare RuntimeError)."""
        self._context_warned = False
        self._options = settings.options()
        manager.register(self._model, self._options)
        self._http: ollama.AsyncClient | None = None
        self._total = RequestUsage(prompt_tokens=0, completion_tokens=0)
        self._last = RequestUsage(prompt_tokens=0, completion_tokens=0)

    @property
    def _client(self) -> ollama.AsyncClient:
        # Made on first use: a client on another backend never needs one.
        if self._http is None:
            self._http = make_client(self._host, read_timeout=self._settings.timeout_s)
        return self._http

    @property
    def model(self) -> str:
        return self._model

    @property
    def role(self) -> str:
        return self._role

    # -- requests -----------------------------------------------------------------------

    def _request(
        self,
        messages: Sequence[LLMMessage],
        tools: Sequence[Tool | ToolSchema],
        json_output: bool | type[BaseModel] | None,
        extra: Mapping[str, Any],
    ) -> dict[str, Any]:
        request: dict[str, Any] = {
            "model": self._model,
            "messages": to_ollama_messages(messages),
            "options": {**self._options, **dict(extra.get("options", {}))},
            "keep_alive": -1,  # the manager decides when it leaves, not Ollama's timer
        }
        # Runner options must match the preload, or Ollama reloads: never let a caller change them.
        request["options"]["num_ctx"] = self._options["num_ctx"]
        self._check_context(messages, tools)
        if tools:
            request["tools"] = [to_ollama_tool(tool) for tool in tools]
        think = self._think()
        if think is not None:
            request["think"] = think
        if json_output is True:
            request["format"] = "json"
        elif isinstance(json_output, type) and issubclass(json_output, BaseModel):
            request["format"] = json_output.model_json_schema()
        return request

    def _check_context(self, messages: Sequence[LLMMessage], tools: Sequence[Tool | ToolSchema]) -> None:
        """Warn once when the conversation nears num_ctx: Ollama truncates it without a word."""
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

    async def create(
        self,
        messages: Sequence[LLMMessage],
        *,
        tools: Sequence[Tool | ToolSchema] = [],
        tool_choice: Tool | Literal["auto", "required", "none"] = "auto",
        json_output: bool | type[BaseModel] | None = None,
        extra_create_args: Mapping[str, Any] = {},
        cancellation_token: CancellationToken | None = None,
    ) -> CreateResult:
        request = self._request(messages, [] if tool_choice == "none" else tools, json_output,
                                extra_create_args)
        asked = time.monotonic()
        async with self._failures(), self._manager.hold(self._model):
            started = time.monotonic()
            self._on_hold()
            async with ollama_errors(self._host, self._model):
                call = asyncio.ensure_future(
                    asyncio.wait_for(self._client.chat(**request, stream=False), self._settings.timeout_s)
                )
                if cancellation_token is not None:
                    cancellation_token.link_future(call)
                response = await call
        message = response.message
        content, thought = split_thinking(message.content or "", message.thinking)
        calls = to_function_calls(message.tool_calls)
        usage = RequestUsage(
            prompt_tokens=response.prompt_eval_count or 0,
            completion_tokens=response.eval_count or 0,
        )
        self._account(usage, asked, started)
        return CreateResult(
            finish_reason="function_calls" if calls else finish_reason(response.done_reason),
            content=calls or content,
            usage=usage,
            cached=False,
            thought=thought,
        )

    def create_stream(
        self,
        messages: Sequence[LLMMessage],
        *,
        tools: Sequence[Tool | ToolSchema] = [],
        tool_choice: Tool | Literal["auto", "required", "none"] = "auto",
        json_output: bool | type[BaseModel] | None = None,
        extra_create_args: Mapping[str, Any] = {},
        cancellation_token: CancellationToken | None = None,
    ) -> AsyncGenerator[str | CreateResult, None]:
        request = self._request(messages, [] if tool_choice == "none" else tools, json_output,
                                extra_create_args)
        return self._stream(request)

    async def _stream(self, request: dict[str, Any]) -> AsyncGenerator[str | CreateResult, None]:
        asked = time.monotonic()
        # The hold spans the whole stream: released when it is consumed, fails or is closed.
        async with self._failures(), self._manager.hold(self._model):
            started = time.monotonic()
            self._on_hold()
            content: list[str] = []
            thinking: list[str] = []
            calls: list[FunctionCall] = []
            last: Any = None
            splitter = ThinkSplitter()
            async with ollama_errors(self._host, self._model):
                stream = await self._client.chat(**request, stream=True)
                async for part in stream:
                    last = part
                    if part.message.thinking:
                        thinking.append(part.message.thinking)
                    visible, hidden = splitter.feed(part.message.content or "")
                    thinking.extend([hidden] if hidden else [])
                    if visible:
                        content.append(visible)
                        yield visible
                    calls.extend(to_function_calls(part.message.tool_calls))
                visible, hidden = splitter.flush()
                thinking.extend([hidden] if hidden else [])
                if visible:
                    content.append(visible)
                    yield visible
        usage = RequestUsage(
            prompt_tokens=getattr(last, "prompt_eval_count", None) or 0,
            completion_tokens=getattr(last, "eval_count", None) or 0,
        )
        self._account(usage, asked, started)
        thought = "".join(thinking).strip() or None
        yield CreateResult(
            finish_reason="function_calls" if calls else finish_reason(getattr(last, "done_reason", None)),
            content=calls or "".join(content),
            usage=usage,
            cached=False,
            thought=thought,
        )

    @asynccontextmanager
    async def _failures(self) -> AsyncIterator[None]:
        try:
            yield
        except CrewError as exc:
            self.failure = exc
            raise

    def _account(self, usage: RequestUsage, asked: float, started: float) -> None:
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

    # -- the rest of the ChatCompletionClient contract ------------------------------------

    async def close(self) -> None:
        if self._http is not None:
            await self._http._client.aclose()

    async def interrupt(self) -> None:
        """Cut any request in flight (its hold is released); later requests use a new connection."""
        old, self._http = self._http, None
        if old is not None:
            await old._client.aclose()

    def actual_usage(self) -> RequestUsage:
        return self._last

    def total_usage(self) -> RequestUsage:
        return self._total

    def count_tokens(
        self, messages: Sequence[LLMMessage], *, tools: Sequence[Tool | ToolSchema] = []
    ) -> int:
        tool_text = json.dumps([to_ollama_tool(t) for t in tools])
        text = json.dumps(to_ollama_messages(messages)) + tool_text
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


# -- conversions ----------------------------------------------------------------------------


def to_ollama_messages(messages: Sequence[LLMMessage]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for message in messages:
        if isinstance(message, SystemMessage):
            out.append({"role": "system", "content": message.content})
        elif isinstance(message, UserMessage):
            out.append({"role": "user", "content": user_text(message)})
        elif isinstance(message, AssistantMessage):
            if isinstance(message.content, list):
                out.append({"role": "assistant", "content": "", "tool_calls": [
                    {"function": {"name": call.name, "arguments": parse_arguments(call.arguments)}}
                    for call in message.content
                ]})
            else:
                out.append({"role": "assistant", "content": message.content})
        elif isinstance(message, FunctionExecutionResultMessage):
            for result in message.content:
                out.append({"role": "tool", "content": result.content, "tool_name": result.name})
    return out


def user_text(message: UserMessage) -> str:
    """A user message's text, with its speaker named.

    Chat templates have no speaker names: without `[Coder]` every agent is "the user".
    """
    text = message.content if isinstance(message.content, str) else "\n".join(
        part for part in message.content if isinstance(part, str)
    )
    if message.source and message.source != "user":
        text = f"[{message.source}]\n{text}"
    return text


def to_ollama_tool(tool: Tool | ToolSchema) -> dict[str, Any]:
    schema: Mapping[str, Any] = tool.schema if isinstance(tool, Tool) else tool
    parameters = dict(schema.get("parameters") or {"type": "object", "properties": {}})
    return {"type": "function", "function": {
        "name": schema["name"], "description": schema.get("description", ""), "parameters": parameters,
    }}


def parse_arguments(arguments: str) -> dict[str, Any]:
    try:
        parsed = json.loads(arguments)
    except json.JSONDecodeError:
        return {"_raw": arguments}
    return parsed if isinstance(parsed, dict) else {"_raw": arguments}


def to_function_calls(tool_calls: Sequence[Any] | None) -> list[FunctionCall]:
    calls = []
    for call in tool_calls or []:
        arguments = call.function.arguments
        text = arguments if isinstance(arguments, str) else json.dumps(arguments or {})
        call_id = f"call_{uuid.uuid4().hex[:12]}"
        calls.append(FunctionCall(id=call_id, name=call.function.name, arguments=text))
    return calls


def finish_reason(done_reason: str | None) -> FinishReason:
    return {"stop": "stop", "length": "length"}.get(done_reason or "stop", "unknown")  # type: ignore[return-value]


def split_thinking(content: str, thinking: str | None) -> tuple[str, str | None]:
    """Move inline `<think>` text out of the content; merge it with Ollama's own thinking."""
    inline = [m.strip() for m in _THINK.findall(content)]
    visible = _THINK.sub("", content).strip() if inline else content
    parts = [p for p in [thinking or "", *inline] if p and p.strip()]
    return visible, "\n".join(p.strip() for p in parts) or None


class ThinkSplitter:
    """Splits streamed content into visible text and `<think>` text, across chunk borders."""

    def __init__(self) -> None:
        self._inside = False
        self._pending = ""

    def feed(self, chunk: str) -> tuple[str, str]:
        text = self._pending + chunk
        self._pending = ""
        visible: list[str] = []
        hidden: list[str] = []
        while text:
            tag = "</think>" if self._inside else "<think>"
            index = text.find(tag)
            if index < 0:
                keep = _partial_suffix(text, tag)
                body, self._pending = text[: len(text) - keep], text[len(text) - keep:]
                (hidden if self._inside else visible).append(body)
                break
            (hidden if self._inside else visible).append(text[:index])
            text = text[index + len(tag):]
            self._inside = not self._inside
        return "".join(visible), "".join(hidden)


    def flush(self) -> tuple[str, str]:
        rest, self._pending = self._pending, ""
        return ("", rest) if self._inside else (rest, "")


def _partial_suffix(text: str, tag: str) -> int:
    # A chunk may end in the middle of a tag ("<thi"); hold those characters back.
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-size:]):
            return size
    return 0
