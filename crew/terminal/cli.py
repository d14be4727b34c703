"""The command line: parse, call one coroutine, render, exit.

This module and the renderers it picks (`renderers`, `rich_renderer`) are the only code that
prints. Errors become one line on stderr and an exit code from
`EXIT_CODES`; set CREW_RAISE_ERRORS=1 to see the traceback instead. AutoGen is imported only
inside the commands that run a team, so `crew --help` and `crew ps` start fast.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from contextlib import nullcontext
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from crew import __version__
from crew.errors import (
    BackendError,
    BudgetError,
    CrewError,
    InputError,
    SettingsError,
    WorkspaceError,
)
from crew.terminal.renderers import JsonRenderer, Renderer, for_terminal, gb, rich_wanted

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
    if isinstance(exc, Terminated):
        return 128 + exc.signum  # 143 for SIGTERM, 129 for SIGHUP, as a shell reports them
    return next((code for cls, code in EXIT_CODES if isinstance(exc, cls)), EXIT_ERROR)


T = TypeVar("T")


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP: handled as Ctrl-C is (cut, save, hand back), with its own exit code."""

    def __init__(self, signum: int) -> None:
        import signal

        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


def _arun(coroutine: Coroutine[Any, Any, T]) -> T:
    # asyncio costs ~50 ms to import here, and `crew --help` has no use for it.
    import asyncio
    import signal

    received: list[int] = []
    signals = [s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s]

    async def guarded() -> T:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None

        def stop(signum: int) -> None:
            if received:  # a second signal while crew cleans up: stop at once
                os._exit(128 + signum)
            received.append(signum)
            task.cancel()  # as asyncio.run does for Ctrl-C: the command's own cleanup runs

        for signum in signals:
            loop.add_signal_handler(signum, stop, signum)
        try:
            return await coroutine
        finally:
            for signum in signals:
                loop.remove_signal_handler(signum)

    try:
        return asyncio.run(guarded())
    except asyncio.CancelledError:
        if received:
            raise Terminated(received[0]) from None
        raise


def _arun_rendered(renderer: Renderer, coroutine: Coroutine[Any, Any, T]) -> T:
    """`_arun`, with the renderer's live area gone (and the cursor back) before anything else prints."""
    try:
        return _arun(coroutine)
    finally:
        renderer.close()


# -- commands -------------------------------------------------------------------------------


def _emit_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=_json_value))


def _json_value(value: Any) -> Any:
    # Times as ISO 8601 (`2026-11-28T14:02:02+00:00`), which every JSON reader can parse back.
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


def cmd_ps(args: argparse.Namespace) -> int:
    from crew.residency.budget import GB, resolve_budget
    from crew.settings import load_settings

    settings = load_settings()
    if not settings.hosts:
        budget = resolve_budget(settings.memory_budget_gb)
        models, used = _resident_on(settings, settings.ollama_host)
        if args.json_:
            _emit_json({"host": settings.ollama_host, "used": used, "models": [asdict(m) for m in models],
                        "budget": {"bytes": budget.bytes, "source": budget.source}})
        else:
            _print_resident(models, f"{gb(used)} of {gb(budget.bytes)} budget ({budget.source})")
        return EXIT_OK
    # Several hosts: every one is shown, one that does not answer among them; then its error.
    shown: list[dict[str, Any]] = []
    failure: CrewError | None = None
    for host in settings.hosts:
        budget_bytes = int(host.memory_budget_gb * GB) if host.memory_budget_gb else None
        budget_json = {"bytes": budget_bytes, "source": "[[hosts]]"} if budget_bytes else None
        entry: dict[str, Any] = {"name": host.label, "host": host.url, "budget": budget_json}
        if not args.json_:
            print(f"── {host.label} ({host.url}) ──")
        try:
            models, used = _resident_on(settings, host.url)
        except CrewError as exc:
            failure = failure or exc
            shown.append({**entry, "error": str(exc)})
            if not args.json_:
                print(f"does not answer: {exc}\n")
            continue
        shown.append({**entry, "used": used, "models": [asdict(m) for m in models]})
        if not args.json_:
            of = f" of {gb(budget_bytes)} budget" if budget_bytes else " resident"
            _print_resident(models, f"{gb(used)}{of}")
            print()
    if args.json_:
        _emit_json({"hosts": shown})
    if failure is not None:
        raise failure
    return EXIT_OK


