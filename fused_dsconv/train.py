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

import math
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Optional

import torch

from . import checkpoint as ckpt
from ._interrupt import sigint_deferred
from .block import convert_sync_batchnorm
from .datasets import DataError, Loader, infer_dataset, load_dataset
from .loop import Progress, evaluate, train_epoch
from .models import BASE_RESOLUTION, JointNet, model_name
from .processes import (
    barrier,
    broadcast,
    ddp_for_epoch,
    gather,
    global_train_stats,
    processes_from_env,
    silent,
    start_processes,
    stop_processes,
)
from .runs import (
    Interrupted,
    append_log,
    apply_resume_settings,
    default_out,
    interrupted,
    load_resume,
    native_bf16,
    pick_device,
    resolve_model_args,
    resolve_rho,
    rng_state,
    run_settings,
    seed_everything,
    set_rng_state,
    start_log,
)


def run(args, out=print) -> dict:
    """Train as ``args`` says; returns a summary (best epoch, its val loss/accuracy, wall time, ...).

    With ``args.resume``, the settings come from the saved run except those named in ``args.explicit``
    (the options given on the command line; none when absent). Ctrl-C raises ``Interrupted``.
    Under torchrun every process calls it; only rank 0 prints (``out``) and writes files.
    """
    procs = processes_from_env()
    if not procs.main:
        out = silent
    resume_state, changed = None, []
    if args.resume:
        resume_state, resume_dir = load_resume(args)
        changed = apply_resume_settings(args, resume_state["args"])
        args.out = args.out or str(resume_dir)
    device = pick_device(args.device, args.threads, procs)
    if procs.distributed:
        start_processes(procs, device)
    alpha, delta, name = resolve_model_args(args)
    dataset_name = args.dataset or infer_dataset(args.data)
    rho = resolve_rho(args, dataset_name)
    args.rho, args.dataset = rho, dataset_name
    seed_everything(args.seed, args.deterministic)
    if args.amp == "bf16" and device.type == "cuda" and not native_bf16(device):
        raise SystemExit(
            "error: --amp bf16 needs a GPU with bfloat16 support (Ampere or newer); "
            "use --amp fp16 on older cards (e.g. GTX 1080 Ti, RTX 20xx)"
        )

    if procs.distributed and not procs.main:  # rank 0 downloads (--download) before the others read
        barrier(device)
    ds = load_dataset(
        dataset_name,
        args.data,
        resolution=int(round(BASE_RESOLUTION * rho)),
        download=args.download,
        limit_train=args.limit_train,
        limit_val=args.limit_val,
    )
    if procs.distributed and procs.main:
        barrier(device)
    if device.type == "cuda":  # in-memory data sets (digits, CIFAR-10: 150 MB as uint8) live on the GPU
        for split in (ds.train, ds.val):
            if split.images is not None and split.images.nbytes < 2**30:
                split.images, split.labels = split.images.to(device), split.labels.to(device)
    torch.manual_seed(args.seed)  # init does not depend on what loading the data drew
    model = JointNet(
        ds.num_classes, alpha=alpha, rho=rho, dilation=delta, backend=args.backend, recompute=args.recompute
    ).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if procs.distributed and args.sync_bn:
        convert_sync_batchnorm(model)
    name = name or model_name(alpha, delta)
    run_dir = Path(args.out) if args.out else default_out(dataset_name, name)
    if procs.distributed:  # rank 0's folder (a default name is numbered by what exists when it looks)
        run_dir = Path(broadcast(str(run_dir)))
    if resume_state is None and (run_dir / "last_state.pt").exists():
        raise SystemExit(
            f"error: {run_dir} already holds a run; continue it with --resume {run_dir}, or choose another --out"
        )
    config = ckpt.model_config(
        model,
        model=name,
        dataset=dataset_name,
        classes=ds.classes,
        mean=list(ds.mean),
        std=list(ds.std),
        data=None if args.data is None else str(Path(args.data).resolve()),
    )
    if procs.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        ckpt.save_json(config, run_dir / "config.json")

    opt = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.9, 0.999), eps=1e-8)
    scaler = torch.amp.GradScaler(device.type, enabled=args.amp == "fp16" and device.type == "cuda")
    gen = torch.Generator().manual_seed(args.seed)
    sampler = None
    if procs.distributed:  # each process its share of every epoch, in an order fixed by (seed, epoch)
        sampler = torch.utils.data.DistributedSampler(
            ds.train, num_replicas=procs.world, rank=procs.rank, shuffle=True, seed=args.seed
        )
    train_loader = Loader(
        ds.train,
        args.batch_size,
        shuffle=True,
        generator=gen,
        workers=args.workers,
        pin_memory=device.type == "cuda",
        sampler=sampler,
    )
    val_loader = Loader(ds.val, args.batch_size, shuffle=False, workers=args.workers, pin_memory=device.type == "cuda")

    n_params = sum(p.numel() for p in model.parameters())
    if device.type == "cpu" and args.threads is None and hasattr(os, "getloadavg"):
        load, cores = os.getloadavg()[0], os.cpu_count() or 1
        if load > cores and torch.get_num_threads() > 1:
            out(f"note: the CPU is busy (load {load:.1f} on {cores} cores); --threads 1 may train several times faster")
    out(
        f"{name} (alpha {alpha}, delta {delta}, input {model.resolution}x{model.resolution}, {n_params:,} params) "
        f"on {dataset_name}: {len(ds.train):,} train / {len(ds.val):,} val images, {ds.num_classes} classes"
    )
    batch = (
        f"batch {args.batch_size}"
        if not procs.distributed
        else f"batch {args.batch_size} per process x {procs.world} processes = global batch "
        f"{args.batch_size * procs.world} (DDP, {'nccl' if device.type == 'cuda' else 'gloo'}"
        f"{', synchronised BatchNorm' if args.sync_bn else ''})"
    )
    out(
        f"device {device}, amp {args.amp}, {batch}, Adam lr {args.lr}, seed {args.seed}"
        f"{', deterministic' if args.deterministic else ''} -> {run_dir}"
    )

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
            print(
                f"warning: the run was saved by {saved_world} process(es) and resumes on {procs.world}: global "
                f"batch {args.batch_size * saved_world} -> {args.batch_size * procs.world} and a different data "
                "order, so it will not match an uninterrupted run (--resume is exact with the same number of "
                "processes)",
                file=sys.stderr,
            )
        start_epoch, best_loss, best = resume_state["epoch"] + 1, resume_state["best_val_loss"], resume_state["best"]
        before = resume_state["elapsed"]
        out(
            f"resumed after epoch {resume_state['epoch']} of {args.epochs} (best val loss so far {best_loss:.4f}) "
            f"with the run's saved settings; "
            + (f"changed on the command line: {', '.join(changed)}" if changed else "none changed on the command line")
        )
    train_model = model
    saved_epoch = start_epoch - 1
    log_path = run_dir / "log.csv"
    try:
        if procs.main:
            start_log(log_path, start_epoch)

        wall = time.perf_counter()
        for epoch in range(start_epoch, args.epochs + 1):
            t0 = time.perf_counter()
            if sampler is not None:
                sampler.set_epoch(epoch)
                train_model = ddp_for_epoch(model, train_model, device)
            progress = Progress(len(train_loader), f"epoch {epoch}/{args.epochs}", not args.no_progress and procs.main)
            tr = train_epoch(
                train_model, train_loader, opt, scaler, device, args.amp, ds.mean, ds.std, args.channels_last, progress
            )
            if procs.distributed:
                tr = global_train_stats(tr, device)
                rngs = gather(rng_state(gen))
            else:
                rngs = None
            if not procs.main:  # rank 0 evaluates and saves; the others wait for it
                barrier(device)
                continue
            va = evaluate(model, val_loader, device, args.amp, ds.mean, ds.std, args.channels_last)
            seconds = time.perf_counter() - t0
            row = {
                "epoch": epoch,
                "train_loss": tr["train_loss"],
                "train_acc": tr["train_acc"],
                "val_loss": va["loss"],
                "val_acc": va["acc"],
                "images_per_s": tr["images_per_s"],
                "seconds": seconds,
                "lr": opt.param_groups[0]["lr"],
            }
            is_best = va["loss"] < best_loss
            if is_best:
                best_loss, best = va["loss"], {"epoch": epoch, "val_loss": va["loss"], "val_acc": va["acc"]}
            with sigint_deferred():  # weights, log line and state of an epoch: all of them or none
                if is_best:
                    ckpt.save_weights(model, run_dir / "best.safetensors", config)
                ckpt.save_weights(model, run_dir / "last.safetensors", config)
                append_log(log_path, row)
                ckpt.save_train_state(
                    {
                        "epoch": epoch,
                        "model": model.state_dict(),
                        "optimizer": opt.state_dict(),
                        "scaler": scaler.state_dict(),
                        "rng": rng_state(gen),
                        "best_val_loss": best_loss,
                        "best": best,
                        "args": run_settings(args),
                        "config": config,
                        "elapsed": before + time.perf_counter() - wall,
                        "world_size": procs.world,
                        "rng_ranks": rngs or [rng_state(gen)],
                    },
                    run_dir / "last_state.pt",
                )
                saved_epoch = epoch
            if procs.distributed:
                barrier(device)
            if epoch == start_epoch:
                out(f"joint blocks ran on backend {model.blocks[0].last_backend!r}")
            out(
                f"epoch {epoch:>3}/{args.epochs}  train loss {tr['train_loss']:.4f} acc {100 * tr['train_acc']:6.2f}%  "
                f"val loss {va['loss']:.4f} acc {100 * va['acc']:6.2f}%  {tr['images_per_s']:,.0f} img/s  "
                f"{seconds:.1f}s{'  * best' if is_best else ''}"
            )
    except KeyboardInterrupt:
        raise interrupted(args, run_dir, saved_epoch, procs) from None
    wall = before + time.perf_counter() - wall  # training wall time, resumed parts included
    summary = {
        "run": str(run_dir),
        "model": name,
        "alpha": alpha,
        "delta": delta,
        "resolution": model.resolution,
        "dataset": dataset_name,
        "params": n_params,
        "epochs": args.epochs,
        "seconds": wall,
        "best_epoch": best and best["epoch"],
        "best_val_loss": best and best["val_loss"],
        "best_val_acc": best and best["val_acc"],
        "processes": procs.world,
    }
    if not procs.main:
        return summary
    if best is not None:
        out(
            f"best: epoch {best['epoch']}, val loss {best['val_loss']:.4f}, val acc {100 * best['val_acc']:.2f}% "
            f"-> {run_dir / 'best.safetensors'} ({wall:.1f}s)"
        )
    ckpt.save_json(summary, run_dir / "summary.json")
    return summary


def run_train(args) -> int:
    summary = None
    try:
        summary = run(args)
    except (DataError, ckpt.CheckpointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        stop_processes(finished=summary is not None)
    if summary["best_epoch"] is not None and processes_from_env().main:
        prog = getattr(args, "prog", None) or "fused-dsconv"
        run_dir = shlex.quote(summary["run"])
        print(f"next: {prog} eval {run_dir}  |  {prog} export {run_dir} --onnx model.onnx --check")
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    """``python -m fused_dsconv.train ...``: the same command as ``fused-dsconv train ...``."""
    from .cli import main as cli_main

    return cli_main(["train", *(sys.argv[1:] if argv is None else argv)], prog="python -m fused_dsconv")


__all__ = ["Interrupted", "main", "run", "run_train"]  # Interrupted: what run raises on Ctrl-C


if __name__ == "__main__":
    sys.exit(main())
