"""Attacks on `crew eval`'s grading: a wrong `add()` that tries to pass anyway, or to reach out.

Each attack is graded the way `crew eval` grades (in the sandbox `detect` finds, as the runner
does) and must fail; a right solution must still pass. As root, one more test runs every attack
again as an unprivileged user (uid 65534), in a pytest of its own.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

from crew.evaluation.grading import Grade, grade, solution_files
from crew.evaluation.suites import Exercise
from crew.workspace.sandbox import Sandbox, detect

pytestmark = pytest.mark.hostile

ROOT = Path(__file__).resolve().parent.parent
STUB = "def add(a, b):\n    raise NotImplementedError\n"
RIGHT = "def add(a, b):\n    return a + b\n"
WRONG = "def add(a, b):\n    return a - b\n"
EXERCISE = Exercise(
    "add", "Write add(a, b) in add.py.", {"add.py": STUB},
    {"tests/test_add.py": "from add import add\n\n\ndef test_ints():\n    assert add(2, 3) == 5\n\n\n"
                          "def test_negative():\n    assert add(-1, 1) == 0\n"},
)
# Report every test as passed, whatever it did: a plugin pytest loads by the file's name.
PASS_EVERYTHING = """import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    report.outcome = "passed"
    report.longrepr = None
"""
FORGED_OUTPUT = "import os\nprint('2 passed in 0.01s')\nos._exit(0)\n"
# Lines for every descriptor the process has: what a report crew trusted would say on a pass.
FORGED_REPORT = """import json, os
ids = ["tests/test_add.py::test_ints", "tests/test_add.py::test_negative"]
lines = [{"kind": "collected", "ids": ids}]
lines += [{"kind": "test", "id": i, "when": w, "outcome": "passed"} for i in ids
          for w in ("setup", "call", "teardown")]
lines.append({"kind": "finished", "status": 0})
junit = ('<testsuites><testsuite name="pytest" tests="2" failures="0" errors="0">'
         + "".join(f'<testcase classname="tests.test_add" name="{i.split("::")[1]}"/>' for i in ids)
         + "</testsuite></testsuites>")
for fd in range(3, 64):
    try:
        os.write(fd, "".join(json.dumps(line) + "\\n" for line in lines).encode())
    except OSError:
        pass
for arg in __import__("sys").argv:
    if arg.startswith("--junitxml="):
        open(arg.split("=", 1)[1], "w").write(junit)
print("2 passed in 0.01s")
os._exit(0)
"""


# Answers that look like the wire's (length-prefixed JSON) and the report's, on stdout and stderr.
PROTOCOL_ON_STDOUT = """import json, struct, sys
for seq in range(1, 20):
    frame = json.dumps({"seq": seq, "kind": "value", "v": 5}).encode()
    for stream in (sys.stdout.buffer, sys.stderr.buffer):
        stream.write(struct.pack(">I", len(frame)) + frame + b"\\n")
        stream.write(b'{"kind": "finished", "status": 0}\\n2 passed in 0.01s\\n')
        stream.flush()


def add(a, b):
    return a - b