def _resident_on(settings: Any, url: str) -> tuple[list[Any], int]:
    """What one Ollama host holds and who keeps it; the bytes resident."""
    from crew.backends.ollama_api import running_on
    from crew.residency.holders import holders, who_holds

    running = running_on(url)
    return who_holds(running, holders(settings.state_dir / "holders", url)), sum(r.size for r in running)


def _print_resident(models: list[Any], total: str) -> None:
    fleet = any(m.host for m in models)  # behind `crew serve --ray`: which host holds each
    rows: list[tuple[str, ...]] = [(*(("HOST",) if fleet else ()), "NAME", "SIZE", "ON GPU", "CONTEXT",
                                    "SINCE", "UNTIL", "KEPT BY")]
    for m in models:
        share = f"{100 * m.gpu_share:.0f}%" if m.gpu_share is not None else "-"
        until = "forever" if m.pinned_forever else _clock(m.expires_at)
        held = m.held_by
        by = f"crew {held['pid']} ({held['run']})" if held else "crew (exited)" if m.kept_by_crew else "-"
        rows.append((*((m.host or "-",) if fleet else ()), m.name, gb(m.size), share,
                     str(m.context_length or "-"), _clock(m.since), until, by))
    _table(rows)
    print(f"\n{total}")
    for m in models:
        if m.orphaned:
            print(f"{m.name} is pinned by a crew that ended without handing it back (killed?): "
                  f"`ollama stop {m.name}` frees it; a new crew run evicts it when it needs room")


def _clock(moment: Any) -> str:
    return moment.astimezone().strftime("%H:%M:%S") if moment else "-"


def cmd_doctor(args: argparse.Namespace) -> int:
    from crew.errors import OllamaUnreachable
    from crew.reports.doctor import run_checkup, unreachable
    from crew.residency.budget import resolve_budget
    from crew.settings import load_settings

    settings = load_settings()
    budget = resolve_budget(settings.memory_budget_gb)
    try:
        checkup = _arun(run_checkup(settings, budget))
    except OllamaUnreachable as exc:
        checkup = unreachable(settings, budget, exc)
    code = EXIT_OK if checkup.can_run else EXIT_ERROR if not checkup.reachable else EXIT_NOT_APPROVED
    if args.json_:
        from dataclasses import asdict

        _emit_json({**asdict(checkup), "can_run": checkup.can_run, "exit_code": code})
        return code
    mark = {True: "ok", False: "NO", None: "?"}
    print(f"ollama   {checkup.host}: " + (f"reachable, version {checkup.version}" if checkup.reachable
                                          else "NOT reachable"))
    print(f"budget   {gb(budget.bytes)} ({budget.source})")
    if checkup.sandbox:
        print(f"sandbox  {checkup.sandbox}")
    if checkup.roles:
        rows: list[tuple[str, ...]] = [("ROLE", "MODEL", "PULLED", "THINK", "NUM_CTX", "SIZE", "FITS")]
        for c in checkup.roles:
            size = c.resident_bytes or c.estimated_bytes
            rows.append((c.role, c.model, mark[c.pulled], "yes" if c.thinking else "no", str(c.num_ctx),
                         gb(size) if size else "-", "alone" if c.runs_alone else mark[c.fits_alone]))
        print()
        _table(rows)
        together = ["+".join(s) for s in checkup.co_resident] or ["none: every switch loads"]
        print(f"\nresident together: {', '.join(together)}")
    for warning in checkup.warnings:
        print(f"warning: {warning}")
    for problem in checkup.problems:
        print(f"problem: {problem}")
    print("\nthe team can run" if checkup.can_run else "\nthe team cannot run until the problems are fixed")
    return code


def cmd_models(args: argparse.Namespace) -> int:
    from crew.reports.doctor import run_checkup
    from crew.residency.budget import resolve_budget
    from crew.settings import load_settings

    settings = load_settings()
    checkup = _arun(run_checkup(settings, resolve_budget(settings.memory_budget_gb)))
    from crew.routing import TASK_TYPES

    routing = {role: list(words) for role, words in TASK_TYPES.items()}
    if args.json_:
        from dataclasses import asdict

        _emit_json({"roles": [asdict(c) for c in checkup.roles], "task_routing": routing})
        return EXIT_OK
    rows: list[tuple[str, ...]] = [("ROLE", "MODEL", "NUM_CTX", "ESTIMATED", "LEARNED", "CAPABILITIES")]
    for c in checkup.roles:
        learned = c.resident_bytes or c.measured_bytes
        rows.append((c.role, c.model, str(c.num_ctx), gb(c.estimated_bytes) if c.estimated_bytes else "-",
                     gb(learned) if learned else "-", ",".join(c.capabilities) or "-"))
    _table(rows)
    print()
    _table([("TASK TYPE", "ROLE")] + [(", ".join(w), r) for r, w in routing.items()])
    return EXIT_OK


