"""Cold start of the fast commands: `crew --help` and `crew ps` (against a fake Ollama).

    python bench/startup.py [runs]

Each round runs every case once, in turn, so the shared machine's noise falls on all of them
alike. Beside crew's commands: `python -c pass` (the interpreter's own start); the floor of any
command that reads crew's settings (`import pydantic_settings, psutil`, the stack's own import
cost); and what `crew ps` cost when it read /api/ps through the official client (`import ollama`
plus `ollama.AsyncClient.ps` after loading settings), so both show as ratios from the same run.
A measurement, not a test.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fake_ollama import FakeOllama  # noqa: E402

# `crew ps` as it was: the same settings and budget, then the official client's ps().
PS_VIA_OLLAMA = """
import asyncio
import ollama
from crew.residency.budget import resolve_budget
from crew.settings import load_settings
settings = load_settings()
resolve_budget(settings.memory_budget_gb)
async def read():
    client = ollama.AsyncClient(host=settings.ollama_host)
    return await client.ps()
print(asyncio.run(read()))
"""


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 15
    fake = FakeOllama().start()
    fake.preload("qwen3:14b", num_ctx=32768)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CREW_OLLAMA_HOST": fake.url}
    cases = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "settings floor": [sys.executable, "-c", "import pydantic_settings, psutil"],
        "crew --help": [sys.executable, "-m", "crew", "--help"],
        "crew ps": [sys.executable, "-m", "crew", "ps"],
        "ps via ollama pkg": [sys.executable, "-c", PS_VIA_OLLAMA],
    }
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(runs):
        for name, args in cases.items():
            started = time.perf_counter()
            subprocess.run(args, env=env, capture_output=True, check=True)
            times[name].append(time.perf_counter() - started)
    fake.stop()
    base = statistics.median(times["crew ps"])
    print(f"{'command':<18} {'median s':>9} {'max s':>7} {'/ crew ps':>10}  ({runs} rounds)")
    for name, t in times.items():
        median = statistics.median(t)
        print(f"{name:<18} {median:>9.3f} {max(t):>7.3f} {median / base:>10.2f}")


if __name__ == "__main__":
    main()
