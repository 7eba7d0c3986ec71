"""``fused-dsconv`` (also ``python -m fused_dsconv``): the command line.

Each subcommand is a (name, help, add_arguments, run) entry in ``COMMANDS``; ``run`` gets the
parsed namespace and returns an exit code. The namespace also carries ``prog`` (how the tool was
invoked), ``invoked_as`` (``prog`` and the subcommand), ``argv`` (the subcommand's own arguments)
and ``explicit`` (the option names given on the command line, not defaulted): ``train --resume``
keeps a run's saved settings except those, and a Ctrl-C message can quote the command to rerun.

Help texts are plain text (no reST markup) and name no file outside the installed package.
"""

from __future__ import annotations

import argparse
import importlib
import io
import os
import platform
import sys
from typing import Callable, Optional, Union

import torch

from . import backends
from ._version import __version__
from .processes import end_worker


def _info_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--verbose",
        action="store_true",
        help="also the Triton kernels' tile configs: the autotuner's spaces and candidates per block",
    )


def _probe_inputs() -> list[tuple[str, torch.Tensor]]:
    probes = [("cpu", torch.empty(1, 1, 1, 1))]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            cap = torch.cuda.get_device_capability(i)
            probes.append(
                (
                    f"cuda:{i} {torch.cuda.get_device_name(i)} (sm_{cap[0]}{cap[1]})",
                    torch.empty(1, 1, 1, 1, device=f"cuda:{i}"),
                )
            )
    return probes


def run_info(args) -> int:
    print(f"fused_dsconv {__version__}")
    print(f"python       {platform.python_version()} ({sys.executable})")
    print(
        f"torch        {torch.__version__} (CUDA build: {torch.version.cuda or 'none'}, "
        f"GPUs visible: {torch.cuda.device_count() if torch.cuda.is_available() else 0})"
    )
    try:
        import triton

        print(f"triton       {triton.__version__}")
    except ImportError:
        print("triton       not installed")
    native = backends.get("native")
    describe = getattr(native, "build_description", None)
    print(f"native ext   {describe() if describe else 'not available in this version'}")
    print(
        f"backend pick {backends.requested()!r} (${backends.ENV_VAR} overrides 'auto'); priority: "
        f"{' -> '.join(backends.names())}"
    )
    for where, x in _probe_inputs():
        print(f"\non {where}, float32:")
        for name, why in backends.explain(x).items():
            print(f"  {name:<10} {'can run' if why is None else 'cannot run: ' + why}")
    if getattr(args, "verbose", False):
        print()
        try:
            from . import triton_tuning

            print(triton_tuning.describe())
        except ImportError as e:
            print(f"Triton tile configs: unavailable ({e})")
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
        print(
            f"| {r['alpha']} | {r['rho']} | {r['resolution']} | {r['classes']} | {r['params']:,} | "
            f"{r['macs'] / 1e6:,.1f}M |"
        )
    return 0


# (name, help, add_arguments, run): ``run`` gets the parsed namespace and returns an exit code. A
# "module:function" string is imported only when its command is parsed or run, so `fused-dsconv info`
# does not import the training, export or tuning code (nor torch.distributed, onnx, triton).
COMMANDS: list[tuple[str, str, Union[Callable, str], Union[Callable, str]]] = [
    ("info", "versions, the native extension, and which backends can run here (and why not)", _info_args, run_info),
    ("models", "list the registered models (--table: parameters and multiply-adds)", _models_args, run_models),
    (
        "train",
        "train the classifier (default: the embedded digits, offline, CPU-friendly)",
        "train_args:add_arguments",
        "train:run_train",
    ),
    (
        "eval",
        "loss and accuracy of a checkpoint (run folder or .safetensors) on a data set",
        "evaluation:add_arguments",
        "evaluation:run_eval",
    ),
    (
        "export",
        "export a checkpoint as a BN-folded plain model to ONNX (no custom ops)",
        "export:add_arguments",
        "export:run_export",
    ),
    (
        "sweep",
        "train a grid of widths x dilations (the paper's Tables 4 and 6) and tabulate the results",
        "sweep:add_arguments",
        "sweep:run_sweep",
    ),
    (
        "tune",
        "measure every backend (and the unfused layers) per block of a model on this device; keep the fastest",
        "tune_cli:add_arguments",
        "tune_cli:run_tune",
    ),
]


