"""MEASURED: train copies of a classifier and of its unfused twin for the same steps on the same batches.

    python bench/compare_unfused.py --threads 1 --steps 10            # embedded digits, CPU
    python bench/compare_unfused.py --dataset cifar10 --data ~/data/cifar10 --model jointnet_a100_d3 --amp bf16

It takes ``fused-dsconv train``'s model, data and device options, builds the model as a training run
would (same seed, so the same initial weights), runs 2 untimed warm-up steps per model, then times
``--steps`` steps of each: throughput, peak CUDA memory above the base (on CUDA), the activations one
step saves (saved-tensor hooks, any device) and the loss at the last step. One process only.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F

try:  # the installed package when there is one, else this checkout
    import fused_dsconv  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fused_dsconv.datasets import Loader, infer_dataset, load_dataset  # noqa: E402
from fused_dsconv.loop import autocast_for, prepare, sync, train_step  # noqa: E402
from fused_dsconv.models import BASE_RESOLUTION, JointNet, unfused_twin  # noqa: E402
from fused_dsconv.runs import pick_device, resolve_model_args, resolve_rho, seed_everything  # noqa: E402
from fused_dsconv.saved_activations import saved_activation_bytes  # noqa: E402
from fused_dsconv.train_args import add_data_arguments, add_device_arguments, add_model_arguments  # noqa: E402


def _fmt_bytes(n: Optional[float]) -> str:
    return "n/a" if n is None else f"{n / 2**20:,.1f} MiB"


def compare_unfused(model: JointNet, split, args, device, mean, std, out=print) -> dict:
    """Train copies of ``model`` and of its unfused twin for ``args.steps`` steps on the same batches; ``args``
    also gives batch_size, seed, workers, lr, amp and channels_last."""
    steps = max(1, args.steps)
    loader = Loader(
        split,
        args.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(args.seed + 1),
        workers=args.workers,
        pin_memory=device.type == "cuda",
    )
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
            return train_step(net, opt, scaler, x, y, device, args.amp)[0]

        for x, y in batches[:2]:  # warm-up (kernel selection, compilation), not timed
            step(x, y)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
        sync(device)
        t0 = time.perf_counter()
        losses = [step(x, y) for x, y in batches[2:]]
        sync(device)
        dt = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated(device) - base if device.type == "cuda" else None
        x0, y0 = prepare(*batches[2], device, mean, std, args.channels_last)
        with autocast_for(device, args.amp):
            saved = saved_activation_bytes(lambda: F.cross_entropy(net(x0).float(), y0), net)
        backend = net.blocks[0].last_backend if label == "fused" else "PyTorch layers"
        results[label] = {
            "images_per_s": sum(len(y) for _, y in batches[2:]) / dt,
            "peak_bytes": peak,
            "saved_bytes": saved,
            "final_loss": losses[-1].item(),
            "backend": backend,
        }
    f, u = results["fused"], results["unfused"]
    out(f"fused vs unfused (MEASURED): {steps} training steps each, batch {args.batch_size}, {device}, amp {args.amp}")
    out(f"  {'':<28}{'fused (' + str(f['backend']) + ')':>22}{'unfused':>18}{'ratio':>9}")
    out(
        f"  {'throughput (images/s)':<28}{f['images_per_s']:>22,.1f}{u['images_per_s']:>18,.1f}"
        f"{f['images_per_s'] / u['images_per_s']:>8.2f}x"
    )
    if device.type == "cuda":
        out(
            f"  {'peak CUDA memory above base':<28}{_fmt_bytes(f['peak_bytes']):>22}{_fmt_bytes(u['peak_bytes']):>18}"
            f"{f['peak_bytes'] / max(1, u['peak_bytes']):>8.2f}x"
        )
    out(
        f"  {'saved activations (1 step)':<28}{_fmt_bytes(f['saved_bytes']):>22}{_fmt_bytes(u['saved_bytes']):>18}"
        f"{f['saved_bytes'] / max(1, u['saved_bytes']):>8.2f}x"
    )
    out(f"  {'loss at the last step':<28}{f['final_loss']:>22.5f}{u['final_loss']:>18.5f}")
    return results


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_model_arguments(p)
    add_data_arguments(p)
    add_device_arguments(p)
    p.add_argument("--steps", type=int, default=20, help="timed steps per model (default 20)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    p.add_argument("--seed", type=int, default=0, help="seeds init and data order (default 0)")
    args = p.parse_args(argv)
    device = pick_device(args.device, args.threads)
    alpha, delta, _ = resolve_model_args(args)
    dataset = args.dataset or infer_dataset(args.data)
    rho = resolve_rho(args, dataset)
    seed_everything(args.seed, deterministic=False)
    ds = load_dataset(
        dataset,
        args.data,
        resolution=int(round(BASE_RESOLUTION * rho)),
        download=args.download,
        limit_train=args.limit_train,
        limit_val=args.limit_val,
    )
    torch.manual_seed(args.seed)  # the initial weights a training run with this seed starts from
    model = JointNet(
        ds.num_classes, alpha=alpha, rho=rho, dilation=delta, backend=args.backend, recompute=args.recompute
    ).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    compare_unfused(model, ds.train, args, device, ds.mean, ds.std)
    return 0


if __name__ == "__main__":
    sys.exit(main())
