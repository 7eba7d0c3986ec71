"""``fused-dsconv eval``: loss and accuracy of a checkpoint on a data set."""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from . import checkpoint as ckpt
from .datasets import DataError, Loader, infer_dataset, load_dataset
from .loop import evaluate
from .runs import pick_device
from .train_args import add_data_arguments, add_device_arguments


def add_arguments(p: argparse.ArgumentParser) -> None:
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
        ds = load_dataset(
            name,
            data_root,
            resolution=config["resolution"],
            download=args.download,
            limit_val=args.limit_val,
            limit_train=args.limit_val if args.split == "train" else None,
        )
        if ds.num_classes != config["num_classes"]:
            raise ckpt.CheckpointError(
                f"the checkpoint has {config['num_classes']} classes, the data set {ds.num_classes}"
            )
        split = ds.val if args.split == "val" else ds.train
        mean, std = config.get("mean", ds.mean), config.get("std", ds.std)
        loader = Loader(split, args.batch_size, shuffle=False, workers=args.workers, pin_memory=device.type == "cuda")
        t0 = time.perf_counter()
        r = evaluate(model, loader, device, args.amp, mean, std, args.channels_last)
        dt = time.perf_counter() - t0
    except (DataError, ckpt.CheckpointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(
        f"{args.checkpoint}: {name} {args.split}, {r['images']:,} images: loss {r['loss']:.4f}, "
        f"accuracy {100 * r['acc']:.2f}% ({r['images'] / dt:,.0f} img/s on {device})"
    )
    print(json.dumps({"loss": r["loss"], "acc": r["acc"], "images": r["images"]}))
    return 0