def cmd_plan(args: argparse.Namespace) -> int:
    from crew.reports.doctor import make_plan
    from crew.residency.budget import resolve_budget
    from crew.settings import load_settings

    settings = load_settings()
    plan = _arun(make_plan(settings, resolve_budget(settings.memory_budget_gb)))
    if args.json_:
        from dataclasses import asdict

        _emit_json(asdict(plan))
        return EXIT_OK
    print(f"budget {gb(plan.budget.bytes)} ({plan.budget.source})")
    together = ["+".join(s) for s in plan.co_resident] or ["none"]
    print(f"roles resident together: {', '.join(together)}")
    print(f"typical run: {' -> '.join(plan.sequence)}")
    if plan.alone:
        print(f"runs alone, partly on the CPU (over the budget): {', '.join(plan.alone)}")
    print(f"expected loads: {len(plan.loads)} ({', '.join(plan.loads)})")
    for role, ctx in plan.max_num_ctx_together.items():
        print(f"largest {role} num_ctx keeping coder+reviewer together: {ctx if ctx else 'none fits'}")
    return EXIT_OK


def cmd_runs(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from crew.reports.past_runs import find_run, list_runs, read_run
    from crew.settings import load_settings

    settings = load_settings()
    if args.action == "show":
        folder = find_run(settings.workspaces_dir, args.run_id or "")
        if args.timeline or args.png:
            from crew.reports import timeline

            line = timeline.build(timeline.read_events(folder))
            if args.png:
                timeline.chart(line, args.png)
                print(f"wrote {args.png}")
            if args.timeline:
                print("\n".join(timeline.render(line)))
            return EXIT_OK
        record = read_run(folder)
        summary = folder / "summary.json"
        data = json.loads(summary.read_text()) if record.complete else asdict(record)
        _emit_json(data)
        return EXIT_OK
    runs = list_runs(settings.workspaces_dir)
    if args.json_:
        _emit_json([asdict(r) for r in runs])
        return EXIT_OK
    rows: list[tuple[str, ...]] = [("ID", "SPEC", "STARTED", "SECONDS", "VERDICT", "LOADS", "TOKENS")]
    for r in runs:
        started = time.strftime("%Y-%m-%d %H:%M", time.localtime(r.started)) if r.started else "-"
        rows.append((r.id, r.spec or "-", started, f"{r.seconds:.0f}" if r.seconds is not None else "-",
                     r.verdict or "incomplete", str(r.loads if r.loads is not None else "-"),
                     str(r.tokens if r.tokens is not None else "-")))
    _table(rows)
    return EXIT_OK


def cmd_config(args: argparse.Namespace) -> int:
    from crew.residency.budget import resolve_budget
    from crew.settings import load_settings

    settings = load_settings()
    budget = resolve_budget(settings.memory_budget_gb)
    data = settings.model_dump(mode="json")
    data["memory_budget"] = {"bytes": budget.bytes, "source": budget.source}
    if args.json_:
        print(json.dumps(data, indent=2))
        return EXIT_OK
    print(f"ollama_host        {settings.ollama_host}")
    for host in settings.hosts:  # several hosts (`crew ps` shows them all)
        budget_gb = f", {host.memory_budget_gb:g} GB" if host.memory_budget_gb else ""
        print(f"host               {host.label} ({host.url}{budget_gb})")
    print(f"memory budget      {gb(budget.bytes)} ({budget.source})")
    offload = {True: "allowed", False: "refused", "auto": "auto (when the machine's memory holds the model)"}
    print(f"partial offload    {offload[settings.allow_partial_offload]}")
    rows: list[tuple[str, ...]] = [("ROLE", "MODEL", "NUM_CTX", "TEMP", "THINK", "TIMEOUT")]
    for role, rs in settings.roles().items():
        think = "auto" if rs.think is None else str(rs.think).lower()
        rows.append((role, rs.model, str(rs.num_ctx), f"{rs.temperature:g}", think, f"{rs.timeout_s:g}s"))
    print()
    _table(rows)
    return EXIT_OK


def _settings_for(args: argparse.Namespace) -> Any:
    from crew.settings import load_settings

    overrides = {"backend": args.backend} if getattr(args, "backend", None) else {}
    return load_settings(**overrides)


def cmd_eval(args: argparse.Namespace) -> int:
    from crew.evaluation.report import write_report
    from crew.evaluation.runner import Progress, load_results, parse_configs, run_eval
    from crew.evaluation.suites import read_suite

    configs = parse_configs(args.configs)
    exercises = read_suite(args.suite)
    if args.only:
        wanted = set(args.only)
        exercises = [e for e in exercises if e.name in wanted]
        if not exercises:
            raise InputError(f"no exercise named {', '.join(sorted(wanted))} in {args.suite}")
    out: Path = args.resume or args.out or Path("evals") / datetime.now().strftime("%Y%m%d-%H%M%S")
    if args.resume is None and out.exists() and load_results(out):
        raise InputError(f"{out} has results already: continue it with --resume {out}, or choose --out")
    settings = _settings_for(args)
    render = JsonRenderer() if args.json_ else (lambda event: None)

    def progress(p: Progress) -> None:
        r = p.result
        failed = f"failed ({r.error})" if r.error else "failed"
        verdict = f"passed on try {r.passed_try}" if r.passed_try else failed
        if args.json_:
            _emit_json({"type": "eval_result", **asdict(r), "done": p.done, "total": p.total})
        else:
            print(f"[{p.done}/{p.total}] {r.config} {r.exercise}: {verdict}; {r.config} pass rate so far "
                  f"{p.rate:.0%}", file=sys.stderr, flush=True)

    results = _arun(run_eval(settings, exercises, configs, out=out, tries=args.tries, render=render,
                             progress=progress))
    data = write_report(out, results, configs)
    if not args.json_:
        print((out / "eval.md").read_text())
        print(f"results in {out} (eval.json, eval.md)")
    else:
        _emit_json({"type": "eval_finished", "out": str(out), "configs": data["configs"]})
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    from crew.serve import serve
    from crew.settings import load_settings

    overrides = {k: v for k, v in (("serve_host", args.host), ("serve_port", args.port)) if v is not None}
    settings = load_settings(**overrides)

    fleet = args.ray or args.ray_address is not None
    where = (", ".join(h.label for h in settings.hosts) + " on Ray") if fleet else settings.ollama_host

    def ready(url: str) -> None:
        print(f"crew serve: listening on {url} for Ollama at {where} "
              f"(point clients at it: OLLAMA_HOST={url}); Ctrl-C or SIGTERM stops it", file=sys.stderr,
              flush=True)

    if fleet:
        from crew.fleet import serve_fleet

        serve_fleet(settings, args.ray_address, ready)
    else:
        serve(settings, ready)
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from crew.commands.run import export_run, run_spec

    if args.resume is not None and (args.repo is not None or args.workspace is not None or args.spec):
        raise InputError("--resume continues a run where it is, on its own spec: it cannot take a spec, "
                         "--repo or --workspace")
    settings = _settings_for(args)
    if args.ci:
        settings = settings.deterministic()
    if args.out is not None:
        _check_writable(args.out)  # before any model work, not after it
    renderer = JsonRenderer() if args.json_ else for_terminal()
    try:
        outcome = _arun_rendered(renderer, run_spec(
            settings, args.spec, render=renderer, workspace_path=args.workspace, repo=args.repo,
            resume=args.resume, max_turns=args.max_turns,
        ))
    except KeyboardInterrupt as exc:
        where = renderer.workspace or "its workspace"
        print(f"crew: {str(exc) or 'interrupted'}; state saved. Continue with `crew run --resume {where}`",
              file=sys.stderr)
        return exit_code(exc)
    if not args.json_:
        _print_summary(outcome)
    if args.out is not None:
        export_run(outcome, args.out)
    return EXIT_OK if outcome.approved else EXIT_NOT_APPROVED


def _check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot use --out {folder}: {exc.strerror}; give a folder crew can write") from None
    if not os.access(folder, os.W_OK):
        raise InputError(f"cannot write in --out {folder}: give a folder crew can write")


def cmd_chat(args: argparse.Namespace) -> int:
    from crew.commands.chat import chat_session

    settings = _settings_for(args)
    renderer = for_terminal()
    root = _arun_rendered(renderer, chat_session(
        settings, args.spec, render=renderer, screen=_chat_screen(settings, renderer), resume=args.resume,
        workspace_path=args.workspace))
    print(f"state saved. Continue with `crew chat --resume {root}`", file=sys.stderr)
    return EXIT_OK


def _chat_screen(settings: Any, renderer: Any) -> Any:
    """The person's side of `crew chat`: a line editor and coloured diffs on a terminal, plain
    lines when standard input or output is not one (scripts, CI)."""
    from crew.commands.chat import COMMANDS, ChatScreen
    from crew.routing import NAMES
    from crew.terminal.line_editor import ChatCompleter, ChatHistory, LineReader, PromptReader
    from crew.workspace.repo import CHAT_HISTORY

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    pause = getattr(renderer, "prompting", None)
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        return ChatScreen(write, lambda root: LineReader(write, pause or nullcontext))

    def reader(root: Path) -> Any:
        history = ChatHistory(root / CHAT_HISTORY, settings.state_dir / CHAT_HISTORY)
        completer = ChatCompleter(COMMANDS, list(NAMES.values()), root)
        status = getattr(renderer, "status", None)
        return PromptReader(history, completer, status=status.line if status else None,
                            pause=pause or nullcontext)

    show_diff = None
    if rich_wanted():
        from rich.console import Console
        from rich.syntax import Syntax

        def show_diff(diff: str) -> None:
            Console().print(Syntax(diff, "diff", theme="ansi_dark", background_color="default"))

    return ChatScreen(write, reader, show_diff)


def cmd_review(args: argparse.Namespace) -> int:
    from crew.commands.review import read_diff, review_diff, write_outputs

    settings = _settings_for(args)
    diff = read_diff(args.diff, base=args.base, repo=args.repo, stdin=_read_stdin)
    renderer = JsonRenderer() if args.json_ else for_terminal()
    outcome = _arun_rendered(renderer, review_diff(settings, diff, renderer))
    write_outputs(outcome, args.out)
    print(f"{'APPROVED' if outcome.approved else 'CHANGES REQUESTED'}: {len(outcome.findings)} "
          f"finding(s); {args.out / 'review.md'}", file=sys.stderr)
    return EXIT_OK if outcome.approved else EXIT_NOT_APPROVED


def _read_stdin() -> bytes:
    try:
        return sys.stdin.buffer.read()
    except (AttributeError, OSError, ValueError):  # closed, or not there at all
        raise InputError("--diff - reads the diff from standard input, which is closed: pipe a diff "
                         "in (git diff | crew review --diff -) or give --diff FILE") from None


def _print_summary(outcome: Any) -> None:
    rows: list[tuple[str, ...]] = [("AGENT", "TURNS", "PROMPT", "COMPLETION", "GEN S", "LOADS", "LOAD S")]
    for name, s in outcome.agents.items():
        rows.append((name, str(s.turns), str(s.prompt_tokens), str(s.completion_tokens),
                     f"{s.generation_seconds:.1f}", str(s.loads), f"{s.load_seconds:.1f}"))
    print()
    _table(rows)
    verdict = "APPROVED" if outcome.approved else "NOT APPROVED"
    print(f"\n{verdict} ({outcome.stop_reason}); workspace {outcome.workspace.root}")
    if outcome.left_out:
        print(f"left out of crew.patch: {'; '.join(outcome.left_out)}")


def _table(rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


# -- parsing --------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse, with a bad command line as one `crew:` line and exit 2 (not usage + error)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_ERROR, f"crew: {message}: see `{self.prog} --help`\n")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number of turns")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="crew",
        description="A local-first software team of LLM agents (Architect, Coder, Reviewer) "
        "sharing one machine's memory through Ollama.",
        epilog="Exit codes: 0 success, 1 not approved / cannot run, 2 error, 130 interrupted. "
        "Settings come from CREW_* environment variables and ./crew.toml.",
    )
    from crew.backends.registry import backend_names

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
    p.add_argument("--max-turns", type=_positive, help="stop after this many agent turns")
    p.add_argument("--json", dest="json_", action="store_true", help="print events as JSON lines")
    p.add_argument("--backend", choices=backend_names(),
                   help="where models run (default: CREW_BACKEND or auto)")
    p.add_argument("--ci", action="store_true",
                   help="deterministic options (temperature 0, fixed seed); use with --out")
    p.add_argument("--out", type=Path, help="also write crew.patch, summary.json and review.md here")
    p = add("chat", cmd_chat, "join the team in the terminal: talk, @address an agent, /ps /diff /undo")
    p.add_argument("spec", nargs="?", type=Path, help="a spec to start from (optional)")
    p.add_argument("--resume", type=Path, metavar="WORKSPACE", help="continue the chat in WORKSPACE")
    p.add_argument("--workspace", type=Path, help="where to work (default: workspaces/<id>)")
    p.add_argument("--backend", choices=backend_names(),
                   help="where models run (default: CREW_BACKEND or auto)")
    p = add("review", cmd_review, "review a patch: review.md for the pull request, review.json, verdict")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--diff", metavar="FILE", help="the diff to review, or - for stdin")
    source.add_argument("--base", metavar="REF", help="review `git diff REF` of --repo")
    p.add_argument("--repo", type=Path, help="the git repository for --base (default: here)")
    p.add_argument("--out", type=Path, default=Path("."), help="where review.md and review.json go")
    p.add_argument("--backend", choices=backend_names(),
                   help="where models run (default: CREW_BACKEND or auto)")
    p.add_argument("--json", dest="json_", action="store_true", help="print events as JSON lines")
    p = add("ps", cmd_ps, "show the models resident in Ollama against the memory budget")
    p.add_argument("--json", dest="json_", action="store_true", help="print JSON")
    p = add("doctor", cmd_doctor, "check Ollama, the models, and whether the team fits in memory")
    p.add_argument("--json", dest="json_", action="store_true", help="print JSON")
    p = add("models", cmd_models, "the role catalog with sizes and capabilities, and task routing")
    p.add_argument("--json", dest="json_", action="store_true", help="print JSON")
    p = add("plan", cmd_plan, "the residency plan: roles resident together, loads of a typical run")
    p.add_argument("--json", dest="json_", action="store_true", help="print JSON")
    p = add("runs", cmd_runs, "past runs in the workspaces folder, newest first; `runs show ID`")
    p.add_argument("action", nargs="?", choices=["list", "show"], default="list")
    p.add_argument("run_id", nargs="?", help="the run to show")
    p.add_argument("--json", dest="json_", action="store_true", help="print JSON")
    p.add_argument("--timeline", action="store_true",
                   help="show: which models were resident when, loads, waits, who was speaking")
    p.add_argument("--png", type=Path, metavar="FILE", help="show: the timeline as a chart (matplotlib)")
    p = add("eval", cmd_eval, "does the team beat one model? run a suite of exercises under several "
            "configurations and grade them with hidden tests")
    p.add_argument("suite", type=Path, help="a folder of exercises, a HumanEval .jsonl(.gz), or "
                   "aider's polyglot folders")
    p.add_argument("--configs", default="team,solo",
                   help="team, solo, solo:<role>, reference, empty (comma-separated; default team,solo)")
    p.add_argument("--tries", type=int, choices=(1, 2), default=2,
                   help="2: a failed first try continues once with the failing test output")
    p.add_argument("--only", nargs="+", metavar="NAME", help="only these exercises")
    p.add_argument("--out", type=Path, help="where results go (default: evals/<time>)")
    p.add_argument("--resume", type=Path, metavar="DIR", help="continue an interrupted eval in DIR")
    p.add_argument("--backend", choices=backend_names(), help="where models run")
    p.add_argument("--json", dest="json_", action="store_true", help="print results as JSON lines")
    p = add("serve", cmd_serve, "serve the seed's router and the Ollama and OpenAI APIs: one residency "
            "authority for every client of this Ollama")
    p.add_argument("--host", help="address to listen on (default: CREW_SERVE_HOST or 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default: CREW_SERVE_PORT or 8000)")
    p.add_argument("--ray", action="store_true",
                   help="serve every host of CREW_OLLAMA_HOSTS or [[hosts]] on Ray Serve "
                        "(pip install 'crew[ray]')")
    p.add_argument("--ray-address", metavar="auto|ADDRESS",
                   help="join this Ray cluster (implies --ray; default: start Ray on this machine)")
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
    except Exception as exc:  # noqa: BLE001 - the one boundary: a bug is a line and exit 2 too
        if os.environ.get("CREW_RAISE_ERRORS"):
            raise
        print(f"crew: unexpected error ({type(exc).__name__}: {exc}); this is a bug in crew: "
              "CREW_RAISE_ERRORS=1 shows where", file=sys.stderr)
        return EXIT_ERROR
