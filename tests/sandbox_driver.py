"""Runs one command in crew's sandbox, from a process of its own: the hostile sandbox tests start
it as themselves (root in CI) and as uid 65534 (`setpriv`), so each attack is tried both ways.

    python -m tests.sandbox_driver '<json: kind, workspace, command, hidden, readable, limits, timeout>'

Prints crew's answer to the model (what run_command returns). The secret in this process's
environment (SANDBOX_TEST_SECRET) is what a command must not find.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from crew.workspace.repo import Workspace
from crew.workspace.sandbox import Limits, Sandbox, find_bwrap
from crew.workspace.tools import run_in_workspace


def main(spec: dict[str, object]) -> None:
    kind = str(spec["kind"])
    found = find_bwrap()
    extra = {"program": found[0], "bwrap_version": found[1]} if kind == "bwrap" and found else {}
    limits = Limits(**spec.get("limits", {}))  # type: ignore[arg-type]
    sandbox = Sandbox(kind, readable=tuple(Path(p) for p in spec.get("readable", [])),  # type: ignore[arg-type,attr-defined]
                      hidden=tuple(Path(p) for p in spec.get("hidden", [])),  # type: ignore[attr-defined]
                      limits=limits, **extra)  # type: ignore[arg-type]
    workspace = Workspace(Path(str(spec["workspace"])), base="HEAD")
    answer = asyncio.run(run_in_workspace(workspace, str(spec["command"]), float(spec.get("timeout", 30)),  # type: ignore[arg-type]
                                          sandbox))
    sys.stdout.write(answer)


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
