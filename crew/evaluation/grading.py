"""Grading an exercise: its hidden tests, run against the solution the agents left in the workspace.

What the agents wrote is an attacker's input, so grading takes as little of it as it can and
trusts none of what it says:

- Only the solution's sources are copied, through file descriptors without following symlinks:
  polyglot's `files.solution`, or else the starting files and new non-test `.py` files. Never a
  `tests/` folder, a test file, anything pytest or Python loads by its name (`conftest.py`,
  `pytest.py`, `sitecustomize.py`, `*.pth`, ini files, `pyproject.toml`), or a top-level module
  named like one of the standard library's or pytest's.
- The solution and the hidden tests run in two processes, each in a sandbox of its own (the one
  `run_command` uses: no network, own PID namespace, own cgroup), or both unconfined when there
  is none, which the grade says (processes.py). The solution's box holds only `solution/`
  (writable) and crew's host for it (solution_host.py); the tests' box holds the hidden tests,
  an ini file, the runner (`pytest_runner.py`) and the proxy (remote.py), all read-only. Neither
  box is in the other's sandbox; they share one socket pair and nothing else.
- The tests import the solution's top-level modules through the proxy: what comes back is plain
  data rebuilt as exact builtin types (and the standard library's value types: complex, Decimal,
  Fraction, dates, times and durations), a handle whose every use is a request to the solution's
  process, a builtin `Exception` with its args, or a local class standing for an exception
  class of the solution's (wire.py, remote.py); a function of the tests' passed to the solution
  stays in the tests' process, called back. A handle is never equal to plain data. A late,
  malformed or missing answer fails the test (and, but for a plain fault, every later one).
- pytest runs isolated: `python -I -B`, `-c` crew's ini, the tests' folder as rootdir and
  confcutdir, no cache, no plugin autoload, an environment without secrets, its process not
  dumpable.
- A pass needs the runner's report, on a pipe only the tests' process has, every line carrying
  a token given on its stdin: the collected ids must cover every test crew found in the hidden
  files itself (by AST, before anything runs), and every collected test must have passed
  (skipped is not passed), the session must finish with status 0 and the process exit 0.
  pytest's printed output, and the solution's, decide nothing: they are only the feedback the
  agents see.

What this cannot stop. In a sandbox, the solution's code cannot reach pytest, the report, the
token or the hidden tests; it can only answer the calls the tests make. So it can still pass by
answering them rightly for the inputs the tests use (hard-coded answers), and where the tests
compare two of its own objects (`Rational(1, 2) == Rational(2, 4)`) the comparison is its own
`__eq__`, as it is for any class under test. Unconfined (no sandbox), both processes run as the
user: the solution's code can signal the tests' process, write to the tests' folder (a test file
not yet collected, a conftest) and, as root, read its memory and write to its report pipe; only
`PR_SET_DUMPABLE` stands in the way of an unprivileged one. A grade made unconfined says so.
What the proxy does not carry: objects of the tests' own passed to the solution, but for
functions and the value types above (a callback the solution can call and nothing more; a
mock's attributes and `unittest.mock.patch` of what the solution uses do not reach its
process), a handle compared with plain data (a solution's own `Money(5) == 5` is False here),
and the attributes of a plain-data subclass (a named tuple arrives as its tuple).
"""

from __future__ import annotations

import ast
import asyncio
import importlib.util
import os
import re
import secrets
import stat
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from crew.errors import InputError
from crew.evaluation.processes import Boxes, run_apart
from crew.evaluation.suites import Exercise
from crew.workspace.repo import CREW_FILES
from crew.workspace.sandbox import Sandbox

GRADE_TIMEOUT_S = 120.0
# One call of the tests into the solution's process: longer, and the test fails (and every later one).
CALL_TIMEOUT_S = 60.0
# A solution file larger than this is not a source file anyone wrote: it is left out.
MAX_FILE_BYTES = 1_000_000
# All the solution's files together: a solution is sources, not what a command made by the thousand.
MAX_SOLUTION_BYTES = 16_000_000
MAX_SOLUTION_FILES = 2_000
MAX_DEPTH = 16

UNCONFINED = Sandbox("none", network=True)

# Names Python or pytest act on when they find them (wherever they are on the path, or in a
# test's folders); a graded solution has no business shipping any.
_LOADED_BY_NAME = {"conftest.py", "pytest.py", "sitecustomize.py", "usercustomize.py", "pytest.ini",
                   ".pytest.ini", "tox.ini", "setup.cfg", "pyproject.toml", "__main__.py"}
