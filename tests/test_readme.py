"""README.md's code runs as written, and CI runs exactly the test command it gives."""

import re
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end > 0 else None]


def test_use_snippets_run_as_written_on_this_machine():
    """Every Python block of "Use" (the block, its unfused equivalent, the classifier), in order, in one
    namespace, as a reader pastes them: on a CPU-only machine too."""
    blocks = re.findall(r"```python\n(.*?)```", _section("Use"), re.S)
    assert len(blocks) >= 3
    ns: dict = {}
    for code in blocks:
        exec(compile(code, "README.md", "exec"), ns)  # noqa: S102
    assert ns["y"].shape == (8, 128, 28, 28)
    assert ns["device"] == ("cuda" if torch.cuda.is_available() else "cpu")


def test_ci_runs_the_readme_test_command():
    setup = _section("Set up")
    line = next(ln for ln in setup.splitlines() if 'pip install ".[test]"' in ln)
    command = line.split("&&", 1)[1].split("#")[0].strip()
    assert command == "pytest tests && pytest bench"
    ci = (ROOT / ".ci" / "run").read_text()
    assert f"( {command} )" in ci or command in ci.splitlines()
