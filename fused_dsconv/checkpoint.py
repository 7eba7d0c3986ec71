"""Checkpoints of a training run: safetensors weights, a config to rebuild the model, a resumable state.

A run folder (``fused-dsconv train --out RUN``) holds:

    config.json         the model's architecture and the data's preprocessing (classes, mean, std,
                        resolution): enough for ``eval`` and ``export`` to rebuild it
    best.safetensors    weights (parameters and BN buffers) of the epoch with the lowest validation loss
    last.safetensors    weights after the latest epoch
    last_state.pt       everything ``--resume`` needs: weights, optimizer, AMP scaler, epoch, best
                        validation loss, RNG states (torch, CUDA, NumPy, Python, data order)
    log.csv             one line per epoch

Each .safetensors file also carries the config in its metadata, so it is self-describing when
copied away from its folder.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional, Union

from torch import nn

from .models import JointNet

CONFIG_FORMAT = "fused_dsconv.jointnet/1"
PathLike = Union[str, os.PathLike]


class CheckpointError(Exception):
    """A checkpoint cannot be used as asked; the message says why and what differs."""


def _safetensors():
    try:
        import safetensors.torch
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("checkpoints are saved as safetensors: pip install safetensors") from e
    return safetensors.torch


def model_config(net: JointNet, **extra) -> dict:
    """The architecture of ``model`` as plain JSON values, plus ``extra`` (data set, classes, ...)."""
    dil = list(net.dilations)
    return {"format": CONFIG_FORMAT, "num_classes": net.num_classes, "alpha": net.alpha, "rho": net.rho,
            "dilation": dil[0] if len(set(dil)) == 1 else dil, "in_channels": net.stem.in_channels,
            "resolution": net.resolution, **extra}


def build_model(config: dict, **kwargs) -> JointNet:
    """A freshly initialised JointNet with ``config``'s architecture (kwargs: backend, recompute)."""
    if config.get("format") != CONFIG_FORMAT:
        raise CheckpointError(f"not a fused_dsconv JointNet config (format {config.get('format')!r}, "
                              f"expected {CONFIG_FORMAT!r})")
    return JointNet(config["num_classes"], alpha=config["alpha"], rho=config["rho"], dilation=config["dilation"],
                    in_channels=config.get("in_channels", 3), **kwargs)


def _atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def save_json(obj: dict, path: PathLike) -> None:
    _atomic(Path(path), lambda p: p.write_text(json.dumps(obj, indent=2) + "\n"))


def save_weights(model: nn.Module, path: PathLike, config: Optional[dict] = None) -> None:
    """Parameters and buffers of ``model`` as safetensors, with ``config`` in the metadata."""
    st = _safetensors()
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {"config": json.dumps(config)} if config is not None else None
    _atomic(Path(path), lambda p: st.save_file(tensors, str(p), metadata=meta))


def resolve(path: PathLike) -> tuple[Path, dict]:
    """A checkpoint argument (a run folder, or a .safetensors file) -> (weights file, config)."""
    path = Path(path)
    if path.is_dir():
        for name in ("best.safetensors", "last.safetensors"):
            if (path / name).is_file():
                path = path / name
                break
        else:
            raise CheckpointError(f"{path} holds no best.safetensors or last.safetensors (is it a training run "
                                  "folder, from fused-dsconv train --out?)")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.suffix != ".safetensors":
        raise CheckpointError(f"{path}: expected a .safetensors weights file or a run folder")
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if "config" in meta:
        return path, json.loads(meta["config"])
    cfg = path.with_name("config.json")
    if not cfg.is_file():
        raise CheckpointError(f"{path} carries no config and there is no config.json beside it: cannot tell "
                              "which architecture to build")
    return path, json.loads(cfg.read_text())


def check_state_dict(model: nn.Module, state: dict, source: str = "checkpoint") -> None:
    """Raise a CheckpointError naming the missing/unexpected keys and the differing shapes, if any."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if not (missing or unexpected or shapes):
        return

    def show(items, n=8):
        return "\n    " + "\n    ".join(items[:n]) + (f"\n    ... and {len(items) - n} more" if len(items) > n else "")
    msg = [f"{source} does not fit this model's architecture:"]
    if shapes:
        msg.append(f"  {len(shapes)} shape(s) differ:" + show(shapes))
    if missing:
        msg.append(f"  {len(missing)} key(s) the model needs are missing:" + show(missing))
    if unexpected:
        msg.append(f"  {len(unexpected)} key(s) in the checkpoint are not in the model:" + show(unexpected))
    msg.append("  (a different --alpha / --delta / number of classes, or a file from another model?)")
    raise CheckpointError("\n".join(msg))


def load_weights(model: nn.Module, path: PathLike) -> nn.Module:
    """Load a .safetensors file into ``model`` after checking that every key and shape matches."""
    state = _safetensors().load_file(str(path), device="cpu")
    check_state_dict(model, state, str(path))
    model.load_state_dict(state, strict=True)
    return model


def load_model(path: PathLike, **kwargs) -> tuple[JointNet, dict]:
    """Rebuild and load the model of a run folder or a .safetensors file: (model in eval mode, config)."""
    weights, config = resolve(path)
    model = build_model(config, **kwargs)
    load_weights(model, weights)
    return model.eval(), config
