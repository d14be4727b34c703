"""The manager a command runs with, built from its settings and backend choice."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from crew.residency.budget import MemoryBudget, resolve_budget
from crew.residency.holders import HolderRecord
from crew.residency.host_lock import HostLock
from crew.residency.manager import ResidencyManager
from crew.residency.measurements import Measurements

if TYPE_CHECKING:
    from crew.backends import BackendChoice
    from crew.settings import Settings


@dataclass(frozen=True)
class OffloadRule:
    """Whether a model over the budget may run alone, partly on the CPU (CREW_ALLOW_PARTIAL_OFFLOAD)."""

    allowed: bool
    machine_memory: int | None
    """With `auto`: the machine's memory, over which a model still cannot run (None: no limit)."""

    @classmethod
    def of(cls, settings: Settings, budget: MemoryBudget) -> OffloadRule:
        mode = settings.allow_partial_offload
        return cls(mode is not False, budget.machine if mode == "auto" else None)

    def over_machine(self, size: int) -> bool:
        return bool(self.machine_memory) and size > (self.machine_memory or 0)

    def runs_alone(self, size: int) -> bool:
        """Whether a model of `size` bytes, over the budget, may run alone."""
        return self.allowed and not self.over_machine(size)

    def manager_options(self) -> dict[str, Any]:
        return {"allow_partial_offload": self.allowed, "machine_memory": self.machine_memory}


def open_manager(settings: Settings, choice: BackendChoice, run: str, *,
                 authority: bool = False) -> ResidencyManager:
    """The manager for a command on `choice`'s backend, with the roles' models registered.

    On a `crew serve`, the server decides what is resident (`ServedResidency`). On a server
    other processes share (Ollama), the models this one keeps are noted under
    `run` for `crew ps` and other crews (see `crew.residency.holders`), and load measurements carry over
    from earlier runs. A crew process apart takes turns with the others through the host lock
    (`crew.residency.host_lock`); the `authority` (crew serve itself, which serves many clients
    at once and is the one every crew should go through) does not: its one lock per process
    would make its own concurrent requests wait on each other.
    """
    host = choice.backend.label
    budget = resolve_budget(settings.memory_budget_gb)
    if choice.served:
        from crew.backends.ollama import OllamaBackend
        from crew.residency.served import ServedResidency

        assert isinstance(choice.backend, OllamaBackend)
        return ServedResidency(choice.backend, budget, load_timeout=settings.load_timeout_s)
    record = HolderRecord(settings.state_dir / "holders", host, run) if choice.shared else None
    manager = ResidencyManager(
        choice.backend,
        budget,
        **OffloadRule.of(settings, budget).manager_options(),
        load_timeout=settings.load_timeout_s,
        reconcile_ttl=settings.reconcile_ttl_s,
        measurements=Measurements(settings.state_dir, host) if record else None,
        held_elsewhere=record.held_elsewhere if record else None,
        lease_s=getattr(choice.backend, "lease_s", None),
        host_lock=HostLock(settings.state_dir, host) if record and not authority else None,
    )
    if record is not None:
        manager.subscribe(record)
    return manager
