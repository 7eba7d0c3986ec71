"""Train the paper's classifier: ``fused-dsconv train`` (also ``python -m fused_dsconv.train``).

The recipe of Sun, Zhang, He (2020) is the default: cross-entropy, Adam (lr 1e-3, betas 0.9/0.999,
eps 1e-8), and the kept checkpoint is the epoch with the lowest validation loss (best.safetensors).
With no arguments it trains on the embedded UCI digits at 32x32, offline, on the CPU in minutes.

    fused-dsconv train --alpha 0.5 --delta 3 --epochs 15            # embedded digits
    fused-dsconv train --dataset cifar10 --data ~/data --download --model jointnet_a100_d3 --amp bf16
    fused-dsconv train --resume runs/digits_jointnet_a050_d3         # continue exactly where it stopped
    torchrun --nproc-per-node 4 -m fused_dsconv train --sync-bn ...    # DDP, one process per GPU

Under torchrun (WORLD_SIZE > 1) each process trains its share of every epoch (a DistributedSampler per
data set) in DistributedDataParallel, NCCL on CUDA and gloo on CPU; --batch-size is per process; rank 0
logs, evaluates and writes the checkpoints while the others wait at a barrier. See docs/training.md for
the paper's dilation sweep, the files a run writes and the several-GPU notes.
"""
from __future__ import annotations

import argparse
import copy
import csv
import json
import math
import os
import random
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import checkpoint as ckpt
from ._interrupt import sigint_deferred
from .block import convert_sync_batchnorm
from .data import DATASETS, DEFAULT_RESOLUTION, DataError, Loader, infer_dataset, load_dataset, normalize
from .models import BASE_RESOLUTION, JointNet, create_model, model_name

LOG_FIELDS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "images_per_s", "seconds", "lr")
# --resume takes every setting from the saved run unless the resuming command line gives it. These
# define what the saved state means (architecture, data, optimisation, RNG streams): a different
# value there is an error, not a silent restart. The rest (epochs, device, threads, workers, backend,
# ...) may change, and the run says what changed.
_RESUME_FIXED = ("model", "alpha", "delta", "rho", "resolution", "dataset", "batch_size", "lr", "seed", "amp",
                 "limit_train", "limit_val")
# Not settings of the run: always what the current command says.
_NOT_SAVED = ("resume", "out", "download", "compare_unfused", "compare_steps", "explicit", "argv", "prog",
              "invoked_as", "run", "command")


# -- arguments ---------------------------------------------------------------------------------
def add_model_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", help="registry name, e.g. jointnet_a100_d3 (see fused-dsconv models); "
                                   "or give --alpha/--delta")
    g.add_argument("--alpha", type=float, default=None, help="width multiplier (default 1.0)")
    g.add_argument("--delta", type=int, default=None, help="dilation rate of every block (default 3, the paper's best)")
    res = g.add_mutually_exclusive_group()
    res.add_argument("--rho", type=float, default=None,
                     help="resolution multiplier: input side round(224*rho) (default: 32/224 for digits, 1.0 else)")
    res.add_argument("--resolution", type=int, default=None, help="input side in pixels (sets rho = side/224)")
    g.add_argument("--backend", default="auto", help="joint-block backend: auto, native, triton, reference")
    g.add_argument("--recompute", action="store_true", help="joint blocks save only their input (less memory)")


def add_data_arguments(p: argparse.ArgumentParser, *, splits: bool = True) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--dataset", choices=DATASETS, default=None,
                   help="digits (embedded, default), cifar10, tinyimagenet, folder (guessed from --data's layout)")
    g.add_argument("--data", default=None, help="data set folder (not needed for digits)")
    g.add_argument("--download", action="store_true", help="download CIFAR-10 into --data if it is not there")
    g.add_argument("--batch-size", type=int, default=64,
                   help="images per step and process (default 64; under torchrun the global batch is this times "
                        "the number of processes)")
    g.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                   help="image-decoding processes for folder data sets (default min(4, CPUs))")
    if splits:
        g.add_argument("--limit-train", type=int, default=None, help="use only N training images (debugging)")
    g.add_argument("--limit-val", type=int, default=None, help="use only N validation images (debugging)")


