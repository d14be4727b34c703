"""Who speaks next, as plain rules over who said what: no model call, no AutoGen.

An explicit handoff line (`NEXT: Coder`) wins; else the workflow (task -> Architect -> Coder
-> Reviewer -> Coder ...); the task itself is routed by the seed's task types; and a choice
the workflow leaves open prefers the agent whose model is already resident. In a chat the
person ("You") gets the floor when the Reviewer approves, when asked for, or after a streak
of agent turns, and `@coder` addresses one agent. The Reviewer ends a run with a line
`APPROVED`. The team's selector and the CLI both read these rules from here.

`RULE` and `CHAT_RULE` are the same rules as transitions: the prior of the forecast the Selector
sends the residency manager (`crew.residency.transitions.LearnedForecast`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

from crew.settings import Role

NAMES: dict[Role, str] = {"architect": "Architect", "coder": "Coder", "reviewer": "Reviewer"}
ROLE_OF: dict[str, Role] = {name: role for role, name in NAMES.items()}
# What the workflow does after each speaker.
NEXT: dict[Role, Role] = {"architect": "coder", "coder": "reviewer", "reviewer": "coder"}
# The seed router's TASK_ROUTING, entry for entry and in its order (its models are the roles'):
# the default table of `role_for`; crew.toml's `[routing]` may override entries.
SEED_ROUTING: dict[str, Role] = {
    "plan": "architect", "design": "architect", "architecture": "architect",
    "requirements": "architect", "strategy": "architect",
    "code": "coder", "implement": "coder", "refactor": "coder", "fix": "coder",
    "feature": "coder", "optimize": "coder",
    "review": "reviewer", "test": "reviewer", "qa": "reviewer", "validate": "reviewer",
    "debug": "reviewer", "summary": "reviewer",
}
# The seed's table by role.
TASK_TYPES: dict[Role, tuple[str, ...]] = {
    role: tuple(kind for kind, r in SEED_ROUTING.items() if r == role)
    for role in ("architect", "coder", "reviewer")
}
# Words that, opening a request in prose, name the kind of work (`task_type`): the seed's task
# types except `qa` and `summary`, which in prose name a thing ("add a summary line"), not the work.
OPENING_WORDS: dict[Role, tuple[str, ...]] = {
    role: tuple(k for k in kinds if k not in ("qa", "summary")) for role, kinds in TASK_TYPES.items()
}
# The task types whose `urgency: critical` request stays with the Architect (the seed's list):
# other Architect work that is critical goes to the Coder.
CRITICAL_STAYS: frozenset[str] = frozenset({"plan", "design", "architecture"})
# The seed's own routes name a task type: /architect is design work, /coder code, /reviewer review.
ROUTE_TASK_TYPE: dict[Role, str] = {"architect": "design", "coder": "code", "reviewer": "review"}
HUMAN = "You"
# In a chat, the person gets the floor after this many agent turns in a row.
MAX_AGENT_STREAK = 6

Speaker = Role | Literal["human"]

_HANDOFF = re.compile(r"(?im)^\W*(?:next|handoff)\W*:?\s*(architect|coder|reviewer|you)\b")
_MENTION = re.compile(r"(?i)(?<![\w@])@(architect|coder|reviewer)\b")


def approved(text: str) -> bool:
    """A line that says only APPROVED (markdown emphasis allowed); 'NOT APPROVED' is not."""
    return any(line.strip().strip("*_`#> ").upper() == "APPROVED" for line in text.splitlines())


def task_type(text: str) -> Role | None:
    """The seed's task type, read from the request's opening words (its first line of prose).

    Only the opening counts: a spec that says "write X and a test for it" is coding work,
    not a review.
    """
    lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    words = re.findall(r"[a-z]+", lines[0].lower())[:12] if lines else []
    for word in words:
        for role, keywords in OPENING_WORDS.items():
            if word in keywords:
                return role
    return None


# How far ahead the workflow's forecast reaches: two review rounds.
FORECAST_TURNS = 6


def forecast(role: Role, turns: int = FORECAST_TURNS) -> list[Role]:
    """Who the workflow expects to speak, from `role` (now) on, if nobody hands off or re-plans:
    after the Architect, the Coder and the Reviewer in turn; the Architect does not come back."""
    order = [role]
    while len(order) < turns:
        order.append(NEXT[order[-1]])
    return order


# The rule as transitions between states (the roles, "human", "task": the request that opens a
# run), the prior of the learned forecast: in a run the Reviewer sends the work back to the Coder
# (an approval ends the run); in a chat an approval gives the person the floor, and a person's
# new request is planned first. Whether the Reviewer approves is not known ahead: even odds.
RULE: dict[str, dict[str, float]] = {
    "task": {"architect": 1.0}, **{s: {n: 1.0} for s, n in NEXT.items()}, "human": {"architect": 1.0},
}
CHAT_RULE: dict[str, dict[str, float]] = {**RULE, "reviewer": {"coder": 0.5, "human": 0.5}}


def state_of(source: str) -> str:
    """The forecast's state for a message's source: a role, "human", or "task" (anything else)."""
    role = ROLE_OF.get(source)
    return role if role is not None else "human" if source == HUMAN else "task"


def speaker_name(speaker: Speaker) -> str:
    return HUMAN if speaker == "human" else NAMES[speaker]


def choose_next(
    sources: Sequence[str], text: str, *, human: bool, resident: Callable[[Role], bool],
) -> tuple[Speaker, str]:
    """Who speaks after a conversation whose speakers were `sources` and whose last message
    says `text`, with the reason. `resident(role)` tells whether a role's model is in memory."""
    last = sources[-1]
    source = ROLE_OF.get(last)
    if human and last == HUMAN:
        mention = _MENTION.findall(text)
        if mention:
            target: Role = mention[0].lower()
            return target, f"the person addressed {NAMES[target]}"
    handoff = _HANDOFF.findall(text)
    if handoff and handoff[-1].lower() != source:
        wanted = handoff[-1].lower()
        if wanted == "you":
            if human:
                return "human", f"{last} asked the person"
        else:
            return wanted, f"{last} handed off to {NAMES[wanted]}"
    if source is None:
        kind = task_type(text)
        if kind is not None and kind != "architect":
            return kind, f"the request is of type '{kind}' work"
        return "architect", "a new request starts with a plan"
    if human:
        streak = 0
        for said in reversed(sources):
            if said not in ROLE_OF:
                break
            streak += 1
        if streak >= MAX_AGENT_STREAK:
            return "human", f"{streak} agent turns in a row: the person's turn"
    if source == "reviewer":
        if human and approved(text):
            return "human", "the Reviewer approved: the person's turn"
        if task_type(text) == "architect":
            return _prefer_resident(["architect", "coder"], "the review questions the design", resident)
        return "coder", "the Reviewer asked for changes"
    nxt = NEXT[source]
    return nxt, f"workflow: {NAMES[source]} -> {NAMES[nxt]}"


