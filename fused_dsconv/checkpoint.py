"""Checkpoints of a training run: safetensors weights, a config to rebuild the model, a resumable state.

A run folder (``fused-dsconv train --out RUN``) holds:

    config.json         the model's architecture and the data's preprocessing (classes, mean, std,
                        resolution): enough for ``eval`` and ``export`` to rebuild it
    best.safetensors    weights (parameters and BN buffers) of the epoch with the lowest validation loss
    last.safetensors    weights after the latest epoch
    last_state.pt       everything ``--resume`` needs: weights, optimizer, AMP scaler, epoch, best
                        validation loss, RNG states (torch, CUDA, NumPy, Python, data order), settings
    log.csv             one line per epoch

Each .safetensors file also carries the config in its metadata, so it is self-describing when
copied away from its folder.

last_state.pt holds only tensors, numbers, strings, lists, tuples and dicts, so that it loads with
``torch.load(weights_only=True)``: a run folder received from someone else cannot run code when
resumed. States that need the full pickle (those of earlier versions) are refused, not loaded.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Optional, Union

import torch
from torch import nn

from .models import JointNet

CONFIG_FORMAT = "fused_dsconv.jointnet/1"
# /2: plain values only (loads with weights_only=True); /1 was a full pickle (NumPy and Python RNG
# states, argparse callables) and is refused.
STATE_FORMAT = "fused_dsconv.train_state/2"
STATE_KEYS = ("epoch", "model", "optimizer", "scaler", "rng", "best_val_loss", "best", "args", "config", "elapsed")
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
    return {
        "format": CONFIG_FORMAT,
        "num_classes": net.num_classes,
        "alpha": net.alpha,
        "rho": net.rho,
        "dilation": dil[0] if len(set(dil)) == 1 else dil,
        "in_channels": net.stem.in_channels,
        "resolution": net.resolution,
        **extra,
    }


def build_model(config: dict, **kwargs) -> JointNet:
    """A freshly initialised JointNet with ``config``'s architecture (kwargs: backend, recompute)."""
    if config.get("format") != CONFIG_FORMAT:
        raise CheckpointError(
            f"not a fused_dsconv JointNet config (format {config.get('format')!r}, expected {CONFIG_FORMAT!r})"
        )
    return JointNet(
        config["num_classes"],
        alpha=config["alpha"],
        rho=config["rho"],
        dilation=config["dilation"],
        in_channels=config.get("in_channels", 3),
        **kwargs,
    )


def _atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` whole or not at all. Written by ``open`` here (not by a library's own
    writer: safetensors' save_file creates 0600 files) so every run file gets the same permissions."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save_json(obj: dict, path: PathLike) -> None:
    _atomic(Path(path), (json.dumps(obj, indent=2) + "\n").encode())


def save_weights(model: nn.Module, path: PathLike, config: Optional[dict] = None) -> None:
    """Parameters and buffers of ``model`` as safetensors, with ``config`` in the metadata."""
    st = _safetensors()
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {"config": json.dumps(config)} if config is not None else None
    _atomic(Path(path), st.save(tensors, metadata=meta))


def save_train_state(state: dict, path: PathLike) -> None:
    """The resumable state of a run (plain values only; see the module docstring)."""
    buf = io.BytesIO()
    torch.save({"format": STATE_FORMAT, **state}, buf)
    _atomic(Path(path), buf.getvalue())


def _load_failure(e: Exception) -> str:
    """The unpickler's reason, without torch's advice to retry with weights_only=False."""
    for line in str(e).splitlines():
        if "WeightsUnpickler error:" in line:
            return line.split("WeightsUnpickler error:", 1)[1].split(" was not an allowed")[0].strip()
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:160]}" if text else type(e).__name__


def load_train_state(path: PathLike) -> dict:
    """A state written by ``save_train_state``, loaded with ``weights_only=True`` (no code runs)."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError for a disallowed global; others for foreign or broken files
        raise CheckpointError(
            f"{path} is refused: it does not load as plain tensors and values ({_load_failure(e)}). A training state "
            f"written by this version loads that way; one written before (format fused_dsconv.train_state/1) "
            f"or by anything else could run code when unpickled, so it is not loaded. The run's weights "
            f"({path.parent / 'last.safetensors'}, best.safetensors) stay usable by eval and export; "
            "to train on, start a new run"
        ) from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(
            f"{path} is not a fused_dsconv training state (format {found!r}, expected {STATE_FORMAT!r})"
        )
    missing = [k for k in STATE_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"{path} is an incomplete training state (missing {', '.join(missing)})")
    return state


def resolve(path: PathLike) -> tuple[Path, dict]:
    """A checkpoint argument (a run folder, or a .safetensors file) -> (weights file, config)."""
    path = Path(path)
    if path.is_dir():
        for name in ("best.safetensors", "last.safetensors"):
            if (path / name).is_file():
                path = path / name
                break
        else:
            raise CheckpointError(
                f"{path} holds no best.safetensors or last.safetensors (is it a training run "
                "folder, from fused-dsconv train --out?)"
            )
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
        raise CheckpointError(
            f"{path} carries no config and there is no config.json beside it: cannot tell which architecture to build"
        )
    return path, json.loads(cfg.read_text())


def check_state_dict(model: nn.Module, state: dict, source: str = "checkpoint") -> None:
    """Raise a CheckpointError naming the missing/unexpected keys and the differing shapes, if any."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
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
