"""``JointBlock``: the drop-in module for depthwise 3x3 (dilated) -> 1x1 -> BatchNorm -> ReLU.

It *is* an ``nn.Sequential(dw, pw, bn)`` of real ``nn.Conv2d`` / ``nn.BatchNorm2d`` modules, so its
state_dict has exactly the unfused keys ("0.weight", "1.weight", "2.running_mean", ...): a
checkpoint loads either way, and tools that walk modules (SyncBatchNorm conversion, pruning,
quantisation prep) see ordinary layers. Only ``forward`` differs: it calls the fused op.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import backends, checks, distributed, ops, tune
from .contract import check_dilation, check_stride, fold_conv_biases, is_int
from .spec import fold_bn

UNFUSED = tune.UNFUSED


class JointBlock(nn.Sequential):
    """relu(bn(pw(dw(x)))) with dw a 3x3 depthwise conv (dilation ``dilation``, padding ``dilation``).

    Args:
        in_channels, out_channels: C and K.
        stride: 1 or 2 (depthwise conv).
        dilation: integer >= 1 (the paper's delta).
        bias: give both convs a bias (the paper's convs have none). Under training-mode BN a bias
            only shifts the running mean; it is folded, not computed.
        eps, momentum, affine, track_running_stats: as ``nn.BatchNorm2d``.
        backend: "auto" (default): the fastest, measured on the first call per input shape, dtype,
            layout, device and mode, of every capable backend (native CUDA, Triton, reference) and the
            block's own layers run unfused (``fused_dsconv.tune``; ``FUSED_DSCONV_TUNE=0``: the first
            capable backend instead; the ``FUSED_DSCONV_BACKEND`` environment variable overrides auto);
            a backend name ("native", "triton", "reference", or "name:variant"); or "unfused".
        recompute: save only the input for backward and rebuild the pre-BN output there
            (less memory, one more pointwise GEMM per step); "auto" then never picks the unfused
            layers for a forward that computes gradients (they save more).
        sync_bn: in training, merge the batch statistics over the processes of ``process_group`` (None:
            torch.distributed's default group), as ``nn.SyncBatchNorm`` does, still fused
            (``fused_dsconv/distributed.py``); a plain block when torch.distributed is not initialised
            or the group has one process. ``convert_sync_batchnorm`` turns it on in a whole model.

    ``last_backend`` names what the latest eager forward ran on: a backend, or "unfused" (its modules
    one by one, as PyTorch runs them: chosen by auto, forced, or because a non-standard BN such as
    SyncBatchNorm is in place). ``last_tuning`` is (problem, decision) of that forward's measured
    choice, or None when it did not consult the tuner.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        dilation: int = 1,
        *,
        bias: bool = False,
        eps: float = 1e-5,
        momentum: Optional[float] = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        backend: str = "auto",
        recompute: bool = False,
        sync_bn: bool = False,
        process_group=None,
        device=None,
        dtype=None,
    ):
        for name, v in (("in_channels", in_channels), ("out_channels", out_channels)):
            if not is_int(v) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        check_stride(stride)
        check_dilation(dilation)
        fk = {"device": device, "dtype": dtype}
        super().__init__(
            nn.Conv2d(
                in_channels,
                in_channels,
                3,
                stride,
                padding=dilation,
                dilation=dilation,
                groups=in_channels,
                bias=bias,
                **fk,
            ),
            nn.Conv2d(in_channels, out_channels, 1, bias=bias, **fk),
            nn.BatchNorm2d(out_channels, eps, momentum, affine, track_running_stats, **fk),
        )
        self.backend = backends.requested(backend) if backend not in (backends.AUTO, UNFUSED) else backend
        if sync_bn and backend == UNFUSED:
            raise ValueError(
                "sync_bn=True needs a fused backend: backend='unfused' runs a plain nn.BatchNorm2d, "
                "which would normalise with this process's statistics only (convert the unfused "
                "layers with nn.SyncBatchNorm.convert_sync_batchnorm instead)"
            )
        self.recompute = recompute
        self.sync_bn = bool(sync_bn)
        self.process_group = process_group
        self.last_backend: Optional[str] = None
        self.last_tuning = None
        self.tuned_choices: dict[str, str] = {}  # the latest eager choice per mode/dtype/layout/device: torch.compile's
        self.tuning_shortcuts: dict = {}  # the tuner's shortcut to this block's recent decisions (fused_dsconv.tune.choose)

    def __setstate__(self, state):
        super().__setstate__(state)
        # A block pickled before the measured choice existed: give it the tuner's bookkeeping.
        for name, default in (
            ("last_tuning", None),
            ("tuned_choices", {}),
            ("tuning_shortcuts", {}),
            ("sync_bn", False),
            ("process_group", None),
        ):
            self.__dict__.setdefault(name, default)

    # The three layers by role; indices stay "0", "1", "2" for state_dict compatibility. Read from _modules,
    # where nn.Sequential keeps them: Sequential's own indexing costs microseconds per call, per layer.
    dw = property(lambda self: self._modules["0"])
    pw = property(lambda self: self._modules["1"])
    bn = property(lambda self: self._modules["2"])

    @property
    def stride(self) -> int:
        return self.dw.stride[0]

    @property
    def dilation(self) -> int:
        return self.dw.dilation[0]

    def extra_repr(self) -> str:
        sync = ", sync_bn=True" if self.sync_bn else ""
        return (
            f"stride={self.stride}, dilation={self.dilation}, backend={self.backend!r}, recompute={self.recompute}"
            f"{sync}"
        )

    def synchronises(self) -> bool:
        """Whether the next forward merges its batch statistics over processes: ``sync_bn``, training, and a
        process group of more than one process (as nn.SyncBatchNorm decides)."""
        return self.sync_bn and self.bn.training and distributed.active(self.process_group)

    # -- conversion -------------------------------------------------------------------------
    @classmethod
    def from_unfused(
        cls, dw: nn.Module, pw: Optional[nn.Module] = None, bn: Optional[nn.Module] = None, **kwargs
    ) -> "JointBlock":
        """Build a JointBlock holding copies of the given layers' parameters and statistics.

        Accepts the three modules, or one ``nn.Sequential(dw, pw, bn[, nn.ReLU()])``. An ``nn.SyncBatchNorm``
        gives a synchronised block (``sync_bn=True``, its process group).
        """
        if pw is None and bn is None and isinstance(dw, nn.Sequential):
            layers = list(dw)
            if len(layers) == 4 and isinstance(layers[3], nn.ReLU):
                layers = layers[:3]
            if len(layers) != 3:
                raise ValueError(
                    "from_unfused expects Sequential(dw, pw, bn) or Sequential(dw, pw, bn, ReLU), "
                    f"got {len(list(dw))} layers"
                )
            dw, pw, bn = layers
        _check_unfused(dw, pw, bn)
        if isinstance(bn, nn.SyncBatchNorm):
            kwargs = {"sync_bn": True, "process_group": bn.process_group, **kwargs}
        block = cls(
            dw.in_channels,
            pw.out_channels,
            dw.stride[0],
            dw.dilation[0],
            bias=False,
            eps=bn.eps,
            momentum=bn.momentum,
            affine=bn.affine,
            track_running_stats=bn.track_running_stats,
            device=dw.weight.device,
            dtype=dw.weight.dtype,
            **kwargs,
        )
        for mine, theirs in ((block[0], dw), (block[1], pw)):
            if theirs.bias is not None:  # keep exactly the source's keys: a bias only where it had one
                mine.bias = nn.Parameter(torch.empty_like(theirs.bias))
        block.load_state_dict({**_prefixed("0.", dw), **_prefixed("1.", pw), **_prefixed("2.", bn)}, strict=True)
        block.train(bn.training)
        return block

    def to_unfused(self) -> nn.Sequential:
        """An ``nn.Sequential(dw, pw, bn, ReLU)`` of independent copies, with identical state_dict keys; bn is an
        ``nn.SyncBatchNorm`` (same process group) for a synchronised block."""
        import copy

        dw, pw, bn = (copy.deepcopy(m) for m in self)
        if self.sync_bn and type(bn) is nn.BatchNorm2d:
            bn = nn.SyncBatchNorm.convert_sync_batchnorm(bn, self.process_group)
        return nn.Sequential(dw, pw, bn, nn.ReLU()).train(self.training)

    # -- forward ----------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        dw, pw, bn = self.dw, self.pw, self.bn
        if type(bn) is not nn.BatchNorm2d:
            # SyncBatchNorm (or any other norm layer put here) has its own statistics semantics:
            # run the layers as they are rather than silently skip synchronisation.
            self._record(UNFUSED)
            return F.relu(bn(pw(dw(x))))

        dtype = _compute_dtype(x, dw.weight)
        x_in, x = x, x.to(dtype)
        use_batch_stats = bn.training or (bn.running_mean is None and bn.running_var is None)
        sync = self.synchronises()
        name = self._choose(x, use_batch_stats, sync)
        if name == UNFUSED:  # the layers themselves, as PyTorch runs them (autocast, statistics and all)
            if sync:
                raise RuntimeError(
                    "JointBlock(sync_bn=True) cannot run backend='unfused' in training: its "
                    "nn.BatchNorm2d would normalise with this process's statistics only"
                )
            self._record(name)
            return F.relu(bn(pw(dw(x_in))))
        dw_w, pw_w, acc, bias, gamma, beta = self._op_args(x, use_batch_stats, sync)
        self._record(name)

        if not use_batch_stats:
            w, b = fold_bn(pw_w, bias, gamma, beta, bn.running_mean, bn.running_var, bn.eps)
            return ops.forward_eval(x, dw_w, w.to(dtype), b.to(acc), self.stride, self.dilation, name)

        # nn.BatchNorm2d.forward's rules, verbatim in meaning; the counter moves only once the op has
        # succeeded, so a failing call changes nothing.
        factor = 0.0 if bn.momentum is None else bn.momentum
        count = bn.training and bn.track_running_stats and bn.num_batches_tracked is not None
        if count and bn.momentum is None:  # cumulative average; a tensor, so torch.compile needs no .item()
            factor = 1.0 / (bn.num_batches_tracked + 1).to(acc)
        if sync:
            out, mean, var, n = distributed.forward_train(
                x,
                dw_w,
                pw_w,
                bias,
                gamma,
                beta,
                self.stride,
                self.dilation,
                bn.eps,
                not self.recompute,
                name,
                self.process_group,
            )
        else:
            out, _, mean, var = ops.forward_train(
                x, dw_w, pw_w, bias, gamma, beta, self.stride, self.dilation, bn.eps, not self.recompute, name
            )
        if count:
            bn.num_batches_tracked.add_(1)
        if bn.training and bn.running_mean is not None and sync:
            # The merged count, a tensor: no host sync; no update when every process's batch was empty.
            with torch.no_grad():
                for running, batch in ((bn.running_mean, mean), (bn.running_var, var * (n / (n - 1)))):
                    running.copy_(
                        torch.where(n > 1, running * (1 - factor) + (batch * factor).to(running.dtype), running)
                    )
        elif bn.training and bn.running_mean is not None and out.numel() > 0:  # empty batch: no update, as PyTorch
            m = out.numel() // out.shape[1]
            with torch.no_grad():
                for running, batch in ((bn.running_mean, mean), (bn.running_var, var * (m / (m - 1)))):
                    running.mul_(1 - factor).add_((batch * factor).to(running.dtype))
        return out

    def _check_input(self, x: Tensor) -> None:
        if not isinstance(x, Tensor):
            raise TypeError(f"JointBlock expects a Tensor, got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(
                f"JointBlock expects a 4-D input [N, C, H, W], got {x.dim()}-D input of shape {tuple(x.shape)}"
            )
        if x.shape[1] != self.dw.in_channels:
            raise ValueError(
                f"JointBlock expects {self.dw.in_channels} input channels (dim 1), got input of shape {tuple(x.shape)}"
            )
        if not x.is_floating_point():
            raise TypeError(
                f"JointBlock expects a floating-point input (float32, float16, bfloat16, float64), got {x.dtype}"
            )
        if x.device != self.dw.weight.device:
            raise ValueError(
                f"input is on {x.device} but the block's parameters are on {self.dw.weight.device}; "
                f"move one of them (e.g. block.to({str(x.device)!r}))"
            )

    def _op_args(self, x: Tensor, use_batch_stats: bool, sync: bool = False):
        """The op's arguments for x (in the compute dtype), checked: every check before any state changes, so
        a forward that raises leaves the module as it was."""
        dw, pw, bn = self.dw, self.pw, self.bn
        dw_w, pw_w = dw.weight.to(x.dtype), pw.weight.to(x.dtype).flatten(1)
        acc = backends.acc_dtype(x)
        bias = fold_conv_biases(pw.weight, dw.bias, pw.bias, acc)
        gamma = bn.weight.to(acc) if bn.affine else None
        beta = bn.bias.to(acc) if bn.affine else None
        if use_batch_stats:
            checks.check_train_inputs(x, dw_w, pw_w, bias, gamma, beta, self.stride, self.dilation, synced=sync)
        else:
            checks.check_inputs(x, dw_w, pw_w, self.stride, self.dilation, bias=bias)
        return dw_w, pw_w, acc, bias, gamma, beta

    def _choose(self, x: Tensor, use_batch_stats: bool, sync: bool = False) -> str:
        """A forced choice (the op raises, saying why, if it cannot run x), else the tuner's. The tuner checks
        the input (``_op_args``) before it measures a new kind of input, so one the op would reject raises
        here, as it would on the fused path, instead of reaching the unfused layers."""
        if self.backend == UNFUSED:
            return UNFUSED
        forced = backends.requested(self.backend)  # the module's, else $FUSED_DSCONV_BACKEND, else auto
        if forced != backends.AUTO:
            return forced
        return tune.choose(
            self, x, use_batch_stats, validate=lambda: self._op_args(x, use_batch_stats, sync), sync=sync
        )

    def _record(self, name: str) -> None:
        if not torch.compiler.is_compiling() and self.last_backend != name:  # __setattr__ only on a change
            self.last_backend = name


def _compute_dtype(x: Tensor, weight: Tensor) -> torch.dtype:
    """The dtype the block runs in, by nn.Conv2d's rules: outside autocast x and the weights must agree;
    under autocast both are cast to the autocast dtype, except float64 tensors, which autocast leaves alone."""
    dtype, wdtype = x.dtype, weight.dtype
    device_type = x.device.type
    if torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type):
        target = torch.get_autocast_dtype(device_type)
        dtype = dtype if dtype == torch.float64 else target
        wdtype = wdtype if wdtype == torch.float64 else target
    if dtype != wdtype:
        # What nn.Conv2d raises for the unfused layers (a RuntimeError), said with both dtypes and the fix.
        raise RuntimeError(
            f"JointBlock: input dtype {x.dtype} does not match the block's parameter dtype "
            f"{weight.dtype}; convert one of them (x.to({weight.dtype}) or block.to({x.dtype})), "
            "or run under torch.autocast"
        )
    return dtype


