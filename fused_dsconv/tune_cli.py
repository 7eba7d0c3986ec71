"""``fused-dsconv tune``: make every block of a model choose on this device, report each candidate's median
time, and optionally time whole steps of the tuned model against its plain-layer twin."""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Optional

import torch
from torch import Tensor

from .tune import failure_reason, synchronizer, setting_off, time_interleaved, tune_model
from .tune_cache import UNFUSED, Decision, Problem, cache_path, environment


def report(rows: list[tuple[str, Optional[Problem], Optional[Decision]]]) -> list[str]:
    """Per block: each candidate's median, the winner and its speed-up over unfused (one line each)."""
    cands: list[str] = []
    for _, _, d in rows:
        for c in d.times if d else {}:
            if c not in cands:
                cands.append(c)
    cands.sort(key=lambda c: (c == UNFUSED,))  # unfused last, the backends in priority order
    head = (
        f"{'block':<12}{'shape':<26}"
        + "".join(f"{c + ' ms':>14}" for c in cands)
        + f"{'winner':>14}{'vs unfused':>12}  source"
    )
    lines = [head]
    notes: dict[str, str] = {}
    for name, problem, d in rows:
        if d is None:
            lines.append(f"{name:<12}{'-':<26}  not measured (forced backend, or not a plain BatchNorm2d)")
            continue
        cells = []
        for c in cands:
            if c in d.times:
                cells.append(f"{d.times[c] * 1e3:>14.3f}")
            else:
                cells.append(f"{'failed' if c in d.skipped else '-':>14}")
        sp = d.speedup_over_unfused()
        src = d.source + (f" ({d.measured_at})" if d.source == "cache" and d.measured_at else "")
        lines.append(
            f"{name:<12}{problem.shape:<26}" + "".join(cells) + f"{d.choice:>14}"
            f"{(f'{sp:.2f}x' if sp else 'n/a'):>12}  {src}"
        )
        notes.update(d.skipped)
    for c, why in notes.items():
        lines.append(f"  {c}: {why}")
    return lines


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="jointnet_a100_d3", help="registry name (see fused-dsconv models)")
    p.add_argument("--batch", type=int, default=64, help="images per step (default 64)")
    p.add_argument(
        "--train", action="store_true", help="tune training (forward + backward, batch statistics); default: inference"
    )
    p.add_argument("--rho", type=float, default=1.0, help="resolution multiplier: input side round(224*rho)")
    p.add_argument("--recompute", action="store_true", help="blocks save only their input (memory mode)")
    p.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32")
    p.add_argument("--channels-last", action="store_true", help="NHWC memory format for model and input")
    p.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda if available)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (part of the cache key)")
    p.add_argument("--force", action="store_true", help="measure again even where the cache file has a choice")
    p.add_argument(
        "--compare",
        type=int,
        default=0,
        metavar="ROUNDS",
        help="then time whole steps of the tuned model against its plain-layer twin, ROUNDS interleaved "
        "rounds (training: forward, cross-entropy, backward, Adam)",
    )


def run_tune(args, out=print) -> int:
    from .models import create_model
    from .runs import pick_device

    if args.batch < 1:
        raise SystemExit(f"error: --batch must be >= 1, got {args.batch}")
    device = pick_device(args.device, args.threads)
    why = setting_off()
    if why is not None and "deterministic" in why:
        raise SystemExit(f"error: nothing to tune: {why}")
    try:
        model = create_model(args.model, num_classes=10, rho=args.rho, recompute=args.recompute)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    dtype = getattr(torch, args.dtype)
    mf = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(device=device, dtype=dtype, memory_format=mf)
    x = torch.randn(args.batch, 3, model.resolution, model.resolution, device=device, dtype=dtype)
    x = x.contiguous(memory_format=mf)
    ident, env = environment(str(x.device))
    t0 = time.perf_counter()
    try:
        rows = tune_model(model, x, train=args.train, refresh=args.force)
    except ValueError as e:  # e.g. batch 1 in training: one value per channel in the last block
        raise SystemExit(f"error: {e}") from None
    mode = "training (forward + backward)" if args.train else "inference"
    out(
        f"{args.model}, batch {args.batch}, {model.resolution}x{model.resolution}, {mode}, {args.dtype}, "
        f"{'channels_last' if args.channels_last else 'NCHW'}{', recompute' if args.recompute else ''}"
    )
    threads = f", {env['threads']} thread{'s' if env.get('threads', 1) > 1 else ''}" if "threads" in env else ""
    out(
        f"device: {env['device']}{threads}; torch {env['torch']}; medians per call, measured "
        f"(interleaved rounds after one untimed call each)"
    )
    for line in report(rows):
        out(line)
    out(f"{time.perf_counter() - t0:.1f} s; choices cached in {cache_path()} (environment {ident})")
    if args.compare > 0:
        for line in compare_plain(model, x, train=args.train, rounds=args.compare):
            out(line)
    return 0


def compare_plain(model, x: Tensor, *, train: bool, rounds: int) -> list[str]:
    """Whole steps of ``model`` (a JointNet, tuned) and of its twin with plain PyTorch layers, timed in
    interleaved rounds (so load from other processes hits both alike); lines for the report."""
    import torch.nn.functional as F

    from .models import unfused_twin

    y = torch.randint(0, model.num_classes, (x.shape[0],), generator=torch.Generator().manual_seed(0)).to(x.device)
    fns = {}
    for name, net in (("auto", model), ("plain layers", unfused_twin(model))):
        net.train(train)
        if train:
            opt = torch.optim.Adam(net.parameters(), lr=1e-3)

            def fn(net=net, opt=opt):
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(net(x), y).backward()
                opt.step()
        else:

            def fn(net=net):
                with torch.no_grad():
                    net(x)

        fns[name] = fn
    samples, failed = time_interleaved(
        fns, synchronizer(x.device), min_rounds=rounds, max_rounds=rounds, min_seconds=0.0
    )
    what = "training step (forward, cross-entropy, backward, Adam)" if train else "inference forward"
    lines = [f"whole model, one {what}, {rounds} interleaved rounds after one untimed step each (MEASURED):"]
    for name, t in samples.items():
        q = statistics.quantiles(t, n=4) if len(t) > 1 else [t[0]] * 3
        lines.append(f"  {name:<14} median {statistics.median(t) * 1e3:9.2f} ms  (IQR {(q[2] - q[0]) * 1e3:.2f} ms)")
    for name, e in failed.items():
        lines.append(f"  {name:<14} {failure_reason(e)}")
    if len(samples) == 2:
        a, p = samples["auto"], samples["plain layers"]
        lines.append(
            f"  auto / plain layers: {statistics.median(a) / statistics.median(p):.3f} (medians); "
            f"{statistics.median([u / v for u, v in zip(a, p)]):.3f} (median of per-round ratios)"
        )
    return lines
