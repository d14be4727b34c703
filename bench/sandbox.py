"""The cost of the agents' defences: a `run_command` of `true` in each sandbox, and a file tool
call through the workspace's descriptor against the same read or write by name.

    python bench/sandbox.py [calls] [runs]

Every series runs in the same process, interleaved call by call (one of each in turn), so the
machine's noise falls on all alike; each run reports each series' median, and the table gives
the median of those medians with their range over the runs. The by-name series is what the
tools did before (open the resolved path by name, which a racing command could redirect): it
is the floor the descriptor-based tools are measured against, not something crew still does.
A measurement, not a test.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from crew.workspace import cgroup  # noqa: E402
from crew.workspace.repo import Workspace  # noqa: E402
from crew.workspace.sandbox import Sandbox, _works, find_bwrap  # noqa: E402
from crew.workspace.tools import UNCONFINED, make_tools, run_in_workspace  # noqa: E402

Call = Callable[[], Awaitable[object]]


def sandboxes() -> dict[str, Sandbox]:
    found = find_bwrap()
    kinds = {"none": UNCONFINED}
    if found is not None:
        kinds["bubblewrap"] = Sandbox("bwrap", program=found[0], bwrap_version=found[1])
    if _works(Sandbox("unshare")):
        kinds["unshare"] = Sandbox("unshare")
    return kinds


async def one_run(series: dict[str, Call], calls: int) -> dict[str, float]:
    """Each series' median seconds per call, the series interleaved call by call."""
    times: dict[str, list[float]] = {name: [] for name in series}
    for _ in range(calls):
        for name, call in series.items():
            started = time.perf_counter()
            await call()
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}


def report(title: str, runs: list[dict[str, float]], unit: float, label: str) -> None:
    print(f"\n{title}\n\n| series | median {label} | range over {len(runs)} runs |\n| --- | --- | --- |")
    for name in runs[0]:
        medians = [run[name] / unit for run in runs]
        print(f"| {name} | {statistics.median(medians):.1f} | {min(medians):.1f} - {max(medians):.1f} |")


async def main(calls: int, runs: int) -> None:
    with tempfile.TemporaryDirectory(prefix="crew-bench-") as folder:
        workspace = Workspace.create(Path(folder) / "workspaces")
        commands = {name: (lambda s=s: run_in_workspace(workspace, "true", 30, s))
                    for name, s in sandboxes().items()}
        tools = {t.__name__: t for t in make_tools(workspace, write=True)}
        (workspace.root / "src").mkdir()
        text = "x = 1\n" * 200  # a 1.2 kB source file
        target = workspace.root / "src" / "mod.py"
        target.write_text(text)

        async def by_name_read() -> object:
            return await asyncio.to_thread(target.read_text)

        async def by_name_write() -> object:
            return await asyncio.to_thread(target.write_text, text)

        files: dict[str, Call] = {
            "read_file (descriptor, no link followed)": lambda: tools["read_file"]("src/mod.py"),
            "read by name (the floor)": by_name_read,
            "write_file (descriptor, atomic replace)": lambda: tools["write_file"]("src/mod.py", text),
            "write by name (the floor)": by_name_write,
        }
        command_runs = [await one_run(commands, max(1, calls // 20)) for _ in range(runs)]
        file_runs = [await one_run(files, calls) for _ in range(runs)]
    where = "a cgroup per command" if cgroup.available() else "no cgroup (rlimits only)"
    report(f"run_command `true` ({max(1, calls // 20)} calls a run, {where})", command_runs, 1e-3, "ms")
    report(f"File tools ({calls} calls a run, 1.2 kB file)", file_runs, 1e-6, "µs")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 1000,
                     int(sys.argv[2]) if len(sys.argv) > 2 else 5))
