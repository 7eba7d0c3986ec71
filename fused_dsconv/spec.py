"""The spec: the joint block in plain PyTorch, unfused.

Every backend (the reference backend, ``fused_dsconv/backends/reference.py``, included), the benchmarks
and the CPU fallback are measured against this file.

Shapes (N batch, C input channels, K output channels, s stride, d dilation):

    x          [N, C, H, W]        any float dtype, NCHW or channels_last
    dw_weight  [C, 1, 3, 3]        depthwise 3x3 kernel, dilated by d, padding d
    pw_weight  [K, C, 1, 1] or [K, C]
    t = dw(x)  [N, C, Ho, Wo]      Ho = (H - 1) // s + 1, Wo = (W - 1) // s + 1
    y = pw(t)  [N, K, Ho, Wo]
    out = relu(batch_norm(y))       same shape as y

Padding = dilation keeps the 3x3 dilated kernel centred, so at stride 1 the spatial size is
unchanged for every dilation (receptive field 2d + 1 per side).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .contract import output_size  # noqa: F401  (the spec's output size; its home is the contract)


def joint_block(
    x: Tensor,
    dw_weight: Tensor,
    pw_weight: Tensor,
    bn_weight: Optional[Tensor],
    bn_bias: Optional[Tensor],
    running_mean: Optional[Tensor],
    running_var: Optional[Tensor],
    *,
    stride: int = 1,
    dilation: int = 1,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
    dw_bias: Optional[Tensor] = None,
    pw_bias: Optional[Tensor] = None,
) -> Tensor:
    """depthwise 3x3 (dilated) -> 1x1 -> batch norm -> ReLU, exactly as the unfused modules compute it.

    ``training``, ``momentum``, ``running_mean`` / ``running_var`` have ``F.batch_norm``'s meaning:
    in training the batch statistics normalise and the running statistics (if given) are updated
    in place with the unbiased variance. ``momentum=None`` semantics (cumulative average) belong to
    the module, which passes the effective factor here, as ``nn.BatchNorm2d`` does.
    """
    c = x.shape[1]
    t = F.conv2d(x, dw_weight, dw_bias, stride=stride, padding=dilation, dilation=dilation, groups=c)
    y = F.conv2d(t, pw_weight.reshape(pw_weight.shape[0], -1, 1, 1), pw_bias)
    z = F.batch_norm(y, running_mean, running_var, bn_weight, bn_bias, training, momentum, eps)
    return F.relu(z)


def fold_bn(
    pw_weight: Tensor,
    bias: Optional[Tensor],
    bn_weight: Optional[Tensor],
    bn_bias: Optional[Tensor],
    mean: Tensor,
    var: Tensor,
    eps: float,
) -> tuple[Tensor, Tensor]:
    """Fold an eval-mode batch norm into the 1x1 conv: returns (pw_weight' [K, C], bias' [K]).

    relu(bn(W t + b)) == relu(W' t + b') with W' = W * g r, b' = beta + (b - mean) * g r,
    r = 1 / sqrt(var + eps). Computed in float32 (float64 for float64 weights); the caller casts W'
    to the activation dtype. Differentiable, so gradients reach W, b, gamma and beta through it.
    """
    k, acc = pw_weight.shape[0], torch.promote_types(pw_weight.dtype, torch.float32)
    scale = torch.rsqrt(var.to(acc) + eps)
    if bn_weight is not None:
        scale = scale * bn_weight.to(acc)
    w = pw_weight.reshape(k, -1).to(acc) * scale[:, None]
    shift = -mean.to(acc) * scale
    if bias is not None:
        shift = shift + bias.to(acc) * scale
    if bn_bias is not None:
        shift = shift + bn_bias.to(acc)
    return w, shift
