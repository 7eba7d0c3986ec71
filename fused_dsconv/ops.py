"""The registered op family ``torch.ops.fused_dsconv.*``: schemas, input checks, fake kernels.

The ops are functional (they return the batch statistics instead of updating running statistics):
``torch.library`` will not attach autograd to an op that mutates its inputs, and a functional op is
what torch.compile traces without a graph break. ``JointBlock`` updates the running statistics.

Each op's implementation hands the work to a backend (``fused_dsconv.backends``); ``backend`` is a
name from that list or "auto". Autograd formulas live in ``fused_dsconv/autograd.py``.
"""
from __future__ import annotations

import contextlib
from typing import Optional

import torch
from torch import Tensor

from . import backends
from .reference import output_size

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_inputs(x: Tensor, dw_weight: Tensor, pw_weight: Tensor, stride: int, dilation: int, **per_channel) -> None:
    """Raise a ValueError / TypeError naming the argument for anything the op cannot take."""
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"x must be a 4-D tensor [N, C, H, W], got {x.dim()}-D with shape {tuple(x.shape)}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"x must be float32, float16, bfloat16 or float64, got {x.dtype}")
    n, c, h, w = x.shape
    if h == 0 or w == 0:
        raise ValueError(f"x must have non-zero height and width, got shape {tuple(x.shape)}")
    if not _is_int(stride) or stride not in (1, 2):
        raise ValueError(f"stride must be 1 or 2 (an int), got {stride!r}")
    if not _is_int(dilation) or dilation < 1:
        raise ValueError(f"dilation must be an integer >= 1, got {dilation!r}")
    if tuple(dw_weight.shape) != (c, 1, 3, 3):
        raise ValueError(f"dw_weight must have shape (C, 1, 3, 3) = {(c, 1, 3, 3)} for x with C={c} channels, "
                         f"got {tuple(dw_weight.shape)}")
    if pw_weight.dim() != 2 or pw_weight.shape[1] != c:
        raise ValueError(f"pw_weight must have shape (K, C) with C={c}, got {tuple(pw_weight.shape)}")
    for name, t in (("dw_weight", dw_weight), ("pw_weight", pw_weight)):
        if t.dtype != x.dtype:
            raise TypeError(f"{name} must have x's dtype {x.dtype}, got {t.dtype}")
    _check_vectors(x, "x", pw_weight.shape[0], per_channel)
    _check_devices(x, "x", {"dw_weight": dw_weight, "pw_weight": pw_weight, **per_channel})


def _check_vectors(ref: Tensor, ref_name: str, k: int, vectors: dict) -> None:
    """Per-channel tensors (None: absent) of shape [k] in the accumulation dtype of ``ref``."""
    for name, t in vectors.items():
        if t is None:
            continue
        if tuple(t.shape) != (k,):
            raise ValueError(f"{name} must have shape ({k},) (one value per output channel), got {tuple(t.shape)}")
        if t.dtype != backends.acc_dtype(ref):
            raise TypeError(f"{name} must be {backends.acc_dtype(ref)} for {ref_name} of dtype {ref.dtype}, "
                            f"got {t.dtype}")


def _check_devices(ref: Tensor, ref_name: str, tensors: dict) -> None:
    for name, t in tensors.items():
        if t is not None and t.device != ref.device:
            raise ValueError(f"{name} is on {t.device} but {ref_name} is on {ref.device}: all tensors must be on one "
                             "device")


def check_activations(x: Tensor, pw_weight: Tensor, stride: int, **acts: Optional[Tensor]) -> None:
    """Backward inputs shaped like the forward's output ([N, K, Ho, Wo], x's dtype and device; any strides:
    every backend reads them through their strides). Call after ``check_inputs``."""
    n, _, h, w = x.shape
    shape = (n, pw_weight.shape[0], output_size(h, stride), output_size(w, stride))
    for name, t in acts.items():
        if t is None:
            continue
        if tuple(t.shape) != shape:
            raise ValueError(f"{name} must have the forward output's shape [N, K, Ho, Wo] = {shape} for x of shape "
                             f"{tuple(x.shape)}, K={shape[1]} and stride {stride}, got {tuple(t.shape)}")
        if t.dtype != x.dtype:
            raise TypeError(f"{name} must have x's dtype {x.dtype}, got {t.dtype}")
        if t.device != x.device:
            raise ValueError(f"{name} is on {t.device} but x is on {x.device}: all tensors must be on one device")


