"""A weak model must not spin: the same tool call, with the same arguments and the same result,
three times in one turn ends the turn (the model is not asked again), with a note that says so.

A turn is what the agent did since someone else last spoke: in a group chat, the others'
messages reach an agent as user messages, its own tool loop as calls and results.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from autogen_core.models import (
    AssistantMessage,
    FunctionExecutionResultMessage,
    LLMMessage,
    SystemMessage,
    UserMessage,
)

SPIN_REPEATS = 3


@dataclass(frozen=True)
class Spin:
    name: str
    arguments: str
    times: int

    def note(self) -> str:
        """The agent's message that ends the turn: what happened and what to do instead."""
        return (f"crew stopped this turn: {self.name}({self.arguments}) was called {self.times} times "
                "and returned the same result each time. Say what you found and what is missing, "
                "then hand off, or try a different step.")


def spinning(messages: Sequence[LLMMessage]) -> Spin | None:
    """The call repeated SPIN_REPEATS times with the same result in the current turn, if any."""
    turn: list[LLMMessage] = []
    for message in reversed(messages):
        if isinstance(message, UserMessage | SystemMessage):
            break
        turn.append(message)
    calls: dict[str, tuple[str, str]] = {}
    seen: Counter[tuple[str, str, str]] = Counter()
    for message in reversed(turn):
        if isinstance(message, AssistantMessage) and isinstance(message.content, list):
            for call in message.content:
                calls[call.id] = (call.name, _canonical(call.arguments))
        elif isinstance(message, FunctionExecutionResultMessage):
            for result in message.content:
                name, arguments = calls.get(result.call_id, (result.name, ""))
                key = (name, arguments, result.content)
                seen[key] += 1
                if seen[key] >= SPIN_REPEATS:
                    return Spin(name, arguments, seen[key])
    return None


def _canonical(arguments: str) -> str:
    try:
        return json.dumps(json.loads(arguments), sort_keys=True)
    except ValueError:
        return arguments