def _resolve(target: Union[Callable, str]) -> Callable:
    """A COMMANDS entry's function: itself, or "module:function" of this package, imported now."""
    if callable(target):
        return target
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(f".{module}", __package__), name)


DESCRIPTION = (
    "fused dilated depthwise-separable conv + BatchNorm + ReLU blocks for PyTorch: check the install, "
    "list the models, train, evaluate and export the paper's classifier"
)
EPILOGS = {
    "train": "examples:\n"
    "  %(prog)s --out runs/digits --threads 1      the embedded digits on a CPU (minutes)\n"
    "  %(prog)s --resume runs/digits               continue after Ctrl-C with the run's settings\n"
    "  %(prog)s --resume runs/digits --epochs 30   ... and extend it to 30 epochs\n"
    "  %(prog)s --dataset cifar10 --data ~/data/cifar10 --download --model jointnet_a100_d3 --amp bf16\n"
    "files written: config.json, best.safetensors, last.safetensors, last_state.pt, log.csv, summary.json",
}


def _invoked_prog() -> str:
    """How a user would type this tool again: the console script, or ``python -m`` when run that way."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    started_as = getattr(spec, "name", "") or ""
    return "python -m fused_dsconv" if started_as.startswith("fused_dsconv.") else "fused-dsconv"


def given_options(add_args: Callable, argv: list[str]) -> frozenset:
    """The dest names of the options that ``argv`` (a subcommand's arguments) gives, defaults left out."""
    probe = argparse.ArgumentParser(add_help=False)
    add_args(probe)
    every = vars(probe.parse_known_args(argv)[0])  # every dest: given, defaulted, or set by set_defaults
    unset = object()  # not a string: argparse converts string defaults with the option's type
    probe.set_defaults(**dict.fromkeys(every, unset))  # set_defaults resets the options' own defaults too
    return frozenset(k for k, v in vars(probe.parse_known_args(argv)[0]).items() if v is not unset)


def _quiet_stdout() -> None:
    """The reader of stdout went away (``| head``): send what is still buffered nowhere, not to a traceback."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, io.UnsupportedOperation):
        pass


def main(argv: Optional[list[str]] = None, prog: Optional[str] = None) -> int:
    code = _main(argv, prog)
    end_worker(code)  # a torchrun worker ends here (processes.end_worker says why); others return
    return code


def _main(argv: Optional[list[str]], prog: Optional[str]) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    prog = prog or _invoked_prog()
    try:
        try:
            parser = argparse.ArgumentParser(prog=prog, description=DESCRIPTION)
            parser.add_argument("--version", action="version", version=f"fused_dsconv {__version__}")
            sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
            adders = {}
            for name, help_, add_args, run in COMMANDS:
                p = sub.add_parser(
                    name,
                    help=help_,
                    description=help_,
                    epilog=EPILOGS.get(name),
                    formatter_class=argparse.RawDescriptionHelpFormatter,
                )
                adders[name] = add_args = _resolve(add_args)
                add_args(p)
                p.set_defaults(run=run)
            args = parser.parse_args(argv)
            args.argv = argv[argv.index(args.command) + 1 :]
            args.explicit = given_options(adders[args.command], args.argv)
            args.prog, args.invoked_as = prog, f"{prog} {args.command}"
            return _resolve(args.run)(args)
        finally:
            sys.stdout.flush()  # here, so that a closed pipe is seen now and not at interpreter exit
    except KeyboardInterrupt as e:  # one line, no traceback; a training run says how to continue
        print(str(e) or "interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        _quiet_stdout()
        return 141  # as if killed by SIGPIPE, like other tools in a pipeline


if __name__ == "__main__":
    sys.exit(main())
