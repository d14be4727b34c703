"""A run's residency over time, from its `events.jsonl`: which models were resident when, their
loads and waits, and which agent was speaking. Drawn as text for the terminal (`crew runs show
ID --timeline`), or as a PNG when matplotlib is installed. The text shows model names and
reasons through `safe_text`: events.jsonl is read from a workspace folder, so it is untrusted."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from crew.errors import InputError
from crew.events import (
    LOADING,
    RESIDENT,
    Event,
    ModelLoaded,
    ModelLoadStarted,
    ModelReleased,
    ModelUnloaded,
    ModelVanished,
    ResidencyWaiting,
    RoutingDecision,
    RunFinished,
    residency_change,
)
from crew.events import read_events as events_in
from crew.safe_text import safe_text

MARKS = {LOADING: "▒", RESIDENT: "█"}


@dataclass(frozen=True)
class Span:
    start: float
    end: float
    kind: str
    """loading, resident, or the speaker's name for the speaking row."""


@dataclass
class Timeline:
    start: float
    end: float
    models: dict[str, list[Span]] = field(default_factory=dict)
    speaking: list[Span] = field(default_factory=list)
    notes: list[tuple[float, str]] = field(default_factory=list)
    """(seconds from the start, what happened): loads, unloads, waits."""


def read_events(folder: Path) -> list[Event]:
    path = folder / "events.jsonl"
    if not path.is_file():
        raise InputError(f"{folder} has no events.jsonl: nothing to draw")
    events = events_in(path)
    if not events:
        raise InputError(f"{path} holds no events: nothing to draw")
    return events


def build(events: list[Event]) -> Timeline:
    start = min(e.ts for e in events)
    end = max(e.ts for e in events)
    line = Timeline(start, end)
    since: dict[str, tuple[float, str]] = {}

    def close(model: str, at: float) -> None:
        began = since.pop(model, None)
        if began is not None:
            line.models.setdefault(model, []).append(Span(began[0], at, began[1]))

    speaker: tuple[float, str] | None = None
    for event in sorted(events, key=lambda e: e.ts):
        at = event.ts - start
        if (change := residency_change(event)) is not None:
            model, state = change
            close(model, event.ts)
            if state is not None:
                since[model] = (event.ts, state)
        if isinstance(event, ModelLoadStarted):
            line.notes.append((at, f"load {event.model} ({event.bytes / 1e9:.1f} GB): {event.reason}"))
        elif isinstance(event, ModelLoaded):
            line.notes.append((at, f"loaded {event.model} in {event.seconds:.1f} s"))
        elif isinstance(event, ModelUnloaded | ModelVanished | ModelReleased):
            what = {"model_unloaded": "unloaded", "model_vanished": "gone (someone else)",
                    "model_released": "handed back"}[event.type]
            reason = f": {event.reason}" if isinstance(event, ModelUnloaded) else ""
            line.notes.append((at, f"{what} {event.model}{reason}"))
        elif isinstance(event, ResidencyWaiting):
            line.notes.append((at, f"wait for {event.model}: held by {', '.join(event.blocked_by)}"))
        elif isinstance(event, RoutingDecision):
            if speaker is not None:
                line.speaking.append(Span(speaker[0], event.ts, speaker[1]))
            speaker = (event.ts, event.speaker)
        elif isinstance(event, RunFinished) and speaker is not None:
            line.speaking.append(Span(speaker[0], event.ts, speaker[1]))
            speaker = None
    if speaker is not None:
        line.speaking.append(Span(speaker[0], end, speaker[1]))
    for model in list(since):
        close(model, end)
    return line


def render(line: Timeline, width: int = 60) -> list[str]:
    """The timeline as text: a row per model and one of speakers, then what happened, when."""
    total = max(line.end - line.start, 1e-9)
    names = {model: safe_text(model) for model in line.models}
    label = max([len(m) for m in names.values()] + [len("speaking")])

    def column(at: float) -> int:
        return min(width - 1, int((at - line.start) / total * width))

    rows = [f"{'':<{label}}  0 s{'':<{width - 10}}{total:>7.1f} s"]
    cells = [" "] * width
    for span in line.speaking:
        for i in range(column(span.start), column(span.end) + 1):
            cells[i] = safe_text(span.kind[:1])[:1]
    rows.append(f"{'speaking':<{label}}  {''.join(cells)}")
    for model, spans in line.models.items():
        cells = [" "] * width
        for span in spans:
            for i in range(column(span.start), column(span.end) + 1):
                if cells[i] != MARKS[RESIDENT]:
                    cells[i] = MARKS[span.kind]
        rows.append(f"{names[model]:<{label}}  {''.join(cells)}")
    rows.append(f"{'':<{label}}  {MARKS[RESIDENT]} resident  {MARKS[LOADING]} loading  "
                "letters: who speaks (A, C, R, Y = you)")
    rows.append("")
    rows += [f"{at:8.1f} s  {safe_text(text)}" for at, text in line.notes]
    return rows


def chart(line: Timeline, path: Path) -> None:
    """The timeline as a PNG; InputError (one line) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InputError("--png needs matplotlib: pip install matplotlib (the text timeline needs "
                         "nothing)") from None
    names = list(line.models)
    figure, axes = plt.subplots(figsize=(10, 1 + 0.5 * (len(names) + 1)))
    colours = {LOADING: "#f0b429", RESIDENT: "#2f80ed"}
    for row, model in enumerate(names, start=1):
        for span in line.models[model]:
            axes.broken_barh([(span.start - line.start, span.end - span.start)], (row - 0.4, 0.8),
                             color=colours[span.kind])
    for span in line.speaking:
        axes.broken_barh([(span.start - line.start, span.end - span.start)], (-0.4, 0.8), color="#999")
        axes.text(span.start - line.start, 0, span.kind[:1], va="center")
    axes.set_yticks(range(len(names) + 1), ["speaking", *names])
    axes.set_xlabel("seconds")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
