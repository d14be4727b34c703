"""The command line: parse, call one coroutine, render, exit.

This is the only module that prints. Errors become one line on stderr and an exit code from
`EXIT_CODES`; set CREW_RAISE_ERRORS=1 to see the traceback instead. AutoGen is imported only
inside the commands that run a team, so `crew --help` and `crew ps` start fast.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from crew import __version__
from crew.errors import (
    BackendError,
    BudgetError,
    CrewError,
    InputError,
    SettingsError,
    WorkspaceError,
)

EXIT_OK = 0
EXIT_NOT_APPROVED = 1
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130

# The one table from error to exit code; the most specific class listed first wins.
EXIT_CODES: list[tuple[type[BaseException], int]] = [
    (SettingsError, EXIT_ERROR),
    (InputError, EXIT_ERROR),
    (BackendError, EXIT_ERROR),
    (BudgetError, EXIT_ERROR),
    (WorkspaceError, EXIT_ERROR),
    (CrewError, EXIT_ERROR),
    (KeyboardInterrupt, EXIT_INTERRUPTED),
]


def exit_code(exc: BaseException) -> int:
    return next((code for cls, code in EXIT_CODES if isinstance(exc, cls)), EXIT_ERROR)


def _gb(n: int) -> str:
    return f"{n / 1e9:.1f} GB"


# -- commands -------------------------------------------------------------------------------


def cmd_ps(args: argparse.Namespace) -> int:
    from crew.memory import resolve_budget
    from crew.ollama_backend import OllamaBackend
    from crew.settings import load_settings

    settings = load_settings()
    budget = resolve_budget(settings.memory_budget_gb)

    async def read() -> list[Any]:
        backend = OllamaBackend(settings.ollama_host)
        try:
            return await backend.running()
        finally:
            await backend.aclose()

    running = asyncio.run(read())
    used = sum(r.size for r in running)
    if args.json_:
        print(json.dumps({
            "host": settings.ollama_host,
            "budget": {"bytes": budget.bytes, "source": budget.source},
            "used": used,
            "models": [
                {"name": r.name, "size": r.size, "size_vram": r.size_vram,
                 "context_length": r.context_length}
                for r in running
            ],
        }, indent=2))
        return EXIT_OK
    rows: list[tuple[str, ...]] = [("NAME", "SIZE", "ON GPU", "CONTEXT")]
    for r in running:
        share = f"{100 * r.size_vram / r.size:.0f}%" if r.size else "-"
        rows.append((r.name, _gb(r.size), share, str(r.context_length or "-")))
    _table(rows)
    print(f"\n{_gb(used)} of {_gb(budget.bytes)} budget ({budget.source})")
    return EXIT_OK


def cmd_config(args: argparse.Namespace) -> int:
    from crew.memory import resolve_budget
    from crew.settings import load_settings

    settings = load_settings()
    budget = resolve_budget(settings.memory_budget_gb)
    data = settings.model_dump(mode="json")
    data["memory_budget"] = {"bytes": budget.bytes, "source": budget.source}
    if args.json_:
        print(json.dumps(data, indent=2))
        return EXIT_OK
    print(f"ollama_host        {settings.ollama_host}")
    print(f"memory budget      {_gb(budget.bytes)} ({budget.source})")
    print(f"partial offload    {'allowed' if settings.allow_partial_offload else 'refused'}")
    rows: list[tuple[str, ...]] = [("ROLE", "MODEL", "NUM_CTX", "TEMP", "THINK", "TIMEOUT")]
    for role, rs in settings.roles().items():
        think = "auto" if rs.think is None else str(rs.think).lower()
        rows.append((role, rs.model, str(rs.num_ctx), f"{rs.temperature:g}", think, f"{rs.timeout_s:g}s"))
    print()
    _table(rows)
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from crew.run import run_spec
    from crew.settings import load_settings

    settings = load_settings()
    renderer = JsonRenderer() if args.json_ else TerminalRenderer(settings)
    try:
        outcome = asyncio.run(run_spec(
            settings, args.spec, render=renderer, workspace_path=args.workspace, repo=args.repo,
            resume=args.resume, max_turns=args.max_turns,
        ))
    except KeyboardInterrupt:
        where = renderer.workspace or "its workspace"
        print(f"crew: interrupted; state saved. Continue with `crew run --resume {where}`",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    if not args.json_:
        _print_summary(outcome)
    return EXIT_OK if outcome.approved else EXIT_NOT_APPROVED


def _print_summary(outcome: Any) -> None:
    rows: list[tuple[str, ...]] = [("AGENT", "TURNS", "PROMPT", "COMPLETION", "GEN S", "LOADS", "LOAD S")]
    for name, s in outcome.agents.items():
        rows.append((name, str(s.turns), str(s.prompt_tokens), str(s.completion_tokens),
                     f"{s.generation_seconds:.1f}", str(s.loads), f"{s.load_seconds:.1f}"))
    print()
    _table(rows)
    verdict = "APPROVED" if outcome.approved else "NOT APPROVED"
    print(f"\n{verdict} ({outcome.stop_reason}); workspace {outcome.workspace.root}")


class JsonRenderer:
    """--json: every event as one JSON line on stdout."""

    def __init__(self) -> None:
        self.workspace: str | None = None

    def __call__(self, event: Any) -> None:
        if event.type == "run_started":
            self.workspace = event.workspace
        print(event.model_dump_json(), flush=True)


class TerminalRenderer:
    """Content on stdout as it streams; routing and residency notices on stderr."""

    def __init__(self, settings: Any) -> None:
        self.workspace: str | None = None
        self._models = {name: settings.role(role).model for role, name in
                        (("architect", "Architect"), ("coder", "Coder"), ("reviewer", "Reviewer"))}
        self._speaking: str | None = None
        self._midline = False
        self._streamed_for: str | None = None

    def _header(self, source: str) -> None:
        if self._speaking != source:
            self._end_line()
            model = self._models.get(source)
            print(f"\n── {source}{f' ({model})' if model else ''} ──", flush=True)
            self._speaking = source

    def _end_line(self) -> None:
        if self._midline:
            print(flush=True)
            self._midline = False

    def _note(self, text: str) -> None:
        self._end_line()
        print(text, file=sys.stderr, flush=True)

    def __call__(self, event: Any) -> None:
        kind = event.type
        if kind == "run_started":
            self.workspace = event.workspace
            self._note(f"workspace {event.workspace}{' (resumed)' if event.resumed else ''}")
        elif kind == "chunk":
            self._header(event.source)
            print(event.text, end="", flush=True)
            self._midline = not event.text.endswith("\n")
            self._streamed_for = event.source
        elif kind == "message":
            if event.source == "user":
                self._note(f"task: {event.content.strip().splitlines()[0][:100]}")
            elif self._streamed_for == event.source:
                self._end_line()  # already shown as it streamed
            else:
                self._header(event.source)
                print(event.content, flush=True)
            self._streamed_for = None
        elif kind == "tool_call":
            self._note(f"  ↳ {event.source} calls {event.name}({event.arguments[:120]})")
        elif kind == "tool_result" and event.is_error:
            self._note(f"  ✗ {event.name}: {event.content[:200]}")
        elif kind == "routing":
            self._note(f"→ {event.speaker}: {event.reason}")
        elif kind == "model_load_started":
            self._note(f"loading {event.model} ({_gb(event.bytes)}) ...")
        elif kind == "model_loaded":
            self._note(f"loaded {event.model} in {event.seconds:.1f} s")
        elif kind == "model_unloaded":
            why = f"evicted for {event.evicted_for}" if event.evicted_for else event.reason
            self._note(f"unloaded {event.model} ({_gb(event.bytes)}, {why})")
        elif kind in ("residency_warning",):
            self._note(f"warning: {event.message}")
        elif kind == "residency_waiting":
            self._note(f"waiting for memory: {event.model} (held by {', '.join(event.blocked_by)})")


def _table(rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


# -- parsing --------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="crew",
        description="A local-first software team of LLM agents (Architect, Coder, Reviewer) "
        "sharing one machine's memory through Ollama.",
        epilog="Exit codes: 0 success, 1 not approved / cannot run, 2 error, 130 interrupted. "
        "Settings come from CREW_* environment variables and ./crew.toml.",
    )
    parser.add_argument("--version", action="version", version=f"crew {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str, func: Callable[[argparse.Namespace], int], help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(func=func)
        return p

    p = add("run", cmd_run, "run the team on a spec: code, crew.patch and records in a workspace")
    p.add_argument("spec", nargs="?", type=Path, help="the spec (Markdown or text)")
    p.add_argument("--workspace", type=Path, help="where to work (default: workspaces/<id>)")
    p.add_argument("--repo", type=Path, help="work on a new branch of this git repository")
    p.add_argument("--resume", type=Path, metavar="WORKSPACE", help="continue the run in WORKSPACE")
    p.add_argument("--max-turns", type=int, help="stop after this many agent turns")
    p.add_argument("--json", dest="json_", action="store_true", help="print events as JSON lines")
    p = add("ps", cmd_ps, "show the models resident in Ollama against the memory budget")
    p.add_argument("--json", dest="json_", action="store_true", help="print JSON")
    p = add("config", cmd_config, "show the effective settings (environment + crew.toml)")
    p.add_argument("--json", dest="json_", action="store_true", help="print JSON")
    return parser


def _setup_logging() -> None:
    # AutoGen logs every agent failure with a traceback; crew reports it as one line instead.
    # CREW_LOG=debug|info|warning sends log lines (with the seed's [MODEL]/[ROUTING]) to stderr.
    level = os.environ.get("CREW_LOG", "").upper()
    root = logging.getLogger()
    if level in ("DEBUG", "INFO", "WARNING", "ERROR"):
        logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    elif not root.handlers:
        root.addHandler(logging.NullHandler())


def main(argv: list[str] | None = None) -> int:
    _setup_logging()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_OK
    try:
        code: int = args.func(args)
        return code
    except (CrewError, KeyboardInterrupt) as exc:
        if os.environ.get("CREW_RAISE_ERRORS"):
            raise
        message = str(exc) or "interrupted"
        print(f"crew: {message}", file=sys.stderr)
        return exit_code(exc)
