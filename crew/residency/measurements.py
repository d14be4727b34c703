"""What crew has measured of models on this machine, kept from one run to the next.

A model's resident size is only estimated until it loads (file size plus KV cache plus a
margin), and its load time only guessed. After a load both are known exactly. They are kept in
`<state_dir>/measured.json` by Ollama host, model and `num_ctx`, with the model's file size, so
that a re-pulled model is measured afresh. The next run's manager starts from them: no margin
that makes two models look too big to share the budget, and eviction weighs real reload times.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crew.files import write_json

log = logging.getLogger("crew.residency.measurements")


@dataclass(frozen=True)
class Measurement:
    bytes: int
    load_seconds: float


class Measurements:
    """The measurements for one backend, read once and written at each load."""

    def __init__(self, state_dir: Path, host: str, *, writable: bool = True) -> None:
        self._path = state_dir / "measured.json"
        self._host = host
        self._writable = writable  # a simulation (`crew plan`) reads them but measures nothing
        self._data = _read(self._path)

    def recall(self, model: str, num_ctx: int, file_size: int) -> Measurement | None:
        entry = self._host_data().get(_key(model, num_ctx))
        if not isinstance(entry, dict) or entry.get("file_size") != file_size:
            return None
        try:
            return Measurement(int(entry["bytes"]), float(entry["load_seconds"]))
        except (KeyError, TypeError, ValueError):
            return None

    def remember(self, model: str, num_ctx: int, file_size: int, measured: Measurement) -> None:
        # A small read-modify-write at each load (loads are seconds apart). Another crew process
        # may write in between and one of two measurements is lost: it is a cache, remeasured
        # at the next load. A failure to write never stops a run.
        if not self._writable:
            return
        try:
            self._data = _read(self._path)
            self._data[self._host] = self._host_data()
            self._data[self._host][_key(model, num_ctx)] = {
                "bytes": measured.bytes, "load_seconds": round(measured.load_seconds, 3),
                "file_size": file_size,
            }
            self._path.parent.mkdir(parents=True, exist_ok=True)
            write_json(self._path, self._data, indent=1, sort_keys=True)
        except OSError as exc:
            log.debug("could not write %s: %s", self._path, exc)


    def _host_data(self) -> dict[str, Any]:
        found = self._data.get(self._host)
        return found if isinstance(found, dict) else {}


def _key(model: str, num_ctx: int) -> str:
    return f"{model} num_ctx={num_ctx}"


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}  # none yet, or broken: start over rather than fail
