"""``fused-dsconv sweep``: train a grid of widths x dilations with the same flags and tabulate the results."""

from __future__ import annotations

import argparse
import copy
import csv
import json
import shlex
import sys
from pathlib import Path

from . import checkpoint as ckpt
from . import train
from .datasets import DataError, infer_dataset
from .models import model_name
from .processes import processes_from_env, silent, stop_processes
from .runs import Interrupted
from .train_args import add_arguments as add_train_arguments


SWEEP_FIELDS = (
    "model",
    "alpha",
    "delta",
    "resolution",
    "dataset",
    "params",
    "epochs",
    "best_epoch",
    "best_val_loss",
    "best_val_acc",
    "seconds",
    "run",
)


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def add_arguments(p: argparse.ArgumentParser) -> None:
    # one --out folder for the grid; --model/--alpha/--delta come from the grid
    hidden = dict.fromkeys(("model", "alpha", "delta", "resume"), argparse.SUPPRESS)
    add_train_arguments(
        p,
        {
            **hidden,
            "out": "sweep folder: one run folder per cell, results.md and results.csv (default runs/sweep_<dataset>)",
        },
    )
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
    lines = [
        "| model | alpha | delta | input | params | best epoch | val loss | val acc | time |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        acc = "-" if r["best_val_acc"] is None else f"{100 * r['best_val_acc']:.2f}%"
        loss = "-" if r["best_val_loss"] is None else f"{r['best_val_loss']:.4f}"
        lines.append(
            f"| {r['model']} | {r['alpha']} | {r['delta']} | {r['resolution']} | {r['params']:,} | "
            f"{r['best_epoch']} | {loss} | {acc} | {_duration(r['seconds'])} |"
        )
    (folder / "results.md").write_text("\n".join(lines) + "\n")


def run_sweep(args) -> int:
    """Train every (alpha, delta) of the grid with the same flags; a finished cell is not trained again."""
    if args.model or args.alpha is not None or args.delta is not None or args.resume:
        print(
            "error: sweep takes the grid from --alphas/--deltas (no --model/--alpha/--delta/--resume)", file=sys.stderr
        )
        return 2
    finished = False
    try:
        code = _sweep(args, processes_from_env().main)
        finished = True
        return code
    finally:
        stop_processes(finished)


def _sweep(args, main: bool) -> int:
    say = print if main else silent  # under torchrun: rank 0 reports and writes the tables
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
                rows.append(train.run(cell))
            except (DataError, ckpt.CheckpointError, ValueError) as e:
                print(f"error: {e}", file=sys.stderr)
                return 2
            except Interrupted:
                again = getattr(args, "argv", None)
                again = shlex.join(again) if again is not None else "..."
                prog = getattr(args, "invoked_as", None) or "fused-dsconv sweep"
                raise Interrupted(
                    f"interrupted in cell {i}/{len(cells)} ({run_dir}); finished cells are kept and "
                    f"this one resumes after its last finished epoch. Continue with: {prog} {again}"
                ) from None
        if main:
            write_results(rows, folder)
    say(f"results: {folder / 'results.md'}, {folder / 'results.csv'}")
    if main:
        print((folder / "results.md").read_text(), end="")
    return 0