def _out_like(x: Tensor, k: int, stride: int) -> Tensor:
    n, _, h, w = x.shape
    shape = (n, k, output_size(h, stride), output_size(w, stride))
    return x.new_empty(shape).contiguous(memory_format=backends.memory_format_of(x))


def _run(x: Tensor, backend: str):
    # Autocast has already chosen the dtype; the kernels (and the reference's own convs) must not
    # be autocast again underneath.
    no_autocast = (torch.autocast(x.device.type, enabled=False) if torch.amp.is_autocast_available(x.device.type)
                   else contextlib.nullcontext())
    return backends.select(x, backend), no_autocast


@torch.library.custom_op("fused_dsconv::forward_eval", mutates_args=())
def forward_eval(x: Tensor, dw_weight: Tensor, pw_weight: Tensor, bias: Tensor, stride: int, dilation: int,
                 backend: str = "auto") -> Tensor:
    """relu(pw(dw(x)) + bias): the eval-mode joint block with BN folded into pw_weight and bias."""
    check_inputs(x, dw_weight, pw_weight, stride, dilation, bias=bias)
    if x.numel() == 0:
        return _out_like(x, pw_weight.shape[0], stride)
    impl, no_autocast = _run(x, backend)
    with no_autocast:
        return impl.forward_eval(x, dw_weight.contiguous(), pw_weight.contiguous(), bias, stride, dilation)


@forward_eval.register_fake
def _(x, dw_weight, pw_weight, bias, stride, dilation, backend="auto"):
    check_inputs(x, dw_weight, pw_weight, stride, dilation, bias=bias)
    return _out_like(x, pw_weight.shape[0], stride)


