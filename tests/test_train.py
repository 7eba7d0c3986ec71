"""Training on the embedded digits: accuracy, exact resume, CLI errors, sweep, and the fused-vs-unfused
benchmark (bench/compare_unfused.py).

Tiny models (alpha 0.25, 32x32 inputs: rho = 32/224) and one CPU thread keep this file fast.
"""

import csv
import json
import os
import sys
from pathlib import Path

import pytest
import torch

from fused_dsconv import checkpoint as ckpt
from fused_dsconv.cli import main as cli
from fused_dsconv.models import unfused_twin

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import compare_unfused  # noqa: E402  (bench/compare_unfused.py, the benchmark)

pytestmark = [pytest.mark.slow]  # minutes on the 2-core CPU: training runs

TINY = ["--alpha", "0.25", "--threads", "1", "--no-progress"]


@pytest.fixture(autouse=True)
def _one_thread():  # on a small shared CPU, one thread is much faster than oversubscribed ones
    n, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    bench, cudnn_det = torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)  # train sets process-wide flags (--deterministic, cudnn.benchmark): put them back
    torch.use_deterministic_algorithms(det)
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = bench, cudnn_det


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(path))


def test_short_run_learns_digits(tmp_path, capsys):
    # MEASURED (CPU, seed 0, 1 thread): 4 epochs give val accuracy 95.49% (val loss 0.174); chance is 10%.
    out = tmp_path / "run"
    assert cli(["train", *TINY, "--epochs", "4", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["best_val_acc"] >= 0.85, summary
    assert summary["resolution"] == 32 and summary["model"] == "jointnet_a025_d3"
    rows = list(csv.DictReader(open(out / "log.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    assert set(rows[0]) == {"epoch", "train_loss", "train_acc", "val_loss", "val_acc", "images_per_s", "seconds", "lr"}
    for name in ("best.safetensors", "last.safetensors", "last_state.pt", "config.json"):
        assert (out / name).is_file()
    umask = os.umask(0)
    os.umask(umask)
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in out.iterdir()}
    assert set(modes.values()) == {oct(0o666 & ~umask)}, modes  # checkpoints like every other run file
    text = capsys.readouterr().out
    assert "epoch   4/4" in text and "best: epoch" in text

    assert cli(["eval", str(out), "--threads", "1"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["images"] == 355 and result["acc"] == pytest.approx(summary["best_val_acc"], abs=1e-9)


def test_resume_is_exact(tmp_path, capsys):
    common = [*TINY, "--deterministic", "--limit-train", "192", "--limit-val", "64", "--batch-size", "32"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert cli(["train", *common, "--epochs", "2", "--out", str(straight)]) == 0
    assert cli(["train", *common, "--epochs", "1", "--out", str(split)]) == 0
    with pytest.raises(SystemExit, match="--batch-size 16: the resumed run has --batch-size 32"):
        cli(["train", "--resume", str(split), "--epochs", "2", "--batch-size", "16"])  # would not continue it
    capsys.readouterr()
    assert cli(["train", "--resume", str(split), "--epochs", "2"]) == 0  # threads etc. from the saved run
    assert "changed on the command line: --epochs 1 -> 2" in capsys.readouterr().out
    a, b = _weights(straight / "last.safetensors"), _weights(split / "last.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    sa = torch.load(straight / "last_state.pt", weights_only=True)  # plain values: no code can run on load
    sb = torch.load(split / "last_state.pt", weights_only=True)
    for pa, pb in zip(sa["optimizer"]["state"].values(), sb["optimizer"]["state"].values()):
        assert all(torch.equal(pa[k], pb[k]) for k in pa)
    assert torch.equal(sa["rng"]["data"], sb["rng"]["data"]) and sa["epoch"] == sb["epoch"] == 2
    assert [r["epoch"] for r in csv.DictReader(open(split / "log.csv"))] == ["1", "2"]
    la = list(csv.DictReader(open(straight / "log.csv")))
    lb = list(csv.DictReader(open(split / "log.csv")))
    assert [r["val_loss"] for r in la] == [r["val_loss"] for r in lb]


class _RunsCode:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):  # what a crafted last_state.pt does on a plain torch.load/pickle.load
        return exec, (f"open({self.marker!r}, 'w').write('ran')",)


def test_resume_never_unpickles_code(tmp_path, capsys):
    marker = tmp_path / "code_ran"
    evil = tmp_path / "evil"
    evil.mkdir()
    torch.save({"format": "fused_dsconv.train_state/2", "epoch": 1, "args": _RunsCode(marker)}, evil / "last_state.pt")
    try:
        rc = cli(["train", "--resume", str(evil)])
    except SystemExit as e:
        rc = e.code
    assert not marker.exists(), "resuming ran code from the run folder"
    assert rc == 2
    err = capsys.readouterr().err
    assert "refused" in err and "exec" in err and "weights_only=False" not in err, err
    assert not (evil / "config.json").exists()  # refused before anything was written

    old = tmp_path / "old"  # the previous format: NumPy/Python RNG objects in a full pickle
    old.mkdir()
    import numpy as np

    torch.save({"format": "fused_dsconv.train_state/1", "rng": {"numpy": np.random.get_state()}}, old / "last_state.pt")
    assert cli(["train", "--resume", str(old)]) == 2
    err = capsys.readouterr().err
    assert "train_state/1" in err and "last.safetensors" in err and "numpy" in err, err


def test_refuses_to_overwrite_a_run(tmp_path):
    out = tmp_path / "run"
    args = ["train", *TINY, "--epochs", "1", "--limit-train", "32", "--limit-val", "16", "--out", str(out)]
    assert cli(args) == 0
    with pytest.raises(SystemExit, match="--resume"):
        cli(args)


def test_actionable_errors(tmp_path, capsys):
    assert cli(["train", "--model", "jointnet_a100_d9", "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert "did you mean" in err and "jointnet_a100_d3" in err
    assert cli(["train", "--dataset", "cifar10", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "r")]) == 2
    assert "--download" in capsys.readouterr().err
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "wnids.txt").write_text("n01\n")
    assert cli(["train", "--data", str(tmp_path / "tiny"), "--out", str(tmp_path / "r2")]) == 2
    err = capsys.readouterr().err
    assert "val/val_annotations.txt" in err and "train/<wnid>/images" in err


def test_checkpoint_of_another_architecture_names_the_differences(tmp_path):
    from fused_dsconv import JointNet

    small = JointNet(10, alpha=0.25, rho=32 / 224)
    ckpt.save_weights(small, tmp_path / "w.safetensors")
    with pytest.raises(ckpt.CheckpointError, match=r"stem.weight: checkpoint \(8, 3, 3, 3\) vs model \(16, 3, 3, 3\)"):
        ckpt.load_weights(JointNet(10, alpha=0.5, rho=32 / 224), tmp_path / "w.safetensors")
    with pytest.raises(ckpt.CheckpointError, match="classifier.weight"):
        ckpt.load_weights(JointNet(200, alpha=0.25, rho=32 / 224), tmp_path / "w.safetensors")
    ckpt.load_weights(JointNet(10, alpha=0.25, rho=32 / 224, dilation=1), tmp_path / "w.safetensors")  # same shapes


def test_sweep_tiny_grid(tmp_path, capsys):
    out = tmp_path / "sweep"
    args = [
        "sweep",
        "--alphas",
        "0.25",
        "--deltas",
        "1,2",
        "--epochs",
        "1",
        "--limit-train",
        "64",
        "--limit-val",
        "32",
        "--threads",
        "1",
        "--no-progress",
        "--out",
        str(out),
    ]
    assert cli(args) == 0
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [r["model"] for r in rows] == ["jointnet_a025_d1", "jointnet_a025_d2"]
    md = (out / "results.md").read_text()
    assert md.count("| jointnet_a025_d") == 2
    capsys.readouterr()
    assert cli(args) == 0  # finished cells are reused, not retrained
    assert capsys.readouterr().out.count("finished before") == 2


def test_compare_unfused_same_steps(capsys):
    from types import SimpleNamespace

    from fused_dsconv import JointNet
    from fused_dsconv.datasets import load_dataset

    ds = load_dataset("digits", limit_train=64)
    model = JointNet(10, alpha=0.25, rho=32 / 224)
    twin = unfused_twin(model)
    assert twin.state_dict().keys() == model.state_dict().keys()
    args = SimpleNamespace(steps=2, batch_size=16, seed=0, workers=0, channels_last=False, lr=1e-3, amp="none")
    r = compare_unfused.compare_unfused(model, ds.train, args, torch.device("cpu"), ds.mean, ds.std)
    assert r["fused"]["final_loss"] == pytest.approx(r["unfused"]["final_loss"], rel=1e-4)
    assert r["fused"]["saved_bytes"] > 0 and r["unfused"]["saved_bytes"] > 0
    text = capsys.readouterr().out
    assert "throughput (images/s)" in text and "saved activations" in text


def test_bf16_autocast_and_channels_last_run(tmp_path):
    out = tmp_path / "run"
    assert (
        cli(
            [
                "train",
                *TINY,
                "--epochs",
                "1",
                "--limit-train",
                "32",
                "--limit-val",
                "16",
                "--amp",
                "bf16",
                "--channels-last",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert json.loads((out / "summary.json").read_text())["best_val_loss"] is not None


def test_cifar10_and_folder_runs_resume_exactly(tmp_path):
    from test_data import _fake_cifar, _jpeg  # tiny stand-ins for the real layouts

    _fake_cifar(tmp_path / "cifar" / "cifar-10-batches-py")
    out = tmp_path / "c10"
    assert (
        cli(
            [
                "train",
                *TINY,
                "--data",
                str(tmp_path / "cifar"),
                "--resolution",
                "32",
                "--epochs",
                "1",
                "--batch-size",
                "8",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["dataset"] == "cifar10" and cfg["classes"][0] == "airplane" and cfg["resolution"] == 32

    pytest.importorskip("PIL")
    for c in ("a", "b"):
        for i in range(6):
            _jpeg(tmp_path / "imgs" / c / f"{i}.png", size=24, value=40 * i + (100 if c == "b" else 0))
    common = [*TINY, "--data", str(tmp_path / "imgs"), "--resolution", "32", "--batch-size", "4", "--workers", "0"]
    assert cli(["train", *common, "--epochs", "2", "--out", str(tmp_path / "f2")]) == 0
    assert cli(["train", *common, "--epochs", "1", "--out", str(tmp_path / "f1")]) == 0
    assert (
        cli(
            [
                "train",
                "--resume",
                str(tmp_path / "f1"),
                "--epochs",
                "2",
                "--workers",
                "0",
                "--threads",
                "1",
                "--no-progress",
            ]
        )
        == 0
    )
    a, b = _weights(tmp_path / "f2" / "last.safetensors"), _weights(tmp_path / "f1" / "last.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
