"""Tables and JSON as the report commands print them, and a run's closing summary."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from crew.safe_text import safe_text


def emit_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=json_value))


def json_value(value: Any) -> Any:
    # Times as ISO 8601 (`2026-11-28T14:02:02+00:00`), which every JSON reader can parse back.
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


def print_summary(outcome: Any) -> None:
    rows: list[tuple[str, ...]] = [("AGENT", "TURNS", "PROMPT", "COMPLETION", "GEN S", "LOADS", "LOAD S")]
    for name, s in outcome.agents.items():
        rows.append((name, str(s.turns), str(s.prompt_tokens), str(s.completion_tokens),
                     f"{s.generation_seconds:.1f}", str(s.loads), f"{s.load_seconds:.1f}"))
    print()
    table(rows)
    verdict = "APPROVED" if outcome.approved else "NOT APPROVED"
    print(f"\n{verdict} ({outcome.stop_reason}); workspace {outcome.workspace.root}")
    if outcome.left_out:  # names the agents chose: shown escaped
        print(safe_text(f"left out of crew.patch: {'; '.join(outcome.left_out)}"))


def table(rows: Sequence[tuple[str, ...]]) -> None:
    rows = [tuple(safe_text(cell) for cell in row) for row in rows]  # run folders, specs, model names
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
