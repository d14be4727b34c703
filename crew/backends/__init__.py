"""Model servers the ResidencyManager drives, and the choice of one from settings.

Owns the `Backend` protocol (`base`), one module per backend (`ollama`, `embedded`,
`simulated`), and the registry (`registry`) that turns settings into a `BackendChoice`: which
backend, and which model each role runs on it. Adding a backend is one module here and one
`register(...)` line in the registry; nothing above this package names a backend.
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
