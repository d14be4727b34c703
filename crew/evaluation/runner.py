"""Running a suite under several configurations, grading each try, writing results as they come.

Configurations:
- `team`: the normal run (Architect, Coder, Reviewer);
- `solo`: one agent on the Coder's model with the Coder's tools and the same limits;
  `solo:<role>` on another role's model;
- `reference`: the reference solution laid over the starting files (must score 100%);
- `empty`: nothing changed (must score 0%). These two check the harness itself.

Each exercise runs in its own workspace under `OUT/<config>/<exercise>/`, a git worktree of a
repository holding the starting files. With `tries` 2, a failed first try continues the same
conversation once, told the failing test output (aider's pass@2). Each result is appended to
`results.jsonl` when its exercise ends, so an interrupted eval resumes where it stopped.
Grading runs in the sandbox the agents' commands get (found once per eval, network off); each
result says which (`graded_in`, `none`: unconfined).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from crew.errors import CrewError, InputError
from crew.evaluation.grading import Grade, grade, require_pytest
from crew.evaluation.suites import Exercise
from crew.events import Event
from crew.files import open_append
from crew.settings import ROLES, Role, Settings
from crew.workspace.git_calls import git
from crew.workspace.sandbox import Sandbox, for_settings

AGENT_CONFIGS = ("team", "solo")
CHECK_CONFIGS = ("reference", "empty")


@dataclass(frozen=True)
class Result:
    exercise: str
    config: str
    passed_try: int | None
    """1 or 2: the try on which the hidden tests passed; None: they never did."""
    tries: int
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    loads: int = 0
    load_seconds: float = 0.0
    stop_reason: str = ""
    error: str | None = None
    """Why the run failed (the exercise counts as not passed)."""
    graded_in: str = ""
    """The sandbox the hidden tests ran in (`none`: unconfined, as the user)."""


@dataclass(frozen=True)
class Progress:
    """What the CLI shows as an eval goes: exercise k of n, the config, the pass rate so far."""

    done: int
    total: int
    result: Result
    rate: float


def parse_configs(text: str) -> list[str]:
    configs = [c.strip() for c in text.split(",") if c.strip()]
    for config in configs:
        role = config.partition(":")[2]
        if config in (*AGENT_CONFIGS, *CHECK_CONFIGS) or (config.startswith("solo:") and role in ROLES):
            continue
        raise InputError(f"unknown config {config!r}: choose from team, solo, solo:architect, "
                         "solo:reviewer, reference, empty")
    return configs


def load_results(out: Path) -> list[Result]:
    path = out / "results.jsonl"
    if not path.is_file():
        return []
    results = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            results.append(Result(**json.loads(line)))
        except (ValueError, TypeError):
            continue  # a line torn by a kill: that exercise runs again
    return results


async def run_eval(
    settings: Settings, exercises: list[Exercise], configs: list[str], *, out: Path, tries: int,
    render: Callable[[Event], None], progress: Callable[[Progress], None], suite: Path | None = None,
) -> list[Result]:
    """Every exercise under every config, skipping those `out` already has results for. The
    agents' commands and the graded code see neither the suite's folder (its hidden tests and
    references) nor `out` beyond the exercise at hand."""
    require_pytest()
    secret = (out.resolve(), *([suite.resolve()] if suite is not None else []))
    # Grading runs the graded code: in the sandbox the agents' commands get, never with network.
    found = await asyncio.to_thread(for_settings, settings)
    sandbox = replace(found, network=False, hidden=(*found.hidden, *secret))
    done = {(r.exercise, r.config): r for r in load_results(out)}
    out.mkdir(parents=True, exist_ok=True)
    total = len(exercises) * len(configs)
    results = [r for r in done.values() if r.config in configs and r.exercise in {e.name for e in exercises}]
    path = out / "results.jsonl"
    torn = path.is_file() and not path.read_bytes().endswith(b"\n") and path.stat().st_size > 0
    with open_append(path) as log:
        if torn:
            log.write("\n")  # a line cut by a kill stays alone, and is skipped when read

        def finished(result: Result) -> None:
            log.write(json.dumps(asdict(result)) + "\n")
            results.append(result)
            mine = [r for r in results if r.config == result.config]
            progress(Progress(len(results), total, result,
                              sum(r.passed_try is not None for r in mine) / len(mine)))

        for config in configs:
            todo = [e for e in exercises if (e.name, config) not in done]
            if config in CHECK_CONFIGS:
                # No model involved: grade them side by side, one per core.
                slots = asyncio.Semaphore(os.cpu_count() or 1)

                async def check(exercise: Exercise, config: str = config,
                                slots: asyncio.Semaphore = slots) -> None:
                    async with slots:
                        finished(await _one(settings, exercise, config,
                                            out / _safe(config) / exercise.name, tries, render,
                                            sandbox))

                await asyncio.gather(*(check(e) for e in todo))
                continue
            for exercise in todo:  # one at a time: they share the machine's models
                finished(await _one(settings, exercise, config, out / _safe(config) / exercise.name,
                                    tries, render, sandbox))
    return results


async def _one(settings: Settings, exercise: Exercise, config: str, folder: Path, tries: int,
               render: Callable[[Event], None], sandbox: Sandbox) -> Result:
    started = time.monotonic()
    source = folder / "start"
    work = folder / "work"
    if folder.exists():  # left by an interrupted eval: this exercise starts again
        shutil.rmtree(folder)
    _starting_repo(source, exercise)
    if config in CHECK_CONFIGS:
        _checkout(source, work)
        if config == "reference":
            if exercise.reference is None:
                return Result(exercise.name, config, None, 1, error="no reference solution")
            _write(work, exercise.reference)
        verdict = await grade(work, exercise, sandbox)
        return Result(exercise.name, config, 1 if verdict.passed else None, 1,
                      seconds=time.monotonic() - started, stop_reason="checked", graded_in=verdict.sandbox)
    solo: Role | None = None
    if config.startswith("solo"):
        wanted = "coder" if config == "solo" else config.partition(":")[2]
        solo = next(role for role in ROLES if role == wanted)  # checked by parse_configs
    return await _agents(settings, exercise, config, source, work, tries, solo, render, started, sandbox)


async def _agents(settings: Settings, exercise: Exercise, config: str, source: Path, work: Path,
                  tries: int, solo: Role | None, render: Callable[[Event], None],
                  started: float, sandbox: Sandbox) -> Result:
    from crew.commands.run import run_spec

    spec = source.parent / "spec.md"
    spec.write_text(exercise.spec)
    stats: dict[str, Any] = {"prompt_tokens": 0, "completion_tokens": 0, "loads": 0, "load_seconds": 0.0}
    passed: int | None = None
    stop = ""
    error = None
    verdict: Grade | None = None
    for attempt in range(1, tries + 1):
        try:
            if attempt == 1:
                outcome = await run_spec(settings, spec, render=render, workspace_path=work, repo=source,
                                         solo=solo, hidden=sandbox.hidden)
            else:
                assert verdict is not None
                outcome = await run_spec(settings, None, render=render, resume=work, solo=solo,
                                         follow_up=_feedback(verdict), hidden=sandbox.hidden)
        except CrewError as exc:
            error = str(exc)
            break
        for agent in outcome.agents.values():
            stats["prompt_tokens"] += agent.prompt_tokens
            stats["completion_tokens"] += agent.completion_tokens
        stats["loads"] += outcome.loads
        stats["load_seconds"] += outcome.load_seconds
        stop = outcome.stop_reason
        verdict = await grade(work, exercise, sandbox)
        if verdict.passed:
            passed = attempt
            break
    return Result(exercise.name, config, passed, tries, seconds=time.monotonic() - started,
                  stop_reason=stop, error=error, graded_in=sandbox.kind, **stats)


def _feedback(verdict: Grade) -> str:
    return ("The hidden tests of this task failed. Their output:\n\n```\n" + verdict.output.strip()
            + "\n```\n\nFix the code so that they pass.")


def _starting_repo(source: Path, exercise: Exercise) -> None:
    source.mkdir(parents=True)
    git(source, "init", "-q", "-b", "main")
    _write(source, exercise.files)
    git(source, "add", "-A")
    git(source, "commit", "-q", "--allow-empty", "-m", "the exercise's starting files")


def _checkout(source: Path, work: Path) -> None:
    git(source, "worktree", "add", "-q", "--detach", str(work))


def _write(root: Path, files: dict[str, str]) -> None:
    for path, text in files.items():
        target = (root / path).resolve()
        if not target.is_relative_to(root.resolve()):
            raise InputError(f"the exercise names a file outside its folder: {path}")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)


def _safe(config: str) -> str:
    return config.replace(":", "-")