_SKIPPED_DIRS = {"tests", "test", ".git", "__pycache__", ".pytest_cache", ".venv", "venv",
                 "node_modules"}
# Top-level modules a solution must not shadow: what the hidden tests or pytest import (a
# workspace `unittest.py` would replace the TestCase the tests assert with).
_SHADOWED = set(sys.stdlib_module_names) | {"pytest", "_pytest", "pluggy", "py", "iniconfig",
                                            "packaging", "exceptiongroup", "tomli", "pygments"}
_INI = "[pytest]\npython_files = test_*.py *_test.py\npython_classes = Test\npython_functions = test\n"
_HERE = Path(__file__).parent


@dataclass(frozen=True)
class Grade:
    passed: bool
    output: str
    sandbox: str = "none"
    """Where the graded code ran (a `Sandbox.kind`; `none`: unconfined, as the user)."""


@dataclass
class _Report:
    """What the runner reported, line by line, each line checked for its token."""

    collected: list[list[str]] = field(default_factory=list)
    outcomes: dict[str, list[str]] = field(default_factory=dict)
    finished: list[int] = field(default_factory=list)
    collect_errors: list[str] = field(default_factory=list)
    subtests: dict[str, list[str]] = field(default_factory=dict)
    """Outcomes of each test's subtests (unittest's `subTest`, pytest's `subtests`)."""
    forged: int = 0


def require_pytest() -> None:
    if importlib.util.find_spec("pytest") is None:
        raise InputError("crew eval grades with pytest, which is not installed: pip install pytest")


async def grade(workspace: Path, exercise: Exercise, sandbox: Sandbox = UNCONFINED,
                timeout: float = GRADE_TIMEOUT_S) -> Grade:
    """Run the exercise's hidden tests on the solution in `workspace`, in `sandbox`."""
    expected = expected_tests(exercise.tests)
    if not expected:
        return Grade(False, "crew: the hidden tests define no test functions: this exercise cannot "
                            "be graded", sandbox.kind)
    solution = await asyncio.to_thread(solution_files, workspace, exercise)
    with tempfile.TemporaryDirectory(prefix="crew-grade-") as scratch:
        boxes = await asyncio.to_thread(_lay_out, Path(scratch), solution, exercise.tests)
        # The hidden tests' own modules (`tests/helpers.py` is imported as `helpers`).
        theirs = module_names({path.removeprefix("tests/"): text for path, text in exercise.tests.items()})
        names = [n for n in module_names(solution) if n not in theirs]
        return await _run(boxes, names, expected, sandbox, timeout)


# --- what is copied -------------------------------------------------------------------------------

def solution_files(workspace: Path, exercise: Exercise) -> dict[str, bytes]:
    """The solution's files in `workspace`, by relative path: only regular files, read through
    descriptors opened without following symlinks (a symlink or a swapped folder is skipped)."""
    found: dict[str, bytes] = {}
    total = 0
    root = os.open(workspace, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for relative, data in _regular_files(root, "", lambda name: _is_solution(name, exercise)):
            total += len(data)
            if total > MAX_SOLUTION_BYTES or len(found) >= MAX_SOLUTION_FILES:
                break  # what an agent made by the thousand is no solution to copy (and grade)
            found[relative] = data
    finally:
        os.close(root)
    return found


def _regular_files(folder: int, prefix: str, wanted: Callable[[str], bool],
                   depth: int = 0) -> Iterator[tuple[str, bytes]]:
    """The regular files under `folder` whose relative path `wanted` takes, read only then."""
    with os.scandir(folder) as entries:
        names = sorted((e.name, e.is_dir(follow_symlinks=False)) for e in entries)
    for name, is_dir in names:
        relative = prefix + name
        if is_dir:
            if name in _SKIPPED_DIRS or depth >= MAX_DEPTH:
                continue
            try:  # O_NOFOLLOW: a folder swapped for a symlink since it was listed is not entered
                child = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=folder)
            except OSError:
                continue
            try:
                yield from _regular_files(child, relative + "/", wanted, depth + 1)
            finally:
                os.close(child)
        elif wanted(relative):
            data = _read_regular(folder, name)
            if data is not None:
                yield relative, data


