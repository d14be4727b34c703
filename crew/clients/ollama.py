"""RoutedOllamaClient: a role's chat client on Ollama, through the official `ollama` client.

On top of what every client does (`crew.clients.base`), it fixes what AutoGen's stock Ollama
client gets wrong (notes/autogen-facts.md): a real per-request timeout; Qwen3 thinking from
`message.thinking` or inline `<think>` text; `think` sent only to models that support it; the
role's options (same `num_ctx` as the preload) on every call, so Ollama never reloads; a
single-chunk stream that keeps its content; tool results that keep their tool name.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import ollama
from autogen_core import FunctionCall
from pydantic import BaseModel

from crew.backends.ollama import OllamaBackend, make_client
from crew.backends.ollama_api import ollama_errors
from crew.clients.base import Ask, ModelClient, Piece
from crew.clients.convert import function_call, to_ollama_messages, to_tool


class RoutedOllamaClient(ModelClient):
    """A role's model on an Ollama server, made resident by the shared manager."""

    _http: ollama.AsyncClient | None = None

    @property
    def _host(self) -> str:
        return self._backend.label

    @property
    def _lease_s(self) -> float:
        assert isinstance(self._backend, OllamaBackend), "this client talks to Ollama only"
        return self._backend.lease_s

    @property
    def _client(self) -> ollama.AsyncClient:
        # Made on first use, and again after an interrupt closed the last one.
        if self._http is None:
            self._http = make_client(self._host, read_timeout=self._settings.timeout_s)
        return self._http

    def _request(self, ask: Ask) -> dict[str, Any]:
        extra_options = dict(ask.extra.get("options", {}))
        request: dict[str, Any] = {
            "model": self._model,
            "messages": to_ollama_messages(ask.messages),
            # Runner options must match the preload, or Ollama reloads: a caller cannot change num_ctx.
            "options": {**self._options, **extra_options, "num_ctx": self._options["num_ctx"]},
            # A lease, renewed by each request and by the manager: never -1, so a killed crew's
            # models leave within one lease.
            "keep_alive": self._lease_s,
        }
        if ask.advertised:
            request["tools"] = [to_tool(tool) for tool in ask.advertised]
        think = self._think()
        if think is not None:
            request["think"] = think
        if ask.json_output is True:
            request["format"] = "json"
        elif isinstance(ask.json_output, type) and issubclass(ask.json_output, BaseModel):
            request["format"] = ask.json_output.model_json_schema()
        return request

    async def _complete(self, ask: Ask) -> Piece:
        request = self._request(ask)
        async with ollama_errors(self._host, self._model):
            call = asyncio.ensure_future(
                asyncio.wait_for(self._client.chat(**request, stream=False), self._settings.timeout_s)
            )
            if ask.cancellation_token is not None:
                ask.cancellation_token.link_future(call)
            response = await call
        return _piece(response)

    async def _stream(self, ask: Ask) -> AsyncIterator[Piece]:
        request = self._request(ask)
        async with ollama_errors(self._host, self._model):
            stream = await self._client.chat(**request, stream=True)
            async for part in stream:
                yield _piece(part)

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()  # type: ignore[no-untyped-call]  # public, unannotated

    async def _cut(self) -> None:
        # Closing the connection cuts the request in flight; later requests use a new one.
        old, self._http = self._http, None
        if old is not None:
            await old.close()  # type: ignore[no-untyped-call]


def _piece(response: ollama.ChatResponse) -> Piece:
    message = response.message
    return Piece(
        content=message.content or "",
        thinking=message.thinking,
        calls=to_function_calls(message.tool_calls),
        done_reason=response.done_reason,
        prompt_tokens=response.prompt_eval_count,
        completion_tokens=response.eval_count,
        done=bool(response.done),
    )


def to_function_calls(tool_calls: Sequence[Any] | None) -> list[FunctionCall]:
    return [function_call(call.function.name, call.function.arguments) for call in tool_calls or []]