def add_device_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("device")
    g.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda if available, else cpu)")
    g.add_argument("--amp", choices=("none", "fp16", "bf16"), default="none",
                   help="mixed precision by autocast (fp16 uses a GradScaler on CUDA)")
    g.add_argument("--channels-last", action="store_true", help="NHWC memory format for model and inputs")
    g.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default: torch's choice; 1 is often fastest on a busy machine)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    add_data_arguments(p)
    add_device_arguments(p)
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int, default=15,
                   help="total epochs (default 15; with --resume: the run's own, unless given)")
    g.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3, the paper's)")
    g.add_argument("--seed", type=int, default=0, help="seeds init and data order (default 0)")
    g.add_argument("--deterministic", action="store_true",
                   help="deterministic algorithms only (slower on GPU; bit-exact --resume on CPU without it too)")
    g.add_argument("--out", default=None, help="run folder (default runs/<dataset>_<model>, numbered if taken)")
    g.add_argument("--resume", default=None, metavar="RUN",
                   help="continue a run folder (or its last_state.pt) after its last finished epoch, with its "
                        "saved settings; options given here change them where that is allowed (--epochs, "
                        "--device, --threads, ...)")
    g.add_argument("--sync-bn", action="store_true",
                   help="under torchrun: batch statistics over all processes (fused synchronised BatchNorm), as "
                        "nn.SyncBatchNorm; without it each process normalises with its own batch")
    g.add_argument("--compare-unfused", action="store_true",
                   help="first time --compare-steps steps of this model and of its unfused PyTorch twin "
                        "(same init, same batches): throughput and memory side by side")
    g.add_argument("--compare-steps", type=int, default=20, help="steps per model for --compare-unfused")
    g.add_argument("--no-progress", action="store_true", help="no progress bar (per-epoch lines only)")


# -- processes (torchrun) ----------------------------------------------------------------------
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


def start_processes(procs: Processes, device: torch.device) -> None:
    """Join torchrun's process group (once per process): NCCL for CUDA devices, gloo for the CPU."""
    import torch.distributed as dist

    if dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")


def stop_processes() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _barrier(device: torch.device) -> None:
    import torch.distributed as dist

    dist.barrier(device_ids=[device.index] if device.type == "cuda" else None)


def _launch_prefix(procs: Processes) -> str:
    """How a user starts this launch again: torchrun with this node's process count."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", procs.world) or procs.world)
    nodes = "" if local == procs.world else " (and your other torchrun options)"
    return f"torchrun --nproc-per-node {local}{nodes} -m fused_dsconv"


# -- setup helpers -----------------------------------------------------------------------------
def pick_device(name: Optional[str], threads: Optional[int] = None, procs: Processes = Processes()) -> torch.device:
    if threads is not None:
        if threads < 1:
            raise SystemExit(f"error: --threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    if name is None:
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            dev = torch.device(name)
        except RuntimeError as e:
            raise SystemExit(f"error: --device {name!r} is not a device name ({e})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"error: --device {name} asked for CUDA, but torch sees no GPU here "
                         f"(torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'}); use --device cpu")
    if procs.distributed and dev.type == "cuda":  # one GPU per process: the local rank's
        if dev.index is not None:
            raise SystemExit(f"error: --device {name}: under torchrun each process uses the GPU of its local rank "
                             "(cuda:LOCAL_RANK); give --device cuda or leave --device out")
        if procs.local >= torch.cuda.device_count():
            raise SystemExit(f"error: local rank {procs.local} has no GPU: this machine has "
                             f"{torch.cuda.device_count()}; start at most that many processes per node")
        dev = torch.device("cuda", procs.local)
    return dev


def resolve_model_args(args) -> tuple[float, int, Optional[str]]:
    """(alpha, delta, registry name or None) from --model or --alpha/--delta."""
    if args.model:
        m = create_model(args.model, num_classes=1).to("meta")  # validates the name, suggests close ones
        if args.alpha is not None or args.delta is not None:
            raise SystemExit("error: give either --model or --alpha/--delta, not both")
        return m.alpha, m.dilations[0], args.model
    return (1.0 if args.alpha is None else args.alpha), (3 if args.delta is None else args.delta), None


def resolve_rho(args, dataset: str) -> float:
    if args.rho is not None:
        return args.rho
    side = args.resolution or DEFAULT_RESOLUTION[dataset]
    return side / BASE_RESOLUTION


def _native_bf16(device: torch.device) -> bool:
    """bfloat16 in hardware (compute capability >= 8.0), not emulated (slow) as torch allows on older GPUs."""
    return torch.cuda.get_device_capability(device)[0] >= 8


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True


def rng_state(gen: torch.Generator) -> dict:
    """Every RNG a run draws from, as tensors and numbers only (the state must load with weights_only=True)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, words, gauss_next = random.getstate()
    return {"torch": torch.get_rng_state(), "data": gen.get_state(),
            "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
            "python": {"version": version, "words": torch.tensor(words, dtype=torch.int64), "gauss_next": gauss_next}}


def set_rng_state(state: dict, gen: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["words"].tolist()), p["gauss_next"]))
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    gen.set_state(state["data"])


def unfused_twin(model: JointNet) -> JointNet:
    """The same network with every JointBlock replaced by its unfused PyTorch layers (same weights)."""
    twin = copy.deepcopy(model)
    twin.blocks = nn.Sequential(*(b.to_unfused() for b in model.blocks))
    return twin


def autocast_for(device: torch.device, amp: str):
    if amp == "none":
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=torch.float16 if amp == "fp16" else torch.bfloat16)


def _fmt_bytes(n: Optional[float]) -> str:
    return "n/a" if n is None else f"{n / 2**20:,.1f} MiB"


