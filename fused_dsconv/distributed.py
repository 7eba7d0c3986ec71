"""Synchronised batch statistics for ``JointBlock(sync_bn=True)`` over ``torch.distributed`` processes.

What nn.SyncBatchNorm does for an unfused BatchNorm, done on the fused block's split passes (the ops
``fused_dsconv::forward_stats`` / ``forward_normalize`` / ``backward_reduce`` / ``backward_apply``):

forward   pass 1 on this process's batch: y (not kept in recompute mode) and its per-channel
          (count, mean, M2); the triples of every process are merged (an all-reduce whose reduction is
          Chan et al.'s merge: gathered, then merged in rank order on every process, so every process
          holds the same bits); pass 2 normalises with the merged statistics and applies ReLU.
backward  the two per-channel BN gradient sums (sum dz, sum dz * yhat) of this process, all-reduced
          (summed); dy and the convolutions' gradients from the summed means. The BN parameters'
          gradients stay this process's sums, as nn.SyncBatchNorm leaves them: DDP reduces parameter
          gradients itself.

Counts may differ between processes (uneven last batches); a process with an empty batch still joins
both collectives and contributes nothing. The merged count decides whether training is possible (more
than one value per channel), as nn.SyncBatchNorm decides it, and the running statistics use it.

The collectives are torch.distributed's functional collectives (``_functional_collectives``), between
the registered ops, so torch.compile traces a synchronised block into one graph. Per block and step they
carry 2K + 1 values per process forward (count, mean, M2; the gather receives that from every process)
and 2K backward, in the statistics dtype (float32; float64 for float64 inputs).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist
from torch import Tensor

from . import checks, split_ops
from .contract import OpParams, output_size


def active(group=None) -> bool:
    """Whether statistics are merged over processes: torch.distributed is initialised and ``group`` (None: the
    default group) has more than one process. Otherwise a synchronised block trains as a plain one."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def _group(group):
    return group if group is not None else dist.group.WORLD


