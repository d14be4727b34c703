"""A build of llama.cpp that cannot run here is said before a run starts: a model is tried once.

llama.cpp built natively dies with SIGILL at the first token on virtual machines that advertise
CPU instructions (AMX, AVX-512) the hypervisor traps. The model's worker process
(`crew.backends.worker`) keeps crew alive whenever the library crashes; this check says at load,
not at the first answer, that the build itself is wrong. Before a GGUF is loaded the first
time, a child loads it and generates one token. A crash there becomes one line naming the cause and the
command that fixes it. The verdict is kept per build of the library and per model file, so the
check costs one child process per machine and build, not one per run.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from crew.errors import BackendError
from crew.files import write_json

PROBE = (
    "import sys\n"
    "from llama_cpp import Llama\n"
    "m = Llama(model_path=sys.argv[1], n_ctx=256, n_threads=1, verbose=False)\n"
    "m.create_completion('Hi', max_tokens=1)\n"
)
PROBE_TIMEOUT_S = 300.0
PORTABLE_BUILD = (
    'CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON" '
    "pip install --force-reinstall --no-cache-dir --no-deps llama-cpp-python"
)


class EmbeddedCrash(BackendError):
    """The embedded library crashes on this machine."""


def cache_file() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "crew" / "native-check.json"


def build_fingerprint() -> str:
    """Which build of llama.cpp this is: its shared libraries' names, sizes and times."""
    import importlib.util

    spec = importlib.util.find_spec("llama_cpp")
    folder = Path(spec.origin).parent / "lib" if spec and spec.origin else None
    parts = [sys.version]
    if folder is not None and folder.is_dir():
        for lib in sorted(folder.iterdir()):
            stat = lib.stat()
            parts.append(f"{lib.name}:{stat.st_size}:{int(stat.st_mtime)}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def check_model(path: Path) -> None:
    """Raise EmbeddedCrash if loading `path` and generating a token kills the process."""
    stat = path.stat()
    key = f"{build_fingerprint()}:{path.resolve()}:{stat.st_size}"
    store = cache_file()
    verdicts = _read(store)
    verdict = verdicts.get(key)
    if verdict is None:
        verdict = _probe(path)
        if verdict is not None:  # a Python error in the child is not a verdict on the build
            verdicts[key] = verdict
            try:
                store.parent.mkdir(parents=True, exist_ok=True)
                write_json(store, verdicts)
            except OSError:
                pass  # a read-only home: check again next time
    if verdict and verdict != "ok":
        raise EmbeddedCrash(verdict)


def _probe(path: Path) -> str | None:
    try:
        done = subprocess.run([sys.executable, "-c", PROBE, str(path)], capture_output=True,
                              timeout=PROBE_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return None
    if done.returncode == 0:
        return "ok"
    if done.returncode < 0:
        try:
            name = signal.Signals(-done.returncode).name
        except ValueError:
            name = f"signal {-done.returncode}"
        cause = ("an instruction this CPU (or its hypervisor) does not allow: a native build"
                 if name == "SIGILL" else "a crash in the native library")
        return (f"the embedded model crashes this machine's llama.cpp build ({name}: {cause}); "
                f"rebuild it portably: {PORTABLE_BUILD}, or use Ollama (--backend ollama)")
    return None


def _read(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text())
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}
