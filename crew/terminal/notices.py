"""The short lines events show as on a terminal, shared by the plain and the rich renderer."""

from __future__ import annotations

from typing import Any


def gb(n: int) -> str:
    """Bytes as the terminal shows them: `9.0 GB` (10^9 bytes, as Ollama counts)."""
    return f"{n / 1e9:.1f} GB"


def notice(event: Any) -> str | None:
    """The one line a routing, residency or tool event shows as (None: not a notice)."""
    kind = event.type
    if kind == "tool_call":
        return f"  ↳ {event.source} calls {event.name}({event.arguments[:120]})"
    if kind == "tool_call_recovered":
        return f"  ↻ {event.role}'s {event.name} call came as {event.form} text: running it"
    if kind == "tool_call_refused":
        return f"  ✗ {event.role}'s call in its text cannot run: {event.problem}"
    if kind == "model_call_retried":
        return f"retrying {event.model} once: {event.error}"
    if kind == "tool_result" and event.is_error:
        return f"  ✗ {event.name}: {event.content[:200]}"
    if kind == "routing":
        return f"→ {event.speaker}: {event.reason}"
    if kind == "model_load_started":
        return f"loading {event.model} ({gb(event.bytes)}) ..."
    if kind == "model_loaded":
        return f"loaded {event.model} in {event.seconds:.1f} s"
    if kind == "model_unloaded":
        why = f"evicted for {event.evicted_for}" if event.evicted_for else event.reason
        return f"unloaded {event.model} ({gb(event.bytes)}, {why})"
    if kind == "residency_warning":
        return f"warning: {event.message}"
    if kind == "context_full":
        return (f"warning: the {event.role}'s conversation is ~{event.tokens} tokens of its num_ctx "
                f"{event.num_ctx}; past it the model no longer sees the oldest ones. Raise "
                f"CREW_{event.role.upper()}_NUM_CTX if memory allows (`crew plan` shows how far)")
    if kind == "tool_loop_stopped":
        return (f"{event.role}: turn ended: {event.name}({event.arguments}) returned the same "
                f"result {event.times} times")
    if kind == "sandbox_warning":
        return f"warning: agent commands: {event.message}"
    if kind == "residency_waiting":
        return f"waiting for memory: {event.model} (held by {', '.join(event.blocked_by)})"
    return None


def started_notices(event: Any) -> list[str]:
    """What a run_started event shows: the backend's fallback, the workspace."""
    lines = [f"note: {event.fallback}"] if event.fallback else []
    return [*lines, f"workspace {event.workspace}{' (resumed)' if event.resumed else ''}"]


def header(source: str, model: str | None) -> str:
    return f"{source}{f' ({model})' if model else ''}"
