"""Past runs: what `workspaces/` holds, read from each run's summary.json.

A run that crashed, or is still going, may have no summary or a partial one: it is listed as
incomplete with what can be read, never as an error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crew.errors import InputError


@dataclass
class RunRecord:
    id: str
    path: str
    complete: bool
    spec: str | None = None
    started: float | None = None
    seconds: float | None = None
    verdict: str | None = None
    stop_reason: str | None = None
    loads: int | None = None
    tokens: int | None = None
    problem: str | None = None


def read_run(folder: Path) -> RunRecord:
    record = RunRecord(id=folder.name, path=str(folder), complete=False)
    summary = folder / "summary.json"
    if not summary.is_file() or summary.stat().st_size == 0:  # made empty when the run began
        record.problem = "no summary.json (still running, or stopped before writing it)"
        record.started = folder.stat().st_mtime
        return record
    try:
        data: dict[str, Any] = json.loads(summary.read_text())
        totals = data.get("totals") or {}
        record.spec = data.get("spec")
        started = float(data["started"])
        if not 0 <= started < 32503680000:  # before the year 3000: a time, not garbage
            raise ValueError(f"started {started!r} is not a time")
        record.started = started
        record.seconds = float(data["seconds"])
        record.verdict = str(data["verdict"])
        record.stop_reason = data.get("stop_reason")
        record.loads = int(totals["loads"])
        record.tokens = int(totals["prompt_tokens"]) + int(totals["completion_tokens"])
        record.complete = True
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        record.problem = f"summary.json is broken or partial ({type(exc).__name__}: {exc})"
        record.started = record.started or folder.stat().st_mtime
    return record


def list_runs(workspaces: Path) -> list[RunRecord]:
    """Every run folder, newest first."""
    if not workspaces.is_dir():
        return []
    runs = [read_run(p) for p in workspaces.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return sorted(runs, key=lambda r: r.started or 0.0, reverse=True)


def find_run(workspaces: Path, run_id: str) -> Path:
    folder = workspaces / run_id
    if run_id and "/" not in run_id and folder.is_dir():
        return folder
    known = [p.name for p in workspaces.iterdir() if p.is_dir()] if workspaces.is_dir() else []
    hint = f"; known runs: {', '.join(sorted(known)[-3:])}" if known else ""
    raise InputError(f"no run {run_id!r} in {workspaces}: `crew runs` lists them{hint}")