@torch.library.custom_op("fused_dsconv::forward_train", mutates_args=())
def forward_train(x: Tensor, dw_weight: Tensor, pw_weight: Tensor, bias: Optional[Tensor],
                  bn_weight: Optional[Tensor], bn_bias: Optional[Tensor], stride: int, dilation: int,
                  eps: float, save_y: bool = True, backend: str = "auto"
                  ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Training-mode joint block: returns (out, y, mean, var).

    y = pw(dw(x)) + bias (empty when ``save_y`` is False); mean / var are the biased batch
    statistics (float32; float64 for float64 x) of y per channel; out = relu(bn_weight * (y - mean) / sqrt(var + eps) + bn_bias).
    """
    check_train_inputs(x, dw_weight, pw_weight, bias, bn_weight, bn_bias, stride, dilation)
    if x.numel() == 0:  # an empty batch has no statistics: NaN, as torch.var_mean of nothing
        out = _out_like(x, pw_weight.shape[0], stride)
        stat = torch.full((pw_weight.shape[0],), float("nan"), dtype=backends.acc_dtype(x), device=x.device)
        return out, out.clone() if save_y else x.new_empty(0), stat, stat.clone()
    impl, no_autocast = _run(x, backend)
    with no_autocast:
        return impl.forward_train(x, dw_weight.contiguous(), pw_weight.contiguous(), bias, bn_weight, bn_bias,
                                  stride, dilation, eps, save_y)


@forward_train.register_fake
def _(x, dw_weight, pw_weight, bias, bn_weight, bn_bias, stride, dilation, eps, save_y=True, backend="auto"):
    check_train_inputs(x, dw_weight, pw_weight, bias, bn_weight, bn_bias, stride, dilation)
    k = pw_weight.shape[0]
    out = _out_like(x, k, stride)
    y = _out_like(x, k, stride) if save_y else x.new_empty(0)
    stat = x.new_empty(k, dtype=backends.acc_dtype(x))
    return out, y, stat, stat.clone()


def check_train_inputs(x, dw_weight, pw_weight, bias, bn_weight, bn_bias, stride, dilation, *, synced=False,
                       **stats):
    """forward_train's checks (JointBlock runs them before it touches its running statistics). ``synced``:
    the statistics are merged over processes, so one value per channel here is allowed (the merged count is
    checked once it is known, ``fused_dsconv.distributed``)."""
    check_inputs(x, dw_weight, pw_weight, stride, dilation, bias=bias, bn_weight=bn_weight, bn_bias=bn_bias, **stats)
    if (bn_weight is None) != (bn_bias is None):
        raise ValueError("bn_weight and bn_bias must be given together (affine batch norm) or both be None")
    if synced:
        return
    n, _, h, w = x.shape
    per_channel = n * output_size(h, stride) * output_size(w, stride)
    if per_channel == 1:
        # nn.BatchNorm2d's own message, so code that catches it keeps working.
        raise ValueError("Expected more than 1 value per channel when training, got input size "
                         f"{torch.Size((n, pw_weight.shape[0], output_size(h, stride), output_size(w, stride)))}")


@torch.library.custom_op("fused_dsconv::backward_eval", mutates_args=())
def backward_eval(grad_out: Tensor, out: Tensor, x: Tensor, dw_weight: Tensor, pw_weight: Tensor, stride: int,
                  dilation: int, backend: str = "auto") -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients of forward_eval w.r.t. (x, dw_weight, pw_weight, bias)."""
    _check_backward_eval(grad_out, out, x, dw_weight, pw_weight, stride, dilation)
    if x.numel() == 0:
        return _zero_grads(x, dw_weight, pw_weight, 1)
    impl, no_autocast = _run(x, backend)
    with no_autocast:
        return impl.backward_eval(grad_out, out, x, dw_weight.contiguous(), pw_weight.contiguous(), stride, dilation)


@backward_eval.register_fake
def _(grad_out, out, x, dw_weight, pw_weight, stride, dilation, backend="auto"):
    _check_backward_eval(grad_out, out, x, dw_weight, pw_weight, stride, dilation)
    return (torch.empty_like(x), torch.empty_like(dw_weight), torch.empty_like(pw_weight),
            x.new_empty(pw_weight.shape[0], dtype=backends.acc_dtype(x)))


@torch.library.custom_op("fused_dsconv::backward_train", mutates_args=())
def backward_train(grad_out: Tensor, x: Tensor, dw_weight: Tensor, pw_weight: Tensor, bias: Optional[Tensor],
                   bn_weight: Optional[Tensor], bn_bias: Optional[Tensor], y: Optional[Tensor], mean: Tensor,
                   var: Tensor, stride: int, dilation: int, eps: float, backend: str = "auto"
                   ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients of forward_train w.r.t. (x, dw_weight, pw_weight, bias, bn_weight, bn_bias).

    ``y`` None means recompute mode. The last two are [K] tensors even when bn_weight is None
    (the autograd layer drops them then).
    """
    y = _check_backward_train(grad_out, x, dw_weight, pw_weight, bias, bn_weight, bn_bias, y, mean, var, stride,
                              dilation)
    if x.numel() == 0:
        return _zero_grads(x, dw_weight, pw_weight, 3)
    impl, no_autocast = _run(x, backend)
    with no_autocast:
        return impl.backward_train(grad_out, x, dw_weight.contiguous(), pw_weight.contiguous(), bias, bn_weight,
                                   bn_bias, y, mean, var, stride, dilation, eps)


@backward_train.register_fake
def _(grad_out, x, dw_weight, pw_weight, bias, bn_weight, bn_bias, y, mean, var, stride, dilation, eps,
      backend="auto"):
    _check_backward_train(grad_out, x, dw_weight, pw_weight, bias, bn_weight, bn_bias, y, mean, var, stride, dilation)
    k = pw_weight.shape[0]
    stats = [x.new_empty(k, dtype=backends.acc_dtype(x)) for _ in range(3)]
    return (torch.empty_like(x), torch.empty_like(dw_weight), torch.empty_like(pw_weight), *stats)


# -- the split training passes (synchronised batch statistics: fused_dsconv/distributed.py) -------------
# forward_train cut at the statistics: pass 1 (forward_stats) gives this process's statistics, the caller
# merges them over processes, pass 2 (forward_normalize) normalises with the merged ones; backward_train cut
# the same way at the two per-channel BN gradient sums (backward_reduce, then backward_apply with the merged
# means). Each op is functional, so the collectives between them trace in torch.compile like any other op.

def _stat_out(x, k):
    return x.new_zeros(k, dtype=backends.acc_dtype(x))


def _y_without_input(x, k, stride, bias):
    """y of an input with no elements: empty for an empty batch; the bias (or 0) everywhere for C = 0."""
    y = _out_like(x, k, stride)
    return y.copy_((bias if bias is not None else _stat_out(x, k)).view(1, k, 1, 1).to(x.dtype).expand_as(y))


@torch.library.custom_op("fused_dsconv::forward_stats", mutates_args=())
def forward_stats(x: Tensor, dw_weight: Tensor, pw_weight: Tensor, bias: Optional[Tensor], stride: int,
                  dilation: int, save_y: bool = True, backend: str = "auto") -> tuple[Tensor, Tensor, Tensor]:
    """Pass 1: (y, mean, var) with y = pw(dw(x)) + bias (an empty tensor when ``save_y`` is False) and mean /
    var the biased statistics of y per channel over this call's N*Ho*Wo pixels, as forward_train's. An empty
    batch gives zeros (it contributes nothing to a merge; forward_train's NaN would poison one)."""
    check_inputs(x, dw_weight, pw_weight, stride, dilation, bias=bias)
    k = pw_weight.shape[0]
    if x.numel() == 0:
        y = _y_without_input(x, k, stride, bias)
        mean = bias.clone() if bias is not None and y.numel() > 0 else _stat_out(x, k)
        return (y if save_y else x.new_empty(0)), mean, _stat_out(x, k)
    impl, no_autocast = _run(x, backend)
    with no_autocast:
        return impl.forward_stats(x, dw_weight.contiguous(), pw_weight.contiguous(), bias, stride, dilation, save_y)


@forward_stats.register_fake
def _(x, dw_weight, pw_weight, bias, stride, dilation, save_y=True, backend="auto"):
    check_inputs(x, dw_weight, pw_weight, stride, dilation, bias=bias)
    k = pw_weight.shape[0]
    y = _out_like(x, k, stride) if save_y else x.new_empty(0)
    return y, x.new_empty(k, dtype=backends.acc_dtype(x)), x.new_empty(k, dtype=backends.acc_dtype(x))


@torch.library.custom_op("fused_dsconv::forward_normalize", mutates_args=())
def forward_normalize(x: Tensor, dw_weight: Tensor, pw_weight: Tensor, bias: Optional[Tensor], y: Optional[Tensor],
                      mean: Tensor, var: Tensor, bn_weight: Optional[Tensor], bn_bias: Optional[Tensor], stride: int,
                      dilation: int, eps: float, backend: str = "auto") -> Tensor:
    """Pass 2: out = relu((y - mean) / sqrt(var + eps) * bn_weight + bn_bias) with the given (merged)
    statistics; ``y`` None (or empty: recompute mode) rebuilds y from x first."""
    y = _check_normalize(x, dw_weight, pw_weight, bias, y, mean, var, bn_weight, bn_bias, stride, dilation)
    if x.numel() == 0:
        yf = _y_without_input(x, pw_weight.shape[0], stride, bias).to(mean.dtype)
        z = torch.nn.functional.batch_norm(yf, mean, var, bn_weight, bn_bias, False, 0.0, eps)
        return z.relu().to(x.dtype).contiguous(memory_format=backends.memory_format_of(x))
    impl, no_autocast = _run(x, backend)
    with no_autocast:
        return impl.forward_normalize(x, dw_weight.contiguous(), pw_weight.contiguous(), bias, y, mean, var,
                                      bn_weight, bn_bias, stride, dilation, eps)


@forward_normalize.register_fake
def _(x, dw_weight, pw_weight, bias, y, mean, var, bn_weight, bn_bias, stride, dilation, eps, backend="auto"):
    _check_normalize(x, dw_weight, pw_weight, bias, y, mean, var, bn_weight, bn_bias, stride, dilation)
    return _out_like(x, pw_weight.shape[0], stride)


@torch.library.custom_op("fused_dsconv::backward_reduce", mutates_args=())
def backward_reduce(grad_out: Tensor, y: Tensor, mean: Tensor, var: Tensor, bn_weight: Optional[Tensor],
                    bn_bias: Optional[Tensor], eps: float, backend: str = "auto") -> tuple[Tensor, Tensor]:
    """(sum dz, sum dz * yhat) per channel over this call's pixels, with yhat = (y - mean) / sqrt(var + eps),
    z = yhat * bn_weight + bn_bias and dz = grad_out [z > 0]: the BN parameters' gradients (dbeta, dgamma)
    and, merged over processes, what backward_apply needs."""
    _check_reduce(grad_out, y, mean, var, bn_weight, bn_bias)
    if y.numel() == 0:
        return _stat_out(y, y.shape[1]), _stat_out(y, y.shape[1])
    impl, no_autocast = _run(y, backend)
    with no_autocast:
        return impl.backward_reduce(grad_out, y, mean, var, bn_weight, bn_bias, eps)


@backward_reduce.register_fake
def _(grad_out, y, mean, var, bn_weight, bn_bias, eps, backend="auto"):
    _check_reduce(grad_out, y, mean, var, bn_weight, bn_bias)
    k = y.shape[1]
    return y.new_empty(k, dtype=backends.acc_dtype(y)), y.new_empty(k, dtype=backends.acc_dtype(y))


@torch.library.custom_op("fused_dsconv::backward_apply", mutates_args=())
def backward_apply(grad_out: Tensor, x: Tensor, dw_weight: Tensor, pw_weight: Tensor, y: Tensor, mean: Tensor,
                   var: Tensor, bn_weight: Optional[Tensor], bn_bias: Optional[Tensor], mean_dz: Tensor,
                   mean_dz_yhat: Tensor, stride: int, dilation: int, eps: float, backend: str = "auto"
                   ) -> tuple[Tensor, Tensor, Tensor]:
    """(grad_x, grad_dw_weight, grad_pw_weight) through dy = bn_weight / sqrt(var + eps) * (dz - mean_dz -
    yhat * mean_dz_yhat), where mean_dz / mean_dz_yhat are backward_reduce's sums divided by the pixel count
    (merged over processes: nn.SyncBatchNorm's backward)."""
    _check_apply(grad_out, x, dw_weight, pw_weight, y, mean, var, bn_weight, bn_bias, mean_dz, mean_dz_yhat,
                 stride, dilation)
    if x.numel() == 0:
        return _zero_grads(x, dw_weight, pw_weight, 0)
    impl, no_autocast = _run(x, backend)
    with no_autocast:
        return impl.backward_apply(grad_out, x, dw_weight.contiguous(), pw_weight.contiguous(), y, mean, var,
                                   bn_weight, bn_bias, mean_dz, mean_dz_yhat, stride, dilation, eps)


@backward_apply.register_fake
def _(grad_out, x, dw_weight, pw_weight, y, mean, var, bn_weight, bn_bias, mean_dz, mean_dz_yhat, stride, dilation,
      eps, backend="auto"):
    _check_apply(grad_out, x, dw_weight, pw_weight, y, mean, var, bn_weight, bn_bias, mean_dz, mean_dz_yhat,
                 stride, dilation)
    return torch.empty_like(x), torch.empty_like(dw_weight), torch.empty_like(pw_weight)


def _check_normalize(x, dw_weight, pw_weight, bias, y, mean, var, bn_weight, bn_bias, stride, dilation):
    check_train_inputs(x, dw_weight, pw_weight, bias, bn_weight, bn_bias, stride, dilation, synced=True, mean=mean,
                       var=var)
    if y is not None and y.dim() == 1 and y.numel() == 0:
        y = None
    check_activations(x, pw_weight, stride, y=y)
    return y


def _check_reduce(grad_out, y, mean, var, bn_weight, bn_bias):
    if not isinstance(y, Tensor) or y.dim() != 4:
        raise ValueError(f"y must be the pre-BN activation [N, K, Ho, Wo], got "
                         f"{tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__}")
    if y.dtype not in FLOAT_DTYPES:
        raise TypeError(f"y must be float32, float16, bfloat16 or float64, got {y.dtype}")
    if (bn_weight is None) != (bn_bias is None):
        raise ValueError("bn_weight and bn_bias must be given together (affine batch norm) or both be None")
    vectors = {"mean": mean, "var": var, "bn_weight": bn_weight, "bn_bias": bn_bias}
    _check_vectors(y, "y", y.shape[1], vectors)
    _check_devices(y, "y", vectors)
    if not isinstance(grad_out, Tensor) or tuple(grad_out.shape) != tuple(y.shape):
        raise ValueError(f"grad_out must have y's shape {tuple(y.shape)}, got "
                         f"{tuple(grad_out.shape) if isinstance(grad_out, Tensor) else type(grad_out).__name__}")
    if grad_out.dtype != y.dtype or grad_out.device != y.device:
        raise TypeError(f"grad_out must have y's dtype {y.dtype} and device {y.device}, got {grad_out.dtype} on "
                        f"{grad_out.device}")


def _check_apply(grad_out, x, dw_weight, pw_weight, y, mean, var, bn_weight, bn_bias, mean_dz, mean_dz_yhat, stride,
                 dilation):
    check_train_inputs(x, dw_weight, pw_weight, None, bn_weight, bn_bias, stride, dilation, synced=True, mean=mean,
                       var=var, mean_dz=mean_dz, mean_dz_yhat=mean_dz_yhat)
    if y is None:
        raise ValueError("y must be given (backward_apply has no recompute mode: rebuild y with forward_stats)")
    check_activations(x, pw_weight, stride, grad_out=grad_out, y=y)


def _check_backward_eval(grad_out, out, x, dw_weight, pw_weight, stride, dilation):
    check_inputs(x, dw_weight, pw_weight, stride, dilation)
    check_activations(x, pw_weight, stride, grad_out=grad_out, out=out)


def _check_backward_train(grad_out, x, dw_weight, pw_weight, bias, bn_weight, bn_bias, y, mean, var, stride,
                          dilation) -> Optional[Tensor]:
    """Validates backward_train's inputs; returns y, or None for recompute mode (y None, or the empty tensor
    forward_train returns with save_y=False)."""
    check_train_inputs(x, dw_weight, pw_weight, bias, bn_weight, bn_bias, stride, dilation, mean=mean, var=var)
    if y is not None and y.dim() == 1 and y.numel() == 0:
        y = None
    check_activations(x, pw_weight, stride, grad_out=grad_out, y=y)
    return y


def _zero_grads(x, dw_weight, pw_weight, n_per_channel):
    k = pw_weight.shape[0]
    return (torch.zeros_like(x), torch.zeros_like(dw_weight), torch.zeros_like(pw_weight),
            *(x.new_zeros(k, dtype=backends.acc_dtype(x)) for _ in range(n_per_channel)))


from . import autograd as _autograd  # noqa: E402,F401  (registers the formulas on the ops above)
