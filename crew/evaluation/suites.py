"""Reading a suite of exercises: crew's own layout, HumanEval-format JSONL, aider's polyglot
benchmark folders. Nothing is downloaded; a suite is a path.

crew's layout: a folder with one folder per exercise, each with `spec.md` (what to build), the
starting files, `tests/` (hidden from the agents: copied in only to grade) and, optionally,
`solution/` (a reference solution: files laid over the starting ones).
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path

from crew.errors import InputError

SKIP = {".git", "__pycache__", ".pytest_cache", ".meta", ".docs"}


@dataclass(frozen=True)
class Exercise:
    name: str
    spec: str
    files: dict[str, str] = field(default_factory=dict)
    """Starting files, by path in the workspace."""
    tests: dict[str, str] = field(default_factory=dict)
    """Hidden tests, by path: never in the workspace while the agents work."""
    reference: dict[str, str] | None = None
    """Files that make the exercise pass (laid over the starting files)."""
    solution_files: tuple[str, ...] | None = None
    """The files grading takes from the workspace (polyglot's `.meta/config.json` `files.solution`);
    None: the starting files and new non-test sources (see grading.py)."""


def read_suite(path: Path) -> list[Exercise]:
    """The exercises at `path`, in name order; InputError (one line) if it is no suite."""
    if not path.exists():
        raise InputError(f"no suite at {path}: give a folder of exercises or a HumanEval .jsonl file")
    if path.is_file():
        exercises = _humaneval(path)
    elif (path / "python" / "exercises" / "practice").is_dir():
        exercises = _polyglot(path / "python" / "exercises" / "practice")
    elif any((p / ".docs" / "instructions.md").is_file() for p in path.iterdir() if p.is_dir()):
        exercises = _polyglot(path)
    else:
        exercises = _folders(path)
    if not exercises:
        raise InputError(f"{path} holds no exercises: each needs a spec.md and a tests/ folder "
                         "(or use a HumanEval .jsonl file or aider's polyglot folders)")
    return sorted(exercises, key=lambda e: e.name)


def _folders(root: Path) -> list[Exercise]:
    found = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and (p / "spec.md").is_file()):
        tests = _read_tree(folder / "tests")
        if not tests:
            raise InputError(f"{folder} has no tests/: an exercise needs hidden tests to be graded")
        solution = folder / "solution"
        files = {k: v for k, v in _read_tree(folder).items()
                 if k != "spec.md" and not k.startswith(("tests/", "solution/"))}
        found.append(Exercise(folder.name, (folder / "spec.md").read_text(), files,
                              {f"tests/{k}": v for k, v in tests.items()},
                              _read_tree(solution) if solution.is_dir() else None))
    return found


def _humaneval(path: Path) -> list[Exercise]:
    opener = gzip.open if path.suffix == ".gz" else open
    exercises = []
    try:
        with opener(path, "rt", encoding="utf-8") as lines:
            for line in lines:
                if not line.strip():
                    continue
                item = json.loads(line)
                exercises.append(_humaneval_item(item))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{path} is not a HumanEval-format JSONL file ({type(exc).__name__}: {exc}): "
                         "each line needs task_id, prompt, entry_point and test") from None
    return exercises


# HumanEval's answers are plain data; `check` compares them with ==, <, abs(a - b): a result that
# is an object of the solution's could answer those comparisons itself (its `__sub__` giving 0).
_PLAIN_RESULTS = '''def _crew_plain_results(function):
    plain = (int, float, complex, str, bytes, bool, type(None), list, tuple, dict, set, frozenset)

    def is_plain(value, depth=0):
        if type(value) not in plain or depth > 64:
            return False
        if type(value) is dict:
            return all(is_plain(k, depth + 1) and is_plain(v, depth + 1) for k, v in value.items())
        if type(value) in (list, tuple, set, frozenset):
            return all(is_plain(v, depth + 1) for v in value)
        return True

    def call(*args, **kwargs):
        result = function(*args, **kwargs)
        assert is_plain(result), "the answer is no plain data (an object of the solution's)"
        return result
    return call'''


def _humaneval_item(item: dict[str, object]) -> Exercise:
    task_id = str(item["task_id"])
    entry = str(item["entry_point"])
    prompt = str(item["prompt"])
    name = task_id.replace("/", "_")
    module = "solution.py"
    spec = (f"Complete the function `{entry}` in `{module}` so that it does what its docstring "
            f"says. Keep its name and signature.\n\n```python\n{prompt}```\n")
    test = (f"from solution import *  # noqa\nfrom solution import {entry}\n\n{item['test']}\n\n"
            f"{_PLAIN_RESULTS}\n\ndef test_{entry}():\n    check(_crew_plain_results({entry}))\n")
    reference = None
    if item.get("canonical_solution"):
        reference = {module: prompt + str(item["canonical_solution"])}
    return Exercise(name, spec, {module: prompt}, {f"tests/test_{entry}.py": test}, reference)


def _polyglot(root: Path) -> list[Exercise]:
    exercises = []
    for folder in sorted(p for p in root.iterdir() if (p / ".docs" / "instructions.md").is_file()):
        docs = folder / ".docs"
        spec = (docs / "instructions.md").read_text()
        extra = docs / "instructions.append.md"
        if extra.is_file():
            spec += "\n" + extra.read_text()
        tree = _read_tree(folder)
        tests = {k: v for k, v in tree.items() if k.endswith("_test.py")}
        files = {k: v for k, v in tree.items() if k not in tests}
        example = folder / ".meta" / "example.py"
        solution = _solution_files(folder)
        stub = solution[0] if solution else next((k for k in files if k.endswith(".py")), None)
        reference = {stub: example.read_text()} if example.is_file() and stub else None
        exercises.append(Exercise(folder.name, spec, files, tests, reference, solution))
    return exercises


def _solution_files(folder: Path) -> tuple[str, ...] | None:
    """The exercise's own list of solution files, or None when it has none (or an unreadable one)."""
    try:
        config = json.loads((folder / ".meta" / "config.json").read_text())
        names = config["files"]["solution"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        return None
    return tuple(names) or None


def _read_tree(root: Path) -> dict[str, str]:
    if not root.is_dir():
        return {}
    out = {}
    for path in sorted(root.rglob("*")):
        parts = path.relative_to(root).parts
        if path.is_file() and not SKIP.intersection(parts):
            out["/".join(parts)] = path.read_text(errors="replace")
    return out
