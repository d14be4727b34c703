"""What a request for a model should do now, decided from a snapshot: the residency plan.

`plan` is pure: it reads the slots, the budget and the queue's state as `Situation` hands them
over, and names an action (grant the resident model, join a load in flight, load after evicting
some victims, or wait and for whom). The manager applies the action; nothing here loads, unloads,
waits or emits. Which idle models to evict is the eviction policy's (`choose`), asked only when
something must go.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from crew.residency.queue import URGENT, Waiter
from crew.residency.slots import Slot


@dataclass(frozen=True)
class Grant:
    slot: Slot


@dataclass(frozen=True)
class Join:
    task: asyncio.Task[None]


@dataclass(frozen=True)
class Load:
    victims: list[Slot]
    partial: bool = False


@dataclass(frozen=True)
class Wait:
    blockers: list[str] = field(default_factory=list)
    for_room: bool = True
    """False when the room exists but fairness makes this request wait its turn."""


Plan = Grant | Join | Load | Wait

Choose = Callable[[list[Slot], int], "list[Slot] | None"]
"""The idle set to evict that frees at least the bytes asked, or None if none does."""


@dataclass(frozen=True)
class Situation:
    """What the plan for one waiting request reads, as it stands now."""

    slots: Mapping[str, Slot]
    budget: int
    """The bytes that may be resident."""
    need: int
    """The bytes the waiting request's model is expected to take."""
    starving: Waiter | None
    """The load that has waited its fairness bound, if one has."""
    load_head: Waiter | None
    """The request whose load starts next (loads start in arrival order)."""
    wanted: frozenset[str]
    """Models other requests are queued for."""


def plan(waiter: Waiter, now: Situation, choose: Choose) -> Plan:
    """What `waiter` should do now."""
    slot = now.slots.get(waiter.model)
    if slot is not None and slot.state == "loading":
        assert slot.task is not None
        return Join(slot.task)
    if slot is not None and slot.state == "resident" and not slot.mismatched:
        if waiter.reservation is slot:
            return Grant(slot)
        if now.starving is not None and now.starving.model != waiter.model and waiter.priority < URGENT:
            return Wait([now.starving.model], for_room=False)
        return Grant(slot)
    if slot is not None and slot.state == "unloading":
        return Wait()
    if now.load_head is not None and now.load_head.model != waiter.model:
        return Wait()  # loads start in arrival order
    others = [s for s in now.slots.values() if s.name != waiter.model]
    forced = [slot] if slot is not None else []
    if now.need > now.budget:
        # Allowed partial offload (checked before): the model must be alone.
        busy = [s.name for s in others if s.pins or s.reserved or s.state != "resident"]
        return Wait(busy) if busy else Load(others + forced, partial=True)
    shortfall = sum(s.size for s in now.slots.values()) + now.need - now.budget
    if shortfall <= 0 and not forced:
        return Load([])
    # Models other requests are queued for stay, unless this request has waited its bound.
    candidates = [
        s for s in others
        if s.state == "resident" and not s.pins and not s.reserved
        and (waiter is now.starving or s.name not in now.wanted)
    ]
    rest = shortfall - sum(s.size for s in forced)
    if rest <= 0:
        victims: list[Slot] | None = []
    elif sum(s.size for s in candidates) < rest:
        victims = None
    else:
        victims = choose(candidates, rest)
    if victims is None:
        return Wait([s.name for s in others if s not in candidates] or ["a load in progress"])
    return Load(victims + forced)