"""


@pytest.fixture(scope="module")
def sandbox() -> Sandbox:
    """The sandbox `crew eval` grades in on this machine (network off), as the runner finds it."""
    return detect("auto", False)


@pytest.fixture
def work(tmp_path: Path) -> Path:
    folder = tmp_path / "work"
    folder.mkdir()
    (folder / "add.py").write_text(STUB)
    return folder


def graded(work: Path, files: dict[str, str], sandbox: Sandbox) -> Grade:
    for path, text in files.items():
        target = work / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    return asyncio.run(grade(work, EXERCISE, sandbox=sandbox))


def test_a_right_solution_passes_and_a_wrong_one_fails(work: Path, sandbox: Sandbox) -> None:
    right = graded(work, {"add.py": RIGHT}, sandbox)
    assert right.passed and "all 2 hidden tests passed" in right.output
    assert right.sandbox == sandbox.kind
    wrong = graded(work, {"add.py": WRONG}, sandbox)
    assert not wrong.passed and "2 of 2 hidden tests did not pass" in wrong.output


@pytest.mark.parametrize("planted", [
    {"conftest.py": PASS_EVERYTHING},
    {"tests/conftest.py": PASS_EVERYTHING},
    {"pytest.py": FORGED_OUTPUT},
    {"sitecustomize.py": FORGED_OUTPUT, "usercustomize.py": FORGED_OUTPUT,
     "crew.pth": "import os; print('2 passed'); os._exit(0)\n", "unittest.py": FORGED_OUTPUT},
    # Only a test of the workspace's own runs (pytest's `testpaths`, read from any of these).
    {"pytest.ini": "[pytest]\ntestpaths = ok\n", "tox.ini": "[pytest]\ntestpaths = ok\n",
     "setup.cfg": "[tool:pytest]\ntestpaths = ok\n",
     "pyproject.toml": "[tool.pytest.ini_options]\ntestpaths = ['ok']\n",
     "ok/test_ok.py": "def test_ok():\n    pass\n"},
], ids=["conftest", "tests-conftest", "pytest.py", "site-customize-pth-unittest", "ini-files"])
def test_files_that_pytest_or_python_load_by_name_do_not_make_a_wrong_add_pass(
    work: Path, sandbox: Sandbox, planted: dict[str, str]
) -> None:
    verdict = graded(work, {"add.py": WRONG, **planted}, sandbox)
    assert not verdict.passed, verdict.output
    copied = solution_files(work, EXERCISE)
    assert set(copied) == {"add.py"}


@pytest.mark.parametrize("solution", [
    "import os\nos._exit(0)\n",
    FORGED_OUTPUT,
    FORGED_REPORT,
    "import pytest\n\n\ndef add(a, b):\n    pytest.skip('nothing to see')\n",
    PROTOCOL_ON_STDOUT,
], ids=["exit-at-import", "forged-output", "forged-report", "skip", "protocol-on-stdout"])
def test_a_solution_that_ends_early_or_forges_its_results_fails(
    work: Path, sandbox: Sandbox, solution: str
) -> None:
    verdict = graded(work, {"add.py": solution}, sandbox)
    assert not verdict.passed, verdict.output


def test_symlinks_are_not_copied_as_their_targets(work: Path, tmp_path: Path, sandbox: Sandbox) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "add.py").write_text(RIGHT)
    (outside / "secret.txt").write_text("SECRET-IN-A-FILE-0451\n")
    (work / "add.py").unlink()
    (work / "add.py").symlink_to(outside / "add.py")
    (work / "notes.py").symlink_to(outside / "secret.txt")
    (work / "lib").symlink_to(outside, target_is_directory=True)
    verdict = asyncio.run(grade(work, EXERCISE, sandbox=sandbox))
    assert not verdict.passed and "SECRET-IN-A-FILE" not in verdict.output
    assert solution_files(work, EXERCISE) == {}


def test_a_file_swapped_for_a_symlink_while_copied_is_never_read_through_it(tmp_path: Path) -> None:
    """The name is checked and then opened: a symlink put there between the two must not be followed."""
    work = tmp_path / "work"
    work.mkdir()
    secret = tmp_path / "secret.txt"
    secret.write_text("SECRET-BY-RACE\n")
    stop = threading.Event()

    def flip() -> None:
        spare = work / "spare.py"
        while not stop.is_set():
            spare.write_text(RIGHT)
            os.replace(spare, work / "add.py")
            spare.symlink_to(secret)
            os.replace(spare, work / "add.py")

    flipper = threading.Thread(target=flip)
    flipper.start()
    try:
        for _ in range(2000):
            copied = solution_files(work, EXERCISE)
            assert b"SECRET-BY-RACE" not in b"".join(copied.values())
    finally:
        stop.set()
        flipper.join(timeout=10)
    assert not flipper.is_alive()


def test_the_graded_code_cannot_write_outside_nor_read_crew_s_environment(
    work: Path, tmp_path: Path, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not sandbox.confines_files and not os.environ.get("CREW_REQUIRE_SANDBOX"):
        pytest.skip("no sandbox on this machine: grading runs unconfined, as the grade says")
    secret = "CREW-API-KEY-" + os.urandom(8).hex()
    monkeypatch.setenv("CREW_TEST_API_KEY", secret)
    marker = tmp_path / "outside-marker"
    found = tmp_path / "found-environ"
    attack = f"""import os