def _read_regular(folder: int, name: str) -> bytes | None:
    """The file's bytes if `name` is a regular file (not a symlink, FIFO or device) of a sane size."""
    try:  # O_NONBLOCK: a FIFO opens without waiting for a writer, and is then refused by fstat
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=folder)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_FILE_BYTES:
            return None
        with os.fdopen(os.dup(fd), "rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
        return data if len(data) <= MAX_FILE_BYTES else None
    except OSError:
        return None
    finally:
        os.close(fd)


def _is_solution(relative: str, exercise: Exercise) -> bool:
    parts = relative.split("/")
    name = parts[-1]
    if (relative in CREW_FILES or name in _LOADED_BY_NAME or name.endswith(".pth")
            or _SKIPPED_DIRS.intersection(parts[:-1]) or _is_test_file(name)):
        return False
    top = parts[0].removesuffix(".py")
    if top in _SHADOWED:
        return False
    if exercise.solution_files is not None:
        return relative in exercise.solution_files
    return relative in exercise.files or name.endswith(".py")


def _is_test_file(name: str) -> bool:
    return name.endswith(".py") and (name.startswith("test_") or name.endswith("_test.py"))


def _lay_out(scratch: Path, solution: Mapping[str, bytes], tests: Mapping[str, str]) -> Boxes:
    """The tests' box and the solution's, side by side in `scratch`: neither holds the other."""
    boxes = Boxes(scratch / "tests", scratch / "solution")
    for relative, data in solution.items():
        _place(boxes.solution / "solution", relative).write_bytes(data)
    for relative, text in tests.items():
        _place(boxes.tests / "hidden", relative).write_text(text)
    (boxes.tests / "hidden").mkdir(parents=True, exist_ok=True)
    (boxes.solution / "solution").mkdir(parents=True, exist_ok=True)
    (boxes.tests / "grade.ini").write_text(_INI)
    (boxes.tests / "pytest_runner.py").write_bytes(_HERE.joinpath("pytest_runner.py").read_bytes())
    for box, modules in ((boxes.tests, ("wire.py", "remote.py")),
                         (boxes.solution, ("wire.py", "solution_host.py"))):
        package = box / "lib" / "crew_grading"
        package.mkdir(parents=True)
        (package / "__init__.py").write_text("")
        for module in modules:
            (package / module).write_bytes(_HERE.joinpath(module).read_bytes())
    return boxes


def module_names(files: Mapping[str, object]) -> list[str]:
    """The top-level module names of `files` (each `x.py` and folder, by relative path). The
    solution's are what the tests' imports of the solution are answered for, by its process, less
    those of the hidden tests' own files (`grade` takes them out: a `helpers.py` beside the tests)
    and any the tests' Python can import itself (remote.py asks), which stay theirs."""
    names = {relative.split("/")[0].removesuffix(".py") for relative in files
             if "/" in relative or relative.endswith(".py")}
    return sorted(n for n in names if n.isidentifier() and n != "crew_grading")


def _place(root: Path, relative: str) -> Path:
    target = root / relative
    if ".." in Path(relative).parts or Path(relative).is_absolute():
        raise InputError(f"the exercise names a file outside its folder: {relative}")
    target.parent.mkdir(parents=True, exist_ok=True)
    return target


# --- what must pass -------------------------------------------------------------------------------

def expected_tests(tests: Mapping[str, str]) -> set[str]:
    """The ids of the tests in the hidden test files, found by reading them (nothing runs):
    `path::function` and `path::Class::method`, as pytest names them without parameters."""
    ids: set[str] = set()
    for path, text in tests.items():
        if not _is_test_file(path.rsplit("/", 1)[-1]):
            continue
        try:
            tree = ast.parse(text)
        except SyntaxError:
            continue  # pytest reports it as a collection error, which fails the grade
        classes = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}
        for node in tree.body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test"):
                ids.add(f"{path}::{node.name}")
            elif isinstance(node, ast.ClassDef) and (node.name.startswith("Test")
                                                     or _is_test_case(node, classes)):
                ids.update(f"{path}::{node.name}::{m}" for m in _methods(node, classes)
                           if m.startswith("test"))
    return ids


def _bases(node: ast.ClassDef) -> list[str]:
    return [b.id if isinstance(b, ast.Name) else b.attr if isinstance(b, ast.Attribute) else ""
            for b in node.bases]


