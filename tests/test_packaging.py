"""The built wheel, installed without the source tree, runs the team (prompts included)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from crew.residency.budget import GB
from tests.fake_ollama import FakeOllama
from tests.helpers import ARCHITECT, CODER, REVIEWER

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_the_wheel_installed_non_editable_runs_crew(ollama: FakeOllama, tmp_path: Path) -> None:
    # Built from a copy: setuptools leaves build/ and egg-info behind in the tree it builds.
    source = tmp_path / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    for part in ("crew", "prompts"):
        shutil.copytree(ROOT / part, source / part, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(dist), str(source)], check=True, capture_output=True, timeout=180)
    (wheel,) = dist.glob("crew-*.whl")
    shipped = zipfile.ZipFile(wheel).namelist()
    assert {"crew/prompts/architect.md", "crew/prompts/coder.md", "crew/prompts/reviewer.md",
            "crew/prompts/review.md", "crew/backends/ollama.py", "crew/py.typed"} <= set(shipped)

    # A fresh venv holding only the wheel; crew's dependencies come from this interpreter's
    # site-packages through a .pth line (added paths are not site dirs: the editable install's
    # finder there is not loaded, so only the wheel's crew can be imported).
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "crew-test-deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
                    "--no-index", str(wheel)], check=True, capture_output=True, timeout=180)

    ollama.capacity = 60 * GB
    ollama.script(ARCHITECT, "Plan.\nNEXT: Coder")
    ollama.script(CODER, "Done.\nNEXT: Reviewer")
    ollama.script(REVIEWER, "APPROVED")
    work = tmp_path / "work"
    work.mkdir()
    (work / "spec.md").write_text("Write hello.py.\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CREW_", "OLLAMA_", "PYTHON"))}
    env.update(CREW_OLLAMA_HOST=ollama.url, CREW_MEMORY_BUDGET_GB="60",
               CREW_STATE_DIR=str(tmp_path / "state"))
    where = subprocess.run([str(python), "-c", "import crew; print(crew.__file__)"], cwd=work, env=env,
                           capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(site))
    done = subprocess.run([str(venv / "bin" / "crew"), "run", "spec.md"], cwd=work, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    (workspace,) = (work / "workspaces").iterdir()
    assert json.loads((workspace / "summary.json").read_text())["approved"] is True
    # The agents got the shipped prompts.
    system = [m["content"] for m in ollama.chats[0]["messages"] if m["role"] == "system"]
    assert system == [(ROOT / "prompts" / "architect.md").read_text()]