try:
    open({str(marker)!r}, "w").write("written from the graded code")
except OSError:
    pass
seen = []
for pid in [str(os.getppid())] + [p for p in os.listdir("/proc") if p.isdigit()]:
    try:
        seen.append(open(f"/proc/{{pid}}/environ", "rb").read().decode(errors="replace"))
    except OSError:
        pass
try:
    open({str(found)!r}, "w").write("\\n".join(seen))
except OSError:
    pass
open("stolen.txt", "w").write("\\n".join(seen))


def add(a, b):
    raise RuntimeError("ENVIRON: " + " ".join(seen)[:2000])
"""
    verdict = graded(work, {"add.py": attack}, sandbox)
    assert not verdict.passed
    assert "ENVIRON:" in verdict.output  # the attack ran, and read what it could
    assert not marker.exists() and not found.exists()
    assert secret not in verdict.output
    leaked = [p for p in tmp_path.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
    assert leaked == []


def _interpreter_for_nobody(base: Path) -> Path:
    """A Python uid 65534 can start, also inside the sandbox: this one may live under /root (pyenv),
    which that user cannot enter. A venv of the system's Python of the same minor version, seeing
    this one's packages through a .pth (outside /tmp, which the sandbox replaces)."""
    system = Path(f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}")
    if not system.is_file():
        pytest.skip(f"no {system} to run the attacks as uid 65534 with")
    subprocess.run([str(system), "-m", "venv", "--without-pip", str(base / "venv")], check=True, timeout=60)
    packages = next((base / "venv" / "lib").glob("python3*/site-packages"))
    ours = [p for p in sys.path if p.endswith("site-packages")]
    (packages / "crew-tests.pth").write_text("\n".join(ours) + "\n")
    return base / "venv" / "bin" / "python"


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="runs the attacks as uid 65534: needs root and setpriv")
def test_the_attacks_fail_as_an_unprivileged_user() -> None:
    base = Path(tempfile.mkdtemp(prefix="crew-grading-nobody-", dir="/var/tmp"))
    try:
        python = _interpreter_for_nobody(base)
        for path in [base, *base.rglob("*")]:
            os.lchown(path, 65534, 65534)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(base), "LANG": "C.UTF-8",
               "CREW_FULL": "1"}  # the hostile tests, which the fast suite skips
        done = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", str(python), "-m", "pytest",
             "-q", "-n", "0", "-p", "no:cacheprovider", "--basetemp", str(base / "t"),
             "-k", "not unprivileged_user and not bounded_as_a_whole", str(Path(__file__))],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
        )
    finally:
        shutil.rmtree(base, ignore_errors=True)
    assert done.returncode == 0 and "skipped" not in done.stdout, done.stdout + done.stderr
    assert "29 passed" in done.stdout, done.stdout


def test_graded_code_is_bounded_as_a_whole_and_many_files_are_not_read(work: Path, sandbox: Sandbox) -> None:
    from crew.evaluation.grading import MAX_SOLUTION_FILES, solution_files
    from crew.workspace import cgroup

    if sandbox.kind == "none" or not cgroup.available():
        pytest.skip("no sandbox, or no cgroup crew may make here")
    # The graded code says where it runs, in the error its import raises (pytest shows it).
    where = graded(work, {"add.py": "raise RuntimeError(open('/proc/self/cgroup').read())\n"}, sandbox)
    assert not where.passed and "crew-cmd-" in where.output  # in a cgroup of its own
    many = work / "made"
    many.mkdir()
    for i in range(MAX_SOLUTION_FILES + 50):
        (many / f"m{i}.py").write_text("x = 1\n")
    assert len(solution_files(work, EXERCISE)) <= MAX_SOLUTION_FILES


# --- the solution in a process of its own, reached through a proxy --------------------------------

