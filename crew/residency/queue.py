"""The requests waiting for a model, in arrival order, and the fairness bound between them.

Requests for a resident model are granted at once, ahead of a waiting load; but once the
earliest waiting load has been passed over `fairness` times it is *starving*, and no other
model is granted until it is served.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass

from crew.residency.slots import Slot

DEFAULT_FAIRNESS = 4
# A request at this priority or above (a server's `urgency: critical`) is granted a resident
# model at once, even past a starving load: it never waits for a load it does not need.
URGENT = 2


@dataclass(eq=False)
class Waiter:
    model: str
    seq: int
    owner: Hashable
    priority: int = 0
    """Higher goes first among loads (a server's `urgency: high`); arrival order within one."""
    reservation: Slot | None = None
    passed: int = 0
    """Grants to other models while this request waited at the head of the load queue."""
    announced: bool = False


class WaitQueue:
    def __init__(self, needs_load: Callable[[str], bool], fairness: int = DEFAULT_FAIRNESS) -> None:
        self._needs_load = needs_load
        self._fairness = fairness
        self._waiters: list[Waiter] = []
        self._seq = itertools.count()

    def __iter__(self) -> Iterator[Waiter]:
        return iter(list(self._waiters))

    def join(self, model: str, owner: Hashable, priority: int = 0) -> Waiter:
        waiter = Waiter(model, next(self._seq), owner, priority)
        self._waiters.append(waiter)
        return waiter

    def leave(self, waiter: Waiter) -> bool:
        """Remove `waiter`; False if it had left already."""
        if waiter in self._waiters:
            self._waiters.remove(waiter)
            return True
        return False

    def granted(self, waiter: Waiter) -> None:
        """`waiter` got its model: the head of the load queue, if another, waited once more."""
        head = self.load_head()
        if head is not None and head.model != waiter.model:
            head.passed += 1
        self.leave(waiter)

    def load_head(self) -> Waiter | None:
        """The request whose load starts next: the highest priority, then the earliest."""
        loads = [w for w in self._waiters if self._needs_load(w.model)]
        return min(loads, key=lambda w: (-w.priority, w.seq), default=None)

    def starving(self) -> Waiter | None:
        head = self.load_head()
        return head if head is not None and head.passed >= self._fairness else None

    def any_load_waiting(self) -> bool:
        return self.load_head() is not None

    def depth(self) -> dict[str, int]:
        """How many requests wait for each model."""
        counts: dict[str, int] = {}
        for waiter in self._waiters:
            counts[waiter.model] = counts.get(waiter.model, 0) + 1
        return counts

    def wanted(self, besides: Waiter) -> set[str]:
        """Models other requests are queued for."""
        return {w.model for w in self._waiters if w is not besides}
