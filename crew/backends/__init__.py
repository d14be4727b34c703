"""Model servers the ResidencyManager drives, and the choice of one from settings.

Owns the `Backend` protocol (`base`), one module per backend (`ollama`, `embedded`,
`simulated`), the embedded model's worker process (`worker` on crew's side, `llama_worker` the
program it runs), Ollama's HTTP API as crew reads it (`ollama_api`), and the registry (`registry`)
that turns settings into a `BackendChoice`: which backend, and which model each role runs on it.
Adding a backend is one module here and one `register(...)` line in the registry, plus its chat
client: one module in `crew.clients` and one line in `crew.clients.factory`. Above this package,
the Ollama backend is named where only it can serve: `crew serve`'s residency
(`crew.residency.served`) and `crew doctor`'s questions to Ollama (`crew.reports.doctor`).
"""

from crew.backends.base import Backend, ModelFacts, Resident, kv_bytes_per_token
from crew.backends.registry import BackendChoice, BackendKind, backend_names, choose_backend, register

__all__ = [
    "Backend",
    "BackendChoice",
    "BackendKind",
    "ModelFacts",
    "Resident",
    "backend_names",
    "choose_backend",
    "kv_bytes_per_token",
    "register",
]
