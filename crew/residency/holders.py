"""Which crew processes keep which models, on disk where `crew ps` can read it.

Ollama's `/api/ps` says what is resident and until when, but not since when or for whom. Each
crew process that loads models keeps a small file, `<state_dir>/holders/<pid>-<n>.json`: the
Ollama host, the run it serves, and when it loaded each model it keeps. The file follows the
manager's events and is gone once the process has handed its models back. A process that died
without cleaning up is recognised by its pid and start time, and its file is removed.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from crew.files import write_json

if TYPE_CHECKING:  # crew ps reads holder files without building the event models
    from crew.backends.base import Resident
    from crew.events import Event

log = logging.getLogger("crew.residency.holders")


@dataclass(frozen=True)
class Holder:
    pid: int
    run: str
    """What the process is doing: a workspace id, or the command."""
    since: float
    """When it loaded the model (Unix seconds)."""


class HolderRecord:
    """This process's holder file, kept up to date from the residency manager's events."""

    def __init__(self, folder: Path, host: str, run: str) -> None:
        self._folder = folder
        # One file per manager: a process normally has one, but two must not overwrite each other.
        self._path = folder / f"{os.getpid()}-{id(self):x}.json"
        self._host = host
        self._run = run
        self._started = psutil.Process().create_time()
        self._models: dict[str, float] = {}

    def held_elsewhere(self) -> frozenset[str]:
        """Models that other live crew processes keep on this host."""
        return frozenset(holders(self._folder, self._host, skip=self._path))

    def __call__(self, event: Event) -> None:
        if event.type == "model_loaded":
            self._models[event.model] = event.ts
        elif event.type in ("model_unloaded", "model_vanished", "model_released"):
            if self._models.pop(event.model, None) is None:
                return
        else:
            return
        self._write()

    def _write(self) -> None:
        # A few hundred bytes at each load or unload, seconds apart: not worth a thread. And
        # `crew ps` is only informed by this file, so a failure to write never stops a run.
        try:
            if not self._models:
                self._path.unlink(missing_ok=True)
                return
            self._folder.mkdir(parents=True, exist_ok=True)
            data = {"pid": os.getpid(), "started": self._started, "host": self._host,
                    "run": self._run, "models": self._models}
            write_json(self._path, data, indent=None)
        except OSError as exc:
            log.debug("could not write %s: %s", self._path, exc)


def holders(folder: Path, host: str, skip: Path | None = None) -> dict[str, Holder]:
    """The live crew processes keeping models on `host`, by model (leaving out `skip`'s file)."""
    found: dict[str, Holder] = {}
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else ():
        if path == skip:
            continue
        data = _read(path)
        if data is None:
            continue
        if not _alive(int(data["pid"]), float(data["started"])):
            path.unlink(missing_ok=True)  # its process ended without handing its models back
            continue
        if data["host"] != host:
            continue
        for model, since in data["models"].items():
            found[model] = Holder(int(data["pid"]), str(data["run"]), float(since))
    return found


@dataclass(frozen=True)
class HeldModel:
    """A resident model as `crew ps` shows it: Ollama's facts and, if known, who keeps it."""

    name: str
    size: int
    size_vram: int
    gpu_share: float | None
    context_length: int | None
    expires_at: datetime | None
    kept_by_crew: bool
    """Kept by a live crew, or pinned forever (keep_alive -1, which Ollama reports as an expiry
    centuries away: crews before leases did that)."""
    since: datetime | None
    """When a running crew loaded it (Ollama does not say)."""
    held_by: dict[str, Any] | None
    """The crew process and run that keep it, if one is alive."""
    host: str | None = None
    """Which host of a fleet holds it, behind `crew serve --ray`."""

    @property
    def pinned_forever(self) -> bool:
        return bool(self.expires_at and self.expires_at > datetime.now(UTC) + timedelta(days=3650))

    @property
    def orphaned(self) -> bool:
        """Pinned forever by a crew that ended without handing it back (killed?)."""
        return self.pinned_forever and self.held_by is None


def who_holds(running: Sequence[Resident], kept: Mapping[str, Holder]) -> list[HeldModel]:
    """What is resident, with the live crew process keeping each model where there is one."""
    forever = datetime.now(UTC) + timedelta(days=3650)
    models: list[HeldModel] = []
    for r in running:
        holder = kept.get(r.name)
        models.append(HeldModel(
            name=r.name, size=r.size, size_vram=r.size_vram,
            gpu_share=round(r.size_vram / r.size, 3) if r.size else None,
            context_length=r.context_length, expires_at=r.expires_at,
            kept_by_crew=holder is not None or bool(r.expires_at and r.expires_at > forever),
            since=datetime.fromtimestamp(holder.since, UTC) if holder else None,
            held_by={"pid": holder.pid, "run": holder.run} if holder else None, host=r.host,
        ))
    return models


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
        if isinstance(data, dict) and {"pid", "started", "host", "run", "models"} <= data.keys():
            return data
    except (OSError, ValueError):
        pass
    return None  # being replaced right now, or not ours: skip it, never fail `crew ps`


def _alive(pid: int, started: float) -> bool:
    # A pid alone can be reused by an unrelated process; its start time cannot.
    try:
        return bool(abs(psutil.Process(pid).create_time() - started) < 1.0)
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return False
