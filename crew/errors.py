"""crew's errors: every message says what went wrong and how to fix it.

    CrewError
     ├─ SettingsError
     ├─ InputError
     ├─ BackendError
     │   ├─ OllamaUnreachable
     │   ├─ ModelNotPulled
     │   ├─ ModelCapabilityError
     │   ├─ OllamaOutOfMemory
     │   ├─ RequestTimeout ─ LoadTimeout
     │   ├─ StreamInterrupted
     │   ├─ AnswerFailed ─ ModelCrashed
     │   └─ ContextOverflow
     ├─ BudgetError
     │   ├─ ModelTooLarge
     │   └─ ResidencyDeadlock
     └─ WorkspaceError ─ WorkspaceEscape

Foreign exceptions (ollama, httpx, urllib) are translated into these at one seam,
`crew.backends.ollama_api.ollama_errors`. The CLI maps them to exit codes in one table.
"""

from __future__ import annotations


class CrewError(Exception):
    """Base of every error crew raises on purpose."""


class SettingsError(CrewError):
    """A setting (environment variable or crew.toml) has an invalid value."""


class InputError(CrewError):
    """A file or argument given on the command line cannot be used."""


class BackendError(CrewError):
    """The model backend (Ollama) failed or refused a request."""


class OllamaUnreachable(BackendError):
    def __init__(self, host: str) -> None:
        super().__init__(
            f"cannot reach Ollama at {host}: start it with `ollama serve` (or open the Ollama app), "
            "or set CREW_OLLAMA_HOST to where it listens"
        )
        self.host = host


class ModelNotPulled(BackendError):
    def __init__(self, model: str, host: str) -> None:
        super().__init__(
            f"model {model} is not pulled in Ollama at {host}: run `ollama pull {model}`, "
            "or choose another model for its role (e.g. CREW_CODER_MODEL)"
        )
        self.model = model


class ModelCapabilityError(BackendError):
    """The model refused an option it does not support (thinking, tools)."""


class OllamaOutOfMemory(BackendError):
    """Ollama could not fit a model in memory."""


class RequestTimeout(BackendError):
    """A request to the backend took longer than its timeout."""


class LoadTimeout(RequestTimeout):
    def __init__(self, model: str, seconds: float) -> None:
        super().__init__(
            f"loading {model} took longer than {seconds:g} s: raise CREW_LOAD_TIMEOUT_S, "
            "or check `ollama ps` and the Ollama server log"
        )
        self.model = model


class StreamInterrupted(BackendError):
    """The connection dropped in the middle of an answer, or the answer ended unfinished."""


class AnswerFailed(BackendError):
    """The server started answering (HTTP 200) and then reported an error instead."""


class ModelCrashed(AnswerFailed):
    """The process running an embedded model died (a crash of llama.cpp): retried once."""

    def __init__(self, message: str, *, signal_name: str) -> None:
        super().__init__(message)
        self.signal_name = signal_name


class ContextOverflow(BackendError):
    """The conversation no longer fits the embedded model's context."""


class BudgetError(CrewError):
    """The memory budget cannot serve a request."""


class ModelTooLarge(BudgetError):
    """A model cannot run here: over the budget with partial offload refused, or over the
    machine's memory. `fixes` are the changes that would make it fit (see `crew.residency.advice`)."""

    def __init__(self, model: str, needed: int, budget: int, fixes: list[str], *,
                 machine: int | None = None) -> None:
        if machine is not None:
            what = f"more than this machine's {machine / 1e9:.1f} GB of memory"
            ways = fixes
        else:
            what = f"but the memory budget is {budget / 1e9:.1f} GB"
            ways = [*fixes, "raise CREW_MEMORY_BUDGET_GB if the machine can give more",
                    "set CREW_ALLOW_PARTIAL_OFFLOAD=auto to run it alone, split between GPU and CPU (slow)"]
        super().__init__(f"{model} needs about {needed / 1e9:.1f} GB at its num_ctx, {what}: "
                         + "; or ".join(ways))
        self.model = model
        self.needed = needed
        self.budget = budget


class ResidencyDeadlock(BudgetError):
    """A task waits for room that only its own held models could free."""


class WorkspaceError(CrewError):
    """The run's workspace cannot be created or used."""


class WorkspaceEscape(WorkspaceError):
    """A path given to a tool points outside the workspace."""
