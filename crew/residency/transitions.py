"""The workflow as seen: who spoke after whom, learned per workspace and kept across runs.

The workflow's rule (`crew.routing`) says who speaks next when nothing else is known; what a
team really does can differ (a person who asks for a new plan after every approval brings the
Architect back, which the rule says never happens). `Transitions` counts the transitions seen,
state to state (the roles, "human" for the person, "task" for the request that opens a run), and
blends them with the rule as a prior of `PRIOR_WEIGHT` observations, so that one surprise does not
overturn the rule and repeated evidence does. `outlook` turns the blend into what eviction needs
for each model: the probability it is asked for within the horizon and the expected turns until
then (a first-passage computation over the chain, exact for the horizon).

The counts live in `<state_dir>/transitions.json`, by workspace and mode ("run" or "chat": a
person brings transitions a run never has). A small read-modify-write at each turn (turns are
seconds apart): another crew writing at the same moment may lose one count, which the next turn
makes up. A failure to write never stops a run; a broken file starts the counts over.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crew.files import write_json
from crew.routing import FORECAST_TURNS, Speaker
from crew.settings import Role

log = logging.getLogger("crew.residency.transitions")

# The rule counts as this many observations of its own transition.
PRIOR_WEIGHT = 1.0
FILE_NAME = "transitions.json"
# Counts are capped so a long history still yields to a changed habit (older counts are halved).
MAX_COUNT = 64


@dataclass(frozen=True)
class Outlook:
    """How soon a model will be asked for, as the forecast sees it."""

    p_use: float
    """The probability it is asked for within the horizon (1: surely; 0: not foreseen)."""
    next_use: float
    """Expected turns until it is asked for (0: the current speaker; inf: not foreseen)."""


Prior = Mapping[str, Mapping[str, float]]
"""The rule: for each state, its next states and their shares (summing to 1)."""


class Transitions:
    """Counts of state -> next state, blended with the rule (`prior`)."""

    def __init__(self, prior: Prior, counts: Mapping[str, Mapping[str, float]] | None = None,
                 *, prior_weight: float = PRIOR_WEIGHT) -> None:
        self._prior = {state: dict(nexts) for state, nexts in prior.items()}
        self._weight = prior_weight
        self.counts: dict[str, dict[str, float]] = {
            state: {n: float(c) for n, c in nexts.items() if _count(c)}
            for state, nexts in (counts or {}).items()
        }

    def observe(self, state: str, following: str) -> None:
        row = self.counts.setdefault(state, {})
        row[following] = row.get(following, 0.0) + 1.0
        if sum(row.values()) > MAX_COUNT:
            self.counts[state] = {n: c / 2 for n, c in row.items()}

    def next_states(self, state: str) -> dict[str, float]:
        """P(next | state): the counts seen plus the rule's pseudo-counts, normalised."""
        blend = dict(self.counts.get(state, {}))
        for rule, share in self._prior.get(state, {}).items():
            blend[rule] = blend.get(rule, 0.0) + self._weight * share
        total = sum(blend.values())
        return {n: c / total for n, c in blend.items()} if total > 0 else {}

    def outlook(self, current: str, models: Mapping[str, str], horizon: int) -> dict[str, Outlook]:
        """For each model (`models`: state -> its model; the person has none), with `current`
        speaking now: the chance it is asked for within `horizon` turns, and how soon."""
        result: dict[str, Outlook] = {}
        for model in set(models.values()):
            targets = {s for s, m in models.items() if m == model}
            if current in targets:
                result[model] = Outlook(1.0, 0.0)
                continue
            result[model] = self._first_passage(current, targets, horizon)
        return result

    def _first_passage(self, start: str, targets: set[str], horizon: int) -> Outlook:
        # dist: where the chain is after k steps without having reached a target yet.
        dist = {start: 1.0}
        hit = 0.0
        expected = 0.0  # the sum over k < horizon of P(not reached by step k): E[min(first use, horizon)]
        for _ in range(horizon):
            expected += 1.0 - hit
            after: dict[str, float] = {}
            for state, p in dist.items():
                for nxt, q in self.next_states(state).items():
                    if nxt in targets:
                        hit += p * q
                    else:
                        after[nxt] = after.get(nxt, 0.0) + p * q
            dist = after
        if hit <= 1e-9:
            return Outlook(0.0, float("inf"))
        return Outlook(min(1.0, hit), expected)

    def as_rows(self) -> dict[str, dict[str, float]]:
        """Every state's blended next states (the rule's included), for `crew plan`."""
        states = sorted(set(self.counts) | set(self._prior))
        return {s: {n: round(p, 3) for n, p in sorted(self.next_states(s).items(), key=lambda i: -i[1])}
                for s in states}


class LearnedForecast:
    """Who speaks when, as this team has shown it: each turn is counted, and the forecast for
    the speaker's turn is every model's chance of being asked for within FORECAST_TURNS."""

    def __init__(self, models: Mapping[Role, str], learned: Transitions,
                 save: Callable[[Transitions], None] | None = None) -> None:
        self._models: dict[str, str] = {str(role): model for role, model in models.items()}
        self.learned = learned
        self._save = save

    def turn(self, previous: str, speaker: Speaker) -> dict[str, Outlook] | None:
        """Count `previous` -> `speaker`; the forecast from `speaker` on (None for the person)."""
        self.learned.observe(previous, speaker)
        if self._save is not None:
            self._save(self.learned)
        if speaker == "human":
            return None
        return self.learned.outlook(speaker, self._models, FORECAST_TURNS)


class TransitionStore:
    """The learned counts in crew's state folder, by workspace and mode."""

    def __init__(self, state_dir: Path, *, writable: bool = True) -> None:
        self._path = state_dir / FILE_NAME
        self._writable = writable

    def load(self, key: str, prior: Prior) -> Transitions:
        found = _read(self._path).get(key)
        return Transitions(prior, found if isinstance(found, dict) else None)

    def save(self, key: str, learned: Transitions) -> None:
        if not self._writable:
            return
        try:
            data = _read(self._path)
            data[key] = learned.counts
            self._path.parent.mkdir(parents=True, exist_ok=True)
            write_json(self._path, data, indent=1, sort_keys=True)
        except OSError as exc:
            log.debug("could not write %s: %s", self._path, exc)

    def all(self, prior: Prior) -> dict[str, Transitions]:
        """Every workspace and mode's transitions (for `crew plan`)."""
        return {key: Transitions(prior, found) for key, found in sorted(_read(self._path).items())}

    @staticmethod
    def rule_only(prior: Prior) -> Transitions:
        """Counts that start empty and are kept nowhere (a team without a state folder)."""
        return Transitions(prior)


def store_key(workspace: Path | str, mode: str) -> str:
    return f"{mode} {workspace}"


def _count(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < 1e9


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # none yet, or broken: start over rather than fail
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, dict)
            and all(isinstance(row, dict) for row in v.values())}
