"""EmbeddedChatClient: a role's chat client on the embedded llama.cpp backend.

The `Llama` object is only touched while the model is held, in a worker thread, under the
model's lock. llama.cpp's `chatml-function-calling` handler constrains tool calls with a
grammar, which is what lets a very small model produce well-formed calls at all; a JSON schema
becomes a grammar too. An answer cannot be cancelled from outside its thread, so `interrupt()`
makes it end at its next token.
"""

from __future__ import annotations

import asyncio
from typing import Any

from crew.backends.embedded import EmbeddedBackend
from crew.clients.base import Ask, ModelClient, Piece
from crew.clients.convert import function_call, to_openai_messages, to_tool
from crew.errors import BackendError, RequestTimeout

# A small model repeats itself without end; every answer is bounded.
MAX_ANSWER_TOKENS = 512


class EmbeddedChatClient(ModelClient):
    """A role's model in this process, made resident by the shared manager."""

    # Bumped by interrupt()/close(); a generation started under an older value stops at its
    # next token.
    _epoch = 0

    @property
    def _llama(self) -> EmbeddedBackend:
        if not isinstance(self._backend, EmbeddedBackend):
            raise BackendError(
                f"the embedded chat client needs the embedded backend, not {self._backend.label}"
            )
        return self._backend

    def _arguments(self, ask: Ask) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "messages": to_openai_messages(ask.messages),
            "temperature": self._settings.temperature,
            "max_tokens": MAX_ANSWER_TOKENS,
            "repeat_penalty": 1.15,
        }
        if self._settings.seed is not None:
            kwargs["seed"] = self._settings.seed
        if ask.advertised:
            kwargs["tools"] = [to_tool(t) for t in ask.advertised]
            kwargs["tool_choice"] = "auto"
        elif ask.json_output:
            # llama.cpp turns the schema into a grammar: even a 135M model answers valid JSON.
            kwargs["response_format"] = {"type": "json_object"} | (
                {"schema": ask.json_output.model_json_schema()} if isinstance(ask.json_output, type) else {}
            )
        return kwargs

    async def _complete(self, ask: Ask) -> Piece:
        kwargs = self._arguments(ask)
        epoch = self._epoch
        llm = self._llama.instance(self._model)
        lock = self._llama.locks[self._model]
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
        usage = response.get("usage") or {}
        choice = response["choices"][0]
        message = choice.get("message") or {}
        return Piece(
            content=message.get("content") or "",
            calls=[function_call(c["function"]["name"], c["function"].get("arguments"), c.get("id"))
                   for c in message.get("tool_calls") or []],
            done_reason=choice.get("finish_reason"),
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            interrupted=self._epoch != epoch,
        )

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

    async def _cut(self) -> None:
        # The answer in flight stops at its next token.
        self._epoch += 1
