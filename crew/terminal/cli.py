"""The command line: parse, call one coroutine, render, exit.

The terminal package is the only code that prints: this module (the parser, `main` and the
commands that run something), `report_commands` (the commands that only report), `tables`,
`notices` and the renderers. Errors become one line on stderr and an exit code from
`exits.EXIT_CODES`; set CREW_RAISE_ERRORS=1 to see the traceback instead. AutoGen is imported only
inside the commands that run a team, so `crew --help` and `crew ps` start fast.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

from crew import __version__
from crew.errors import (
    CrewError,
    InputError,
)
from crew.safe_text import safe_text
from crew.terminal.exits import EXIT_ERROR, EXIT_NOT_APPROVED, EXIT_OK, arun, arun_rendered, exit_code
from crew.terminal.renderers import JsonRenderer, for_terminal, rich_wanted
from crew.terminal.report_commands import cmd_config, cmd_doctor, cmd_models, cmd_plan, cmd_ps, cmd_runs
from crew.terminal.tables import emit_json, print_summary

# -- commands -------------------------------------------------------------------------------


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
            emit_json({"type": "eval_result", **asdict(r), "done": p.done, "total": p.total})
        else:
            print(f"[{p.done}/{p.total}] {r.config} {r.exercise}: {verdict}; {r.config} pass rate so far "
                  f"{p.rate:.0%}", file=sys.stderr, flush=True)

    results = arun(run_eval(settings, exercises, configs, out=out, tries=args.tries, render=render,
                             progress=progress, suite=args.suite))
    data = write_report(out, results, configs)
    if not args.json_:
        print((out / "eval.md").read_text())
        print(f"results in {out} (eval.json, eval.md)")
    else:
        emit_json({"type": "eval_finished", "out": str(out), "configs": data["configs"]})
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
        outcome = arun_rendered(renderer, run_spec(
            settings, args.spec, render=renderer, workspace_path=args.workspace, repo=args.repo,
            resume=args.resume, max_turns=args.max_turns,
        ))
    except KeyboardInterrupt as exc:
        where = renderer.workspace or "its workspace"
        print(f"crew: {str(exc) or 'interrupted'}; state saved. Continue with `crew run --resume {where}`",
              file=sys.stderr)
        return exit_code(exc)
    if not args.json_:
        print_summary(outcome)
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
    root = arun_rendered(renderer, chat_session(
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
        sys.stdout.write(safe_text(text))  # names, diffs: what the workspace holds
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
            Console().print(Syntax(safe_text(diff), "diff", theme="ansi_dark", background_color="default"))

    return ChatScreen(write, reader, show_diff)


def cmd_review(args: argparse.Namespace) -> int:
    from crew.commands.review import read_diff, review_diff, write_outputs

    settings = _settings_for(args)
    diff = read_diff(args.diff, base=args.base, repo=args.repo, stdin=_read_stdin)
    renderer = JsonRenderer() if args.json_ else for_terminal()
    outcome = arun_rendered(renderer, review_diff(settings, diff, renderer))
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
        print(f"crew: {safe_text(message)}", file=sys.stderr)
        return exit_code(exc)
    except Exception as exc:  # noqa: BLE001 - the one boundary: a bug is a line and exit 2 too
        if os.environ.get("CREW_RAISE_ERRORS"):
            raise
        print(safe_text(f"crew: unexpected error ({type(exc).__name__}: {exc}); this is a bug in crew: "
                        "CREW_RAISE_ERRORS=1 shows where"), file=sys.stderr)
        return EXIT_ERROR
