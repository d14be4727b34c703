"""crew's residency policy as Ray Serve's request router for the fleet's host replicas.

Ray calls `choose_replicas` in the process that holds the deployment handle (the fleet's front)
with every live replica and the request; each replica's `routing_stats` are the `HostState` it
last reported. The first argument of every call to a replica is the request's `Want`.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from ray.serve.request_router import PendingRequest, ReplicaID, RequestRouter, RunningReplica

from crew.fleet.policy import HostState, Want, bound, rank

# A replica that has not reported this long after it appeared gets requests all the same. Until
# then, only requests for a model resident (or bound) on a host that has reported are placed:
# a load decided without that replica's report could repeat a load its host already holds (a
# replacement replica's host keeps its models). Long enough for a first report on a busy machine.
UNREPORTED_S = 30.0


class ResidencyRouter(RequestRouter):
    def initialize_state(self, **kwargs: Any) -> None:
        self._sent: Counter[tuple[str, str]] = Counter()
        """Requests sent per (replica, model): beyond what its report received, they are incoming."""
        self._sizes: dict[str, int] = {}
        self._seen: dict[str, float] = {}

    async def choose_replicas(
        self, candidate_replicas: list[RunningReplica], pending_request: PendingRequest | None = None
    ) -> list[list[RunningReplica]]:
        want = _want_of(pending_request)
        states: list[HostState] = []
        incoming: dict[str, dict[str, int]] = {}
        unknown: list[RunningReplica] = []
        awaited = False  # a replica that has not reported yet, within its grace
        by_host: dict[str, RunningReplica] = {}
        now = time.time()
        for replica in candidate_replicas:
            rid = replica.replica_id.unique_id
            state = HostState.of(replica.routing_stats)
            if state is None:
                # No report yet (a replica just started): requests wait for it, for a while, so
                # that the first ones are placed by the policy and not by chance.
                if now - self._seen.setdefault(rid, now) > UNREPORTED_S:
                    unknown.append(replica)
                else:
                    awaited = True
                continue
            states.append(state)
            by_host[state.host] = replica
            incoming[state.host] = {m: self._sizes.get(m, 0) for (r, m), n in self._sent.items()
                                    if r == rid and n > state.received.get(m, 0)}
        if pending_request is not None:
            # Ray retries a request nothing took at once; without this it retries in a busy loop
            # (starving the updates that would bring the replica it waits for).
            pending_request.routing_context.should_backoff = True
        if want is None:
            return [candidate_replicas]
        placed = bound(want, states, incoming) if awaited else rank(want, states, incoming)
        ranked = [[by_host[h]] for h in placed]
        if awaited and want.host is None:
            return ranked  # empty: wait (Ray retries with backoff) for the full picture
        if not ranked and want.host is None:
            # No host can hold the model (or none is up): one that is not avoided answers why.
            ranked = [[r for h, r in by_host.items() if h not in want.avoid]]
        return [group for group in [*ranked, unknown] if group] if want.host is None else ranked

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID, result: Any) -> None:
        want = _want_of(pending_request)
        if want is not None and want.model is not None:
            self._sent[(replica_id.unique_id, want.model)] += 1
            self._sizes[want.model] = want.size or 0

    def update_replicas(self, replicas: list[RunningReplica]) -> None:
        super().update_replicas(replicas)
        live = {r.replica_id.unique_id for r in replicas}
        for key in [k for k in self._sent if k[0] not in live]:
            del self._sent[key]  # a replica that is gone receives nothing more


def _want_of(pending_request: PendingRequest | None) -> Want | None:
    args = pending_request.args if pending_request is not None else []
    return args[0] if args and isinstance(args[0], Want) else None