def _prefixed(prefix: str, module: nn.Module) -> dict:
    return {prefix + k: v for k, v in module.state_dict().items()}


def _check_unfused(dw, pw, bn) -> None:
    if not isinstance(dw, nn.Conv2d):
        raise TypeError(f"dw must be an nn.Conv2d, got {type(dw).__name__}")
    if dw.kernel_size != (3, 3):
        raise ValueError(f"dw must have kernel_size (3, 3), got {dw.kernel_size}")
    if dw.groups != dw.in_channels or dw.out_channels != dw.in_channels:
        raise ValueError(
            "dw must be depthwise with multiplier 1 (groups == in_channels == out_channels), got "
            f"in_channels={dw.in_channels}, out_channels={dw.out_channels}, groups={dw.groups}"
        )
    if dw.stride[0] != dw.stride[1] or dw.stride[0] not in (1, 2):
        raise ValueError(f"dw.stride must be 1 or 2 in both dimensions, got {dw.stride}")
    if dw.dilation[0] != dw.dilation[1]:
        raise ValueError(f"dw.dilation must be equal in both dimensions, got {dw.dilation}")
    if dw.padding != dw.dilation or dw.padding_mode != "zeros":
        raise ValueError(
            f"dw must use zero padding equal to its dilation {dw.dilation}, got padding={dw.padding!r}, "
            f"padding_mode={dw.padding_mode!r}"
        )
    if not isinstance(pw, nn.Conv2d):
        raise TypeError(f"pw must be an nn.Conv2d, got {type(pw).__name__}")
    if (
        pw.kernel_size != (1, 1)
        or pw.stride != (1, 1)
        or pw.groups != 1
        or pw.dilation != (1, 1)
        or pw.padding not in ((0, 0), "valid")
    ):
        raise ValueError(
            "pw must be a 1x1 conv with stride 1, no padding and groups=1, got "
            f"kernel_size={pw.kernel_size}, stride={pw.stride}, padding={pw.padding}, groups={pw.groups}"
        )
    if pw.in_channels != dw.out_channels:
        raise ValueError(f"pw.in_channels ({pw.in_channels}) must equal dw.out_channels ({dw.out_channels})")
    if not isinstance(bn, (nn.BatchNorm2d, nn.SyncBatchNorm)):
        raise TypeError(f"bn must be an nn.BatchNorm2d or nn.SyncBatchNorm, got {type(bn).__name__}")
    if bn.num_features != pw.out_channels:
        raise ValueError(f"bn.num_features ({bn.num_features}) must equal pw.out_channels ({pw.out_channels})")
    if pw.weight.dtype != dw.weight.dtype or pw.weight.device != dw.weight.device:
        raise ValueError("dw and pw must share dtype and device")


