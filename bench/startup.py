"""Cold start of the fast commands: `crew --help` and `crew ps` (against a fake Ollama).

    python bench/startup.py [runs]

Reports the median and worst wall time of each, side by side with `python -c pass` so the
interpreter's own start is visible. A measurement, not a test: the machine is shared and noisy.
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


def timed(args: list[str], env: dict[str, str], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(args, env=env, capture_output=True, check=True)
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 15
    fake = FakeOllama().start()
    fake.preload("qwen3:14b", num_ctx=32768)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CREW_OLLAMA_HOST": fake.url}
    cases = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "crew --help": [sys.executable, "-m", "crew", "--help"],
        "crew ps": [sys.executable, "-m", "crew", "ps"],
    }
    print(f"{'command':<16} {'median s':>9} {'max s':>7}  ({runs} runs)")
    for name, args in cases.items():
        t = timed(args, env, runs)
        print(f"{name:<16} {statistics.median(t):>9.3f} {max(t):>7.3f}")
    fake.stop()


if __name__ == "__main__":
    main()
