"""Residency: which models are in memory, and when that changes.

`manager` holds the `ResidencyManager` (holds, loads, unloads, reconciling with the backend);
`queue` the waiting requests and their fairness; `eviction` the rule that picks what to evict;
`slots` what is counted per model. None of it imports AutoGen: the team, `crew serve` and the
benchmarks all drive the same manager. `opening.open_manager` builds the one a command runs with.
"""

from crew.residency.eviction import Candidate, CheapestReload, EvictionPolicy, WorkflowAware
from crew.residency.manager import ResidencyManager
from crew.residency.opening import OffloadRule, open_manager
from crew.residency.slots import Hold, SlotView, Snapshot

__all__ = [
    "Candidate",
    "CheapestReload",
    "EvictionPolicy",
    "Hold",
    "OffloadRule",
    "ResidencyManager",
    "SlotView",
    "Snapshot",
    "WorkflowAware",
    "open_manager",
]