BANK = Exercise(
    "bank", "Write Account in bank_account.py.", {"bank_account.py": "class Account:\n    pass\n"},
    {"tests/test_bank.py": """import pytest

from bank_account import Account, InsufficientFunds, histogram, ledger


def test_an_account_is_a_handle_and_its_errors_are_caught_by_name_and_base():
    a = Account("ana")
    assert a.deposit(50) == 50 and a.balance == 50 and a.owner == "ana"
    with pytest.raises(ValueError) as err:
        a.deposit(-1)
    assert err.value.args[0] == "amount must be positive"
    with pytest.raises(InsufficientFunds, match="only 50"):
        a.withdraw(80)
    with pytest.raises(ValueError):
        a.withdraw(80)
    with pytest.raises(AttributeError):
        a.balance = 100
    assert len(a) == 1 and a[0] == 50 and list(a) == [50] and 50 in a
    b = Account("bo")
    b.deposit(50)
    assert a == b and not (a != b) and str(a) == "ana: 50" and isinstance(hash(a), int)
    assert isinstance(a, Account) and not isinstance(5, Account) and not isinstance(a, int)


def test_plain_results_are_builtin_types():
    counts = histogram("a b a")
    assert type(counts) is dict and counts == {"a": 2, "b": 1}
    assert type(ledger()) is tuple and ledger() == (1, 2)
""", "tests/test_bank_unittest.py": """import unittest

from bank_account import Account, InsufficientFunds


class BankTest(unittest.TestCase):
    def test_polyglot_style(self):
        with self.assertRaises(InsufficientFunds) as err:
            Account("x").withdraw(1)
        self.assertEqual(err.exception.args[0], "only 0 on the account")
        self.assertIsInstance(err.exception, ValueError)
        self.assertEqual(Account("y"), Account("z"))
""", "tests/test_callbacks.py": """import pytest

from bank_account import Cell, foldl


def test_functions_of_the_tests_are_called_back():
    assert foldl(lambda acc, x: acc + x, [1, 2, 3], 0) == 6
    seen = []
    cell = Cell(1)
    cell.add_callback(seen.append)
    cell.set(2)
    cell.set(3)
    assert seen == [2, 3] and cell.value == 3
    with pytest.raises(ZeroDivisionError):
        foldl(lambda acc, x: acc / x, [0], 1)
""", "tests/test_humaneval.py": """from bank_account import *  # noqa


def check(candidate):
    assert candidate("x") == {"x": 1}


def test_check():
    check(histogram)
"""})
BANK_RIGHT = """from collections import Counter, namedtuple


class InsufficientFunds(ValueError):
    pass


class Account:
    def __init__(self, owner):
        self.owner = owner
        self._moves = []

    @property
    def balance(self):
        return sum(self._moves)

    def deposit(self, amount):
        if amount <= 0:
            raise ValueError("amount must be positive")
        self._moves.append(amount)
        return self.balance

    def withdraw(self, amount):
        if amount > self.balance:
            raise InsufficientFunds(f"only {self.balance} on the account")
        self._moves.append(-amount)
        return self.balance

    def __len__(self):
        return len(self._moves)

    def __getitem__(self, i):
        return self._moves[i]

    def __iter__(self):
        return iter(self._moves)

    def __eq__(self, other):
        return isinstance(other, Account) and self.balance == other.balance

    __hash__ = object.__hash__

    def __str__(self):
        return f"{self.owner}: {self.balance}"


def histogram(text):
    return Counter(text.split())


class _Pair(namedtuple("_Pair", "a b")):
    total = property(lambda self: self.a + self.b)


def ledger():
    return _Pair(1, 2)


def foldl(function, items, initial):
    for item in items:
        initial = function(initial, item)
    return initial


class Cell:
    def __init__(self, value):
        self.value = value
        self._callbacks = []

    def add_callback(self, callback):
        self._callbacks.append(callback)

    def set(self, value):
        self.value = value
        for callback in self._callbacks:
            callback(value)
"""


