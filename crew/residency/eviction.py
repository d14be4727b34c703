"""Which idle models to evict when a load needs room: the rule, on its own.

The manager offers the idle models it may evict, each with what it would cost to get back and,
when the team has said what it expects, how likely it is to be needed within the forecast's
horizon and how soon; an `EvictionPolicy` picks the set to evict. crew's rule, `WorkflowAware`,
evicts the set whose expected reload seconds over the horizon are least. With a learned
forecast (`crew.residency.transitions.Lookahead`) the manager prices each set by the whole
horizon, the evictions it will force later included (`future`); with a plain list it is the
chance each is needed times the seconds it takes to load again. Either way a model the
forecast does not foresee costs nothing, and the farthest next use decides between equal
costs. Without a forecast (clients of `crew serve`, other tools) it falls back to
`CheapestReload`: the least reload time, discounted by how long each model has been idle.
Both spare a model another live crew keeps unless nothing else frees the room. A policy is a
plain object: it can be swapped (`ResidencyManager(eviction=...)`) and tested without a manager.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

# What evicting a model another live crew process keeps is counted as, in reload seconds.
ELSEWHERE_PENALTY_S = 3600.0
# Victim sets are searched exhaustively up to this many candidates, greedily beyond.
EXHAUSTIVE_LIMIT = 10


@dataclass(frozen=True)
class Candidate:
    """An idle resident model that could be evicted."""

    name: str
    bytes: int
    reload_seconds: float
    """What loading it again would cost (learned, else assumed from its size)."""
    idle_seconds: float
    kept_elsewhere: bool = False
    """Another live crew process keeps it (and this one did not load it)."""
    next_use: float | None = None
    """Turns until the forecast needs it (0: the current speaker; inf: not foreseen); None when
    there is no forecast."""
    p_use: float | None = None
    """The chance the forecast needs it within its horizon; None: 1 if `next_use` is finite."""


Future = Callable[[Sequence[Candidate]], float]
"""The expected reload seconds over a learned forecast's horizon if this set is evicted."""


class EvictionPolicy(Protocol):
    def choose(self, candidates: Sequence[Candidate], shortfall: int, future: Future | None = None
               ) -> list[Candidate] | None:
        """The candidates to evict to free `shortfall` bytes; None if they cannot. `future` is
        passed (by keyword) only when a learned forecast prices whole sets over its horizon."""
        ...


def least_costly_set(
    candidates: Sequence[Candidate], shortfall: int,
    cost: Callable[[Sequence[Candidate]], tuple[float, ...]], rank: Callable[[Candidate], Any],
) -> list[Candidate] | None:
    """The set of candidates that frees `shortfall` bytes at the least `cost` (compared as
    tuples, then by bytes freed); None if all of them do not free enough. Searched exhaustively
    up to EXHAUSTIVE_LIMIT candidates, beyond that greedily in `rank` order."""
    if shortfall <= 0:
        return []
    if sum(c.bytes for c in candidates) < shortfall:
        return None
    if len(candidates) > EXHAUSTIVE_LIMIT:
        chosen: list[Candidate] = []
        for candidate in sorted(candidates, key=rank):
            chosen.append(candidate)
            if sum(c.bytes for c in chosen) >= shortfall:
                break
        return chosen
    best: tuple[Any, ...] | None = None
    best_set: list[Candidate] = []
    for size in range(1, len(candidates) + 1):
        for combo in itertools.combinations(candidates, size):
            freed = sum(c.bytes for c in combo)
            if freed < shortfall:
                continue
            key = (*cost(combo), freed)
            if best is None or key < best:
                best, best_set = key, list(combo)
    return best_set


class CheapestReload:
    """Evict the set that frees enough room at the least idle-discounted reload cost."""

    def choose(self, candidates: Sequence[Candidate], shortfall: int, future: Future | None = None
               ) -> list[Candidate] | None:
        return least_costly_set(candidates, shortfall,
                                lambda combo: (sum(self.keep_value(c) for c in combo),), self.keep_value)

    @staticmethod
    def keep_value(candidate: Candidate) -> float:
        """Seconds it would cost to reload, discounted by idleness, plus the courtesy to others.

        Evicting what another live crew keeps costs that crew a reload mid-run, so it goes only
        when nothing else frees the room (never a hard pin: no cross-process deadlock).
        """
        value = candidate.reload_seconds / (1.0 + max(0.0, candidate.idle_seconds))
        return value + (ELSEWHERE_PENALTY_S if candidate.kept_elsewhere else 0.0)


class WorkflowAware:
    """Evict what costs least to do without over the forecast's horizon.

    The cost of evicting a set is the seconds of reload it is expected to cause: given
    `future`, the expectation over the learned chain of the least reloads of the horizon from
    the resident set that remains; else each model's reload seconds times the chance the
    forecast needs it. A model the forecast does not foresee goes first whatever its size; a
    large model the team keeps coming back to stays while two small ones swap, unless it comes
    back too seldom to pay for their swaps. Equal costs go to the model needed farthest ahead.
    Without a forecast, `fallback` decides.
    """

    def __init__(self, fallback: EvictionPolicy | None = None) -> None:
        self._fallback = fallback or CheapestReload()

    def choose(self, candidates: Sequence[Candidate], shortfall: int, future: Future | None = None
               ) -> list[Candidate] | None:
        if all(c.next_use is None for c in candidates):
            return self._fallback.choose(candidates, shortfall)
        if future is not None:
            priced = future
            return least_costly_set(candidates, shortfall, lambda combo: self._ahead(combo, priced),
                                    self._rank)
        return least_costly_set(candidates, shortfall, self._cost, self._rank)

    def _cost(self, combo: Sequence[Candidate]) -> tuple[float, float]:
        expected = round(sum(self.expected_reload(c) for c in combo), 6)
        return expected, -min(self.next_use(c) for c in combo)

    def _ahead(self, combo: Sequence[Candidate], future: Future) -> tuple[float, float]:
        # The whole horizon, evictions to come included: keeping a large model that is seldom
        # back can cost more small reloads than reloading it once.
        courtesy = sum(ELSEWHERE_PENALTY_S for c in combo if c.kept_elsewhere)
        return round(future(combo) + courtesy, 6), -min(self.next_use(c) for c in combo)

    def _rank(self, candidate: Candidate) -> tuple[float, float]:
        return self.expected_reload(candidate) / max(candidate.bytes, 1), -self.next_use(candidate)

    @staticmethod
    def p_use(candidate: Candidate) -> float:
        if candidate.p_use is not None:
            return candidate.p_use
        return 1.0 if WorkflowAware.next_use(candidate) != float("inf") else 0.0

    @staticmethod
    def expected_reload(candidate: Candidate) -> float:
        """Reload seconds this eviction is expected to cost within the horizon."""
        if candidate.kept_elsewhere:
            # What another live crew keeps: its forecast is not ours to read; it goes last.
            return candidate.reload_seconds + ELSEWHERE_PENALTY_S
        return candidate.reload_seconds * WorkflowAware.p_use(candidate)

    @staticmethod
    def next_use(candidate: Candidate) -> float:
        if candidate.kept_elsewhere:
            return 0.0
        return candidate.next_use if candidate.next_use is not None else float("inf")
