"""The program grading runs for the hidden tests: pytest, reporting each result to crew on a pipe.

Run as `python -I -B pytest_runner.py REPORT_FD SOLUTION_FD LIB TIMEOUT NAMES PYTEST_ARGS...`,
with a one-line token on stdin. It reads the token, makes its process non-dumpable (no ptrace,
no /proc/<pid>/mem for a process of the same user), imports pytest and crew's wire to the
solution (the package `crew_grading` in LIB), then installs the import hook that answers the
solution's top-level module names (NAMES, comma-separated) through the socket on SOLUTION_FD
(remote.py). The solution's code never runs in this process: it is in another one, in a sandbox
of its own. A plugin writes one JSON line per event to REPORT_FD, each carrying the token: the
collected test ids, every phase's outcome, and the session's exit status.

It imports nothing from crew's installed package: it runs isolated (`-I`), with the standard
library, pytest and the copy of wire.py and remote.py beside it.
"""

from __future__ import annotations

import ctypes
import importlib
import json
import os
import socket
import sys
from typing import Any

_PR_SET_DUMPABLE = 4
# Python's default (4,300 digits) refuses a right answer of a few thousand digits more; JSON
# parsing of an int is quadratic, so not unbounded: a huge one costs the grade its timeout.
MAX_INT_DIGITS = 200_000


def _not_dumpable() -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: the sandboxes' PID namespaces are the barrier there


def main(argv: list[str]) -> int:
    report_fd, solution_fd, lib, timeout, names, *args = argv
    token = sys.stdin.readline().strip()
    _not_dumpable()
    sys.set_int_max_str_digits(MAX_INT_DIGITS)  # a big answer (a factorial) crosses the wire as JSON
    report = os.fdopen(int(report_fd), "w", encoding="utf-8")

    def send(**record: Any) -> None:
        report.write(json.dumps({"token": token, **record}) + "\n")
        report.flush()

    import pytest

    class Report:
        def pytest_collectreport(self, report: pytest.CollectReport) -> None:
            if report.failed:
                send(kind="collect_error", id=report.nodeid)

        def pytest_collection_finish(self, session: pytest.Session) -> None:
            send(kind="collected", ids=[item.nodeid for item in session.items])

        def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
            # A subtest reports under its test's id: counted apart, and every one must pass.
            kind = "subtest" if type(report).__name__ == "SubtestReport" else "test"
            send(kind=kind, id=report.nodeid, when=report.when, outcome=report.outcome)

        def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
            send(kind="finished", status=int(exitstatus))

    sys.path.insert(0, lib)
    remote = importlib.import_module("crew_grading.remote")
    del sys.path[0]
    # Last, and only now: the solution's modules become importable, as handles to its process.
    remote.install(socket.socket(fileno=int(solution_fd)), [n for n in names.split(",") if n],
                   float(timeout))
    return int(pytest.main(args, plugins=[Report()]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
