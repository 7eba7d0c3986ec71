"""Synchronised batch norm and DDP across real processes: gloo on this machine's CPUs, nothing else.

Each process group is a few worker processes (tests/dist_worker.py) joined through a FileStore (a file,
no port) with gloo on the loopback interface; one group of 2 and one of 3 run every scenario of their
size in one start (importing torch costs seconds per process). Every wait is bounded: the group's
collectives time out after 60 s and the test kills its workers after ``TIMEOUT`` seconds.

The spec a synchronised run is held to is one process on the concatenated batch with the unfused
PyTorch layers (nn.Conv2d, nn.BatchNorm2d, ReLU), float64, to 1e-10.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import fused_dsconv
from fused_dsconv import JointBlock, convert_sync_batchnorm

if not torch.distributed.is_available():
    pytest.skip("torch.distributed is not available in this torch build", allow_module_level=True)

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # where pytest's default import mode puts it too
import dist_worker as W  # noqa: E402

TIMEOUT = 240
TOL = dict(rtol=1e-10, atol=1e-10)
ENV = {
    **os.environ,
    "GLOO_SOCKET_IFNAME": "lo",
    "OMP_NUM_THREADS": "1",
    "FUSED_DSCONV_TUNE": "0",
    "PYTHONPATH": os.pathsep.join(
        [str(Path(fused_dsconv.__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]
    ),
}


def launch(world: int, scenarios: list[str], folder: Path) -> dict:
    """Run ``scenarios`` in one group of ``world`` worker processes; {scenario: [result of each rank]}."""
    folder.mkdir(parents=True, exist_ok=True)
    store = folder / "store"
    procs = [
        subprocess.Popen(
            [sys.executable, str(HERE / "dist_worker.py"), str(r), str(world), str(store), str(folder), *scenarios],
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in range(world)
    ]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=TIMEOUT)[0])
    finally:
        for p in procs:  # on a timeout or an error: end the workers this test started, each by its own handle
            if p.poll() is None:
                p.kill()
                p.wait()
    failed = [(r, p.returncode, log) for r, (p, log) in enumerate(zip(procs, logs)) if p.returncode != 0]
    assert not failed, "\n".join(f"rank {r} exited {rc}:\n{log[-3000:]}" for r, rc, log in failed)
    return {s: [torch.load(folder / f"{s}.rank{r}.pt", weights_only=False) for r in range(world)] for s in scenarios}


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    return launch(2, ["sync_even_2", "sync_uneven_2", "unsync", "compile", "one_value"], tmp_path_factory.mktemp("two"))


@pytest.fixture(scope="module")
def three(tmp_path_factory):
    return launch(3, ["sync_even_3", "sync_uneven_3"], tmp_path_factory.mktemp("three"))


def single_process_run(name: str) -> dict:
    """The spec: the same blocks unfused (nn layers, per-batch statistics) on each step's global batch, with
    SGD as the workers run it."""
    model = nn.Sequential(*(b.to_unfused() for b in W.make_blocks(sync=False)))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    steps = []
    for step, sizes in enumerate(W.BATCHES[name]):
        x, up = W.global_batch(step, sum(sizes))
        out = model(x)
        opt.zero_grad()
        (out * up).sum().backward()
        steps.append({"out": out.detach(), "grads": {n: p.grad.clone() for n, p in model.named_parameters()}})
        opt.step()
    return {"steps": steps, "state": model.state_dict()}


def _check_sync(name: str, ranks: list[dict]) -> None:
    ref = single_process_run(name)
    for step, (sizes, want) in enumerate(zip(W.BATCHES[name], ref["steps"])):
        outs = [r["steps"][step]["out"] for r in ranks]
        assert [o.shape[0] for o in outs] == sizes
        torch.testing.assert_close(torch.cat(outs), want["out"], **TOL, msg=f"step {step}: outputs")
        for rank, r in enumerate(ranks):
            got = r["steps"][step]["grads"]
            # The twin's keys are the blocks' keys with ReLU appended: same names for every parameter.
            assert got.keys() == want["grads"].keys()
            for k in got:
                torch.testing.assert_close(got[k], want["grads"][k], **TOL, msg=f"step {step}, rank {rank}: {k}")
    for rank, r in enumerate(ranks):
        assert r["state"].keys() == ref["state"].keys()
        for k, v in ref["state"].items():  # parameters, running statistics, num_batches_tracked
            torch.testing.assert_close(r["state"][k], v, **TOL, msg=f"rank {rank}: {k} after 3 steps")
        assert r["backends"] == ["reference"] * 4  # fused, not the unfused fallback
    assert int(ranks[0]["state"]["0.2.num_batches_tracked"]) == 3


@pytest.mark.slow
@pytest.mark.parametrize("name", ["sync_even_2", "sync_uneven_2"])
def test_sync_bn_two_processes_equal_one_process_on_the_whole_batch(two, name):
    _check_sync(name, two[name])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["sync_even_3", "sync_uneven_3"])
def test_sync_bn_three_processes_equal_one_process_on_the_whole_batch(three, name):
    _check_sync(name, three[name])


@pytest.mark.slow
def test_unsynchronised_ddp_keeps_per_rank_statistics(two):
    """Plain joint blocks under DDP behave as nn.BatchNorm2d under DDP: each rank normalises with its own batch
    (and DDP broadcasts rank 0's buffers before each forward)."""
    ranks = two["unsync"]
    for rank, r in enumerate(ranks):
        for step, (f, u) in enumerate(zip(r["fused"]["steps"], r["unfused"]["steps"])):
            torch.testing.assert_close(f["out"], u["out"], **TOL, msg=f"rank {rank} step {step}: out")
            for k in u["grads"]:
                torch.testing.assert_close(f["grads"][k], u["grads"][k], **TOL, msg=f"rank {rank} step {step}: {k}")
        for k, v in r["unfused"]["state"].items():
            torch.testing.assert_close(r["fused"]["state"][k], v, **TOL, msg=f"rank {rank}: {k}")
    # per-rank statistics really differ (a synchronised run would give both ranks the same)
    assert not torch.allclose(
        ranks[0]["fused"]["state"]["0.2.running_mean"], ranks[1]["fused"]["state"]["0.2.running_mean"]
    )


@pytest.mark.slow
def test_compiled_synchronised_blocks_trace_whole_and_match_eager(two):
    for rank, r in enumerate(two["compile"]):
        e, c = r["eager"], r["compiled"]
        torch.testing.assert_close(c["out"], e["out"], **TOL, msg=f"rank {rank}: out")
        torch.testing.assert_close(c["dx"], e["dx"], **TOL, msg=f"rank {rank}: dx")
        for k in e["grads"]:
            torch.testing.assert_close(c["grads"][k], e["grads"][k], **TOL, msg=f"rank {rank}: {k}")
        for k in e["state"]:
            torch.testing.assert_close(c["state"][k], e["state"][k], **TOL, msg=f"rank {rank}: {k}")


@pytest.mark.slow
def test_one_value_over_all_processes_raises_on_every_rank(two):
    for rank, r in enumerate(two["one_value"]):
        assert r["error"] is not None and "Expected more than 1 value per channel when training" in r["error"], rank
        assert "over all 2 processes" in r["error"]
        assert r["unchanged"], f"rank {rank}: the block's state changed although the forward raised"


# -- in one process --------------------------------------------------------------------------------
@pytest.mark.parametrize("save_y", [True, False], ids=["saved-y", "recompute"])
def test_reference_split_passes_merged_in_one_process(save_y):
    """The reference's split passes with four simulated processes (batches 3, 0, 1, 2) against the unfused
    layers on the whole batch, float64: the merged statistics, outputs and gradients."""
    from fused_dsconv import testing
    from fused_dsconv.spec import joint_block

    c = testing.make_case(6, 3, 5, 6, 5, stride=2, dilation=2).cast(torch.float64)
    leaves = [t.clone().requires_grad_() for t in (c.x, c.dw_weight, c.pw_weight, c.bias, c.bn_weight, c.bn_bias)]
    x, dw, pw, bias, gamma, beta = leaves
    rm, rv = torch.zeros(5, dtype=torch.float64), torch.ones(5, dtype=torch.float64)
    out = joint_block(
        x, dw, pw.view(5, 3, 1, 1), gamma, beta, rm, rv, stride=2, dilation=2, training=True, momentum=1.0, pw_bias=bias
    )
    g = torch.randn_like(out)
    out.backward(g)
    got = testing.split_passes("reference", c, [3, 0, 1, 2], g, 1e-5, save_y)
    m = out.numel() // 5
    torch.testing.assert_close(got["count"], torch.tensor([float(m)], dtype=torch.float64))
    torch.testing.assert_close(got["mean"], rm, **TOL)
    torch.testing.assert_close(got["var"] * m / (m - 1), rv, **TOL)  # F.batch_norm keeps the unbiased one
    for name, want in (
        ("out", out),
        ("dx", x.grad),
        ("d_dw", dw.grad),
        ("d_pw", pw.grad),
        ("d_gamma", gamma.grad),
        ("d_beta", beta.grad),
    ):
        torch.testing.assert_close(got[name], want.detach(), **TOL, msg=name)


def test_convert_sync_batchnorm_fuses_blocks_holding_sync_batchnorm():
    model = nn.Sequential(JointBlock(3, 4, 2, 2), nn.Sequential(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)))
    model[0].bn.running_mean.fill_(0.25)
    torch_converted = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # what a user did before: runs unfused
    assert isinstance(torch_converted[0].bn, nn.SyncBatchNorm)
    state = {k: v.clone() for k, v in torch_converted.state_dict().items()}
    out = convert_sync_batchnorm(torch_converted)
    assert out is torch_converted
    block = out[0]
    assert type(block.bn) is nn.BatchNorm2d and block.sync_bn and block.process_group is None
    assert isinstance(out[1][1], nn.SyncBatchNorm)  # other batch norms: torch's conversion
    assert out.state_dict().keys() == state.keys()
    assert all(torch.equal(out.state_dict()[k], v) for k, v in state.items())
    # without an initialised process group a synchronised block trains as a plain, fused one
    assert not torch.distributed.is_initialized() and not block.synchronises()
    x = torch.randn(4, 3, 6, 6)
    torch.testing.assert_close(block.train()(x), JointBlock.from_unfused(block.to_unfused()[:3]).train()(x))
    assert block.last_backend != "unfused"
    # and back: its unfused layers carry nn.SyncBatchNorm, from_unfused makes a synchronised block again
    twin = block.to_unfused()
    assert isinstance(twin[2], nn.SyncBatchNorm)
    again = JointBlock.from_unfused(twin)
    assert again.sync_bn and type(again.bn) is nn.BatchNorm2d


