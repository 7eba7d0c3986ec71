"""The package's import graph has no cycle, every module imports on its own, and no module is too long.

The graph is read statically from every ``import`` statement, module level and inside functions alike: a
deferred import is still a dependency, and a cycle hidden in a function is still a cycle.
"""

import ast
import os
import subprocess
import sys
from pathlib import Path


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


# A forked child per module, from a parent that has loaded only torch: the package's modules still import
# one per fresh process (what one leaves loaded cannot hide another's failure), at a fraction of the cost of
# starting and importing torch in 40 interpreters.
_FORK_IMPORTS = """
import importlib, os, sys, traceback
import torch  # noqa: F401  (third-party only: nothing of fused_dsconv is loaded before a fork)
assert not [m for m in sys.modules if m.startswith("fused_dsconv")]
failed = []
for name in sys.argv[1:]:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            importlib.import_module(name)
            code = 0
        except BaseException:
            os.write(w, traceback.format_exc()[-2000:].encode())
            code = 1
        os._exit(code)
    os.close(w)
    with os.fdopen(r) as f:
        err = f.read()
    if os.waitpid(pid, 0)[1] != 0:
        failed.append(f"import {name} failed:\\n{err}")
print("\\n".join(failed))
sys.exit(1 if failed else 0)
"""


def test_every_module_imports_alone():
    """Each module in a fresh process (a cycle or a missing import shows as an ImportError there)."""
    names = sorted(m for m in _modules() if m != "fused_dsconv.__main__")  # __main__ runs the CLI
    r = subprocess.run([sys.executable, "-c", _FORK_IMPORTS, *names], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]


def test_the_per_module_import_check_sees_a_failure(tmp_path):
    """The check above could fail: a module that imports a missing name is reported, by name."""
    (tmp_path / "broken_mod.py").write_text("from fused_dsconv.contract import no_such_name\n")
    r = subprocess.run(
        [sys.executable, "-c", _FORK_IMPORTS, "fused_dsconv.contract", "broken_mod"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])},
    )
    assert r.returncode == 1 and "import broken_mod failed" in r.stdout and "no_such_name" in r.stdout, r.stdout


def test_no_python_file_in_the_package_is_over_the_limit():
    long = {
        str(p.relative_to(ROOT)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"over {MAX_LINES} lines: {long}"
