"""Residency as a session's events tell it, in one line: the terminal's status line.

Built from events only (never by asking the manager), so the chat's prompt toolbar and the
renderer's footer say the same thing as `events.jsonl` (escaped by `safe_text`).
"""

from __future__ import annotations

from typing import Any

from crew.events import LOADING, residency_change
from crew.residency.budget import GB
from crew.safe_text import safe_text


class ResidencyStatus:
    """Which models are resident, loading or waiting, and their share of the budget."""

    def __init__(self) -> None:
        self.budget = 0
        self.resident: dict[str, int] = {}
        self.loading: dict[str, int] = {}
        self.waiting: dict[str, list[str]] = {}

    def observe(self, event: Any) -> None:
        if event.type == "run_started":
            self.budget = event.budget
        elif (change := residency_change(event)) is not None:
            model, state = change
            self.loading.pop(model, None)
            self.resident.pop(model, None)
            if state is not None:
                self.waiting.pop(model, None)
                (self.loading if state == LOADING else self.resident)[model] = event.bytes
        elif event.type == "residency_waiting":
            self.waiting[event.model] = list(event.blocked_by)
        elif event.type == "model_call":
            self.waiting.pop(event.model, None)

    def line(self) -> str:
        """E.g. `qwen3:14b 9.0 GB · qwen3-coder:30b 19.0 GB · 28.0 of 48.0 GB (58%) · loading …`."""
        parts = [f"{name} {size / GB:.1f} GB" for name, size in self.resident.items()]
        parts = parts or ["no model resident"]
        used = sum(self.resident.values())
        if self.budget:
            parts.append(f"{used / GB:.1f} of {self.budget / GB:.1f} GB ({100 * used / self.budget:.0f}%)")
        parts += [f"loading {name} ({size / GB:.1f} GB)" for name, size in self.loading.items()]
        parts += [f"waiting for memory: {name} (held by {', '.join(by)})"
                  for name, by in self.waiting.items()]
        return safe_text(" · ".join(parts))  # model names come from Ollama and events