def test_sync_bn_refuses_the_unfused_backend():
    with pytest.raises(ValueError, match="sync_bn=True needs a fused backend"):
        JointBlock(3, 4, sync_bn=True, backend="unfused")
    block = JointBlock(3, 4, backend="unfused")
    with pytest.raises(ValueError, match="backend='unfused' cannot synchronise"):
        convert_sync_batchnorm(block)
    assert not block.sync_bn


# -- the training CLI under torchrun ---------------------------------------------------------------
# What pip writes for the console script (project.scripts in pyproject.toml); CI's installed one is the same.
ENTRY_POINT = "import sys\nfrom fused_dsconv.cli import main\nif __name__ == '__main__':\n    sys.exit(main())\n"


def _torchrun(args: list[str], cwd: Path) -> str:
    """torchrun with 2 CPU processes on this machine (--standalone: a free local port); its process group is
    killed if it outlives TIMEOUT. Returns stdout; fails with the log on a non-zero exit."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *args]
    p = subprocess.Popen(
        cmd, cwd=cwd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, err = p.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, 9)  # the launcher and its workers: the group this test started
        out, err = p.communicate()
        pytest.fail(f"torchrun did not finish in {TIMEOUT} s:\n{out[-2000:]}\n{err[-3000:]}")
    assert p.returncode == 0, f"torchrun exited {p.returncode}:\n{out[-2000:]}\n{err[-3000:]}"
    return out


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(path))


END_WORKER = """
import atexit, sys
from fused_dsconv import processes
atexit.register(lambda: print("teardown ran"))
processes.end_worker(0)  # no group started here: returns
print("still here", flush=False)
processes._joined_here = True  # as start_processes leaves it in a torchrun worker
print("flushed before the exit", end="", flush=False)
sys.stderr.write("and stderr")
processes.end_worker(3)
print("not reached")
"""


def test_a_torchrun_worker_ends_without_the_interpreters_teardown():
    """processes.end_worker: a CLI process that joined a group exits with its code, its output flushed, and
    no teardown run (where gloo workers could abort); any other process just returns from it."""
    p = subprocess.run([sys.executable, "-c", END_WORKER], env=ENV, capture_output=True, text=True, timeout=120)
    assert p.returncode == 3, p.stderr
    assert p.stdout == "still here\nflushed before the exit" and p.stderr.endswith("and stderr")


@pytest.mark.slow
def test_torchrun_training_resumes_exactly(tmp_path, capsys):
    """Two CPU processes (gloo, synchronised BN) on the embedded digits: 2 epochs straight equal 1 epoch, a
    checkpoint written by rank 0, and a resume through the console script."""
    import csv
    import shutil

    from fused_dsconv.cli import main as cli

    common = [
        "--alpha",
        "0.25",
        "--no-progress",
        "--limit-train",
        "48",
        "--limit-val",
        "16",
        "--batch-size",
        "8",
        "--sync-bn",
    ]
    text = _torchrun(["-m", "fused_dsconv", "train", *common, "--epochs", "2", "--out", "straight"], tmp_path)
    assert "batch 8 per process x 2 processes = global batch 16 (DDP, gloo, synchronised BatchNorm)" in text
    assert text.count("epoch   1/2") == 1 and text.count("best: epoch") == 1  # rank 0 alone reports
    assert "joint blocks ran on backend 'reference'" in text  # fused, not the unfused fallback

    _torchrun(["-m", "fused_dsconv", "train", *common, "--epochs", "1", "--out", "split"], tmp_path)
    shutil.copytree(tmp_path / "split", tmp_path / "other_world")
    script = tmp_path / "fused-dsconv"
    script.write_text(ENTRY_POINT)
    text = _torchrun([str(script), "train", "--resume", "split", "--epochs", "2"], tmp_path)
    assert "resumed after epoch 1 of 2" in text and "warning" not in text

    a, b = _weights(tmp_path / "straight" / "last.safetensors"), _weights(tmp_path / "split" / "last.safetensors")
    assert a.keys() == b.keys() and any("running_mean" in k for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    sa = torch.load(tmp_path / "straight" / "last_state.pt", weights_only=True)
    sb = torch.load(tmp_path / "split" / "last_state.pt", weights_only=True)
    assert sa["world_size"] == sb["world_size"] == 2 and len(sb["rng_ranks"]) == 2
    for pa, pb in zip(sa["optimizer"]["state"].values(), sb["optimizer"]["state"].values()):
        assert all(torch.equal(pa[k], pb[k]) for k in pa)
    la = list(csv.DictReader(open(tmp_path / "straight" / "log.csv")))
    lb = list(csv.DictReader(open(tmp_path / "split" / "log.csv")))
    assert [r["epoch"] for r in lb] == ["1", "2"]
    assert [(r["train_loss"], r["val_loss"]) for r in la] == [(r["train_loss"], r["val_loss"]) for r in lb]

    # another number of processes resumes, with a warning that it is not the same run
    capsys.readouterr()
    assert cli(["train", "--resume", str(tmp_path / "other_world"), "--epochs", "2", "--threads", "1"]) == 0
    err = capsys.readouterr().err
    assert "saved by 2 process(es) and resumes on 1: global batch 16 -> 8" in err
