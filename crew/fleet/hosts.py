"""The hosts of a fleet, each with the settings of the `crew serve` that owns it."""

from __future__ import annotations

from crew.errors import SettingsError
from crew.settings import HostSettings, Settings


def host_settings(settings: Settings, host: HostSettings) -> Settings:
    """The settings of the `crew serve` that owns `host`: its URL and budget; no token (the
    front checks it), no other hosts."""
    budget = host.memory_budget_gb or settings.memory_budget_gb
    if budget is None:
        raise SettingsError(
            f"host {host.label} has no memory budget: give it memory_budget_gb in its [[hosts]] "
            "table in crew.toml, or set CREW_MEMORY_BUDGET_GB for every host"
        )
    return settings.model_copy(update={"ollama_host": host.url, "memory_budget_gb": budget,
                                       "serve_token": None, "hosts": []})


def check_hosts(settings: Settings) -> list[HostSettings]:
    """The fleet's hosts, each with a budget; SettingsError naming what to set otherwise."""
    if not settings.hosts:
        raise SettingsError("crew serve --ray needs the Ollama hosts: set CREW_OLLAMA_HOSTS "
                            "(comma-separated URLs) or add [[hosts]] tables to crew.toml")
    for host in settings.hosts:
        host_settings(settings, host)
    return list(settings.hosts)
