"""What the teams expect to ask for, as the manager keeps it: each source's forecast (a list,
or a learned `Lookahead`), merged per model, and the choice of victims it informs (the eviction
policy asked with each candidate's outlook, and the price of a set over the learned horizon).
A base of `ResidencyManager`; the state it reads is the manager's."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence

from crew.events import Event, ResidencyWarning
from crew.residency.budget import MemoryBudget
from crew.residency.eviction import Candidate, EvictionPolicy
from crew.residency.knowledge import ModelKnowledge
from crew.residency.slots import Slot
from crew.residency.transitions import Lookahead, Outlook, Room


class Forecasting:
    """The part of the manager that keeps forecasts."""

    _forecasts: dict[Hashable, dict[str, Outlook]]
    _slots: dict[str, Slot]
    _models: ModelKnowledge
    _budget: MemoryBudget
    _held_elsewhere: Callable[[], frozenset[str]] | None
    _shared_noted: bool
    _eviction: EvictionPolicy
    _clock: Callable[[], float]

    def _emit(self, event: Event) -> None:
        raise NotImplementedError

    def forecast(self, models: Sequence[str] | Mapping[str, Outlook] | None, source: Hashable = None) -> None:
        """What `source` (a team) expects to ask for: a list, soonest first (its current
        request's model first), each surely needed; or each model's `Outlook` (the chance it is
        needed within the horizon and how soon), as a learned forecast gives it. None withdraws
        it. Eviction spares what the forecasts would cost most to reload."""
        if models is None:
            self._forecasts.pop(source, None)
        elif isinstance(models, Lookahead):
            self._forecasts[source] = models
        elif isinstance(models, Mapping):
            self._forecasts[source] = dict(models)
        else:
            outlook: dict[str, Outlook] = {}
            for i, model in enumerate(models):
                outlook.setdefault(model, Outlook(1.0, float(i)))
            self._forecasts[source] = outlook

    def _outlook(self, model: str) -> Outlook | None:
        """All sources together: needed if any needs it (independently), as soon as the soonest."""
        if not self._forecasts:
            return None
        seen = [f[model] for f in self._forecasts.values() if model in f]
        unused = 1.0
        for outlook in seen:
            unused *= 1.0 - outlook.p_use
        return Outlook(1.0 - unused, min((o.next_use for o in seen), default=float("inf")))

    def _future(self, model: str, offered: Mapping[Candidate, Slot]
                ) -> Callable[[Sequence[Candidate]], float] | None:
        """The expected reload seconds over the learned forecasts' horizon if a set is evicted
        (None without such a forecast, or while a forecast model's size is unknown)."""
        ahead = [f for f in self._forecasts.values() if isinstance(f, Lookahead)]
        if not ahead:
            return None
        sizes = {s.name: s.size for s in self._slots.values()}
        for name in {m for f in ahead for m in f}:
            if name not in sizes:
                try:
                    sizes[name] = self._models.expected_size_now(name)
                except KeyError:
                    return None
        room = Room(sizes, {m: self._models.reload_seconds(m, size) for m, size in sizes.items()},
                    self._budget.bytes)
        present = frozenset(s.name for s in self._slots.values()) | {model}

        def future(combo: Sequence[Candidate]) -> float:
            after = present - {offered[c].name for c in combo}
            return sum(f.future_cost(after, room) for f in ahead)
        return future

    def _choose_victims(self, candidates: list[Slot], shortfall: int, model: str) -> list[Slot] | None:
        """The idle set to evict that frees `shortfall` bytes, as the eviction policy picks it (the plan
        asks only when the candidates together free enough)."""
        # Read only here, when something must go: other crews' notes are files (crew.residency.holders).
        elsewhere = self._held_elsewhere() if self._held_elsewhere is not None else frozenset()
        if elsewhere and not self._shared_noted:
            self._shared_noted = True  # once: the person has been told, and how to fix it
            self._emit(ResidencyWarning(model=model, message=(
                f"other crews keep models on this Ollama too ({', '.join(sorted(elsewhere))}); apart, "
                "crews cannot see each other's loads in flight and evict what the others use: run "
                "`crew serve` and point every crew at it (CREW_OLLAMA_HOST=http://127.0.0.1:8000)")))
        now = self._clock()
        outlooks = {s.name: self._outlook(s.name) for s in candidates}
        offered = {
            Candidate(
                name=s.name, bytes=s.size,
                reload_seconds=self._models.reload_seconds(s.name, s.size),
                idle_seconds=now - s.last_used, kept_elsewhere=not s.ours and s.name in elsewhere,
                next_use=outlook.next_use if outlook else None, p_use=outlook.p_use if outlook else None,
            ): s
            for s in candidates for outlook in [outlooks[s.name]]
        }
        future = self._future(model, offered)
        chosen = (self._eviction.choose(list(offered), shortfall) if future is None
                  else self._eviction.choose(list(offered), shortfall, future=future))
        return None if chosen is None else [offered[c] for c in chosen]
