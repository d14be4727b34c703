"""EmbeddedChatClient: a role's chat client on the embedded llama.cpp backend.

Each request goes to the model's worker process (`crew.backends.worker`) while the model is
held. llama.cpp's `chatml-function-calling` handler constrains tool calls with a grammar, which
is what lets a very small model produce well-formed calls at all; a JSON schema becomes a
grammar too. That grammar code is also where llama.cpp aborts now and then (`llama-grammar.cpp:
fatal error`, "Unexpected empty grammar stack"): the worker dies, the call fails with one line
naming the signal and what was asked, and the shared attempt loop asks once more, this time
without the grammar (the tool calls then come from the text, `crew.clients.recovery`). A
second death ends the run cleanly. `interrupt()`, a cancelled call and the timeout end the
answer in flight within about a second (the worker is told, or killed and restarted).
"""

from __future__ import annotations

import asyncio
from typing import Any

from crew.backends.embedded import EmbeddedBackend
from crew.clients.base import Ask, ModelClient, Piece
from crew.clients.convert import function_call, to_openai_messages, to_tool
from crew.errors import BackendError, ContextOverflow, ModelCrashed, RequestTimeout

# A small model repeats itself without end; every answer is bounded.
MAX_ANSWER_TOKENS = 512


class EmbeddedChatClient(ModelClient):
    """A role's model in its worker process, made resident by the shared manager."""

    _plain_next = False
    """The last answer crashed the worker: the next one is asked without a grammar."""
    _cuts = 0
    """Bumped by every cut: an answer asked under an older value is not wanted."""

    @property
    def _llama(self) -> EmbeddedBackend:
        if not isinstance(self._backend, EmbeddedBackend):
            raise BackendError(
                f"the embedded chat client needs the embedded backend, not {self._backend.label}"
            )
        return self._backend

    def _arguments(self, ask: Ask, *, grammar: bool) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "messages": to_openai_messages(ask.messages),
            "temperature": self._settings.temperature,
            "max_tokens": MAX_ANSWER_TOKENS,
            "repeat_penalty": 1.15,
        }
        if self._settings.seed is not None:
            kwargs["seed"] = self._settings.seed
        if not grammar:
            return kwargs  # plain text: calls in it are recovered by the shared client
        if ask.advertised:
            kwargs["tools"] = [to_tool(t) for t in ask.advertised]
            kwargs["tool_choice"] = "auto"
        elif ask.json_output:
            # llama.cpp turns the schema into a grammar: even a 135M model answers valid JSON.
            kwargs["response_format"] = {"type": "json_object"} | (
                {"schema": ask.json_output.model_json_schema()} if isinstance(ask.json_output, type) else {}
            )
        return kwargs

    def _asked(self, ask: Ask, *, grammar: bool) -> str:
        """What was asked, in a few words, for the line that says the worker died."""
        constrained = ("tools " + ", ".join(to_tool(t)["function"]["name"] for t in ask.advertised)
                       if ask.advertised else "a JSON schema" if ask.json_output else "")
        how = f"with a grammar for {constrained}" if grammar and constrained else "without a grammar"
        return f"the {self._role}'s request ({len(ask.messages)} messages, {how})"

    async def _complete(self, ask: Ask) -> Piece:
        grammar, self._plain_next = not self._plain_next, False
        worker = self._llama.worker(self._model)
        cuts = self._cuts
        call = worker.chat(self._arguments(ask, grammar=grammar), asked=self._asked(ask, grammar=grammar),
                           owner=self, wanted=lambda: self._cuts == cuts)
        try:
            answer = await asyncio.wait_for(call, self._settings.timeout_s)
        except TimeoutError:
            raise RequestTimeout(f"the embedded model did not answer in {self._settings.timeout_s:g} s: "
                                 f"raise CREW_{self._role.upper()}_TIMEOUT_S") from None
        except ContextOverflow as exc:
            # A small model can talk itself past its context; the turn ends, the run goes on.
            return Piece(content=f"(no answer: {exc})", done_reason="length")
        except ModelCrashed:
            self._plain_next = grammar  # the retry asks without the grammar that may have caused it
            raise
        if answer.result is None:
            return Piece(interrupted=True)
        return _piece(answer.result, interrupted=answer.cut or self._cuts != cuts)

    async def _cut(self) -> None:
        # The answer in flight ends at its next token, or its worker is killed; one not sent yet
        # is never sent.
        self._cuts += 1
        backend = self._backend
        if isinstance(backend, EmbeddedBackend):
            try:
                await backend.worker(self._model).cut(self)
            except BackendError:
                pass  # not loaded: nothing in flight


def _piece(response: Any, *, interrupted: bool) -> Piece:
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
        interrupted=interrupted,
    )
