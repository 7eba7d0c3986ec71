"""Export a trained JointNet as a plain, BN-folded network (``fused-dsconv export CKPT --onnx FILE``).

The deployed graph has no custom op and no BatchNorm:

    stem 3x3 conv -> 9 x [3x3 depthwise conv (dilated) -> 1x1 conv with BN folded into weight/bias -> ReLU]
    -> global average pool -> linear

Its input is the normalised image at the network's resolution, [N, 3, R, R] (N is dynamic);
the preprocessing (mean, std, resolution, class names) is written into the ONNX metadata
(``metadata_props``) and printed. Needs the optional ``onnx`` package (``pip install onnx``);
checking the result with ``--check`` needs ``onnxruntime``.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from . import checkpoint as ckpt
from .block import JointBlock
from .models import JointNet
from .contract import fold_conv_biases
from .spec import fold_bn


def _require(module: str, extra: str = "export"):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(
            f"{module} is needed for this: pip install {module}  (or: pip install 'fused_dsconv[{extra}]')"
        ) from e


def fold_block(block: JointBlock) -> nn.Sequential:
    """One eval-mode JointBlock as Sequential(depthwise conv, 1x1 conv with BN folded in, ReLU)."""
    dw, pw, bn = block.dw, block.pw, block.bn
    if bn.running_mean is None:
        raise ValueError("cannot fold a BatchNorm without running statistics (track_running_stats=False)")
    acc = torch.promote_types(pw.weight.dtype, torch.float32)
    bias = fold_conv_biases(pw.weight, dw.bias, pw.bias, acc)
    w, b = fold_bn(pw.weight.flatten(1), bias, bn.weight, bn.bias, bn.running_mean, bn.running_var, bn.eps)
    new_dw = nn.Conv2d(dw.in_channels, dw.out_channels, 3, dw.stride, dw.padding, dw.dilation, dw.groups, bias=False)
    new_dw.weight.data.copy_(dw.weight.detach())
    new_pw = nn.Conv2d(pw.in_channels, pw.out_channels, 1, bias=True)
    new_pw.weight.data.copy_(w.detach().reshape_as(pw.weight))
    new_pw.bias.data.copy_(b.detach())
    return nn.Sequential(new_dw, new_pw, nn.ReLU())


class PlainJointNet(nn.Module):
    """JointNet for inference with BN folded: only Conv2d, ReLU, pooling and Linear."""

    def __init__(self, model: JointNet):
        super().__init__()
        model = model.eval()
        self.resolution = model.resolution
        self.stem = nn.Conv2d(model.stem.in_channels, model.stem.out_channels, 3, 1, 1, bias=False)
        self.stem.weight.data.copy_(model.stem.weight.detach())
        with torch.no_grad():
            self.blocks = nn.Sequential(
                *(fold_block(b) if isinstance(b, JointBlock) else _fold_unfused(b) for b in model.blocks)
            )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(model.classifier.in_features, model.classifier.out_features)
        self.classifier.load_state_dict(model.classifier.state_dict())
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.blocks(self.stem(x))), 1))


def _fold_unfused(seq: nn.Sequential) -> nn.Sequential:  # a block already converted with .to_unfused()
    return fold_block(JointBlock.from_unfused(seq).eval())


def export_onnx(
    model: JointNet,
    path: str | Path,
    *,
    config: Optional[dict] = None,
    opset: int = 17,
    batch: Optional[int] = None,
    dynamo: bool = False,
) -> Path:
    """Write the BN-folded plain model to ``path`` (ONNX); batch dimension dynamic unless ``batch``.

    Uses torch's TorchScript-based exporter (``dynamo=False``: needs only ``onnx``); ``dynamo=True``
    (or a torch without the old exporter) uses the torch.export-based one, which needs ``onnxscript``.
    """
    onnx = _require("onnx")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    plain = PlainJointNet(model.cpu().float())
    r = plain.resolution
    example = torch.zeros(batch or 2, model.stem.in_channels, r, r)
    names = dict(input_names=["images"], output_names=["logits"])
    legacy_error = None
    if not dynamo:
        kwargs = dict(names, opset_version=opset, do_constant_folding=True, dynamo=False)
        if batch is None:
            kwargs["dynamic_axes"] = {"images": {0: "batch"}, "logits": {0: "batch"}}
        try:
            with warnings.catch_warnings():  # torch >= 2.9 marks this exporter deprecated; it still works
                warnings.simplefilter("ignore", DeprecationWarning)
                torch.onnx.export(plain, (example,), str(path), **kwargs)
        except (TypeError, RuntimeError, AttributeError) as e:  # removed from this torch? try the new one
            legacy_error = e
    if dynamo or legacy_error is not None:
        try:
            import onnxscript  # noqa: F401
        except ImportError as e:
            why = f" (the TorchScript exporter failed: {legacy_error})" if legacy_error else ""
            raise ImportError(
                f"the torch.export-based ONNX exporter needs onnxscript: pip install onnxscript{why}"
            ) from e
        shapes = None if batch is not None else {"x": {0: torch.export.Dim("batch")}}
        torch.onnx.export(
            plain,
            (example,),
            str(path),
            dynamo=True,
            dynamic_shapes=shapes,
            opset_version=max(opset, 18),
            external_data=False,
            **names,
        )
    proto = onnx.load(str(path))
    meta = {"resolution": r, "input": "normalised RGB, (pixel/255 - mean) / std, NCHW float32"}
    if config:
        meta.update(
            {
                k: config[k]
                for k in ("mean", "std", "classes", "model", "dataset", "alpha", "rho", "dilation")
                if k in config
            }
        )
    for k, v in meta.items():
        p = proto.metadata_props.add()
        p.key, p.value = k, json.dumps(v) if not isinstance(v, str) else v
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    return path


def onnx_logits(path: str | Path, x: torch.Tensor) -> torch.Tensor:
    """Run an exported file in onnxruntime (CPU) on ``x``."""
    ort = _require("onnxruntime")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(sess.run(["logits"], {"images": x.detach().cpu().float().numpy()})[0])


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="a run folder (uses best.safetensors) or a .safetensors file")
    p.add_argument("--onnx", required=True, metavar="FILE", help="where to write the ONNX model")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--batch", type=int, default=None, help="fix the batch size (default: dynamic)")
    p.add_argument(
        "--dynamo",
        action="store_true",
        help="use torch's torch.export-based exporter (needs onnxscript) instead of the TorchScript one",
    )
    p.add_argument(
        "--check", action="store_true", help="run the file in onnxruntime and compare with PyTorch on random inputs"
    )


def run_export(args) -> int:
    try:
        model, config = ckpt.load_model(args.checkpoint, backend="reference")
        path = export_onnx(model, args.onnx, config=config, opset=args.opset, batch=args.batch, dynamo=args.dynamo)
        print(
            f"wrote {path} ({path.stat().st_size / 2**20:.2f} MiB): input 'images' [N, 3, {model.resolution}, "
            f"{model.resolution}] normalised with mean {config.get('mean')} std {config.get('std')}; "
            f"output 'logits' [N, {model.num_classes}]"
        )
        if args.check:
            x = torch.randn(
                args.batch or 4, 3, model.resolution, model.resolution, generator=torch.Generator().manual_seed(0)
            )
            with torch.no_grad():
                ref = model.eval()(x)
            diff = (onnx_logits(path, x) - ref).abs().max().item()
            print(f"onnxruntime vs PyTorch: max abs logit difference {diff:.2e}")
            if diff > 1e-3:
                print("error: the exported model disagrees with PyTorch", file=sys.stderr)
                return 1
    except (ckpt.CheckpointError, ImportError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
