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

import itertools
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from crew.files import write_json
from crew.routing import FORECAST_TURNS, Speaker
from crew.settings import Role

log = logging.getLogger("crew.residency.transitions")

# The rule counts as this many observations of its own transition.
PRIOR_WEIGHT = 0.5
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


@dataclass(frozen=True)
class Room:
    """What the lookahead needs of the machine: each model's resident bytes and reload seconds,
    and the budget."""

    sizes: Mapping[str, int]
    reload_s: Mapping[str, float]
    budget: int

    def fits(self, models: frozenset[str]) -> bool:
        return len(models) <= 1 or sum(self.sizes.get(m, 0) for m in models) <= self.budget


class Lookahead(dict[str, Outlook]):
    """A learned forecast: each model's `Outlook`, and the expected reload seconds of the
    horizon from any resident set (`future_cost`), evictions chosen at best along the way."""

    def __init__(self, outlook: Mapping[str, Outlook], learned: Transitions, current: str,
                 models: Mapping[str, str], horizon: int) -> None:
        super().__init__(outlook)
        self._learned = learned
        self._current = current
        self._models = dict(models)
        self._horizon = horizon

    def future_cost(self, resident: frozenset[str], room: Room) -> float:
        """Expected seconds of reloads over the horizon, starting with `resident` after the
        current speaker's model is in: the chain's expectation of the best evictions."""
        chain, models = self._learned, self._models

        @cache
        def value(steps: int, state: str, held: frozenset[str]) -> float:
            if steps == 0:
                return 0.0
            total = 0.0
            for nxt, p in chain.next_states(state).items():
                model = models.get(nxt)
                if model is None or model in held or model not in room.sizes:
                    total += p * value(steps - 1, nxt, held)
                    continue
                options = [frozenset(k) | {model} for n in range(len(held) + 1)
                           for k in itertools.combinations(sorted(held), n)]
                total += p * (room.reload_s.get(model, 0.0) + min(
                    (value(steps - 1, nxt, o) for o in options if room.fits(o)), default=0.0))
            return total

        return value(self._horizon, self._current, resident)


class Transitions:
    """Counts of state -> next state, blended with the rule (`prior`)."""

    def __init__(self, prior: Prior, counts: Mapping[str, Mapping[str, float]] | None = None,
                 *, prior_weight: float = PRIOR_WEIGHT) -> None:
        self.prior: Prior = {state: dict(nexts) for state, nexts in prior.items()}
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
        for rule, share in self.prior.get(state, {}).items():
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
        states = sorted(set(self.counts) | set(self.prior))
        return {s: {n: round(p, 3) for n, p in sorted(self.next_states(s).items(), key=lambda i: -i[1])}
                for s in states}


# How far the lookahead prices evictions: four rounds of plan, code and review. A short horizon
# undercounts what keeping a large model saves (its reload falls beyond the end) and flips
# decisions from one round to the next.
LOOKAHEAD_TURNS = 12
# Review rounds are told apart since the last plan or request, up to this many: what follows a
# second review (a re-plan, say) may differ from what follows the first (more changes).
ROUNDS = 3


def _reviews(state: str) -> int:
    name, _, rounds = state.partition(" ")
    return int(rounds) if name in ("coder", "reviewer") and rounds.isdigit() else 0


def advance(previous: str, speaker: str) -> str:
    """The forecast's state for `speaker` after `previous`: the Coder and the Reviewer carry the
    reviews done since the last plan or request ("coder 1": coding after the first review)."""
    done = _reviews(previous)
    if speaker == "coder":
        return f"coder {min(done, ROUNDS - 1)}"
    if speaker == "reviewer":
        return f"reviewer {min(done + 1, ROUNDS)}"
    return speaker


def rounds_prior(rule: Prior) -> Prior:
    """The rule over roles (`crew.routing.RULE`) spread over the review rounds."""
    if any(" " in state for state in rule):
        return rule  # spread already
    states = ["task", "architect", "human", *(f"coder {k}" for k in range(ROUNDS)),
              *(f"reviewer {k}" for k in range(1, ROUNDS + 1))]
    spread: dict[str, dict[str, float]] = {}
    for state in states:
        nexts = rule.get(state.partition(" ")[0], {})
        row = spread.setdefault(state, {})
        for role, share in nexts.items():
            target = advance(state, role)
            row[target] = row.get(target, 0.0) + share
    return spread


class LearnedForecast:
    """Who speaks when, as this team has shown it: each turn is counted (review rounds told
    apart, `advance`), and the forecast for the speaker's turn is every model's chance of being
    asked for within FORECAST_TURNS, with the lookahead that prices evictions."""

    def __init__(self, models: Mapping[Role, str], learned: Transitions,
                 save: Callable[[Transitions], None] | None = None) -> None:
        self.learned = Transitions(rounds_prior(learned.prior), learned.counts)
        self._models: dict[str, str] = {state: models[state.partition(" ")[0]]  # type: ignore[index]
                                        for state in self.learned.prior if state.partition(" ")[0] in models}
        self._save = save
        self._last: str | None = None

    def turn(self, previous: str, speaker: Speaker) -> Lookahead | None:
        """Count the last state -> `speaker` (`previous`, a role, "human" or "task", names the
        last speaker at the first turn); the forecast from `speaker` on (None for the person)."""
        before = self._last if self._last is not None else advance("task", previous)
        state = advance(before, speaker)
        self._last = state
        self.learned.observe(before, state)
        if self._save is not None:
            self._save(self.learned)
        if speaker == "human":
            return None
        # A copy of the counts: the forecast stays the one made at this turn.
        frozen = Transitions(self.learned.prior, self.learned.counts)
        return Lookahead(frozen.outlook(state, self._models, FORECAST_TURNS), frozen, state,
                         self._models, LOOKAHEAD_TURNS)


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
