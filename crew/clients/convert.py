"""Conversions shared by every chat client: AutoGen messages and tools to the wire formats
(Ollama's and the OpenAI-style one llama.cpp speaks), tool calls back, thinking split out."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from autogen_core import FunctionCall
from autogen_core.models import (
    AssistantMessage,
    FunctionExecutionResultMessage,
    LLMMessage,
    SystemMessage,
    UserMessage,
)
from autogen_core.tools import Tool, ToolSchema

_THINK = re.compile(r"<think>(.*?)(?:</think>|$)", re.DOTALL)

FinishReason = Literal["stop", "length", "function_calls", "content_filter", "unknown"]
Dialect = Literal["ollama", "openai"]


def to_wire_messages(messages: Sequence[LLMMessage], dialect: Dialect) -> list[dict[str, Any]]:
    """AutoGen's messages as chat messages; the dialects differ only in tool calls and results."""
    out: list[dict[str, Any]] = []
    for message in messages:
        if isinstance(message, SystemMessage):
            out.append({"role": "system", "content": message.content})
        elif isinstance(message, UserMessage):
            out.append({"role": "user", "content": user_text(message)})
        elif isinstance(message, AssistantMessage):
            if isinstance(message.content, list):
                out.append(_calls_message(message.content, dialect))
            else:
                out.append({"role": "assistant", "content": message.content})
        elif isinstance(message, FunctionExecutionResultMessage):
            for result in message.content:
                reply: dict[str, Any] = {"role": "tool", "content": result.content}
                if dialect == "ollama":
                    reply["tool_name"] = result.name
                else:
                    reply |= {"tool_call_id": result.call_id, "name": result.name}
                out.append(reply)
    return out


def _calls_message(calls: Sequence[FunctionCall], dialect: Dialect) -> dict[str, Any]:
    if dialect == "ollama":
        return {"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": c.name, "arguments": parse_arguments(c.arguments)}} for c in calls
        ]}
    return {"role": "assistant", "content": None, "tool_calls": [
        {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
        for c in calls
    ]}


def to_ollama_messages(messages: Sequence[LLMMessage]) -> list[dict[str, Any]]:
    return to_wire_messages(messages, "ollama")


def to_openai_messages(messages: Sequence[LLMMessage]) -> list[dict[str, Any]]:
    return to_wire_messages(messages, "openai")


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


def to_tool(tool: Tool | ToolSchema) -> dict[str, Any]:
    """A tool as a function schema (the same in Ollama's and the OpenAI format)."""
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


def as_text(arguments: Any) -> str:
    """Tool-call arguments as the JSON text AutoGen expects (servers send objects or text)."""
    return arguments if isinstance(arguments, str) else json.dumps(arguments or {})


def function_call(name: str, arguments: Any, call_id: str | None = None) -> FunctionCall:
    call_id = call_id or f"call_{uuid.uuid4().hex[:12]}"
    return FunctionCall(id=call_id, name=name, arguments=as_text(arguments))


def finish_reason(done_reason: str | None) -> FinishReason:
    return {"stop": "stop", "length": "length"}.get(done_reason or "stop", "unknown")  # type: ignore[return-value]


def split_thinking(content: str, thinking: str | None) -> tuple[str, str | None]:
    """Move inline `<think>` text out of the content; merge it with the server's own thinking."""
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
