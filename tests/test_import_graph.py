"""The package's import graph has no cycle, every module imports on its own, and no module is too long.

The graph is read statically from every ``import`` statement, module level and inside functions alike: a
deferred import is still a dependency, and a cycle hidden in a function is still a cycle.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "fused_dsconv"
MAX_LINES = 450


def _modules() -> dict[str, Path]:
    mods = {}
    for f in PACKAGE.rglob("*.py"):
        parts = list(f.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = f
    return mods


def _targets(mod: str, path: Path, node, mods: dict) -> list[str]:
    """The package modules one import statement in ``mod`` loads (the deepest existing module per name)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        if node.level:
            base = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
            base = base[: len(base) - node.level + 1]
            prefix = ".".join(base + ([node.module] if node.module else []))
        else:
            prefix = node.module or ""
        names = [f"{prefix}.{a.name}" for a in node.names]
    found = []
    for name in names:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        if name:
            found.append(name)
    return found


def import_graph() -> dict[str, set[str]]:
    mods = _modules()
    graph = {m: set() for m in mods}
    for mod, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                graph[mod].update(t for t in _targets(mod, path, node, mods) if t != mod)
    return graph


def _cycle(graph: dict[str, set[str]]):
    """One cycle as a list of modules, or None (depth-first search, white/grey/black)."""
    state, stack = {}, []

    def visit(n):
        state[n] = "grey"
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == "grey":
                return stack[stack.index(m) :] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        state[n] = "black"
        return None

    for n in sorted(graph):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def test_the_graph_reader_sees_a_cycle():
    """The check below could fail: a planted cycle, and the edges of a real module, are found."""
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
    graph = import_graph()
    assert "fused_dsconv.checks" in graph["fused_dsconv.ops"]
    assert "fused_dsconv.backends.base" in graph["fused_dsconv.backends.native"]


def test_no_import_cycle_in_the_package():
    cycle = _cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_contract_imports_nothing_of_the_package():
    assert import_graph()["fused_dsconv.contract"] == set()


@pytest.mark.slow
def test_every_module_imports_alone():
    """Each module in a fresh interpreter (a cycle or a missing import shows as an ImportError there)."""
    names = sorted(m for m in _modules() if m != "fused_dsconv.__main__")  # __main__ runs the CLI
    code = "import importlib, sys\nfor n in sys.argv[1:]:\n    importlib.import_module(n)\n"
    for name in names:  # one interpreter per module: what one import leaves loaded must not hide another's
        r = subprocess.run([sys.executable, "-c", code, name], cwd=ROOT, capture_output=True, text=True)
        assert r.returncode == 0, f"import {name} failed:\n{r.stderr[-2000:]}"


def test_no_python_file_in_the_package_is_over_the_limit():
    long = {
        str(p.relative_to(ROOT)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"over {MAX_LINES} lines: {long}"
