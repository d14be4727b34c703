"""A chat client for models of the embedded backend, with the same contract as RoutedOllamaClient.

Every call runs inside the shared ResidencyManager's hold; the `Llama` object is only touched
while held, in a worker thread, under the model's lock. llama.cpp's
`chatml-function-calling` handler constrains tool calls with a grammar, which is what lets a
very small model produce well-formed calls at all.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from typing import Any, Literal

from autogen_core import CancellationToken, FunctionCall
from autogen_core.models import (
    AssistantMessage,
    CreateResult,
    FunctionExecutionResultMessage,
    LLMMessage,
    RequestUsage,
    SystemMessage,
    UserMessage,
)
from autogen_core.tools import Tool, ToolSchema
from pydantic import BaseModel

from crew.backend import ModelFacts
from crew.client import RoutedOllamaClient, finish_reason, split_thinking, to_ollama_tool, user_text
from crew.embedded_backend import EmbeddedBackend
from crew.errors import BackendError, RequestTimeout, StreamInterrupted
from crew.events import Event
from crew.residency import ResidencyManager
from crew.settings import RoleSettings

# A small model repeats itself without end; every answer is bounded.
MAX_ANSWER_TOKENS = 512


class EmbeddedChatClient(RoutedOllamaClient):
    """RoutedOllamaClient's contract over an in-process llama.cpp model."""

    def __init__(self, manager: ResidencyManager, role: str, settings: RoleSettings, facts: ModelFacts,
                 *, backend: EmbeddedBackend, emit: Callable[[Event], None] | None = None,
                 on_hold: Callable[[], None] | None = None) -> None:
        super().__init__(manager, role, settings, facts, host="embedded", emit=emit, on_hold=on_hold)
        self._backend = backend
        # Bumped by interrupt()/close(); a generation started under an older value stops at its
        # next token. A llama.cpp call cannot be cancelled from outside its thread otherwise.
        self._epoch = 0

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
        self._check_context(messages, tools)
        kwargs: dict[str, Any] = {
            "messages": to_openai_messages(messages),
            "temperature": self._settings.temperature,
            "max_tokens": MAX_ANSWER_TOKENS,
            "repeat_penalty": 1.15,
        }
        if self._settings.seed is not None:
            kwargs["seed"] = self._settings.seed
        epoch = self._epoch
        if tools and tool_choice != "none":
            kwargs["tools"] = [to_ollama_tool(t) for t in tools]
            kwargs["tool_choice"] = "auto"
        elif json_output:
            # llama.cpp turns the schema into a grammar: even a 135M model answers valid JSON.
            kwargs["response_format"] = {"type": "json_object"} | (
                {"schema": json_output.model_json_schema()} if isinstance(json_output, type) else {}
            )
        asked = time.monotonic()
        async with self._failures(), self._manager.hold(self._model):
            started = time.monotonic()
            self._on_hold()
            llm = self._backend.instance(self._model)
            lock = self._backend.locks[self._model]
            kwargs["logits_processor"] = self._stop_when_interrupted(epoch, llm.token_eos())

            def complete() -> dict[str, Any]:
                with lock:
                    result: dict[str, Any] = llm.create_chat_completion(**kwargs)
                    return result

            try:
                response = await asyncio.wait_for(asyncio.to_thread(complete), self._settings.timeout_s)
            except TimeoutError:
                raise RequestTimeout(f"the embedded model did not answer in {self._settings.timeout_s:g} s: "
                                     f"raise CREW_{self._role.upper()}_TIMEOUT_S") from None
            except ValueError as exc:
                # A small model can talk itself past its context; the turn ends, the run goes on.
                if "context window" not in str(exc):
                    raise BackendError(f"the embedded model failed ({self._model}): {exc}") from None
                response = {"choices": [{"message": {"content": f"(no answer: {exc})"},
                                         "finish_reason": "length"}], "usage": {}}
            except RuntimeError as exc:  # llama.cpp's own failures
                raise BackendError(f"the embedded model failed ({self._model}): {exc}") from None
        usage_data = response.get("usage") or {}
        usage = RequestUsage(prompt_tokens=int(usage_data.get("prompt_tokens") or 0),
                             completion_tokens=int(usage_data.get("completion_tokens") or 0))
        self._account(usage, asked, started)  # tokens spent count, interrupted or not
        if self._epoch != epoch:
            raise StreamInterrupted(f"the {self._role}'s answer was interrupted")
        choice = response["choices"][0]
        message = choice.get("message") or {}
        content, thought = split_thinking(message.get("content") or "", None)
        calls = [
            FunctionCall(id=call.get("id") or f"call_{uuid.uuid4().hex[:12]}",
                         name=call["function"]["name"],
                         arguments=_as_text(call["function"].get("arguments")))
            for call in message.get("tool_calls") or []
        ]
        return CreateResult(
            finish_reason="function_calls" if calls else finish_reason(choice.get("finish_reason")),
            content=calls or content, usage=usage, cached=False, thought=thought,
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
        async def whole() -> AsyncGenerator[str | CreateResult, None]:
            # Grammar-constrained tool calls come whole; the text is yielded in one piece.
            result = await self.create(messages, tools=tools, tool_choice=tool_choice,
                                       json_output=json_output, extra_create_args=extra_create_args)
            if isinstance(result.content, str) and result.content:
                yield result.content
            yield result

        return whole()

    def _stop_when_interrupted(self, epoch: int, eos: int) -> Any:
        from llama_cpp import LogitsProcessorList

        def check(input_ids: Any, scores: Any) -> Any:
            # Called before every token in the worker thread, from C: an exception here would be
            # swallowed, so an interrupted answer is ended by allowing only end-of-sequence.
            if self._epoch != epoch:
                scores[:] = -float("inf")
                scores[eos] = 0.0
            return scores

        return LogitsProcessorList([check])

    async def close(self) -> None:
        self._epoch += 1
        await super().close()

    async def interrupt(self) -> None:
        """Stop the answer in flight at its next token; later requests run normally."""
        self._epoch += 1



def _as_text(arguments: Any) -> str:
    return arguments if isinstance(arguments, str) else json.dumps(arguments or {})


def to_openai_messages(messages: Sequence[LLMMessage]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for message in messages:
        if isinstance(message, SystemMessage):
            out.append({"role": "system", "content": message.content})
        elif isinstance(message, UserMessage):
            out.append({"role": "user", "content": user_text(message)})
        elif isinstance(message, AssistantMessage):
            if isinstance(message.content, list):
                out.append({"role": "assistant", "content": None, "tool_calls": [
                    {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                    for c in message.content]})
            else:
                out.append({"role": "assistant", "content": message.content})
        elif isinstance(message, FunctionExecutionResultMessage):
            for result in message.content:
                out.append({"role": "tool", "content": result.content, "tool_call_id": result.call_id,
                            "name": result.name})
    return out
