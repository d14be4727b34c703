"""Which host of a fleet a model request goes to: crew's residency policy over the state each
host reports. Pure: no Ray here, so the policy is tested without a cluster.

For a request for model `m` of expected size `s`, hosts are ranked in tiers:

0. `m` is resident or loading there, or requests for it are queued there or were just sent
   there: no new load. Queued work for a model stays on the host that is already getting it,
   so two hosts never load the same model for one burst of requests. (Unless more models are
   bound for that host than it holds: then it counts as an eviction of the overflow.)
1. `m` fits in the free budget: no eviction. The smallest hole that holds it wins (best fit),
   which keeps the big holes for big models.
2. Idle models can make room: the cheapest eviction wins, in the seconds the host measured for
   loading the evicted models again.
3. Only models in use could make room: the request waits there; the least blocked host wins.

A host whose budget is under `s` is never chosen, nor a host that is down or that the request
already failed on. Reports lag behind routing by up to a reporting period, so the router adds
what it sent that the host's last report had not received yet (`incoming`): each report counts
the requests it received per model, and the router counts what it sent to that replica.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from crew.residency.knowledge import ASSUMED_LOAD_BANDWIDTH


class HostState(BaseModel):
    """What one host's replica reports (Ray Serve's routing stats, as a dict)."""

    host: str
    up: bool
    budget: int
    used: int
    resident: dict[str, int]
    """Models resident or loading, with their bytes."""
    reload_s: dict[str, float] = {}
    """What loading each resident model again takes on this host (measured, else estimated)."""
    busy: dict[str, int]
    """Requests inside the replica per model (holding it, waiting for it, or just arrived)."""
    received: dict[str, int]
    """Requests the replica received per model since it started."""

    @classmethod
    def of(cls, stats: Mapping[str, Any] | None) -> HostState | None:
        """The state from a replica's stats; None before its first report."""
        if not stats:
            return None
        try:
            return cls.model_validate(stats)
        except ValidationError:
            return None


@dataclass(frozen=True)
class Want:
    """What one request needs from the fleet."""

    model: str | None
    size: int | None = None
    host: str | None = None
    """This host and no other (a question for one host, or a static split)."""
    avoid: tuple[str, ...] = ()
    """Hosts the request already failed on because they did not answer."""


def rank(want: Want, states: Sequence[HostState], incoming: Mapping[str, Mapping[str, int]] | None = None
         ) -> list[str]:
    """The hosts to try for `want`, best first: up, not avoided, and able to hold the model.

    `incoming` is, per host, the models of requests sent there that its report does not show yet,
    with their sizes."""
    live = [s for s in states if s.up and s.host not in want.avoid]
    if want.host is not None:
        return [s.host for s in states if s.host == want.host]
    if want.model is None:
        return [s.host for s in sorted(live, key=lambda s: sum(s.busy.values()))]
    keys = _keys(want.model, want.size or 0, live, incoming)
    return sorted(keys, key=lambda h: keys[h])  # stable: ties keep the hosts' order


def bound(want: Want, states: Sequence[HostState], incoming: Mapping[str, Mapping[str, int]] | None = None
          ) -> list[str]:
    """The hosts of `rank`'s first tier for `want` (its model resident, loading or bound there
    without overflow), best first. While another host has not reported yet, these are the only
    places a request may go: a load anywhere could repeat one that host already holds."""
    if want.model is None or want.host is not None:
        return rank(want, states, incoming)
    live = [s for s in states if s.up and s.host not in want.avoid]
    keys = _keys(want.model, want.size or 0, live, incoming)
    return sorted((h for h in keys if keys[h][0] == 0), key=lambda h: keys[h])


def _keys(model: str, size: int, live: Sequence[HostState],
          incoming: Mapping[str, Mapping[str, int]] | None) -> dict[str, tuple[int, float, int]]:
    return {s.host: _key(model, size, s, (incoming or {}).get(s.host, {})) for s in live if size <= s.budget}


def _key(model: str, size: int, state: HostState, incoming: Mapping[str, int]) -> tuple[int, float, int]:
    load = sum(state.busy.values()) + len(incoming)
    if model in state.resident or state.busy.get(model) or model in incoming:
        projected = {**state.resident, **incoming, model: size}
        over = sum(projected.values()) - state.budget
        if over <= 0:
            return 0, state.busy.get(model, 0) + (model in incoming), load
        # More is bound for this host than it holds: it will evict, maybe this very model. Not
        # a place to pile on when another host has room; the overflow is the eviction's cost.
        return 2, over / ASSUMED_LOAD_BANDWIDTH, load
    arriving = sum(b for m, b in incoming.items() if m not in state.resident)
    free = state.budget - state.used - arriving
    if size <= free:
        return 1, free - size, load
    need = size - free
    idle = [(b, state.reload_s.get(m, b / ASSUMED_LOAD_BANDWIDTH)) for m, b in state.resident.items()
            if not state.busy.get(m) and m not in incoming]
    seconds = _cheapest_cover(idle, need)
    if seconds is not None:
        return 2, seconds, load
    return 3, need - sum(b for b, _ in idle), load


def _cheapest_cover(idle: list[tuple[int, float]], need: int) -> float | None:
    """Seconds of reloads to free `need` bytes from idle models (bytes, reload seconds): the one
    cheapest model that is enough, else the largest first; None if all of them are not enough."""
    enough = [seconds for b, seconds in idle if b >= need]
    if enough:
        return min(enough)
    freed, cost = 0, 0.0
    for b, seconds in sorted(idle, reverse=True):
        freed += b
        cost += seconds
        if freed >= need:
            return cost
    return None
