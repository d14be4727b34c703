"""Attacks on `crew eval`'s grading (branch `gradeattack`): a wrong solution that passes, or a right
one that fails, each graded through `grade(...)` in the sandbox `detect("auto", False)` finds.

A test marked `xfail(strict=True)` shows a break found against the code it was written on: its
reason says what broke; it turns into an XPASS (and so a failure) once the hole is closed, and
the mark goes then. Every test skips where there is no sandbox: the attacks must never run
unconfined on a shared machine.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from crew.evaluation.grading import Grade, grade
from crew.evaluation.suites import Exercise, _humaneval_item
from crew.workspace.sandbox import Sandbox, detect
from tests.test_grading_attacks import ROOT, _interpreter_for_nobody

pytestmark = pytest.mark.hostile


@pytest.fixture(scope="module")
def sandbox() -> Sandbox:
    found = detect("auto", False)
    if found.kind == "none":
        pytest.skip("no sandbox on this machine: these attacks never run unconfined")
    return found


def graded(tmp_path: Path, exercise: Exercise, files: dict[str, str], sandbox: Sandbox,
           timeout: float = 60.0) -> Grade:
    work = tmp_path / "work"
    work.mkdir(parents=True, exist_ok=True)
    for path, text in {**exercise.files, **files}.items():
        (work / path).parent.mkdir(parents=True, exist_ok=True)
        (work / path).write_text(text)
    return asyncio.run(grade(work, exercise, sandbox=sandbox, timeout=timeout))


def one_module(name: str, tests: str, stub: str = "") -> Exercise:
    return Exercise(name, f"Write {name}.py.", {f"{name}.py": stub or "pass\n"},
                    {f"tests/test_{name}.py": tests})


# --- (a) a wrong solution passes ------------------------------------------------------------------

# HumanEval/2 as crew reads it from the JSONL (suites._humaneval_item): the test file begins with
# `from solution import *`, and `check` compares with the builtin `abs`.
TRUNCATE = _humaneval_item({
    "task_id": "HumanEval/2", "entry_point": "truncate_number",
    "prompt": "def truncate_number(number: float) -> float:\n    \"\"\"The decimal part.\"\"\"\n",
    "canonical_solution": "    return number % 1.0\n",
    "test": "METADATA = {}\n\n\ndef check(candidate):\n    assert candidate(3.5) == 0.5\n"
            "    assert abs(candidate(1.33) - 0.33) < 1e-6\n"
            "    assert abs(candidate(123.456) - 0.456) < 1e-6\n",
})


def test_a_humaneval_solution_cannot_shadow_the_builtins_its_check_uses(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """A wrong `truncate_number` (0.5 for everything) that also defines `abs` returning 0: every
    `abs(candidate(x) - y) < 1e-6` in `check` calls the solution's `abs`, through the star import
    crew's HumanEval test file begins with."""
    assert graded(tmp_path / "right", TRUNCATE, TRUNCATE.reference or {}, sandbox).passed
    wrong = ("def truncate_number(number):\n    return 0.5\n\n\n"
             "def abs(x):\n    return 0\n")
    verdict = graded(tmp_path / "wrong", TRUNCATE, {"solution.py": wrong}, sandbox)
    assert not verdict.passed, verdict.output


# HumanEval/4 as crew reads it: `check` only ever compares `abs(candidate(x) - y) < 1e-6`.
DEVIATION = _humaneval_item({
    "task_id": "HumanEval/4", "entry_point": "mean_absolute_deviation",
    "prompt": "def mean_absolute_deviation(numbers: list) -> float:\n    \"\"\"MAD around the mean.\"\"\"\n",
    "canonical_solution": "    mean = sum(numbers) / len(numbers)\n"
                          "    return sum(abs(x - mean) for x in numbers) / len(numbers)\n",
    "test": "METADATA = {}\n\n\ndef check(candidate):\n"
            "    assert abs(candidate([1.0, 2.0, 3.0]) - 2.0/3.0) < 1e-6\n"
            "    assert abs(candidate([1.0, 2.0, 3.0, 4.0]) - 1.0) < 1e-6\n"
            "    assert abs(candidate([1.0, 2.0, 3.0, 4.0, 5.0]) - 6.0/5.0) < 1e-6\n",
})


