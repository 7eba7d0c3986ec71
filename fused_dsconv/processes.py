"""This process's place in a torchrun launch, and the collectives the training run needs besides DDP's own.

Under torchrun (WORLD_SIZE > 1) each process trains its share of every epoch in DistributedDataParallel,
NCCL on CUDA and gloo on CPU; rank 0 logs, evaluates and writes the checkpoints while the others wait at
a barrier. (Synchronised batch statistics inside the joint blocks are ``fused_dsconv.distributed``.)
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from typing import Optional

import torch


@dataclass(frozen=True)
class Processes:
    """This process's place in a torchrun launch: (rank, world size, local rank); one process: (0, 1, 0)."""

    rank: int = 0
    world: int = 1
    local: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def processes_from_env() -> Processes:
    """From torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK); a single process without it."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return Processes()
    rank = int(os.environ["RANK"])
    return Processes(rank, world, int(os.environ.get("LOCAL_RANK", rank)))


_joined_here = False  # start_processes created this process's group (the CLI runs as a torchrun worker)


def start_processes(procs: Processes, device: torch.device) -> None:
    """Join torchrun's process group (once per process): NCCL for CUDA devices, gloo for the CPU."""
    import torch.distributed as dist

    global _joined_here
    if dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")
    _joined_here = True


def end_worker(code: int) -> None:
    """Ends a torchrun worker whose process group start_processes created, with ``code``, skipping the
    interpreter's teardown (returns at once in any other process). Why: with its group destroyed and every
    file written, a gloo worker still aborted at exit in about one run in six on a busy 2-core machine
    ("terminate called without an active exception", SIGABRT with no Python frame left: C++ teardown
    after the interpreter's), and torchrun then reports a finished run as failed."""
    if not _joined_here:
        return
    for f in (sys.stdout, sys.stderr):
        try:
            f.flush()
        except (OSError, ValueError):
            pass
    logging.shutdown()
    os._exit(code)


def stop_processes(finished: bool = False) -> None:
    """Leave the process group. ``finished``: the run ended normally on this rank, so every rank meets at a
    barrier first: a rank that destroyed its gloo group while rank 0 was still writing the checkpoint could
    abort at exit ("terminate called without an active exception") and fail a finished run. Not after an
    error, where a peer may never reach the barrier."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        try:
            if finished:
                dist.barrier()
        finally:
            dist.destroy_process_group()


def barrier(device: torch.device) -> None:
    import torch.distributed as dist

    dist.barrier(device_ids=[device.index] if device.type == "cuda" else None)


def launch_prefix(procs: Processes) -> str:
    """How a user starts this launch again: torchrun with this node's process count."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", procs.world) or procs.world)
    nodes = "" if local == procs.world else " (and your other torchrun options)"
    return f"torchrun --nproc-per-node {local}{nodes} -m fused_dsconv"


def ddp_for_epoch(model, previous, device: torch.device):
    """A fresh DistributedDataParallel wrapper of ``model`` for each epoch. DDP re-buckets the gradients after
    its first step (by the order they arrived in), and on more than two processes the bucket layout decides
    the order in which the all-reduce adds each gradient: a run resumed at an epoch would otherwise take its
    first step in a layout the uninterrupted run left behind after its first step, and differ in the last
    bits. Per epoch, both runs bucket every epoch alike. (The wrapper re-broadcasts rank 0's weights, which
    every process already holds.)"""
    import gc

    from torch.nn.parallel import DistributedDataParallel

    if previous is not model:
        del previous
        gc.collect()  # the old reducer's gradient hooks go with it, before the new one registers its own
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def broadcast(value):
    """Rank 0's ``value`` (a picklable object) on every process."""
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(value) -> Optional[list]:
    """Every process's ``value`` in rank order, on rank 0 (None elsewhere)."""
    import torch.distributed as dist

    rank = dist.get_rank()
    box = [None] * dist.get_world_size() if rank == 0 else None
    dist.gather_object(value, box, dst=0)
    return box


def global_train_stats(tr: dict, device: torch.device) -> dict:
    """Loss, accuracy and images/s over every process (images/s: all images over this process's epoch time;
    the processes step together)."""
    import torch.distributed as dist

    n = tr["images"]
    t = torch.tensor([tr["train_loss"] * n, tr["train_acc"] * n, n], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    loss, correct, images = t.tolist()
    return {
        **tr,
        "train_loss": loss / images,
        "train_acc": correct / images,
        "images": int(images),
        "images_per_s": images / tr["train_seconds"],
    }


def silent(*args, **kwargs) -> None:
    """``out`` of the processes other than rank 0."""
