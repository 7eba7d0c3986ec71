"""One process of tests/test_distributed.py's process groups (gloo, CPU, this machine only).

    python tests/dist_worker.py RANK WORLD STORE OUT SCENARIO [SCENARIO ...]

Joins the group through a FileStore (no port: STORE is a file) with gloo on the loopback interface,
runs the scenarios in order and writes what each produced to OUT/<scenario>.rank<RANK>.pt; the test
compares. A scenario that raises ends the process with a traceback (the others then fail on the closed
connection, or at the group's 60 s timeout), so the test sees the first error rather than a hang.

The model and data builders below are imported by the test too: both sides build the same thing.
"""

from __future__ import annotations

import datetime
import os
import sys
from pathlib import Path

import torch
from torch import nn

EPS = 1e-5
SIDE = 8  # 8x8 -> 8x8 -> 4x4 -> 2x2 -> 1x1: the last block has one value per channel per image
# per step, the batch of each rank (the tests' global batch is their concatenation in rank order)
BATCHES = {
    "sync_even_2": [[2, 2]] * 3,
    "sync_uneven_2": [[1, 3], [3, 1], [1, 2]],  # a rank of batch 1: one value per channel in the last block
    "sync_even_3": [[2, 2, 2]] * 3,
    "sync_uneven_3": [[2, 1, 0], [0, 3, 1], [1, 1, 1]],  # an empty rank; three ranks of one value each
}


def make_blocks(sync: bool) -> nn.Sequential:
    """Four joint blocks covering the block's options: conv bias, recompute, cumulative momentum, no affine BN."""
    from fused_dsconv import JointBlock

    torch.manual_seed(0)
    kw = dict(backend="reference", dtype=torch.float64, sync_bn=sync)
    model = nn.Sequential(
        JointBlock(3, 4, 1, 1, bias=True, **kw),
        JointBlock(4, 5, 2, 2, momentum=None, recompute=True, **kw),
        JointBlock(5, 6, 2, 1, affine=False, **kw),
        JointBlock(6, 6, 2, 3, **kw),
    )
    with torch.no_grad():  # BN parameters away from their defaults, so their gradients matter
        for b in model:
            if b.bn.affine:
                b.bn.weight.uniform_(0.5, 1.5)
                b.bn.bias.uniform_(-0.5, 0.5)
    return model


def global_batch(step: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, upstream gradient) of step ``step``: the global batch of ``n`` images."""
    g = torch.Generator().manual_seed(100 + step)
    x = torch.randn(n, 3, SIDE, SIDE, generator=g, dtype=torch.float64) + 0.5
    return x, torch.randn(n, 6, 1, 1, generator=g, dtype=torch.float64)


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def run_sync(name: str, rank: int, world: int) -> dict:
    """3 SGD steps of the synchronised blocks under DDP, on this rank's slice of each global batch. The loss
    is world * sum(out * upstream): DDP's averaged gradient is then that of sum(out * upstream) over the
    global batch, so it compares with one process's on the concatenated batch."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    model = make_blocks(sync=True)
    ddp = DDP(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    steps = []
    for step, sizes in enumerate(BATCHES[name]):
        x, up = global_batch(step, sum(sizes))
        lo = sum(sizes[:rank])
        x, up = x[lo : lo + sizes[rank]], up[lo : lo + sizes[rank]]
        out = ddp(x)
        opt.zero_grad()
        (world * (out * up).sum()).backward()
        steps.append({"out": out.detach().clone(), "grads": _grads(model)})
        opt.step()
    return {
        "steps": steps,
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "backends": [b.last_backend for b in model],
    }


def run_unsync(rank: int, world: int) -> dict:
    """Plain (unsynchronised) joint blocks and their unfused nn.BatchNorm2d twins, each under DDP, on the same
    per-rank data: two steps of each."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    results = {}
    for label in ("fused", "unfused"):
        model = make_blocks(sync=False)
        if label == "unfused":
            model = nn.Sequential(*(b.to_unfused() for b in model))
        ddp = DDP(model)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        steps = []
        for step in range(2):
            x, up = global_batch(step, 2 * world)
            x, up = x[2 * rank : 2 * rank + 2], up[2 * rank : 2 * rank + 2]
            out = ddp(x)
            opt.zero_grad()
            (out * up).sum().backward()
            steps.append({"out": out.detach().clone(), "grads": _grads(model)})
            opt.step()
        results[label] = {"steps": steps, "state": {k: v.clone() for k, v in model.state_dict().items()}}
    return results


def run_compile(rank: int, world: int) -> dict:
    """The synchronised blocks compiled whole (fullgraph: a graph break raises) against eager, one forward and
    backward each on the same data."""
    results = {}
    for label in ("eager", "compiled"):
        model = make_blocks(sync=True)
        fn = torch.compile(model, fullgraph=True, backend="aot_eager") if label == "compiled" else model
        x, _ = global_batch(0, 2 * world)
        x = x[2 * rank : 2 * rank + 2].requires_grad_()
        out = fn(x)
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
        results[label] = {
            "out": out.detach(),
            "dx": x.grad,
            "grads": _grads(model),
            "state": {k: v.clone() for k, v in model.state_dict().items()},
        }
    return results


def run_one_value(rank: int, world: int) -> dict:
    """One value per channel over all processes (rank 0 has one image at 1x1 in the last block, the others
    none): every rank raises nn.BatchNorm2d's error, together, and no running statistic moves."""
    model = make_blocks(sync=True)[3]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(1 if rank == 0 else 0, 6, 1, 1, dtype=torch.float64)
    try:
        model(x)
        error = None
    except ValueError as e:
        error = str(e)
    return {"error": error, "unchanged": all(torch.equal(before[k], v) for k, v in model.state_dict().items())}


def main() -> None:
    rank, world, store, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], Path(sys.argv[4])
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)
    import torch.distributed as dist

    dist.init_process_group(
        "gloo", init_method=f"file://{store}", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60)
    )
    try:
        for scenario in sys.argv[5:]:
            if scenario.startswith("sync_"):
                result = run_sync(scenario, rank, world)
            else:
                result = {"unsync": run_unsync, "compile": run_compile, "one_value": run_one_value}[scenario](
                    rank, world
                )
            torch.save(result, out / f"{scenario}.rank{rank}.pt")
            dist.barrier()
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
    # Every result is written and the group destroyed: skip the interpreter's teardown, as the CLI does
    # (fused_dsconv.processes.end_worker). A gloo worker still aborted in it now and then ("terminate called
    # without an active exception", exit -6 with no Python frame left: 1 of 4 CI runs), failing a test whose
    # work was done.
    for f in (sys.stdout, sys.stderr):
        f.flush()
    os._exit(0)
