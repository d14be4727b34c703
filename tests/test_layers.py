"""The house: no import loop anywhere in crew, and the layer contract (import-linter) that
.ci/run checks, shown to fail when an upward import or AutoGen below the clients is planted."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CREW = ROOT / "crew"
MAX_LINES = 450


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, name: str, modules: set[str]) -> Iterator[str]:
    """Every crew module `path` imports, wherever the import stands (lazy, TYPE_CHECKING too)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # `from a import b` imports a.b when b is a module, else a.
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        yield from (t for t in targets if t in modules)


def import_graph(root: Path) -> dict[str, set[str]]:
    files = {_module_name(p, root): p for p in (root / "crew").rglob("*.py")}
    return {name: set(_imports(path, name, set(files))) - {name} for name, path in files.items()}


def loops(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_module_of_crew_imports_itself_back_through_others() -> None:
    graph = import_graph(ROOT)
    assert "crew.settings" in graph and graph["crew.terminal.cli"]  # the walk read the tree
    assert loops(graph) == []


def test_the_loop_finder_finds_a_planted_lazy_loop(tmp_path: Path) -> None:
    shutil.copytree(CREW, tmp_path / "crew")
    settings = tmp_path / "crew" / "settings.py"
    settings.write_text(settings.read_text() + "\n\ndef _late() -> None:\n"
                        "    from crew.backends.registry import backend_names  # noqa\n")
    found = loops(import_graph(tmp_path))
    assert any("crew.settings" in component for component in found)


def test_no_module_over_the_size_a_reader_can_hold() -> None:
    sizes = {p.relative_to(ROOT): len(p.read_text().splitlines()) for p in CREW.rglob("*.py")}
    assert {str(p): n for p, n in sizes.items() if n > MAX_LINES} == {}


def test_at_most_twelve_modules_stand_flat_in_crew() -> None:
    flat = [p.name for p in CREW.glob("*.py") if p.name not in {"__init__.py", "__main__.py"}]
    assert len(flat) <= 12, flat


def test_every_init_only_names_what_its_package_offers() -> None:
    for init in CREW.rglob("__init__.py"):
        tree = ast.parse(init.read_text())
        logic = [n for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)]
        assert logic == [], f"{init.relative_to(ROOT)} defines {[n.name for n in logic]}"


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    program = Path(sys.executable).with_name("lint-imports")
    if not program.exists():
        pytest.skip("import-linter is not installed (pip install -e '.[lint]')")
    return subprocess.run([str(program), "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
                          cwd=root, env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=120, check=False)


def test_the_layer_contract_holds_on_the_tree() -> None:
    result = _lint_imports(ROOT)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(("module", "planted", "broken"), [
    ("crew/backends/base.py", "from crew.clients.base import ModelClient  # noqa",
     "crew.backends is not allowed"),
    ("crew/residency/slots.py", "import autogen_core  # noqa",
     "crew.residency is not allowed to import autogen_core"),
    ("crew/session.py", "from crew.terminal import renderers  # noqa", "crew.session is not allowed"),
    ("crew/commands/run.py", "from crew.serve import serve  # noqa", "crew.commands is not allowed"),
])
def test_the_layer_contract_fails_when_an_import_breaks_it(
    tmp_path: Path, module: str, planted: str, broken: str
) -> None:
    shutil.copytree(CREW, tmp_path / "crew")
    target = tmp_path / module
    target.write_text(target.read_text() + f"\n\ndef _planted() -> None:\n    {planted}\n")
    result = _lint_imports(tmp_path)
    assert result.returncode != 0
    assert broken in result.stdout
