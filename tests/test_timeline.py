"""`crew runs show ID --timeline`: a recorded run's residency over time, as its events say."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from crew.reports.timeline import MARKS, RESIDENT, build, read_events
from crew.terminal.cli import main
from tests.fake_ollama import GB, FakeOllama
from tests.helpers import ARCHITECT, CODER, REVIEWER
from tests.test_run import run_in_process, script_happy_path, write_spec


def test_the_timeline_of_a_run_shows_its_loads_waits_and_speakers(
    ollama: FakeOllama, clean_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ollama.capacity = 60 * GB  # the Architect alone, or the Coder and the Reviewer together
    script_happy_path(ollama)
    outcome, _ = run_in_process(ollama, write_spec(clean_env))
    root = outcome.workspace.root
    events = [json.loads(line) for line in (root / "events.jsonl").read_text().splitlines()]
    loaded = [e["model"] for e in events if e["type"] == "model_loaded"]
    unloaded = [e["model"] for e in events if e["type"] == "model_unloaded"]
    line = build(read_events(root))
    # Every load and unload of the records is a span boundary of the timeline.
    assert [m for m in line.models] == list(dict.fromkeys(loaded))
    assert sum(1 for spans in line.models.values() for s in spans if s.kind == RESIDENT) == len(loaded)
    architect = line.models[ARCHITECT]
    assert architect[-1].end < line.models[CODER][-1].start  # evicted before the Coder loaded
    assert [s.kind for s in line.speaking][:3] == ["Architect", "Coder", "Reviewer"]
    capsys.readouterr()
    assert main(["runs", "show", root.name, "--timeline"]) == 0
    text = capsys.readouterr().out
    rows = {row.split()[0]: row for row in text.splitlines() if row.split()}
    for model in (ARCHITECT, CODER, REVIEWER):
        assert MARKS[RESIDENT] in rows[model]
    assert rows["speaking"].split(None, 1)[1].startswith("A")
    assert sum(f"loaded {m}" in text for m in loaded) == len(set(loaded))
    assert all(f"unloaded {m}" in text for m in unloaded) and unloaded == [ARCHITECT]


def test_a_run_without_events_is_one_line(clean_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = clean_env / "workspaces" / "20260101-000000-abcdef"
    folder.mkdir(parents=True)
    (folder / "workspace.json").write_text('{"base": "' + "0" * 40 + '", "mode": "run"}')
    assert main(["runs", "show", folder.name, "--timeline"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "no events.jsonl" in err[0]