def test_classes_exceptions_and_humaneval_style_tests_work_through_the_proxy(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """A class, its instances, an exception class of the solution's caught by its name and by its
    builtin base with its message (pytest and unittest style, as polyglot's tests are), a Counter
    and a named tuple compared as plain data, and HumanEval's `from module import *` with
    `check(candidate)`, functions of the tests called back (polyglot's list-ops and react): all
    through the proxy."""
    work = tmp_path / "bank"
    work.mkdir()
    (work / "bank_account.py").write_text(BANK_RIGHT)
    right = asyncio.run(grade(work, BANK, sandbox=sandbox))
    assert right.passed, right.output
    (work / "bank_account.py").write_text(BANK_RIGHT.replace('"amount must be positive"', '"no"'))
    wrong = asyncio.run(grade(work, BANK, sandbox=sandbox))
    assert not wrong.passed and "1 of 5 hidden tests did not pass" in wrong.output, wrong.output


# What the solution's process sends for `add`'s answer, written straight to the wire (it runs the
# attacker's code, which can replace crew's host there): each must fail the test, never pass it.
# FORGE sets `raw`, the message (framed with its length unless it sets `framed = False`).
WIRE_ATTACK = """import json, os, struct, sys
_wire = sys.modules["crew_grading.wire"]
_send = _wire.send


def _forged(sock, message):
    if message.get("v") != "ANSWER":
        return _send(sock, message)
    seq, framed = message["seq"], True
FORGE
    sock.sendall(struct.pack(">I", len(raw)) + raw if framed else raw)


_wire.send = _forged


def add(a, b):
    return "ANSWER"
"""


def _reply(**fields: object) -> str:
    return f"    raw = json.dumps({{'seq': seq, **{fields!r}}}).encode()"


FORGED_REPLIES = {
    # Four bytes announcing a message of 2 GiB (and a little of it).
    "huge": "    raw, framed = struct.pack('>I', 0x7FFFFFF0) + b'{' * 4096, False",
    # An int with a class of its own, equal to everything: no such tag.
    "claims-a-subclass": _reply(kind="value", v={"t": "int", "class": "Yes", "v": 5}),
    "bare-json-list": _reply(kind="value", v=[5]),
    # Nested past json's own recursion limit, and past the wire's depth below it.
    "recursion-bomb": "    raw = b'{\"seq\":%d,\"kind\":\"value\",\"v\":' % seq"
                      " + b'{\"t\":\"list\",\"v\":[' * 100000 + b'5' + b']}' * 100000 + b'}'",
    "too-deep": "    v = 5\n    for _ in range(100):\n        v = {'t': 'list', 'v': [v]}\n"
                "    raw = json.dumps({'seq': seq, 'kind': 'value', 'v': v}).encode()",
    # A handle of the tests' side, which it never gave.
    "unknown-handle": _reply(kind="value", v={"t": "ref", "id": 1}),
    "someone-else-s-answer": "    raw = json.dumps({'seq': seq + 7, 'kind': 'value', 'v': 5}).encode()",
    "not-json": "    raw = b'\\xff\\xfe not json'",
    # An exception that is no Exception, and one named like pytest's skip.
    "raises-systemexit": _reply(kind="raise", cls={"t": "builtin", "name": "SystemExit"},
                                args={"t": "list", "v": [0]}, str="0"),
    "raises-skipped": _reply(kind="raise", cls={"t": "exc", "id": 99, "name": "Skipped",
                                                "module": "_pytest.outcomes",
                                                "bases": [{"t": "builtin", "name": "BaseException"}]},
                             args={"t": "list", "v": ["x"]}, str="x"),
    "dies": "    os._exit(0)",
    # A call back into a function of the tests' that it never passed.
    "unknown-callback": "    raw = json.dumps({'kind': 'callback', 'cb': 1, 'fn': 7, 'args': [],"
                        " 'kwargs': {}}).encode()",
}


@pytest.mark.parametrize("reply", sorted(FORGED_REPLIES))
def test_a_forged_or_malformed_answer_on_the_wire_fails_the_test(
    work: Path, sandbox: Sandbox, reply: str
) -> None:
    """The solution's process (its own code at import) answers `add(2, 3)` with a message of its
    making: too large, a subclass, too deep, a handle it was never given, out of turn, not JSON,
    an exception that pytest would not count as a failure, or nothing (it dies)."""
    verdict = graded(work, {"add.py": WIRE_ATTACK.replace("FORGE", FORGED_REPLIES[reply])}, sandbox)
    assert not verdict.passed, verdict.output
    assert "2 of 2 hidden tests did not pass" in verdict.output, verdict.output


# From the solution's process: find the tests' process and its files, and turn a wrong add into a
# pass: kill it, read or write its memory, write passing lines to its descriptors, rewrite the
# hidden tests (anywhere it can find them) so they pass. What it saw it prints (the grade shows it).
REACH_THE_TESTS = """import glob, os, signal
seen = []
passing = "def test_ints():\\n    pass\\n\\n\\ndef test_negative():\\n    pass\\n"
# Only what belongs to a grade (a pytest_runner process, a crew-grade folder) is touched: this
# attack must never be run unconfined, but if it were, it would not clobber the machine's files.
for pid in [p for p in os.listdir("/proc") if p.isdigit() and int(p) != os.getpid()]:
    try:
        command = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\\0", b" ").decode()
    except OSError:
        continue
    seen.append(command[:200])
    if "pytest_runner" not in command:
        continue
    for mode in ("rb", "r+b"):
        try:
            open(f"/proc/{pid}/mem", mode).close()
            seen.append(f"OPENED /proc/{pid}/mem {mode}")
        except OSError:
            pass
    for fd in glob.glob(f"/proc/{pid}/fd/*"):
        try:
            with open(fd, "a") as out:
                out.write('{"kind": "finished", "status": 0}\\n')
            seen.append("WROTE " + fd)
        except OSError:
            pass
    os.kill(int(pid), signal.SIGSTOP)
    seen.append("STOPPED " + pid)
for pattern in ("/tmp/crew-grade-*/tests/hidden/tests/test_add.py",
                "/proc/*/root/tmp/crew-grade-*/tests/hidden/tests/test_add.py",
                "/proc/*/cwd/hidden/tests/test_add.py"):
    for path in glob.glob(pattern):
        try:
            open(path, "w").write(passing)
            seen.append("REWROTE " + path)
        except OSError:
            pass
for folder in glob.glob("/tmp/crew-grade-*/tests") + glob.glob("/proc/*/root/tmp/crew-grade-*/tests"):
    try:
        open(os.path.join(folder, "conftest.py"), "w").write("import os\\nos._exit(0)\\n")
        seen.append("PLANTED " + folder)
    except OSError:
        pass
print("REACH-RAN " + " | ".join(seen))


def add(a, b):
    return a - b
"""


def test_the_solution_s_process_cannot_reach_the_tests_process_nor_their_files(
    work: Path, sandbox: Sandbox
) -> None:
    """The solution's code looks for the tests' process (kill, stop, /proc/<pid>/mem, its
    descriptors: the report pipe) and the hidden tests' files (to rewrite them as passing): it is
    in another sandbox and PID namespace, and sees neither; its wrong add fails."""
    if not sandbox.confines_files:
        pytest.skip("no sandbox on this machine: grading runs unconfined, as the grade says")
    verdict = graded(work, {"add.py": REACH_THE_TESTS}, sandbox)
    assert not verdict.passed, verdict.output
    assert "REACH-RAN" in verdict.output  # the attack ran, and said what it reached
    reached = verdict.output.split("REACH-RAN", 1)[1].split("\n", 1)[0]
    assert "REACH-RAN" in verdict.output and "crew_grading.solution_host" in reached  # it saw itself
    assert "pytest_runner" not in reached and not {"REWROTE", "PLANTED", "STOPPED"} & set(reached.split())
    assert "2 of 2 hidden tests did not pass" in verdict.output, verdict.output


def test_a_callback_bounced_between_the_processes_without_end_fails_the_test(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """`foldl` hands the tests' own lambda an object whose `+` calls that lambda again: a callback
    within a request within a callback, without end. It stops at a depth (the tests' stack is
    not the solution's to spend) and the test fails."""
    work = tmp_path / "bank"
    work.mkdir()
    (work / "bank_account.py").write_text(BANK_RIGHT.replace(
        "def foldl(function, items, initial):\n    for item in items:\n"
        "        initial = function(initial, item)\n    return initial",
        "class _Bounce:\n    def __init__(self, f):\n        self.f = f\n\n"
        "    def __add__(self, other):\n        return self.f(self, other)\n\n\n"
        "def foldl(function, items, initial):\n    return function(_Bounce(function), 1)"))
    verdict = asyncio.run(grade(work, BANK, sandbox=sandbox))
    assert not verdict.passed and "too deep" in verdict.output, verdict.output
    assert "test_functions_of_the_tests_are_called_back" in verdict.output.rsplit("crew: not passed", 1)[1]
