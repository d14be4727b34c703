"""What the ResidencyManager needs from a model server, and nothing more.

A backend loads, unloads and reports what is resident. `OllamaBackend` speaks Ollama's HTTP
API; an in-process backend fits the same protocol, so the residency policy exists once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

# Compute buffers and the graph come on top of weights and KV cache; Ollama's own estimate
# adds a few percent. Overestimating slightly keeps the first load under the budget.
ESTIMATE_MARGIN = 1.05


@dataclass(frozen=True)
class Resident:
    """One model resident in the backend, as the backend reports it."""

    name: str
    size: int
    """Bytes resident: weights, KV cache and buffers."""
    size_vram: int
    context_length: int | None = None
    expires_at: datetime | None = None
    """When Ollama will unload it by itself; far in the future for keep_alive -1 (crew's)."""
    host: str | None = None
    """Which host of a fleet holds it (`crew serve --ray` says; Ollama does not)."""


@dataclass(frozen=True)
class ModelFacts:
    """What is known about a model before it is loaded."""

    name: str
    file_size: int
    architecture: str = ""
    context_length: int | None = None
    """The context the model was trained for (Ollama caps num_ctx at it)."""
    kv_bytes_per_token: int = 0
    capabilities: frozenset[str] = field(default_factory=frozenset)

    def estimate_size(self, options: Mapping[str, Any]) -> int:
        """Bytes the model will take at these options: file + f16 KV cache + margin."""
        num_ctx = int(options.get("num_ctx") or 4096)
        if self.context_length:
            num_ctx = min(num_ctx, self.context_length)
        return int((self.file_size + self.kv_bytes_per_token * num_ctx) * ESTIMATE_MARGIN)


def kv_bytes_per_token(model_info: Mapping[str, Any]) -> int:
    """f16 KV cache per token from GGUF metadata: 2 x layers x kv_heads x head_dim x 2 bytes."""
    arch = str(model_info.get("general.architecture", ""))

    def get(key: str) -> int:
        value = model_info.get(f"{arch}.{key}")
        if isinstance(value, list):  # per-layer arrays in some GGUFs
            value = max(value) if value else 0
        return int(value or 0)

    layers = get("block_count")
    kv_heads = get("attention.head_count_kv") or get("attention.head_count")
    head_dim = get("attention.key_length")
    if not head_dim and get("attention.head_count"):
        head_dim = get("embedding_length") // get("attention.head_count")
    # Hybrid models (qwen3next) keep KV only on every n-th, full-attention layer.
    interval = get("full_attention_interval") or 1
    return 2 * (layers // interval) * kv_heads * head_dim * 2


class Backend(Protocol):
    """A model server the ResidencyManager drives."""

    @property
    def label(self) -> str:
        """Where it is (a host URL), for messages."""
        ...

    async def running(self) -> list[Resident]:
        """What is resident now, straight from the server."""
        ...

    async def inspect(self, model: str) -> ModelFacts:
        """Facts about an installed model; raises ModelNotPulled if it is not installed."""
        ...

    async def load(self, model: str, options: Mapping[str, Any]) -> None:
        """Make the model resident with these options and keep it until unloaded."""
        ...

    async def unload(self, model: str) -> None:
        """Unload the model; return only once its memory is free."""
        ...

    async def renew(self, model: str, options: Mapping[str, Any]) -> None:
        """Extend the lease of a resident model kept between requests (no reload: same options).
        Backends without expiry do nothing."""
        ...

    async def release(self, model: str, options: Mapping[str, Any]) -> None:
        """Hand the model back to the server's own expiry (crew is leaving)."""
        ...

    async def aclose(self) -> None: ...


def gguf_numbers(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """GGUF metadata as llama.cpp hands it over (every value a string), numbers made numbers."""
    return {key: _number(value) for key, value in metadata.items()}


def _number(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            return value
    return value