def _prefer_resident(roles: list[Role], why: str, resident: Callable[[Role], bool]) -> tuple[Role, str]:
    for role in roles:
        if resident(role):
            return role, f"{why}; {NAMES[role]}'s model is already resident"
    return roles[0], why


# The seed router's answer for a task type no table lists: the Architect plans.
DEFAULT_ROLE: Role = "architect"


def routing_table(overrides: Mapping[str, Role] | None = None) -> dict[str, Role]:
    """The seed's table with crew.toml's `[routing]` entries over it (keys lower-cased)."""
    return {**SEED_ROUTING, **{k.strip().lower(): r for k, r in (overrides or {}).items()}}


def role_for(
    task_type: str, role: Role | None = None, table: Mapping[str, Role] = SEED_ROUTING
) -> tuple[Role, str]:
    """Which role answers a task type (or the role's own route), and why: the seed's
    `select_model` step 1, case-insensitive, an unknown type going to the Architect."""
    if role is not None:
        return role, f"the /{role} route"
    kind = task_type.strip().lower()
    matched = table.get(kind)
    if matched is None:
        return DEFAULT_ROLE, f"task_type '{kind}' is not in the table: the Architect plans"
    return matched, f"task_type '{kind}' is {NAMES[matched]} work"


def urgent_role(task_type: str, urgency: str, role: Role | None = None,
                table: Mapping[str, Role] = SEED_ROUTING) -> tuple[Role, str]:
    """`role_for`, then the seed's urgency rule (its `select_model` step 2): a `critical` request
    for Architect work other than plan/design/architecture goes to the Coder. Nothing else
    changes the role; a role's own route is that role's task type (/architect is `design`)."""
    kind = ROUTE_TASK_TYPE[role] if role is not None else task_type
    chosen, why = role_for(task_type, role, table)
    critical = urgency.strip().lower() == "critical"
    if critical and chosen == "architect" and kind.strip().lower() not in CRITICAL_STAYS:
        return "coder", f"{why}; critical and not plan/design/architecture: the Coder answers (seed rule)"
    return chosen, why