# -- progress ----------------------------------------------------------------------------------
class Progress:
    """tqdm when available and stderr is a terminal; a plain one-line bar without tqdm; silent otherwise."""

    def __init__(self, total: int, desc: str, enabled: bool):
        self.total, self.desc, self.n, self.bar, self.start = total, desc, 0, None, time.perf_counter()
        self.enabled = enabled and sys.stderr.isatty()
        if self.enabled:
            try:
                from tqdm import tqdm
                self.bar = tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True, unit="step")
            except ImportError:
                pass

    def update(self, stats: dict) -> None:
        self.n += 1
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.set_postfix(stats, refresh=False)
            self.bar.update(1)
        else:
            done = int(30 * self.n / max(1, self.total))
            text = " ".join(f"{k} {v}" for k, v in stats.items())
            sys.stderr.write(f"\r{self.desc} [{'#' * done}{'.' * (30 - done)}] {self.n}/{self.total} {text} ")
            sys.stderr.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled:
            sys.stderr.write("\r" + " " * 100 + "\r")
            sys.stderr.flush()


# -- one epoch ---------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def prepare(x: torch.Tensor, y: torch.Tensor, device, mean, std, channels_last: bool):
    x = normalize(x.to(device, non_blocking=True), mean, std)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y.to(device, non_blocking=True)


