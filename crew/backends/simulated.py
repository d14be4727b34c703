"""A backend in memory: sizes crew measured or estimates, instant loads, a list of what loaded.

`crew plan` drives the real ResidencyManager through it to show what crew will do, and the
benchmarks time policies on it (with load delays added).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from crew.backends.base import ModelFacts, Resident


class Sized(Protocol):
    @property
    def bytes(self) -> int: ...


class SizeMemory(Protocol):
    """What crew measured of models (`crew.residency.measurements.Measurements`), as this
    backend reads it: the backends sit below residency and do not import it."""

    def recall(self, model: str, num_ctx: int, file_size: int) -> Sized | None: ...


class SimulatedBackend:
    """An in-memory backend with the sizes crew measured or estimates; loads are instant."""

    def __init__(self, facts: Mapping[str, ModelFacts], measurements: SizeMemory | None = None) -> None:
        self._facts = dict(facts)
        self._measurements = measurements
        self._resident: dict[str, Resident] = {}
        self.loads: list[str] = []

    @property
    def label(self) -> str:
        return "simulation"

    def resident_bytes(self) -> dict[str, int]:
        return {name: r.size for name, r in self._resident.items()}

    async def running(self) -> list[Resident]:
        return list(self._resident.values())

    async def inspect(self, model: str) -> ModelFacts:
        return self._facts[model]

    async def load(self, model: str, options: Mapping[str, Any]) -> None:
        known = None
        if self._measurements is not None:
            num_ctx = int(options.get("num_ctx") or 0)
            known = self._measurements.recall(model, num_ctx, self._facts[model].file_size)
        size = known.bytes if known else self._facts[model].estimate_size(options)
        self._resident[model] = Resident(model, size, size, int(options.get("num_ctx") or 0) or None)
        self.loads.append(model)

    async def unload(self, model: str) -> None:
        self._resident.pop(model, None)

    async def renew(self, model: str, options: Mapping[str, Any]) -> None:
        return None  # in-process models have no expiry

    async def release(self, model: str, options: Mapping[str, Any]) -> None:
        return None

    async def aclose(self) -> None:
        return None