def _is_test_case(node: ast.ClassDef, classes: Mapping[str, ast.ClassDef], depth: int = 0) -> bool:
    return depth < 10 and any(b.endswith("TestCase") or (b in classes and b != node.name and
                                                         _is_test_case(classes[b], classes, depth + 1))
                              for b in _bases(node))


def _methods(node: ast.ClassDef, classes: Mapping[str, ast.ClassDef], depth: int = 0) -> set[str]:
    names = {f.name for f in node.body if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)}
    for base in _bases(node):
        if base in classes and base != node.name and depth < 10:
            names |= _methods(classes[base], classes, depth + 1)
    return names


def verdict(report: _Report, expected: set[str], returncode: int | None) -> str | None:
    """Why the report is no pass, or None when it is one."""
    if report.forged:
        return (f"{report.forged} line(s) of the test report were not written by crew's runner: "
                "the graded code wrote to it")
    if report.collect_errors:
        return f"the tests could not be collected: {', '.join(report.collect_errors)}"
    if len(report.collected) != 1 or len(report.finished) != 1:
        return "the tests did not run to the end (the process exited or was killed before pytest finished)"
    collected = report.collected[0]
    missing = expected - {_without_parameters(test_id) for test_id in collected}
    if missing:
        return f"{len(missing)} hidden test(s) were not collected: {_some(sorted(missing))}"
    failed = [t for t in collected if report.outcomes.get(t, []).count("passed") != 3
              or len(report.outcomes[t]) != 3
              or any(outcome != "passed" for outcome in report.subtests.get(t, []))]
    if failed:
        return f"{len(failed)} of {len(collected)} hidden tests did not pass: {_some(failed)}"
    if report.finished[0] != 0 or returncode != 0:
        return f"pytest ended with status {report.finished[0]} and exit code {returncode}"
    return None


def _some(ids: Sequence[str], shown: int = 5) -> str:
    more = f" and {len(ids) - shown} more" if len(ids) > shown else ""
    return ", ".join(ids[:shown]) + more


def _without_parameters(test_id: str) -> str:
    return re.sub(r"\[.*\]$", "", test_id)


def _parse_report(data: bytes, token: str) -> _Report:
    import json

    report = _Report()
    for line in data.decode("utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or record.get("token") != token:
                raise ValueError
            _add(report, record)
        except (ValueError, TypeError, KeyError):
            report.forged += 1
    return report


def _add(report: _Report, record: dict[str, object]) -> None:
    kind = record["kind"]
    if kind == "collected":
        ids = record["ids"]
        if not isinstance(ids, list):
            raise TypeError
        report.collected.append([str(i) for i in ids])
    elif kind == "test":
        report.outcomes.setdefault(str(record["id"]), []).append(str(record["outcome"]))
    elif kind == "subtest":
        report.subtests.setdefault(str(record["id"]), []).append(str(record["outcome"]))
    elif kind == "finished":
        report.finished.append(int(str(record["status"])))
    elif kind == "collect_error":
        report.collect_errors.append(str(record["id"]))
    else:
        raise ValueError


# --- running it -----------------------------------------------------------------------------------

async def _run(boxes: Boxes, names: list[str], expected: set[str], sandbox: Sandbox,
               timeout: float) -> Grade:
    token = secrets.token_hex(16)
    hidden = boxes.tests / "hidden"
    pytest_args = ["-q", "--tb=short", "-p", "no:cacheprovider", "-c", str(boxes.tests / "grade.ini"),
                   "-o", "addopts=", "--rootdir", str(hidden), "--confcutdir", str(hidden), str(hidden)]
    ran = await run_apart(boxes, names, pytest_args, sandbox, token, timeout, min(CALL_TIMEOUT_S, timeout))
    output = ran.tests_output
    if ran.solution_output.strip():
        output += f"\n--- the solution's own output ---\n{ran.solution_output}"
    if ran.returncode is None:
        return Grade(False, f"{output}\ncrew: the tests took longer than {timeout:g} s and were stopped",
                     sandbox.kind)
    parsed = _parse_report(ran.report, token)
    reason = verdict(parsed, expected, ran.returncode)
    where = "unconfined" if sandbox.kind == "none" else f"in the {sandbox.kind} sandbox"
    if reason is None:
        return Grade(True, f"{output}\ncrew: all {len(parsed.collected[0])} hidden tests passed ({where})",
                     sandbox.kind)
    return Grade(False, f"{output}\ncrew: not passed: {reason} ({where})", sandbox.kind)