def convert_sync_batchnorm(module: nn.Module, process_group=None) -> nn.Module:
    """``nn.SyncBatchNorm.convert_sync_batchnorm`` for models with joint blocks: every ``JointBlock`` becomes a
    synchronised fused block (``sync_bn=True``), including one whose BatchNorm was already converted to an
    ``nn.SyncBatchNorm`` (which made it run unfused): that layer goes back to an ``nn.BatchNorm2d`` with the same
    parameters, statistics and process group. Other batch-norm layers become ``nn.SyncBatchNorm`` as torch's
    converter makes them. Converts in place and returns ``module`` (a new module if ``module`` itself is a
    batch-norm layer, as torch's converter does).
    """
    if isinstance(module, JointBlock):
        if module.backend == UNFUSED:
            raise ValueError(
                "convert_sync_batchnorm: a JointBlock with backend='unfused' cannot synchronise its "
                "statistics fused; set its backend to 'auto' first"
            )
        bn = module.bn
        if isinstance(bn, nn.SyncBatchNorm):
            plain = nn.BatchNorm2d(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
            like = next(iter([*bn.parameters(), *bn.buffers()]), None)
            if like is not None:
                plain = plain.to(device=like.device, dtype=like.dtype if like.is_floating_point() else None)
            plain.load_state_dict(bn.state_dict())
            for mine, theirs in zip(plain.parameters(), bn.parameters()):
                mine.requires_grad_(theirs.requires_grad)
            module.add_module("2", plain.train(bn.training))
            if process_group is None:
                process_group = bn.process_group
        module.sync_bn, module.process_group = True, process_group
        return module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, nn.SyncBatchNorm):
        return nn.SyncBatchNorm.convert_sync_batchnorm(module, process_group)
    for name, child in module.named_children():
        converted = convert_sync_batchnorm(child, process_group)
        if converted is not child:
            module.add_module(name, converted)
    return module


__all__ = ["JointBlock", "convert_sync_batchnorm"]
