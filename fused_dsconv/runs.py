"""A training run's set-up and bookkeeping: device, model settings, seeds and RNG state, the run folder, the
settings ``--resume`` takes from a saved run, the per-epoch log, and what Ctrl-C says."""

from __future__ import annotations

import csv
import math
import os
import random
import shlex
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from . import checkpoint as ckpt
from .datasets import DEFAULT_RESOLUTION
from .models import BASE_RESOLUTION, create_model
from .processes import Processes, launch_prefix


LOG_FIELDS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "images_per_s", "seconds", "lr")


# define what the saved state means (architecture, data, optimisation, RNG streams): a different
# value there is an error, not a silent restart. The rest (epochs, device, threads, workers, backend,
# ...) may change, and the run says what changed.
_RESUME_FIXED = (
    "model",
    "alpha",
    "delta",
    "rho",
    "resolution",
    "dataset",
    "batch_size",
    "lr",
    "seed",
    "amp",
    "limit_train",
    "limit_val",
)


# Not settings of the run: always what the current command says.
_NOT_SAVED = ("resume", "out", "download", "explicit", "argv", "prog", "invoked_as", "run", "command")


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
        raise SystemExit(
            f"error: --device {name} asked for CUDA, but torch sees no GPU here "
            f"(torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'}); use --device cpu"
        )
    if procs.distributed and dev.type == "cuda":  # one GPU per process: the local rank's
        if dev.index is not None:
            raise SystemExit(
                f"error: --device {name}: under torchrun each process uses the GPU of its local rank "
                "(cuda:LOCAL_RANK); give --device cuda or leave --device out"
            )
        if procs.local >= torch.cuda.device_count():
            raise SystemExit(
                f"error: local rank {procs.local} has no GPU: this machine has "
                f"{torch.cuda.device_count()}; start at most that many processes per node"
            )
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


def native_bf16(device: torch.device) -> bool:
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
    return {
        "torch": torch.get_rng_state(),
        "data": gen.get_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {"version": version, "words": torch.tensor(words, dtype=torch.int64), "gauss_next": gauss_next},
    }


def set_rng_state(state: dict, gen: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["words"].tolist()), p["gauss_next"]))
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    gen.set_state(state["data"])


def default_out(dataset: str, name: str) -> Path:
    base = Path("runs") / f"{dataset}_{name}"
    out, i = base, 2
    while out.exists():
        out, i = Path(f"{base}_{i}"), i + 1
    return out


def load_resume(args) -> tuple[dict, Path]:
    path = Path(args.resume)
    state_file = path / "last_state.pt" if path.is_dir() else path
    if not state_file.is_file():
        raise SystemExit(
            f"error: --resume {args.resume}: no {state_file.name} there (a run folder written by "
            "fused-dsconv train holds last_state.pt once an epoch has finished)"
        )
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
                raise SystemExit(
                    f"error: {_flag(name)} {now}: the resumed run has {_flag(name)} {shown}, and "
                    f"{_flag(name)} cannot change on --resume (the saved weights, optimizer and data "
                    f"order belong to it). Leave {_flag(name)} out, or start a new run with --out"
                )
            changed.append(f"{_flag(name)} {was} -> {now}")
        elif name in ("rho", "resolution"):
            args.rho, args.resolution = saved.get("rho"), saved.get("resolution")
    return changed


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a run; the message is the one line to show: what is kept and the command that continues."""


def interrupted(args, run_dir: Path, saved_epoch: int, procs: Processes = Processes()) -> Interrupted:
    if not procs.main:  # rank 0 says what is kept and how to continue
        return Interrupted(f"rank {procs.rank}: interrupted")
    prog = getattr(args, "invoked_as", None) or "fused-dsconv train"
    if procs.distributed:
        prog = f"{launch_prefix(procs)} train"
    if saved_epoch > 0:
        return Interrupted(
            f"interrupted after epoch {saved_epoch} of {args.epochs} (saved in {run_dir}); "
            f"continue with: {prog} --resume {shlex.quote(str(run_dir))}"
        )
    again = getattr(args, "argv", None)
    again = f"{prog} {shlex.join(again)}".rstrip() if again is not None else prog
    return Interrupted(f"interrupted before an epoch finished: nothing saved to resume; start again with: {again}")


def start_log(path: Path, start_epoch: int) -> None:
    """The run's log.csv, ready for epoch ``start_epoch``: a new file with its header for a new run; for a
    resumed one, the lines of epochs before it (a run that stopped between saves logged epochs it lost)."""
    if start_epoch == 1 or not path.exists():
        with open(path, "w", newline="") as f:
            csv.writer(f).writerow(LOG_FIELDS)
        return
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    keep = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) < start_epoch]
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(keep)


def append_log(path: Path, row: dict) -> None:
    """One epoch's line of log.csv (``LOG_FIELDS``; floats to 6 significant digits)."""
    with open(path, "a", newline="") as f:
        csv.writer(f).writerow([f"{row[k]:.6g}" if isinstance(row[k], float) else row[k] for k in LOG_FIELDS])
