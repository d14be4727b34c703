"""The Coder's edit format on the embedded model: tool calls against fenced blocks, in one run.

    python bench/edit_format.py [tries] [max_turns]

Runs `examples/hello/spec.md` on the embedded backend (SmolLM2-135M through llama.cpp, the
`embedded` extra) with the Coder's edit_format set to `tools`, `blocks` and `both`, alternating,
`tries` times each (default 3), and reports per format: runs that wrote hello.py, files written,
recovered calls, agent turns, seconds, approvals. Temperature 0 with a different seed per try.
A measurement, not a test: the small model is weak, so what counts is the difference.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from crew.commands.run import run_spec  # noqa: E402
from crew.settings import load_settings  # noqa: E402

FORMATS = ("tools", "blocks", "both")


def one(edit_format: str, seed: int, max_turns: int, folder: Path) -> dict[str, float]:
    role = {"model": "smollm2", "num_ctx": 4096, "temperature": 0.0, "seed": seed}
    settings = load_settings(
        backend="embedded", max_turns=max_turns, workspaces_dir=folder, state_dir=folder / "state",
        architect=role, reviewer=role, coder={**role, "edit_format": edit_format},
    )
    started = time.monotonic()
    outcome = asyncio.run(run_spec(settings, ROOT / "examples" / "hello" / "spec.md", render=lambda e: None))
    seconds = time.monotonic() - started
    summary = json.loads((outcome.workspace.root / "summary.json").read_text())
    written = [p for p in outcome.workspace.files() if p != "spec.md"]
    return {
        "hello.py": float((outcome.workspace.root / "hello.py").is_file()),
        "files": float(len(written)),
        "recovered": float(summary["totals"]["recovered_calls"]),
        "turns": float(sum(a["turns"] for a in summary["agents"].values())),
        "seconds": seconds,
        "approved": float(outcome.approved),
    }


def main() -> None:
    tries = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    max_turns = int(sys.argv[2]) if len(sys.argv) > 2 else 6
    results: dict[str, list[dict[str, float]]] = {f: [] for f in FORMATS}
    with tempfile.TemporaryDirectory() as tmp:
        for attempt in range(tries):
            for edit_format in FORMATS:  # alternating, so machine noise hits all alike
                results[edit_format].append(one(edit_format, 7 + attempt, max_turns, Path(tmp) / edit_format))
    print(f"{tries} tries each, max {max_turns} turns, examples/hello on SmolLM2-135M\n")
    print("| edit_format | runs with hello.py | files written (mean) | recovered calls (mean) "
          "| turns (mean) | seconds (median) | approved |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for edit_format, runs in results.items():
        print(f"| {edit_format} | {sum(r['hello.py'] for r in runs):.0f}/{len(runs)} "
              f"| {statistics.fmean(r['files'] for r in runs):.1f} "
              f"| {statistics.fmean(r['recovered'] for r in runs):.1f} "
              f"| {statistics.fmean(r['turns'] for r in runs):.1f} "
              f"| {statistics.median(r['seconds'] for r in runs):.1f} "
              f"| {sum(r['approved'] for r in runs):.0f}/{len(runs)} |")


if __name__ == "__main__":
    main()
