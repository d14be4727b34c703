"""What the manager knows of each model: the runner options it registered, the backend's facts,
and what loads measured (resident size and load seconds), carried over between runs.

A reload is expected to take the model's bytes over the load speed measured on this backend
(all its loads' bytes over all their seconds): one load's own time is noisy (the page cache, a
busy disk), and a shared speed keeps the ratio between two models' reload costs that of their
sizes, which is what eviction compares."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from crew.backends.base import Backend, ModelFacts, Resident
from crew.errors import CrewError
from crew.residency.budget import GB
from crew.residency.measurements import Measurement, Measurements

# Bytes per second assumed for a model never loaded here (between a Mac's mmap and Linux).
ASSUMED_LOAD_BANDWIDTH = 1 * GB


class ModelKnowledge:
    def __init__(self, backend: Backend, measurements: Measurements | None = None) -> None:
        self._backend = backend
        self._measurements = measurements
        self._profiles: dict[str, dict[str, Any]] = {}
        self._facts: dict[str, ModelFacts] = {}
        self._size: dict[str, int] = {}
        self._loaded_bytes = 0
        self._loaded_s = 0.0

    def register(self, model: str, options: Mapping[str, Any]) -> None:
        """Declare the runner options every request for `model` will use."""
        known = self._profiles.get(model)
        if known is not None and known.get("num_ctx") != options.get("num_ctx"):
            raise CrewError(
                f"{model} is registered twice with different num_ctx ({known.get('num_ctx')} and "
                f"{options.get('num_ctx')}); Ollama would reload it at every switch: use one"
            )
        self._profiles[model] = dict(options)
        self._recall(model)

    def registered(self, model: str) -> bool:
        return model in self._profiles

    def profile(self, model: str) -> dict[str, Any]:
        """The registered runner options (the object itself: callers must not change it)."""
        try:
            return self._profiles[model]
        except KeyError:
            raise CrewError(f"{model} was not registered with the residency manager") from None

    async def facts(self, model: str) -> ModelFacts:
        """What the backend says about a model (cached); raises ModelNotPulled."""
        if model not in self._facts:
            self._facts[model] = await self._backend.inspect(model)
            self._recall(model)
        return self._facts[model]

    async def expected_size(self, model: str) -> int:
        """Learned resident size if the model was loaded before, else an estimate."""
        if model in self._size:
            return self._size[model]
        facts = await self.facts(model)
        return facts.estimate_size(self.profile(model))

    def expected_size_now(self, model: str) -> int:
        """`expected_size` for a model whose facts are known already (no backend call)."""
        if model in self._size:
            return self._size[model]
        return self._facts[model].estimate_size(self._profiles[model])

    def learned_size(self, model: str) -> int | None:
        return self._size.get(model)

    def reload_seconds(self, model: str, size: int) -> float:
        """What loading the model again would cost: its size over the measured load speed
        (assumed until a load has been measured)."""
        return size / self.load_bandwidth()

    def load_bandwidth(self) -> float:
        """Bytes per second loads have taken here (ASSUMED_LOAD_BANDWIDTH before any)."""
        if self._loaded_bytes <= 0 or self._loaded_s <= 0:
            return ASSUMED_LOAD_BANDWIDTH
        return self._loaded_bytes / self._loaded_s

    def learn(self, model: str, size: int, seconds: float, *, measured: bool) -> None:
        """A load finished: its size (`measured` when the backend reported it) and seconds."""
        self._size[model] = size
        self._count_load(size, seconds)
        if self._measurements is not None and measured:
            num_ctx = int(self._profiles[model].get("num_ctx") or 0)
            self._measurements.remember(model, num_ctx, self._facts[model].file_size,
                                        Measurement(size, seconds))

    def mismatched(self, resident: Resident) -> bool:
        """Resident with another context than ours: Ollama would reload it on our request."""
        profile = self._profiles.get(resident.name)
        if profile is None or resident.context_length is None:
            return False
        wanted = int(profile.get("num_ctx") or 0)
        facts = self._facts.get(resident.name)
        if facts is not None and facts.context_length:
            wanted = min(wanted, facts.context_length)
        return bool(wanted) and resident.context_length != wanted

    def _recall(self, model: str) -> None:
        """Start from an earlier run's measurement of this model at these options, if any."""
        facts, profile = self._facts.get(model), self._profiles.get(model)
        if self._measurements is None or facts is None or profile is None or model in self._size:
            return
        known = self._measurements.recall(model, int(profile.get("num_ctx") or 0), facts.file_size)
        if known is not None:
            self._size[model] = known.bytes
            self._count_load(known.bytes, known.load_seconds)

    def _count_load(self, size: int, seconds: float) -> None:
        if size > 0 and seconds > 0:
            self._loaded_bytes += size
            self._loaded_s += seconds