def test_a_humaneval_result_that_is_no_number_fails_an_abs_difference_check(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """The wrong solution returns an object whose `-` gives 0.0 whatever it is taken from: every
    `abs(candidate(x) - y) < 1e-6` holds. (A float's `==` is never asked.)"""
    assert graded(tmp_path / "right", DEVIATION, DEVIATION.reference or {}, sandbox).passed
    wrong = ("class _Close:\n    def __sub__(self, other):\n        return 0.0\n\n\n"
             "def mean_absolute_deviation(numbers):\n    return _Close()\n")
    verdict = graded(tmp_path / "wrong", DEVIATION, {"solution.py": wrong}, sandbox)
    assert not verdict.passed, verdict.output


CLOSE = one_module("half", """import unittest

import pytest
from half import half, third


class HalfTest(unittest.TestCase):
    def test_half(self):
        self.assertAlmostEqual(half(), 0.5)


def test_third():
    assert third() == pytest.approx(0.3333333)
""")


def test_an_object_whose_difference_is_zero_fails_assert_almost_equal_and_approx(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """unittest's assertAlmostEqual and pytest.approx judge closeness by `abs(a - b)`: a wrong
    answer that is an object of the solution's whose `-` (either side) gives 0.0 must not pass;
    the right plain floats do."""
    right = "def half():\n    return 1 / 2\n\n\ndef third():\n    return 1 / 3\n"
    assert graded(tmp_path / "right", CLOSE, {"half.py": right}, sandbox).passed
    wrong = ("class _Close:\n    def __sub__(self, other):\n        return 0.0\n\n"
             "    __rsub__ = __sub__\n\n\ndef half():\n    return _Close()\n\n\n"
             "def third():\n    return _Close()\n")
    verdict = graded(tmp_path / "wrong", CLOSE, {"half.py": wrong}, sandbox)
    assert not verdict.passed, verdict.output
    assert "2 of 2 hidden tests did not pass" in verdict.output, verdict.output


MUTATE = one_module("ranks", """from ranks import ranked


def test_ranked_gives_a_sorted_copy():
    scores = [3, 1, 2]
    assert ranked(scores) == [1, 2, 3]


def test_ranked_leaves_its_argument_alone():
    scores = [3, 1, 2]
    ranked(scores)
    assert scores == [3, 1, 2]
""")


@pytest.mark.xfail(strict=True, reason="BROKE: a list the tests pass is copied over the wire, so a "
                   "solution that mutates its argument passes a test that it must not")
def test_a_solution_that_mutates_its_argument_fails_a_test_that_it_must_not(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """`ranked` sorts the tests' list in place (what the second test forbids): the tests' list
    is a copy in the solution's process, so the change never shows where the test looks."""
    verdict = graded(tmp_path, MUTATE, {"ranks.py": "def ranked(s):\n    s.sort()\n    return s\n"},
                     sandbox)
    assert not verdict.passed, verdict.output


# --- (d) a right solution fails -------------------------------------------------------------------

IN_PLACE = one_module("rotate", """from rotate import rotate


def test_rotates_in_place():
    items = [1, 2, 3]
    assert rotate(items) is None
    assert items == [3, 1, 2]
""")


@pytest.mark.xfail(strict=True, reason="FALSE FAIL: an in-place change to the tests' list never reaches "
                   "the tests (the wire copies plain data both ways)")
def test_a_right_in_place_solution_passes(tmp_path: Path, sandbox: Sandbox) -> None:
    verdict = graded(tmp_path, IN_PLACE,
                     {"rotate.py": "def rotate(items):\n    items.insert(0, items.pop())\n"}, sandbox)
    assert verdict.passed, verdict.output


BIG = one_module("grains", """import math

from grains import digits, factorial


def test_a_large_factorial():
    assert factorial(2000) == math.factorial(2000)


def test_a_large_argument():
    assert digits(10 ** 5000) == 5001
""")


def test_a_right_solution_returning_a_big_int_passes(tmp_path: Path, sandbox: Sandbox) -> None:
    """factorial(2000) has 5736 digits: json.dumps raises ValueError in the solution's host."""
    verdict = graded(tmp_path, BIG, {"grains.py": "import math\n\n\ndef factorial(n):\n"
                                                  "    return math.factorial(n)\n\n\n"
                                                  "def digits(n):\n    return len(str(n))\n"}, sandbox)
    assert verdict.passed, verdict.output


GENERATOR = one_module("fib", """from fib import fibonacci


def test_next_on_the_generator():
    numbers = fibonacci()
    assert next(numbers) == 0
    assert next(numbers) == 1
    assert next(numbers) == 1
""")


def test_a_right_generator_passes_next(tmp_path: Path, sandbox: Sandbox) -> None:
    verdict = graded(tmp_path, GENERATOR, {"fib.py": "def fibonacci():\n    a, b = 0, 1\n    while True:\n"
                                                     "        yield a\n        a, b = b, a + b\n"}, sandbox)
    assert verdict.passed, verdict.output


LINKED = one_module("linked", """from linked import Stack


def test_push_returns_the_stack_for_chaining():
    stack = Stack()
    assert stack.push(1) is stack


def test_the_head_is_the_node_pushed_last():
    stack = Stack()
    stack.push(1)
    node = stack.head
    stack.push(2)
    assert stack.head.next is node
""")
LINKED_RIGHT = """class Node:
    def __init__(self, value, next=None):
        self.value, self.next = value, next


class Stack:
    def __init__(self):
        self.head = None

    def push(self, value):
        self.head = Node(value, self.head)
        return self
"""


def test_identity_of_the_solution_s_objects_is_kept(tmp_path: Path, sandbox: Sandbox) -> None:
    verdict = graded(tmp_path, LINKED, {"linked.py": LINKED_RIGHT}, sandbox)
    assert verdict.passed, verdict.output


MANAGER = one_module("meter", """from meter import Meter


def test_a_meter_is_a_context_manager():
    with Meter() as m:
        m.add(3)
    assert m.total == 3 and m.closed
""")
MANAGER_RIGHT = """class Meter:
    def __init__(self):
        self.total, self.closed = 0, False

    def add(self, n):
        self.total += n

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.closed = True
        return False
"""


def test_a_right_context_manager_passes(tmp_path: Path, sandbox: Sandbox) -> None:
    verdict = graded(tmp_path, MANAGER, {"meter.py": MANAGER_RIGHT}, sandbox)
    assert verdict.passed, verdict.output


ERROR_FIELDS = one_module("parse", """import pytest

from parse import ParseError, parse


def test_the_error_says_where():
    with pytest.raises(ParseError) as err:
        parse("1 + + 2")
    assert err.value.position == 4
""")


def test_an_exception_s_attributes_reach_the_tests(tmp_path: Path, sandbox: Sandbox) -> None:
    right = """class ParseError(ValueError):
    def __init__(self, message, position):
        super().__init__(message)
        self.position = position


def parse(text):
    raise ParseError("unexpected +", text.index("+ +") + 2)
"""
    verdict = graded(tmp_path, ERROR_FIELDS, {"parse.py": right}, sandbox)
    assert verdict.passed, verdict.output


TYPED = one_module("shapes", """from shapes import Square, make


def test_make_builds_a_square():
    assert type(make("square", 2)) is Square
""")


@pytest.mark.xfail(strict=True, reason="FALSE FAIL: type(handle) is remote.Remote, never the solution's "
                   "class, so `type(x) is Square` fails for a right solution")
def test_type_of_a_solution_s_object_is_its_class(tmp_path: Path, sandbox: Sandbox) -> None:
    verdict = graded(tmp_path, TYPED, {"shapes.py": "class Square:\n    def __init__(self, side):\n"
                                                    "        self.side = side\n\n\ndef make(kind, size):\n"
                                                    "    return Square(size)\n"}, sandbox)
    assert verdict.passed, verdict.output


# --- (a) again: names the tests import, answered by the solution ----------------------------------

HELPED = Exercise(
    "temps", "Write celsius(f) in temps.py.",
    {"temps.py": "def celsius(f):\n    raise NotImplementedError\n"},
    {"tests/helpers.py": "def near(a, b):\n    return abs(a - b) < 1e-9\n",
     "tests/test_temps.py": "from helpers import near\nfrom temps import celsius\n\n\n"
                            "def test_boiling():\n    assert near(celsius(212), 100)\n\n\n"
                            "def test_freezing():\n    assert near(celsius(32), 0)\n"},
)


def test_a_solution_cannot_answer_for_a_module_of_the_hidden_tests(tmp_path: Path, sandbox: Sandbox) -> None:
    """The hidden tests ship a helper module beside them; the solution ships one of the same name
    whose `near` is always True, and a `celsius` that is wrong."""
    assert graded(tmp_path / "right", HELPED, {"temps.py": "def celsius(f):\n    return (f - 32) * 5 / 9\n"},
                  sandbox).passed
    wrong = {"temps.py": "def celsius(f):\n    return 7\n",
             "helpers.py": "def near(a, b):\n    return True\n"}
    verdict = graded(tmp_path / "wrong", HELPED, wrong, sandbox)
    assert not verdict.passed, verdict.output


def test_a_solution_folder_named_like_a_hidden_test_module_does_not_replace_it(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """HELD, by luck. A package `test_temps/` (its files are no test files by name, so they are
    copied, and `test_temps` is one of the names the proxy answers): pytest imports the hidden
    `test_temps.py` by that name, but its assertion-rewriting hook sits before crew's on
    `sys.meta_path` and loads test files itself, from their path. (With `--assert=plain` the
    proxy would answer first; pytest's `__file__` check would then make it a collection error.)"""
    planted = "def test_boiling():\n    pass\n\n\ndef test_freezing():\n    pass\n"
    verdict = graded(tmp_path, HELPED, {"temps.py": "def celsius(f):\n    return 7\n",
                                        "test_temps/__init__.py": planted}, sandbox)
    assert not verdict.passed, verdict.output


STOPPED = one_module("square", """from square import square


def test_squares():
    for got, want in zip(map(square, [1, 2, 3]), [1, 4, 9]):
        assert got == want
""")


def test_a_stopiteration_from_a_call_does_not_end_the_tests_loop(tmp_path: Path, sandbox: Sandbox) -> None:
    """`square` raises StopIteration: inside the tests' `map`, that ends the loop before any
    assert ran. (In one process it would too; the proxy, which rebuilds every exception it
    carries, could tell a call from a `next` and fail the test.)"""
    verdict = graded(tmp_path, STOPPED, {"square.py": "def square(n):\n    raise StopIteration\n"}, sandbox)
    assert not verdict.passed, verdict.output


SKIPPING = Exercise(
    "add", "Write add(a, b) in add.py.", {"add.py": "def add(a, b):\n    raise NotImplementedError\n"},
    {"tests/test_add.py": "import unittest\n\nfrom add import add\n\n\nclass AddTest(unittest.TestCase):\n"
                          "    def test_ints(self):\n        self.assertEqual(add(2, 3), 5)\n"},
)


def test_a_solution_exception_named_like_unittest_s_skip_is_a_failure(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """HELD. The solution raises its own `SkipTest(Exception)` claiming `unittest.case` as its
    module: the tests' side builds a local class, which unittest's `except SkipTest` and pytest's
    `isinstance(..., unittest.SkipTest)` do not take for theirs."""
    fake = "class SkipTest(Exception):\n    pass\n\n\nSkipTest.__module__ = 'unittest.case'\n\n\n" \
           "def add(a, b):\n    raise SkipTest('later')\n"
    verdict = graded(tmp_path, SKIPPING, {"add.py": fake}, sandbox)
    assert not verdict.passed, verdict.output


# --- (c) it ends, and leaves nothing behind -------------------------------------------------------

def _processes_with(marker: str) -> list[str]:
    found = []
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                if marker.encode() in cmdline.read():
                    found.append(pid)
        except OSError:
            continue
    return found


@pytest.mark.slow
def test_a_detached_child_of_the_solution_and_a_hung_import_leave_nothing_behind(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """HELD. At import the solution starts a `setsid` grandchild that ignores SIGTERM and sleeps
    (named by a marker), then hangs: the grade ends at its call timeout, failed, and no process
    with the marker is left on the machine (the PID namespace dies with the sandbox)."""
    marker = "crew-gradeattack-" + os.urandom(6).hex()
    hung = ("import os, signal, subprocess, time\n"
            f"subprocess.Popen(['sh', '-c', 'trap \"\" TERM HUP; exec -a {marker} sleep 600'],"
            " start_new_session=True)\n"
            "print('SPAWNED', flush=True)\n"
            "while True:\n    time.sleep(1)\n")
    verdict = graded(tmp_path, SKIPPING, {"add.py": hung}, sandbox, timeout=4.0)
    assert not verdict.passed and "SPAWNED" in verdict.output, verdict.output
    left = _processes_with(marker)
    for pid in left:  # ours: started by this test's grade, named by its marker
        subprocess.run(["kill", "-9", pid], check=False, timeout=10)
    assert left == [], f"left behind: {left}"


# --- (d) again: polyglot's unittest style, and values the wire does not carry ----------------------

SUBTESTS = one_module("square", """import unittest

from square import square


class SquareTest(unittest.TestCase):
    def test_squares(self):
        for n, want in [(1, 1), (2, 4), (3, 9)]:
            with self.subTest(n=n):
                self.assertEqual(square(n), want)


def test_with_the_subtests_fixture(subtests):
    for n in range(3):
        with subtests.test(n=n):
            assert square(n) == n * n
""")


def test_a_right_solution_to_unittest_subtests_passes(tmp_path: Path, sandbox: Sandbox) -> None:
    """Exercism's (and so aider polyglot's) Python tests loop over cases in `self.subTest(...)`:
    pytest 9 reports each subtest passed, under the test's node id; the grade counts 3 + 3
    outcomes for that id, and fails the right `square`."""
    verdict = graded(tmp_path, SUBTESTS, {"square.py": "def square(n):\n    return n * n\n"}, sandbox)
    assert verdict.passed, verdict.output


def test_a_wrong_solution_to_unittest_subtests_fails(tmp_path: Path, sandbox: Sandbox) -> None:
    """HELD: a failing subtest fails the grade (its report says failed)."""
    verdict = graded(tmp_path, SUBTESTS, {"square.py": "def square(n):\n    return 4 if n == 2 else n\n"},
                     sandbox)
    assert not verdict.passed, verdict.output


# Values a right solution returns that the tests compare with their own: each comes back as a
# handle, never equal to the tests' value (the wire carries exact builtins and a few value types).
VALUES = {
    "deque": ("import collections\n\n\ndef make():\n    return collections.deque([1, 2])\n",
              "import collections\n\nfrom values import make\n\n\n"
              "def test_value():\n    assert make() == collections.deque([1, 2])\n"),
    "bytearray": ("def make():\n    return bytearray(b'ab')\n",
                  "from values import make\n\n\ndef test_value():\n    assert make() == bytearray(b'ab')\n"),
    "range": ("def make():\n    return range(3)\n",
              "from values import make\n\n\ndef test_value():\n    assert make() == range(3)\n"),
    "type": ("def make():\n    return int\n",
             "from values import make\n\n\ndef test_value():\n    assert make() is int\n"),
    "path": ("import pathlib\n\n\ndef make():\n    return pathlib.PurePosixPath('a/b')\n",
             "import pathlib\n\nfrom values import make\n\n\n"
             "def test_value():\n    assert make() == pathlib.PurePosixPath('a/b')\n"),
}


@pytest.mark.xfail(strict=True, reason="FALSE FAIL: a deque, bytearray, range, class or path the solution "
                   "returns is a handle, never equal to the tests' own value (wire.encode)")
@pytest.mark.parametrize("kind", sorted(VALUES))
def test_a_right_standard_library_value_compares_equal(tmp_path: Path, sandbox: Sandbox, kind: str) -> None:
    solution, tests = VALUES[kind]
    verdict = graded(tmp_path, one_module("values", tests), {"values.py": solution}, sandbox)
    assert verdict.passed, verdict.output


ITERABLE = one_module("summing", """from summing import total


def test_any_iterable():
    assert total(n for n in range(4)) == 6
    assert total(iter([1, 2])) == 3
""")


@pytest.mark.xfail(strict=True, reason="FALSE FAIL (documented): an iterator or generator of the tests' "
                   "cannot be passed to the solution (remote.Connection.encode: a SolutionFault)")
def test_a_right_solution_taking_the_tests_iterator_passes(tmp_path: Path, sandbox: Sandbox) -> None:
    right = {"summing.py": "def total(items):\n    return sum(items)\n"}
    verdict = graded(tmp_path, ITERABLE, right, sandbox)
    assert verdict.passed, verdict.output


# --- all of it again as uid 65534 -----------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="runs the attacks as uid 65534: needs root and setpriv")
def test_the_same_attacks_as_an_unprivileged_user() -> None:
    """Every test above, in a pytest of its own as uid 65534: the same breaks (strict xfails) and
    the same holds."""
    base = Path(tempfile.mkdtemp(prefix="crew-gradeattack-nobody-", dir="/var/tmp"))
    try:
        python = _interpreter_for_nobody(base)
        for path in [base, *base.rglob("*")]:
            os.lchown(path, 65534, 65534)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(base), "LANG": "C.UTF-8",
               "CREW_FULL": "1"}
        done = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", str(python), "-m", "pytest",
             "-q", "-n", "0", "-p", "no:cacheprovider", "--basetemp", str(base / "t"),
             "-k", "not unprivileged_user", str(Path(__file__))],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
        )
    finally:
        shutil.rmtree(base, ignore_errors=True)
    assert done.returncode == 0 and "skipped" not in done.stdout, done.stdout + done.stderr
    assert "15 passed, 1 deselected, 9 xfailed" in done.stdout, done.stdout
