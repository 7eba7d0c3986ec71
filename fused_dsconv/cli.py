"""``fused-dsconv`` (also ``python -m fused_dsconv``): the command line.

Each subcommand is a (name, help, add_arguments, run) entry in ``COMMANDS``; ``run`` gets the
parsed namespace and returns an exit code.
"""
from __future__ import annotations

import argparse
import platform
import sys
from typing import Callable, Optional

import torch

from . import __version__, backends


def _info_args(p: argparse.ArgumentParser) -> None:
    pass


def _probe_inputs() -> list[tuple[str, torch.Tensor]]:
    probes = [("cpu", torch.empty(1, 1, 1, 1))]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            cap = torch.cuda.get_device_capability(i)
            probes.append((f"cuda:{i} {torch.cuda.get_device_name(i)} (sm_{cap[0]}{cap[1]})",
                           torch.empty(1, 1, 1, 1, device=f"cuda:{i}")))
    return probes


def run_info(args) -> int:
    print(f"fused_dsconv {__version__}")
    print(f"python       {platform.python_version()} ({sys.executable})")
    print(f"torch        {torch.__version__} (CUDA build: {torch.version.cuda or 'none'}, "
          f"GPUs visible: {torch.cuda.device_count() if torch.cuda.is_available() else 0})")
    try:
        import triton
        print(f"triton       {triton.__version__}")
    except ImportError:
        print("triton       not installed")
    native = backends.get("native")
    describe = getattr(native, "build_description", None)
    print(f"native ext   {describe() if describe else 'not available in this version'}")
    print(f"backend pick {backends.requested()!r} (${backends.ENV_VAR} overrides 'auto'); priority: "
          f"{' -> '.join(backends.names())}")
    for where, x in _probe_inputs():
        print(f"\non {where}, float32:")
        for name, why in backends.explain(x).items():
            print(f"  {name:<10} {'can run' if why is None else 'cannot run: ' + why}")
    return 0


def _models_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--table", action="store_true", help="print parameters and multiply-adds as a markdown table")


def run_models(args) -> int:
    from .models import complexity_table, list_models
    if not args.table:
        print("\n".join(list_models()))
        return 0
    print("| alpha | rho | input | classes | parameters | multiply-adds |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in complexity_table():
        print(f"| {r['alpha']} | {r['rho']} | {r['resolution']} | {r['classes']} | {r['params']:,} | "
              f"{r['macs'] / 1e6:,.1f}M |")
    return 0


def _train_args(p: argparse.ArgumentParser) -> None:
    from .train import add_arguments
    add_arguments(p)


def _run_train(args) -> int:
    from .train import run_train
    return run_train(args)


def _eval_args(p: argparse.ArgumentParser) -> None:
    from .train import add_eval_arguments
    add_eval_arguments(p)


def _run_eval(args) -> int:
    from .train import run_eval
    return run_eval(args)


def _export_args(p: argparse.ArgumentParser) -> None:
    from .export import add_arguments
    add_arguments(p)


def _run_export(args) -> int:
    from .export import run_export
    return run_export(args)


def _sweep_args(p: argparse.ArgumentParser) -> None:
    from .train import add_sweep_arguments
    add_sweep_arguments(p)


def _run_sweep(args) -> int:
    from .train import run_sweep
    return run_sweep(args)


def _tune_args(p: argparse.ArgumentParser) -> None:
    from .tune import add_arguments
    add_arguments(p)


def _run_tune(args) -> int:
    from .tune import run_tune
    return run_tune(args)


COMMANDS: list[tuple[str, str, Callable, Callable]] = [
    ("info", "versions, the native extension, and which backends can run here (and why not)", _info_args,
     run_info),
    ("models", "list the registered models (--table: parameters and multiply-adds)", _models_args, run_models),
    ("train", "train the classifier (default: the embedded digits, offline, CPU-friendly); see docs/training.md",
     _train_args, _run_train),
    ("eval", "loss and accuracy of a checkpoint (run folder or .safetensors) on a data set", _eval_args, _run_eval),
    ("export", "export a checkpoint as a BN-folded plain model to ONNX (no custom ops)", _export_args, _run_export),
    ("sweep", "train a grid of widths x dilations (the paper's Tables 4 and 6) and tabulate the results",
     _sweep_args, _run_sweep),
    ("tune", "measure every backend (and the unfused layers) per block of a model on this device; keep the fastest",
     _tune_args, _run_tune),
]


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="fused-dsconv", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"fused_dsconv {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_, add_args, run in COMMANDS:
        p = sub.add_parser(name, help=help_, description=help_)
        add_args(p)
        p.set_defaults(run=run)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
