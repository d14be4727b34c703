"""What the manager counts per model (a slot while it loads, is resident or unloads), and holds."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Literal

from crew.residency.budget import MemoryBudget
from crew.residency.host_lock import Claim

State = Literal["loading", "resident", "unloading"]


@dataclass(eq=False)
class Slot:
    name: str
    size: int
    state: State
    ours: bool
    last_used: float
    pins: int = 0
    reserved: int = 0
    """Requests that started or joined this model's load and are yet to pin it."""
    holders: Counter[Hashable] = field(default_factory=Counter)
    """Pins by owner (a task, a process, a remote client)."""
    task: asyncio.Task[None] | None = None
    mismatched: bool = False
    """Resident with other runner options than ours: Ollama would reload it on our request."""
    partial: bool = False
    renewed_at: float = 0.0
    """When its lease was last renewed (crew.residency.manager)."""


@dataclass(eq=False)
class Hold:
    """A pin on a resident model, owned by whoever asked for it; give it back with `release`."""

    model: str
    owner: Hashable
    slot: Slot
    released: bool = False
    claim: Claim | None = None
    """Given back with the hold, on a host other crew processes share: the model's shared claim
    (no other crew unloads it while it is used)."""


@dataclass(frozen=True)
class SlotView:
    """One resident (or loading/unloading) model as the manager counts it."""

    name: str
    bytes: int
    state: State
    pins: int
    ours: bool
    idle_seconds: float
    partial_offload: bool


@dataclass(frozen=True)
class Snapshot:
    budget: MemoryBudget
    used: int
    slots: list[SlotView]
