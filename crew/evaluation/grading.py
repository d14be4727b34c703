"""Grading an exercise: its hidden tests, run against what the agents left in the workspace.

The tests never enter the workspace. Grading copies the workspace's files (not `.git`, not
crew's records) and the tests into a fresh folder and runs pytest there in a subprocess: the
scrubbed environment of `run_command`, its own process group (killed afterwards, whatever it
started), and a timeout.
"""

from __future__ import annotations

import asyncio
import importlib.util
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from crew.errors import InputError
from crew.evaluation.suites import Exercise
from crew.workspace.repo import CREW_FILES
from crew.workspace.tools import kill_group, scrubbed_env

GRADE_TIMEOUT_S = 120.0
# What a failing try shows the agents on the second: the end of pytest's report.
FEEDBACK_CHARS = 6000


@dataclass(frozen=True)
class Grade:
    passed: bool
    output: str


def require_pytest() -> None:
    if importlib.util.find_spec("pytest") is None:
        raise InputError("crew eval grades with pytest, which is not installed: pip install pytest")


async def grade(workspace: Path, exercise: Exercise, timeout: float = GRADE_TIMEOUT_S) -> Grade:
    """Run the exercise's hidden tests on a copy of `workspace`."""
    with tempfile.TemporaryDirectory(prefix="crew-grade-") as scratch:
        root = Path(scratch)
        _copy_work(workspace, root)
        for path, text in exercise.tests.items():
            target = root / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
        return await _pytest(root, timeout)


def _copy_work(workspace: Path, into: Path) -> None:
    skip = {".git", "__pycache__", ".pytest_cache", *CREW_FILES}
    for path in workspace.rglob("*"):
        relative = path.relative_to(workspace)
        if skip.intersection(relative.parts) or not path.is_file() or path.is_symlink():
            continue
        target = into / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)


async def _pytest(root: Path, timeout: float) -> Grade:
    env = scrubbed_env(root)
    # No third-party pytest plugins: hidden tests are plain tests, and loading every installed
    # plugin costs more than the tests themselves (0.43 s against 0.17 s a grade here).
    env.update(PYTHONDONTWRITEBYTECODE="1", PYTEST_DISABLE_PLUGIN_AUTOLOAD="1")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
        cwd=root, env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, start_new_session=True,
    )
    try:
        out, _ = await asyncio.wait_for(process.communicate(), timeout)
        text = out.decode(errors="replace")
        return Grade(process.returncode == 0, text[-FEEDBACK_CHARS:])
    except TimeoutError:
        return Grade(False, f"the tests took longer than {timeout:g} s and were stopped")
    finally:
        kill_group(process.pid)
        if process.returncode is None:
            await process.wait()
