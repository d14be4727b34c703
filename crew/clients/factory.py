"""A role's chat client, made for the backend a command chose.

The backends below know nothing of chat clients: this registry, one line per backend, names the
client class that speaks to each. Adding a backend is one backend module and one `register` line
in `crew.backends.registry`, and one client module and one `register_client` line here.
Client modules are imported only when a client is made, so importing this costs nothing.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from crew.errors import BackendError

if TYPE_CHECKING:
    from crew.backends.base import ModelFacts
    from crew.backends.registry import BackendChoice
    from crew.clients.base import ModelClient
    from crew.events import Event
    from crew.residency import ResidencyManager
    from crew.settings import Role

# Backend name -> the client class that speaks to it, as "module:Class" (imported when used) or
# the class itself.
_CLIENTS: dict[str, str | type[ModelClient]] = {
    "ollama": "crew.clients.ollama:RoutedOllamaClient",
    "embedded": "crew.clients.embedded:EmbeddedChatClient",
}


def register_client(backend: str, client: str | type[ModelClient]) -> None:
    """Name the chat client for `backend` (or replace the one named)."""
    _CLIENTS[backend] = client


def unregister_client(backend: str) -> None:
    _CLIENTS.pop(backend, None)


def _client_class(backend: str) -> type[ModelClient]:
    named = _CLIENTS.get(backend)
    if named is None:
        raise BackendError(f"no chat client for the {backend} backend: register one with "
                           "crew.clients.factory.register_client")
    if isinstance(named, str):
        module, _, name = named.partition(":")
        cls: type[ModelClient] = getattr(importlib.import_module(module), name)
        return cls
    return named


def make_client(
    choice: BackendChoice, manager: ResidencyManager, role: Role, facts: ModelFacts,
    emit: Callable[[Event], None], *, on_hold: Callable[[], None] | None = None,
) -> ModelClient:
    """The chat client for `role` on the chosen backend (imports AutoGen)."""
    cls: Any = _client_class(choice.name)
    client: ModelClient = cls(manager, role, choice.role(role), facts, backend=choice.backend,
                              emit=emit, on_hold=on_hold)
    return client
