"""Small helpers shared by tests: building a manager on the fake server, recording events."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from crew.backends import BackendChoice, choose_backend
from crew.backends.ollama import OllamaBackend
from crew.events import Event
from crew.residency import ResidencyManager, open_manager
from crew.residency.budget import GB, MemoryBudget
from crew.settings import Settings
from tests.fake_ollama import FakeOllama

T = TypeVar("T")

ARCHITECT = "qwen3-coder-next:q4_K_M"
CODER = "qwen3-coder:30b"
REVIEWER = "qwen3:14b"
OPTIONS = {"num_ctx": 32768, "temperature": 0.2}

# Resident sizes on the fake at num_ctx 32768, in GB: architect ~54.4, coder ~22.5, reviewer ~15.1.
# A 60 GB budget holds the architect alone, or coder and reviewer together.
TEAM_BUDGET_GB = 60


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def make_manager(
    fake: FakeOllama, budget_gb: float = TEAM_BUDGET_GB, *, capacity: bool = True,
    register: bool = True, **kwargs: Any,
) -> ResidencyManager:
    """A manager on the fake server with the three default models registered.

    With `capacity`, the fake's own memory equals the budget, so any overrun or any eviction
    the server must do on its own shows in its records.
    """
    if capacity:
        fake.capacity = int(budget_gb * GB)
    manager = ResidencyManager(
        OllamaBackend(fake.url), MemoryBudget(int(budget_gb * GB), "test"), **kwargs
    )
    for model in (ARCHITECT, CODER, REVIEWER) if register else ():
        manager.register(model, OPTIONS)
    return manager


class Recorder:
    """Collects a manager's events; `wait_for` wakes when enough of a type have arrived."""

    def __init__(self, manager: ResidencyManager) -> None:
        self.events: list[Event] = []
        self._arrived = asyncio.Event()
        manager.subscribe(self._on)

    def _on(self, event: Event) -> None:
        self.events.append(event)
        self._arrived.set()
        self._arrived = asyncio.Event()

    def of(self, kind: str) -> list[Any]:
        return [e for e in self.events if e.type == kind]

    async def wait_for(self, kind: str, count: int = 1, timeout: float = 30.0) -> None:
        """Wait until `count` events of `kind` have arrived; fail (never hang) after `timeout`."""
        async def arrived() -> None:
            while len(self.of(kind)) < count:
                await self._arrived.wait()

        try:
            await asyncio.wait_for(arrived(), timeout)
        except TimeoutError:
            raise AssertionError(f"{count} {kind} event(s) expected within {timeout:g} s; "
                                 f"got {[e.type for e in self.events]}") from None


async def manager_for(settings: Settings, run_id: str) -> tuple[ResidencyManager, BackendChoice]:
    """The manager a command would open with these settings, and the backend choice behind it."""
    choice = await choose_backend(settings)
    return open_manager(settings, choice, run_id), choice
