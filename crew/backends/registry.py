"""The registry of backends, and the one function that turns settings into a choice of one.

`choose_backend(settings)` returns a `BackendChoice`: the opened backend, the settings each role
runs with on it (the embedded backend runs roles that name Ollama tags on its bundled model),
and whether it is a `crew serve`. Settings are never changed; the choice is a value passed down.
Backends are imported only when chosen, so this module costs nothing to import. Chat clients
are the layer above: `crew.clients.factory` makes a role's client from a choice.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import TYPE_CHECKING

from crew.backends.base import Backend
from crew.errors import BackendError, SettingsError

if TYPE_CHECKING:
    from crew.settings import Role, RoleSettings, Settings


class BackendUnavailable(BackendError):
    """A backend tried by `auto` cannot serve here; the message says why, as a clause."""


@dataclass(frozen=True)
class BackendKind:
    """One kind of backend, as the registry knows it."""

    name: str
    open: Callable[[Settings, bool], Awaitable[Backend]]
    """Make the backend. With `probe` (True under `auto`), raise BackendUnavailable unless it
    can serve now."""
    adapt: Callable[[Mapping[Role, RoleSettings]], dict[Role, RoleSettings]] | None = None
    """What each role runs on this backend, when that differs from the settings."""
    shared: bool = False
    """Other processes use the same server: note what this one keeps, and keep measurements."""
    auto: bool = False
    """Tried by `backend = "auto"`, in registration order."""


_REGISTRY: dict[str, BackendKind] = {}


def register(kind: BackendKind) -> None:
    """Add a backend (or replace one of the same name)."""
    _REGISTRY[kind.name] = kind


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


def backend_names() -> list[str]:
    """The values `backend` may take: `auto`, then every registered backend."""
    return ["auto", *_REGISTRY]


@dataclass(frozen=True)
class BackendChoice:
    """The backend a command runs on, and what each role runs there."""

    kind: BackendKind
    backend: Backend
    roles: Mapping[Role, RoleSettings] = field(default_factory=lambda: MappingProxyType({}))
    served: bool = False
    """The backend is a `crew serve`: it decides residency; this process only asks."""
    fallback: str | None = None
    """Why `auto` chose this backend over one tried before it (said first in a run's output)."""

    @property
    def name(self) -> str:
        return self.kind.name

    @property
    def shared(self) -> bool:
        return self.kind.shared

    def role(self, role: Role) -> RoleSettings:
        return self.roles[role]

    def models(self) -> dict[Role, str]:
        return {role: rs.model for role, rs in self.roles.items()}



async def choose_backend(settings: Settings) -> BackendChoice:
    """The backend named by `settings.backend`; under `auto` the first that can serve now."""
    if settings.backend != "auto":
        kind = _REGISTRY.get(settings.backend)
        if kind is None:
            raise SettingsError(f"unknown backend (CREW_BACKEND) {settings.backend!r}: choose one of "
                                f"{', '.join(backend_names())}")
        return _chosen(kind, await kind.open(settings, False), settings)
    reasons: list[str] = []
    for kind in (k for k in _REGISTRY.values() if k.auto):
        try:
            chosen = _chosen(kind, await kind.open(settings, True), settings)
        except BackendUnavailable as exc:
            if kind.name == "ollama" and wants_ollama(settings):
                # Configured or installed: a stopped Ollama is a mistake to report, not a reason
                # to spend minutes on the small embedded model.
                raise BackendError(
                    f"cannot reach Ollama at {settings.ollama_host}: start it with `ollama serve` (or "
                    "open the Ollama app), or run on the small embedded model with --backend embedded"
                ) from None
            reasons.append(str(exc))
            continue
        if reasons:
            chosen = replace(chosen, fallback=f"using the {kind.name} backend: {' and '.join(reasons)}")
        return chosen
    raise BackendError(f"no model backend: {' and '.join(reasons) or 'none is registered'}")


def wants_ollama(settings: Settings) -> bool:
    """The user pointed crew at Ollama (CREW_OLLAMA_HOST, OLLAMA_HOST or crew.toml), or it is
    installed here (`ollama` on PATH)."""
    return ("ollama_host" in settings.model_fields_set or bool(os.environ.get("OLLAMA_HOST"))
            or shutil.which("ollama") is not None)


def _chosen(kind: BackendKind, backend: Backend, settings: Settings) -> BackendChoice:
    roles = settings.roles()
    adapted = kind.adapt(roles) if kind.adapt is not None else roles
    served = bool(getattr(backend, "crew_server", False))
    return BackendChoice(kind, backend, MappingProxyType(dict(adapted)), served)


# -- the backends crew ships -----------------------------------------------------------------


async def _open_ollama(settings: Settings, probe: bool) -> Backend:
    from crew.backends.ollama import OllamaBackend
    from crew.errors import OllamaUnreachable

    backend = OllamaBackend(settings.ollama_host, keep_alive_after=settings.keep_alive_after,
                            unload_timeout=settings.load_timeout_s, lease_s=settings.lease_s)
    try:
        backend.crew_server = await backend.served()
    except OllamaUnreachable:
        if probe:
            await backend.aclose()
            raise BackendUnavailable(
                f"Ollama does not answer at {settings.ollama_host} (start it with `ollama serve`)"
            ) from None
    except BackendError:
        if probe:
            await backend.aclose()
            raise
        # Named explicitly: the first real request reports what is wrong with the host.
    return backend


async def _open_embedded(settings: Settings, probe: bool) -> Backend:
    from crew.backends.embedded import INSTALL_HINT, EmbeddedBackend, embedded_available

    if probe and not embedded_available():
        raise BackendUnavailable(f"the embedded backend is not installed ({INSTALL_HINT})")
    return EmbeddedBackend()


def _embedded_roles(roles: Mapping[Role, RoleSettings]) -> dict[Role, RoleSettings]:
    # Ollama tags mean nothing in-process: such roles run the bundled small model.
    from crew.backends.embedded import role_settings

    return {role: role_settings(rs) for role, rs in roles.items()}


register(BackendKind("ollama", _open_ollama, shared=True, auto=True))
register(BackendKind("embedded", _open_embedded, adapt=_embedded_roles, auto=True))
