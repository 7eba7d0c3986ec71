"""The options of ``fused-dsconv train`` (and, through them, of ``eval`` and ``sweep``)."""

from __future__ import annotations

import argparse
import os
from typing import Optional

from .datasets import DATASETS


def add_model_arguments(p: argparse.ArgumentParser, helps: Optional[dict] = None) -> None:
    helps = helps or {}
    g = p.add_argument_group("model")
    g.add_argument(
        "--model",
        help=helps.get("model")
        or "registry name, e.g. jointnet_a100_d3 (see fused-dsconv models); or give --alpha/--delta",
    )
    g.add_argument("--alpha", type=float, default=None, help=helps.get("alpha") or "width multiplier (default 1.0)")
    g.add_argument(
        "--delta",
        type=int,
        default=None,
        help=helps.get("delta") or "dilation rate of every block (default 3, the paper's best)",
    )
    res = g.add_mutually_exclusive_group()
    res.add_argument(
        "--rho",
        type=float,
        default=None,
        help="resolution multiplier: input side round(224*rho) (default: 32/224 for digits, 1.0 else)",
    )
    res.add_argument("--resolution", type=int, default=None, help="input side in pixels (sets rho = side/224)")
    g.add_argument("--backend", default="auto", help="joint-block backend: auto, native, triton, reference")
    g.add_argument("--recompute", action="store_true", help="joint blocks save only their input (less memory)")


def add_data_arguments(p: argparse.ArgumentParser, *, splits: bool = True) -> None:
    g = p.add_argument_group("data")
    g.add_argument(
        "--dataset",
        choices=DATASETS,
        default=None,
        help="digits (embedded, default), cifar10, tinyimagenet, folder (guessed from --data's layout)",
    )
    g.add_argument("--data", default=None, help="data set folder (not needed for digits)")
    g.add_argument("--download", action="store_true", help="download CIFAR-10 into --data if it is not there")
    g.add_argument(
        "--batch-size",
        type=int,
        default=64,
        help="images per step and process (default 64; under torchrun the global batch is this times "
        "the number of processes)",
    )
    g.add_argument(
        "--workers",
        type=int,
        default=min(4, os.cpu_count() or 1),
        help="image-decoding processes for folder data sets (default min(4, CPUs))",
    )
    if splits:
        g.add_argument("--limit-train", type=int, default=None, help="use only N training images (debugging)")
    g.add_argument("--limit-val", type=int, default=None, help="use only N validation images (debugging)")


def add_device_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("device")
    g.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda if available, else cpu)")
    g.add_argument(
        "--amp",
        choices=("none", "fp16", "bf16"),
        default="none",
        help="mixed precision by autocast (fp16 uses a GradScaler on CUDA)",
    )
    g.add_argument("--channels-last", action="store_true", help="NHWC memory format for model and inputs")
    g.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for torch (default: torch's choice; 1 is often fastest on a busy machine)",
    )


def add_arguments(p: argparse.ArgumentParser, helps: Optional[dict] = None) -> None:
    """Every option of ``train``; ``helps`` replaces the help texts of the options it names (by dest;
    ``argparse.SUPPRESS`` hides one), for commands that run training with other meanings of them."""
    helps = helps or {}
    add_model_arguments(p, helps)
    add_data_arguments(p)
    add_device_arguments(p)
    g = p.add_argument_group("training")
    g.add_argument(
        "--epochs", type=int, default=15, help="total epochs (default 15; with --resume: the run's own, unless given)"
    )
    g.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3, the paper's)")
    g.add_argument("--seed", type=int, default=0, help="seeds init and data order (default 0)")
    g.add_argument(
        "--deterministic",
        action="store_true",
        help="deterministic algorithms only (slower on GPU; bit-exact --resume on CPU without it too)",
    )
    g.add_argument(
        "--out", default=None, help=helps.get("out") or "run folder (default runs/<dataset>_<model>, numbered if taken)"
    )
    g.add_argument(
        "--resume",
        default=None,
        metavar="RUN",
        help=helps.get("resume")
        or "continue a run folder (or its last_state.pt) after its last finished epoch, with its "
        "saved settings; options given here change them where that is allowed (--epochs, "
        "--device, --threads, ...)",
    )
    g.add_argument(
        "--sync-bn",
        action="store_true",
        help="under torchrun: batch statistics over all processes (fused synchronised BatchNorm), as "
        "nn.SyncBatchNorm; without it each process normalises with its own batch",
    )
    g.add_argument("--no-progress", action="store_true", help="no progress bar (per-epoch lines only)")
