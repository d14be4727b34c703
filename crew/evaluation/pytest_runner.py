"""The program grading runs in the sandbox: pytest, reporting each result to crew on a pipe.

Run as `python -I -B pytest_runner.py REPORT_FD SOLUTION_DIR PYTEST_ARGS...`, with a one-line
token on stdin. It reads the token and imports pytest before the solution folder is on
`sys.path` (so nothing the graded code named `pytest`, `pluggy` or `_pytest` is what runs), then
runs pytest with a plugin that writes one JSON line per event to REPORT_FD, each carrying the
token: the collected test ids, every phase's outcome, and the session's exit status.

It imports nothing from crew: it runs isolated (`-I`), with only the standard library and pytest.
The graded code runs in this same process, so this is no barrier against code that sets out to
patch pytest itself (see grading.py); it keeps out what can be planted as files, early exits,
forged output and forged report lines written without the token.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any


def main(argv: list[str]) -> int:
    report_fd, solution, *args = argv
    token = sys.stdin.readline().strip()
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
            send(kind="test", id=report.nodeid, when=report.when, outcome=report.outcome)

        def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
            send(kind="finished", status=int(exitstatus))

    # Last, and only now: the graded modules become importable by the tests.
    sys.path.insert(0, solution)
    return int(pytest.main(args, plugins=[Report()]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