def merge_statistics(rows: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """Chan et al.'s merge of per-process rows (count, mean [k], M2 [k]) -> (count [1], mean [k], biased
    var [k]), in row order. A row of count 0 adds nothing (its mean and M2 are 0); M2 about each row's own
    mean plus count * (row mean - merged mean)^2 keeps the sum-of-squares cancellation out."""
    rows = rows.reshape(-1, 2 * k + 1)
    counts, means, m2s = rows[:, :1], rows[:, 1 : k + 1], rows[:, k + 1 :]
    n = counts.sum(0)
    mean = (counts * means).sum(0) / n
    m2 = m2s.sum(0) + (counts * (means - mean).square()).sum(0)
    return n, mean, m2 / n


def _pixels(x: Tensor, stride: int) -> int:
    n, _, h, w = x.shape
    return n * output_size(h, stride) * output_size(w, stride)


class _SyncTrain(torch.autograd.Function):
    """forward_train with statistics merged over ``group``: (out, mean, var, count), the last three merged
    and not differentiable."""

    @staticmethod
    def forward(ctx, x, dw_weight, pw_weight, bias, bn_weight, bn_bias, stride, dilation, eps, save_y, backend, group):
        import torch.distributed._functional_collectives as funcol

        k = pw_weight.shape[0]
        count = _pixels(x, stride)
        y, mean_here, var_here = split_ops.forward_stats(
            x, dw_weight, pw_weight, bias, stride, dilation, save_y, backend
        )
        row = torch.cat([mean_here.new_full((1,), count), mean_here, var_here * count])
        n, mean, var = merge_statistics(funcol.all_gather_single(row, 0, group), k)
        if count <= 1 and not torch.compiler.is_compiling():
            # Only a process with at most one value can see a merged count of at most one, and then every
            # process has at most one: they all raise here, together, and nothing has changed yet.
            if int(n.item()) == 1:
                shape = torch.Size((x.shape[0], k, output_size(x.shape[2], stride), output_size(x.shape[3], stride)))
                raise ValueError(
                    "Expected more than 1 value per channel when training, got input size "
                    f"{shape} here and 1 value per channel over all "
                    f"{dist.get_world_size(group)} processes"
                )
        out = split_ops.forward_normalize(
            x,
            dw_weight,
            pw_weight,
            bias,
            y if save_y else None,
            mean,
            var,
            bn_weight,
            bn_bias,
            stride,
            dilation,
            eps,
            backend,
        )
        ctx.save_for_backward(
            x, dw_weight, pw_weight, bias, bn_weight, bn_bias, y if save_y else None, mean, var, mean_here, n
        )
        # As the registered forward_train's autograd keeps them, plus the process group and this process's pixels.
        ctx.params, ctx.backend, ctx.group, ctx.count = OpParams(stride, dilation, eps, save_y), backend, group, count
        ctx.mark_non_differentiable(mean, var, n)
        return out, mean, var, n

    @staticmethod
    def backward(ctx, grad_out, _grad_mean, _grad_var, _grad_n):
        import torch.distributed._functional_collectives as funcol

        x, dw_weight, pw_weight, bias, bn_weight, bn_bias, y, mean, var, mean_here, n = ctx.saved_tensors
        p, backend, group, count = ctx.params.with_mask(ctx.needs_input_grad[:3]), ctx.backend, ctx.group, ctx.count
        k = pw_weight.shape[0]
        if y is None:  # recompute mode: y once, for both passes (its statistics are not needed again)
            y = split_ops.forward_stats(x, dw_weight, pw_weight, bias, p.stride, p.dilation, True, backend)[0]
        sum_dz, sum_dz_yhat = split_ops.backward_reduce(grad_out, y, mean, var, bn_weight, bn_bias, p.eps, backend)
        total = funcol.all_reduce(torch.cat([sum_dz, sum_dz_yhat]), "sum", group)
        mean_dz, mean_dz_yhat = (total / n).split(k)
        need = p.output_mask  # a frozen weight (or x without grad) costs none of its kernels
        dx = ddw = dpw = None
        if any(need):
            dx, ddw, dpw = split_ops.backward_apply(
                grad_out,
                x,
                dw_weight,
                pw_weight,
                y,
                mean,
                var,
                bn_weight,
                bn_bias,
                mean_dz,
                mean_dz_yhat,
                p.stride,
                p.dilation,
                p.eps,
                backend,
                list(need),
            )
        dbias = None
        if bias is not None and ctx.needs_input_grad[3]:
            # sum of dy over this process's pixels, from per-channel sums: sum (y - mean) = count (mean here - mean)
            r = torch.rsqrt(var + p.eps)
            a = r if bn_weight is None else bn_weight * r
            dbias = a * (sum_dz - count * mean_dz - mean_dz_yhat * r * (count * (mean_here - mean)))
        affine = bn_weight is not None
        return (
            dx if need[0] else None,
            ddw if need[1] else None,
            dpw if need[2] else None,
            dbias,
            sum_dz_yhat if affine else None,
            sum_dz if affine else None,
            None,
            None,
            None,
            None,
            None,
            None,
        )


def forward_train(
    x: Tensor,
    dw_weight: Tensor,
    pw_weight: Tensor,
    bias: Optional[Tensor],
    bn_weight: Optional[Tensor],
    bn_bias: Optional[Tensor],
    stride: int,
    dilation: int,
    eps: float,
    save_y: bool = True,
    backend: str = "auto",
    group=None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The training-mode joint block with batch statistics merged over ``group`` (None: the default group):
    (out, mean, biased var, count [1]), the statistics and count merged over every process. Every process of
    the group must call it, in the same order as its other collectives (a process with an empty batch too).
    ``JointBlock(sync_bn=True)`` calls it and updates the running statistics."""
    checks.check_train_inputs(x, dw_weight, pw_weight, bias, bn_weight, bn_bias, stride, dilation, synced=True)
    return _SyncTrain.apply(
        x, dw_weight, pw_weight, bias, bn_weight, bn_bias, stride, dilation, eps, save_y, backend, _group(group)
    )