def train_epoch(model, loader, opt, scaler, device, amp, mean, std, channels_last, progress: Progress) -> dict:
    model.train()
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    seen, last_shown = 0, 0.0
    _sync(device)
    start = time.perf_counter()
    try:  # the bar goes away on Ctrl-C too, so the message that follows is on a clean line
        for x, y in loader:
            x, y = prepare(x, y, device, mean, std, channels_last)
            with autocast_for(device, amp):
                logits = model(x)
                loss = F.cross_entropy(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            loss_sum += loss.detach().double() * len(y)
            correct += (logits.detach().argmax(1) == y).sum()
            seen += len(y)
            now = time.perf_counter()
            if progress.enabled and (now - last_shown > 0.5 or progress.n + 1 == progress.total):
                last_shown = now
                progress.update({"loss": f"{loss_sum.item() / seen:.4f}",
                                 "acc": f"{100 * correct.item() / seen:.2f}%", "img/s": f"{seen / (now - start):.0f}"})
            else:
                progress.n += 1
                if progress.bar is not None:
                    progress.bar.update(1)
        _sync(device)
    finally:
        progress.close()
    seconds = time.perf_counter() - start
    if seen == 0:
        raise DataError("the training split is empty")
    return {"train_loss": loss_sum.item() / seen, "train_acc": correct.item() / seen,
            "images_per_s": seen / seconds, "train_seconds": seconds, "images": seen}


def _global_train_stats(tr: dict, device: torch.device) -> dict:
    """Loss, accuracy and images/s over every process (images/s: all images over this process's epoch time;
    the processes step together)."""
    import torch.distributed as dist

    n = tr["images"]
    t = torch.tensor([tr["train_loss"] * n, tr["train_acc"] * n, n], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    loss, correct, images = t.tolist()
    return {**tr, "train_loss": loss / images, "train_acc": correct / images, "images": int(images),
            "images_per_s": images / tr["train_seconds"]}


@torch.no_grad()
def evaluate(model, loader, device, amp="none", mean=(0.5,) * 3, std=(0.5,) * 3, channels_last=False) -> dict:
    """Mean cross-entropy and top-1 accuracy over ``loader``."""
    model.eval()
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    seen = 0
    for x, y in loader:
        x, y = prepare(x, y, device, mean, std, channels_last)
        with autocast_for(device, amp):
            logits = model(x).float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
        correct += (logits.argmax(1) == y).sum()
        seen += len(y)
    if seen == 0:
        raise DataError("the validation split is empty")
    return {"loss": loss_sum.item() / seen, "acc": correct.item() / seen, "images": seen}


# -- fused vs unfused --------------------------------------------------------------------------
def compare_unfused(model: JointNet, split, args, device, mean, std, out=print) -> dict:
    """Train copies of ``model`` and of its unfused twin for the same steps on the same batches."""
    from .memory import saved_activation_bytes
    steps = max(1, args.compare_steps)
    loader = Loader(split, args.batch_size, shuffle=True, generator=torch.Generator().manual_seed(args.seed + 1),
                    workers=args.workers, pin_memory=device.type == "cuda")
    batches = []  # kept where the loader yields them; prepared (moved, normalised) inside the timed step
    while len(batches) < steps + 2:
        for x, y in loader:
            batches.append((x, y))
            if len(batches) == steps + 2:
                break
    results = {}
    for label, net in (("fused", copy.deepcopy(model)), ("unfused", unfused_twin(model))):
        opt = torch.optim.Adam(net.parameters(), lr=args.lr, betas=(0.9, 0.999), eps=1e-8)
        scaler = torch.amp.GradScaler(device.type, enabled=args.amp == "fp16" and device.type == "cuda")
        net.train()

        def step(x, y):
            x, y = prepare(x, y, device, mean, std, args.channels_last)
            with autocast_for(device, args.amp):
                loss = F.cross_entropy(net(x).float(), y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            return loss

        for x, y in batches[:2]:  # warm-up (kernel selection, compilation), not timed
            step(x, y)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
        _sync(device)
        t0 = time.perf_counter()
        losses = [step(x, y) for x, y in batches[2:]]
        _sync(device)
        dt = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated(device) - base if device.type == "cuda" else None
        x0, y0 = prepare(*batches[2], device, mean, std, args.channels_last)
        with autocast_for(device, args.amp):
            saved = saved_activation_bytes(lambda: F.cross_entropy(net(x0).float(), y0), net)
        backend = net.blocks[0].last_backend if label == "fused" else "PyTorch layers"
        results[label] = {"images_per_s": sum(len(y) for _, y in batches[2:]) / dt, "peak_bytes": peak,
                          "saved_bytes": saved, "final_loss": losses[-1].item(), "backend": backend}
    f, u = results["fused"], results["unfused"]
    out(f"fused vs unfused: {steps} training steps each, batch {args.batch_size}, {device}, amp {args.amp}")
    out(f"  {'':<28}{'fused (' + str(f['backend']) + ')':>22}{'unfused':>18}{'ratio':>9}")
    out(f"  {'throughput (images/s)':<28}{f['images_per_s']:>22,.1f}{u['images_per_s']:>18,.1f}"
        f"{f['images_per_s'] / u['images_per_s']:>8.2f}x")
    if device.type == "cuda":
        out(f"  {'peak CUDA memory above base':<28}{_fmt_bytes(f['peak_bytes']):>22}{_fmt_bytes(u['peak_bytes']):>18}"
            f"{f['peak_bytes'] / max(1, u['peak_bytes']):>8.2f}x")
    out(f"  {'saved activations (1 step)':<28}{_fmt_bytes(f['saved_bytes']):>22}{_fmt_bytes(u['saved_bytes']):>18}"
        f"{f['saved_bytes'] / max(1, u['saved_bytes']):>8.2f}x")
    out(f"  {'loss at the last step':<28}{f['final_loss']:>22.5f}{u['final_loss']:>18.5f}")
    return results


# -- the run -----------------------------------------------------------------------------------
def _default_out(dataset: str, name: str) -> Path:
    base = Path("runs") / f"{dataset}_{name}"
    out, i = base, 2
    while out.exists():
        out, i = Path(f"{base}_{i}"), i + 1
    return out


def _load_resume(args) -> tuple[dict, Path]:
    path = Path(args.resume)
    state_file = path / "last_state.pt" if path.is_dir() else path
    if not state_file.is_file():
        raise SystemExit(f"error: --resume {args.resume}: no {state_file.name} there (a run folder written by "
                         "fused-dsconv train holds last_state.pt once an epoch has finished)")
    return ckpt.load_train_state(state_file), state_file.parent


def _plain(v) -> bool:
    scalar = (str, int, float, bool, type(None))
    return isinstance(v, scalar) or (isinstance(v, (list, tuple)) and all(isinstance(x, scalar) for x in v))


def run_settings(args) -> dict:
    """The settings of a run as saved in its state: plain values only, none of the command's own bookkeeping."""
    return {k: v for k, v in vars(args).items() if k not in _NOT_SAVED and _plain(v)}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _same_setting(name: str, now, was, saved: dict) -> bool:
    if name in ("rho", "resolution"):  # either one sets the input side; the saved run holds the resulting rho
        rho = now if name == "rho" else now / BASE_RESOLUTION
        return math.isclose(rho, saved.get("rho") or 0.0, rel_tol=1e-9)
    return now == was


def apply_resume_settings(args, saved: dict) -> list[str]:
    """Take ``saved`` (a run's settings) into ``args``, except where the command line gave a value
    (``args.explicit``: the option names given). Returns the changes, as text."""
    explicit = getattr(args, "explicit", None) or ()
    changed = []
    for name, was in saved.items():
        if name in _NOT_SAVED or not hasattr(args, name):
            continue
        now = getattr(args, name)
        if name not in explicit:
            setattr(args, name, was)
        elif not _same_setting(name, now, was, saved):
            if name in _RESUME_FIXED:
                shown = "not given" if was is None else was
                raise SystemExit(f"error: {_flag(name)} {now}: the resumed run has {_flag(name)} {shown}, and "
                                 f"{_flag(name)} cannot change on --resume (the saved weights, optimizer and data "
                                 f"order belong to it). Leave {_flag(name)} out, or start a new run with --out")
            changed.append(f"{_flag(name)} {was} -> {now}")
        elif name in ("rho", "resolution"):
            args.rho, args.resolution = saved.get("rho"), saved.get("resolution")
    return changed


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a run; the message is the one line to show: what is kept and the command that continues."""


def _interrupted(args, run_dir: Path, saved_epoch: int, procs: Processes = Processes()) -> Interrupted:
    if not procs.main:  # rank 0 says what is kept and how to continue
        return Interrupted(f"rank {procs.rank}: interrupted")
    prog = getattr(args, "invoked_as", None) or "fused-dsconv train"
    if procs.distributed:
        prog = f"{_launch_prefix(procs)} train"
    if saved_epoch > 0:
        return Interrupted(f"interrupted after epoch {saved_epoch} of {args.epochs} (saved in {run_dir}); "
                           f"continue with: {prog} --resume {shlex.quote(str(run_dir))}")
    again = getattr(args, "argv", None)
    again = f"{prog} {shlex.join(again)}".rstrip() if again is not None else prog
    return Interrupted(f"interrupted before an epoch finished: nothing saved to resume; start again with: {again}")


def run(args, out=print) -> dict:
    """Train as ``args`` says; returns a summary (best epoch, its val loss/accuracy, wall time, ...).

    With ``args.resume``, the settings come from the saved run except those named in ``args.explicit``
    (the options given on the command line; none when absent). Ctrl-C raises ``Interrupted``.
    Under torchrun every process calls it; only rank 0 prints (``out``) and writes files.
    """
    procs = processes_from_env()
    if not procs.main:
        out = _silent
    resume_state, changed = None, []
    if args.resume:
        resume_state, resume_dir = _load_resume(args)
        changed = apply_resume_settings(args, resume_state["args"])
        args.out = args.out or str(resume_dir)
    device = pick_device(args.device, args.threads, procs)
    if procs.distributed:
        if args.compare_unfused:
            raise SystemExit("error: --compare-unfused times one process; run it without torchrun")
        start_processes(procs, device)
    alpha, delta, name = resolve_model_args(args)
    dataset_name = args.dataset or infer_dataset(args.data)
    rho = resolve_rho(args, dataset_name)
    args.rho, args.dataset = rho, dataset_name
    seed_everything(args.seed, args.deterministic)
    if args.amp == "bf16" and device.type == "cuda" and not _native_bf16(device):
        raise SystemExit("error: --amp bf16 needs a GPU with bfloat16 support (Ampere or newer); "
                         "use --amp fp16 on older cards (e.g. GTX 1080 Ti, RTX 20xx)")

    if procs.distributed and not procs.main:  # rank 0 downloads (--download) before the others read
        _barrier(device)
    ds = load_dataset(dataset_name, args.data, resolution=int(round(BASE_RESOLUTION * rho)), download=args.download,
                      limit_train=args.limit_train, limit_val=args.limit_val)
    if procs.distributed and procs.main:
        _barrier(device)
    if device.type == "cuda":  # in-memory data sets (digits, CIFAR-10: 150 MB as uint8) live on the GPU
        for split in (ds.train, ds.val):
            if split.images is not None and split.images.nbytes < 2**30:
                split.images, split.labels = split.images.to(device), split.labels.to(device)
    torch.manual_seed(args.seed)  # init does not depend on what loading the data drew
    model = JointNet(ds.num_classes, alpha=alpha, rho=rho, dilation=delta, backend=args.backend,
                     recompute=args.recompute).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if procs.distributed and args.sync_bn:
        convert_sync_batchnorm(model)
    name = name or model_name(alpha, delta)
    run_dir = Path(args.out) if args.out else _default_out(dataset_name, name)
    if procs.distributed:  # rank 0's folder (a default name is numbered by what exists when it looks)
        run_dir = Path(_broadcast(str(run_dir)))
    if resume_state is None and (run_dir / "last_state.pt").exists():
        raise SystemExit(f"error: {run_dir} already holds a run; continue it with --resume {run_dir}, "
                         "or choose another --out")
    config = ckpt.model_config(model, model=name, dataset=dataset_name, classes=ds.classes, mean=list(ds.mean),
                               std=list(ds.std), data=None if args.data is None else str(Path(args.data).resolve()))
    if procs.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        ckpt.save_json(config, run_dir / "config.json")

    opt = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.9, 0.999), eps=1e-8)
    scaler = torch.amp.GradScaler(device.type, enabled=args.amp == "fp16" and device.type == "cuda")
    gen = torch.Generator().manual_seed(args.seed)
    sampler = None
    if procs.distributed:  # each process its share of every epoch, in an order fixed by (seed, epoch)
        sampler = torch.utils.data.DistributedSampler(ds.train, num_replicas=procs.world, rank=procs.rank,
                                                      shuffle=True, seed=args.seed)
    train_loader = Loader(ds.train, args.batch_size, shuffle=True, generator=gen, workers=args.workers,
                          pin_memory=device.type == "cuda", sampler=sampler)
    val_loader = Loader(ds.val, args.batch_size, shuffle=False, workers=args.workers,
                        pin_memory=device.type == "cuda")

    n_params = sum(p.numel() for p in model.parameters())
    if device.type == "cpu" and args.threads is None and hasattr(os, "getloadavg"):
        load, cores = os.getloadavg()[0], os.cpu_count() or 1
        if load > cores and torch.get_num_threads() > 1:
            out(f"note: the CPU is busy (load {load:.1f} on {cores} cores); --threads 1 may train several times faster")
    out(f"{name} (alpha {alpha}, delta {delta}, input {model.resolution}x{model.resolution}, {n_params:,} params) "
        f"on {dataset_name}: {len(ds.train):,} train / {len(ds.val):,} val images, {ds.num_classes} classes")
    batch = (f"batch {args.batch_size}" if not procs.distributed else
             f"batch {args.batch_size} per process x {procs.world} processes = global batch "
             f"{args.batch_size * procs.world} (DDP, {'nccl' if device.type == 'cuda' else 'gloo'}"
             f"{', synchronised BatchNorm' if args.sync_bn else ''})")
    out(f"device {device}, amp {args.amp}, {batch}, Adam lr {args.lr}, seed {args.seed}"
        f"{', deterministic' if args.deterministic else ''} -> {run_dir}")

    if args.amp == "fp16" and device.type == "cuda" and torch.cuda.get_device_capability(device)[0] < 7:
        out("note: this GPU has no fast float16 math (before Volta, e.g. GTX 10xx); --amp none may be faster")
    start_epoch, best_loss, best, before = 1, math.inf, None, 0.0
    if procs.distributed:  # per-process RNG streams (the model's initial weights above are the same everywhere)
        seed_everything(args.seed + procs.rank, args.deterministic)
    if resume_state is not None:
        ckpt.check_state_dict(model, resume_state["model"], "the resumed state")
        model.load_state_dict(resume_state["model"])
        opt.load_state_dict(resume_state["optimizer"])
        scaler.load_state_dict(resume_state["scaler"])
        saved_world = int(resume_state.get("world_size", 1))
        rngs = resume_state.get("rng_ranks") or [resume_state["rng"]]
        if saved_world == procs.world and len(rngs) == procs.world:
            set_rng_state(rngs[procs.rank], gen)
        elif procs.main:  # rank 0 keeps its streams; the others' are seeded afresh above
            set_rng_state(resume_state["rng"], gen)
            print(f"warning: the run was saved by {saved_world} process(es) and resumes on {procs.world}: global "
                  f"batch {args.batch_size * saved_world} -> {args.batch_size * procs.world} and a different data "
                  "order, so it will not match an uninterrupted run (--resume is exact with the same number of "
                  "processes)", file=sys.stderr)
        start_epoch, best_loss, best = resume_state["epoch"] + 1, resume_state["best_val_loss"], resume_state["best"]
        before = resume_state["elapsed"]
        out(f"resumed after epoch {resume_state['epoch']} of {args.epochs} (best val loss so far {best_loss:.4f}) "
            f"with the run's saved settings; "
            + (f"changed on the command line: {', '.join(changed)}" if changed else "none changed on the command line"))
    train_model = model
    saved_epoch = start_epoch - 1
    log_path = run_dir / "log.csv"
    try:
        if resume_state is None and args.compare_unfused:
            compare_unfused(model, ds.train, args, device, ds.mean, ds.std, out)
        if not procs.main:
            pass
        elif resume_state is None or not log_path.exists():
            with open(log_path, "w", newline="") as f:
                csv.writer(f).writerow(LOG_FIELDS)
        else:  # drop lines of epochs after the saved state (a run that stopped between saves)
            with open(log_path, newline="") as f:
                rows = list(csv.reader(f))
            keep = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) < start_epoch]
            with open(log_path, "w", newline="") as f:
                csv.writer(f).writerows(keep)

        wall = time.perf_counter()
        for epoch in range(start_epoch, args.epochs + 1):
            t0 = time.perf_counter()
            if sampler is not None:
                sampler.set_epoch(epoch)
                train_model = _ddp_for_epoch(model, train_model, device)
            progress = Progress(len(train_loader), f"epoch {epoch}/{args.epochs}", not args.no_progress and procs.main)
            tr = train_epoch(train_model, train_loader, opt, scaler, device, args.amp, ds.mean, ds.std,
                             args.channels_last, progress)
            if procs.distributed:
                tr = _global_train_stats(tr, device)
                rngs = _gather(rng_state(gen))
            else:
                rngs = None
            if not procs.main:  # rank 0 evaluates and saves; the others wait for it
                _barrier(device)
                continue
            va = evaluate(model, val_loader, device, args.amp, ds.mean, ds.std, args.channels_last)
            seconds = time.perf_counter() - t0
            row = {"epoch": epoch, "train_loss": tr["train_loss"], "train_acc": tr["train_acc"],
                   "val_loss": va["loss"], "val_acc": va["acc"], "images_per_s": tr["images_per_s"],
                   "seconds": seconds, "lr": opt.param_groups[0]["lr"]}
            is_best = va["loss"] < best_loss
            if is_best:
                best_loss, best = va["loss"], {"epoch": epoch, "val_loss": va["loss"], "val_acc": va["acc"]}
            with sigint_deferred():  # weights, log line and state of an epoch: all of them or none
                if is_best:
                    ckpt.save_weights(model, run_dir / "best.safetensors", config)
                ckpt.save_weights(model, run_dir / "last.safetensors", config)
                with open(log_path, "a", newline="") as f:
                    csv.writer(f).writerow([f"{row[k]:.6g}" if isinstance(row[k], float) else row[k]
                                            for k in LOG_FIELDS])
                ckpt.save_train_state({"epoch": epoch, "model": model.state_dict(), "optimizer": opt.state_dict(),
                                       "scaler": scaler.state_dict(), "rng": rng_state(gen),
                                       "best_val_loss": best_loss, "best": best, "args": run_settings(args),
                                       "config": config, "elapsed": before + time.perf_counter() - wall,
                                       "world_size": procs.world, "rng_ranks": rngs or [rng_state(gen)]},
                                      run_dir / "last_state.pt")
                saved_epoch = epoch
            if procs.distributed:
                _barrier(device)
            if epoch == start_epoch:
                out(f"joint blocks ran on backend {model.blocks[0].last_backend!r}")
            out(f"epoch {epoch:>3}/{args.epochs}  train loss {tr['train_loss']:.4f} acc {100 * tr['train_acc']:6.2f}%  "
                f"val loss {va['loss']:.4f} acc {100 * va['acc']:6.2f}%  {tr['images_per_s']:,.0f} img/s  "
                f"{seconds:.1f}s{'  * best' if is_best else ''}")
    except KeyboardInterrupt:
        raise _interrupted(args, run_dir, saved_epoch, procs) from None
    wall = before + time.perf_counter() - wall  # training wall time, resumed parts included
    summary = {"run": str(run_dir), "model": name, "alpha": alpha, "delta": delta, "resolution": model.resolution,
               "dataset": dataset_name, "params": n_params, "epochs": args.epochs, "seconds": wall,
               "best_epoch": best and best["epoch"], "best_val_loss": best and best["val_loss"],
               "best_val_acc": best and best["val_acc"], "processes": procs.world}
    if not procs.main:
        return summary
    if best is not None:
        out(f"best: epoch {best['epoch']}, val loss {best['val_loss']:.4f}, val acc {100 * best['val_acc']:.2f}% "
            f"-> {run_dir / 'best.safetensors'} ({wall:.1f}s)")
    ckpt.save_json(summary, run_dir / "summary.json")
    return summary


def _ddp_for_epoch(model, previous, device: torch.device):
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


def _silent(*args, **kwargs) -> None:
    """``out`` of the processes other than rank 0."""


def _broadcast(value):
    """Rank 0's ``value`` (a picklable object) on every process."""
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _gather(value) -> Optional[list]:
    """Every process's ``value`` in rank order, on rank 0 (None elsewhere)."""
    import torch.distributed as dist

    rank = dist.get_rank()
    box = [None] * dist.get_world_size() if rank == 0 else None
    dist.gather_object(value, box, dst=0)
    return box


def run_train(args) -> int:
    try:
        summary = run(args)
    except (DataError, ckpt.CheckpointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        stop_processes()
    if summary["best_epoch"] is not None and processes_from_env().main:
        prog = getattr(args, "prog", None) or "fused-dsconv"
        run_dir = shlex.quote(summary["run"])
        print(f"next: {prog} eval {run_dir}  |  {prog} export {run_dir} --onnx model.onnx --check")
    return 0


# -- eval --------------------------------------------------------------------------------------
def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="a run folder (uses best.safetensors) or a .safetensors file")
    add_data_arguments(p, splits=False)
    add_device_arguments(p)
    p.add_argument("--split", choices=("val", "train"), default="val", help="which split to score (default val)")
    p.add_argument("--backend", default="auto", help="joint-block backend")
    p.set_defaults(batch_size=256)


def run_eval(args) -> int:
    try:
        device = pick_device(args.device, args.threads)
        model, config = ckpt.load_model(args.checkpoint, backend=args.backend)
        model = model.to(device)
        if args.channels_last:
            model = model.to(memory_format=torch.channels_last)
        name = args.dataset or (config.get("dataset") if args.data is None else infer_dataset(args.data))
        data_root = args.data if args.data is not None or args.dataset else config.get("data")
        ds = load_dataset(name, data_root, resolution=config["resolution"], download=args.download,
                          limit_val=args.limit_val, limit_train=args.limit_val if args.split == "train" else None)
        if ds.num_classes != config["num_classes"]:
            raise ckpt.CheckpointError(f"the checkpoint has {config['num_classes']} classes, the data set "
                                       f"{ds.num_classes}")
        split = ds.val if args.split == "val" else ds.train
        mean, std = config.get("mean", ds.mean), config.get("std", ds.std)
        loader = Loader(split, args.batch_size, shuffle=False, workers=args.workers, pin_memory=device.type == "cuda")
        t0 = time.perf_counter()
        r = evaluate(model, loader, device, args.amp, mean, std, args.channels_last)
        dt = time.perf_counter() - t0
    except (DataError, ckpt.CheckpointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{args.checkpoint}: {name} {args.split}, {r['images']:,} images: loss {r['loss']:.4f}, "
          f"accuracy {100 * r['acc']:.2f}% ({r['images'] / dt:,.0f} img/s on {device})")
    print(json.dumps({"loss": r["loss"], "acc": r["acc"], "images": r["images"]}))
    return 0


# -- sweep -------------------------------------------------------------------------------------
SWEEP_FIELDS = ("model", "alpha", "delta", "resolution", "dataset", "params", "epochs", "best_epoch", "best_val_loss",
                "best_val_acc", "seconds", "run")


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def add_sweep_arguments(p: argparse.ArgumentParser) -> None:
    add_arguments(p)
    for a in p._actions:  # one --out folder for the grid; --model/--alpha/--delta come from the grid
        if a.dest == "out":
            a.help = "sweep folder: one run folder per cell, results.md and results.csv (default runs/sweep_<dataset>)"
        elif a.dest in ("model", "alpha", "delta", "resume"):
            a.help = argparse.SUPPRESS
    g = p.add_argument_group("grid")
    g.add_argument("--alphas", type=_floats, default=[1.0, 0.75], help="comma-separated widths (default 1,0.75)")
    g.add_argument("--deltas", type=_ints, default=[1, 2, 3, 4], help="comma-separated dilations (default 1,2,3,4)")


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def write_results(rows: list[dict], folder: Path) -> None:
    with open(folder / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, SWEEP_FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    lines = ["| model | alpha | delta | input | params | best epoch | val loss | val acc | time |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        acc = "-" if r["best_val_acc"] is None else f"{100 * r['best_val_acc']:.2f}%"
        loss = "-" if r["best_val_loss"] is None else f"{r['best_val_loss']:.4f}"
        lines.append(f"| {r['model']} | {r['alpha']} | {r['delta']} | {r['resolution']} | {r['params']:,} | "
                     f"{r['best_epoch']} | {loss} | {acc} | {_duration(r['seconds'])} |")
    (folder / "results.md").write_text("\n".join(lines) + "\n")


def run_sweep(args) -> int:
    """Train every (alpha, delta) of the grid with the same flags; a finished cell is not trained again."""
    if args.model or args.alpha is not None or args.delta is not None or args.resume:
        print("error: sweep takes the grid from --alphas/--deltas (no --model/--alpha/--delta/--resume)",
              file=sys.stderr)
        return 2
    try:
        return _sweep(args, processes_from_env().main)
    finally:
        stop_processes()


def _sweep(args, main: bool) -> int:
    say = print if main else _silent  # under torchrun: rank 0 reports and writes the tables
    folder = Path(args.out or Path("runs") / f"sweep_{args.dataset or infer_dataset(args.data)}")
    if main:
        folder.mkdir(parents=True, exist_ok=True)
    rows = []
    cells = [(a, d) for a in args.alphas for d in args.deltas]
    for i, (alpha, delta) in enumerate(cells, 1):
        run_dir = folder / model_name(alpha, delta)
        say(f"== sweep {i}/{len(cells)}: alpha {alpha}, delta {delta} -> {run_dir}", flush=True)
        done = run_dir / "summary.json"
        if done.is_file() and json.loads(done.read_text()).get("epochs") == args.epochs:
            say("   finished before; reusing its summary.json")
            rows.append(json.loads(done.read_text()))
        else:
            cell = copy.copy(args)
            cell.alpha, cell.delta, cell.out, cell.rho = alpha, delta, str(run_dir), args.rho
            if (run_dir / "last_state.pt").is_file():
                cell.resume = str(run_dir)  # interrupted earlier: continue it
            try:
                rows.append(run(cell))
            except (DataError, ckpt.CheckpointError, ValueError) as e:
                print(f"error: {e}", file=sys.stderr)
                return 2
            except Interrupted:
                again = getattr(args, "argv", None)
                again = shlex.join(again) if again is not None else "..."
                prog = getattr(args, "invoked_as", None) or "fused-dsconv sweep"
                raise Interrupted(f"interrupted in cell {i}/{len(cells)} ({run_dir}); finished cells are kept and "
                                  f"this one resumes after its last finished epoch. Continue with: {prog} {again}"
                                  ) from None
        if main:
            write_results(rows, folder)
    say(f"results: {folder / 'results.md'}, {folder / 'results.csv'}")
    if main:
        print((folder / "results.md").read_text(), end="")
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    """``python -m fused_dsconv.train ...``: the same command as ``fused-dsconv train ...``."""
    from .cli import main as cli_main
    return cli_main(["train", *(sys.argv[1:] if argv is None else argv)], prog="python -m fused_dsconv")


if __name__ == "__main__":
    sys.exit(main())
