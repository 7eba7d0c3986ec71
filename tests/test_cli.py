"""The command line as a user meets it: help text, pipes, Ctrl-C, and the README's commands in order.

Subprocesses only where the behaviour is the process's own (a closed stdout, a real SIGINT, the exit
status); everything else runs in-process. Tiny models and a few images keep it fast.
"""

import argparse
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import fused_dsconv
from fused_dsconv.cli import COMMANDS
from fused_dsconv.cli import main as cli

ROOT = Path(__file__).resolve().parents[1]
# subprocesses import the fused_dsconv these tests import (the checkout, or the installed package)
_PACKAGE_PARENT = str(Path(fused_dsconv.__file__).resolve().parents[1])
ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join([_PACKAGE_PARENT, os.environ.get("PYTHONPATH", "")]),
    "PYTHONUNBUFFERED": "1",
}
# reST/Sphinx markup, and pointers to files of the repository that a wheel does not ship
NOT_IN_HELP = re.compile(r"``|:(?:func|class|meth|mod|ref|doc):`|\bdocs/|README|DESIGN|NOTES\.md")


@pytest.mark.parametrize("command", [None] + [c[0] for c in COMMANDS])
def test_help_is_plain_text_and_names_no_repository_file(command, capsys):
    with pytest.raises(SystemExit) as e:
        cli(["--help"] if command is None else [command, "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "usage:" in text
    assert not NOT_IN_HELP.search(text), NOT_IN_HELP.search(text).group(0)


def test_train_module_help_is_the_train_command(capsys):
    from fused_dsconv.train import main as train_main

    with pytest.raises(SystemExit):
        train_main(["--help"])
    text = capsys.readouterr().out
    assert text.startswith("usage: python -m fused_dsconv train") and "--resume RUN" in text
    assert not NOT_IN_HELP.search(text)


# Each command writes into a pipe whose reader has gone (``| head`` after head exits). The process
# must end quietly, also at interpreter exit, when Python flushes stdout once more.
_CLOSED_PIPE_DRIVER = """
import os, sys
from fused_dsconv.cli import main
for cmd in {commands!r}:
    r, w = os.pipe()
    os.close(r)
    os.dup2(w, 1)
    os.close(w)
    try:
        rc = main(cmd)
    except SystemExit as e:
        rc = e.code
    print("rc", rc, file=sys.stderr)
"""


@pytest.mark.slow
def test_closed_stdout_pipe_ends_quietly():
    commands = [["models", "--table"], ["models"], ["info"], ["train", "--help"], ["--version"]]
    r = subprocess.run(
        [sys.executable, "-c", _CLOSED_PIPE_DRIVER.format(commands=commands)],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        timeout=300,
    )
    for bad in ("Traceback", "BrokenPipe", "Exception ignored"):
        assert bad not in r.stderr, r.stderr
    # 141: as if killed by SIGPIPE. argparse's own --help/--version printing drops a write error and exits 0.
    assert r.stderr.split() == ["rc", "141"] * 3 + ["rc", "0"] * 2, r.stderr
    assert r.returncode == 0


@pytest.mark.slow
def test_ctrl_c_says_how_to_resume_and_resume_keeps_the_run_settings(tmp_path, capsys):
    pytest.importorskip("PIL")
    from test_data import _jpeg

    for c in ("a", "b"):
        for i in range(24):
            _jpeg(tmp_path / "imgs" / c / f"{i}.png", size=16, value=9 * i + (40 if c == "b" else 0))
    run = tmp_path / "run dir"  # a space: the printed command must quote it
    # an image folder read by a DataLoader worker: a Ctrl-C that lands while the workers of the next
    # epoch are forked must not be lost
    argv = [
        "train",
        "--alpha",
        "0.25",
        "--epochs",
        "3",
        "--data",
        str(tmp_path / "imgs"),
        "--resolution",
        "32",
        "--batch-size",
        "8",
        "--workers",
        "1",
        "--threads",
        "1",
        "--no-progress",
        "--out",
        str(run),
    ]
    # SIGINT to the process group, as a terminal sends it, with the default disposition even if this
    # test runs with SIGINT ignored
    p = subprocess.Popen(
        [sys.executable, "-m", "fused_dsconv", *argv],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        for line in p.stdout:
            if line.startswith("epoch   1/3"):
                os.killpg(p.pid, signal.SIGINT)
                break
        out, err = p.communicate(timeout=300)
    finally:
        p.kill()
    assert p.returncode == 130, (out, err)
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    m = re.fullmatch(r"interrupted after epoch ([12]) of 3 \(saved in .*\); continue with: (.*)", err.strip())
    assert m, err
    saved_epoch, command = int(m.group(1)), shlex.split(m.group(2))
    assert command[:4] == ["python", "-m", "fused_dsconv", "train"] and command[4:] == ["--resume", str(run)]

    assert cli(command[3:]) == 0  # the printed command, as printed: no --epochs, no --workers
    text = capsys.readouterr().out
    assert f"resumed after epoch {saved_epoch} of 3" in text and "none changed on the command line" in text
    log = (run / "log.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in log[1:]] == ["1", "2", "3"]  # the run's 3 epochs, not the default 15


def test_ctrl_c_in_other_commands_is_one_line(monkeypatch, capsys):
    import fused_dsconv.cli as cli_module

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_module, "COMMANDS", [("models", "h", lambda p: None, interrupted)])
    assert cli(["models"]) == 130
    assert capsys.readouterr().err == "interrupted\n"


def test_ctrl_c_in_a_sweep_names_the_sweep_command(tmp_path, monkeypatch, capsys):
    import fused_dsconv.train as train

    def interrupted(args, out=print):
        raise train.Interrupted("interrupted after epoch 1 of 3")

    monkeypatch.setattr(train, "run", interrupted)
    argv = ["sweep", "--alphas", "0.25", "--deltas", "1,2", "--epochs", "3", "--out", str(tmp_path / "s w")]
    assert cli(argv) == 130
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "interrupted in cell 1/2" in err, err
    assert shlex.split(err.split("Continue with: ")[1]) == ["fused-dsconv", *argv]


def _commands(markdown: str, heading: str) -> list[list[str]]:
    """The fused-dsconv command lines in the ``bash`` blocks of one ``## heading`` section."""
    section = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", markdown, re.S | re.M)
    assert section, heading
    found = []
    for block in re.findall(r"```bash\n(.*?)```", section.group(1), re.S):
        for line in block.splitlines():
            m = re.search(r"(?:^|&&\s*)(fused-dsconv\s[^#]*)", line)
            if m:
                found.append(shlex.split(m.group(1))[1:])
    return found


@pytest.mark.slow
def test_readme_quick_start_writes_where_the_next_commands_read(tmp_path, monkeypatch, capsys):
    pytest.importorskip("onnxruntime")  # the README's export line has --check
    readme = (ROOT / "README.md").read_text()
    setup = [c for c in _commands(readme, "Set up") if c[0] == "train"]
    train = _commands(readme, "Train the classifier")
    assert len(setup) == 1 and {c[0] for c in train} >= {"eval", "export"}, (setup, train)
    monkeypatch.chdir(tmp_path)  # the commands as written, run where a new user would: relative paths
    quick = ["--epochs", "1", "--limit-train", "32", "--limit-val", "16", "--no-progress"]  # only shorter
    assert cli([*setup[0], *quick]) == 0
    for command in train:
        if command[0] != "train":
            assert cli(command) == 0, command
    assert "onnxruntime vs PyTorch" in capsys.readouterr().out


def test_training_doc_commands_chain():
    """docs/training.md: the run folder its train command writes is the one eval and export read."""
    from fused_dsconv.evaluation import add_arguments as add_eval_arguments
    from fused_dsconv.export import add_arguments as export_args
    from fused_dsconv.train_args import add_arguments

    def parse(add, argv):
        p = argparse.ArgumentParser()
        add(p)
        return p.parse_args(argv)

    for doc, heading in ((ROOT / "docs" / "training.md", "Train the classifier"),):
        cmds = _commands(doc.read_text(), heading)
        out = parse(add_arguments, next(c for c in cmds if c[0] == "train")[1:]).out
        assert out, "a train command without --out writes to a numbered folder the next commands cannot name"
        for c in cmds:
            if c[0] in ("eval", "export"):
                assert parse(add_eval_arguments if c[0] == "eval" else export_args, c[1:]).checkpoint == out, c
