"""The Triton backend: the contract's four primitives composed from the launchers in
``fused_dsconv/triton_launch.py`` (kernels: ``fused_dsconv/triton_kernels/``).

Layers: kernels (``*_kernel``) -> launchers (``triton_launch.launch_*``) -> this backend. Triton is
imported lazily, on the first launch: whether ``@triton.jit`` builds compiled kernels or interpreter
ones is decided when the kernels module is imported, from ``TRITON_INTERPRET``.

Runs on CUDA GPUs of compute capability >= 7.0 (bfloat16 needs >= 8.0), for float32 / float16 /
bfloat16; and on CPU tensors when ``TRITON_INTERPRET=1`` (the Triton interpreter: how the tests run
every kernel without a GPU). The public ops ``fused_dsconv::*`` are custom ops (opaque to
torch.compile) that call this backend eagerly.

Passes (M = N*Ho*Wo):
- forward_eval: dsconv_fwd, out = relu(Wp' dw(x) + b').
- forward_train: dsconv_fwd writes y and per-group Chan (count, mean, M2) partials; bn_stats merges
  them in group order (deterministic) into mean / biased var and the normalisation coefficients;
  bn_relu normalises + ReLU. With save_y=False y is written into out and normalised in place (no
  second activation buffer).
- backward_train: (recompute mode: dsconv_fwd first rebuilds y into a temporary); bn_coef,
  bn_bwd_reduce (sums of dz, dz d, d per pixel group) and bn_bwd_finalize (dbeta, dgamma, dbias and
  dy's per-channel coefficients); dsconv_bwd_dt (dt = dy Wp and dWp = dy^T T from the same dy and
  T tiles); dsconv_bwd_dx (dx and dWd from dt); colsum reduces the weight-gradient partials. dy is
  rebuilt from (dout, y, coefficients) where it is read and never stored.
- backward_eval: the same with dy = dout [out > 0].
"""

from __future__ import annotations

import importlib.util
import os
import sys

import torch

from ..contract import memory_format_of, output_size
from .base import Backend

_KERNELS_MODULE = "fused_dsconv.triton_kernels"
_LAUNCH_MODULE = "fused_dsconv.triton_launch"


def _interpret_requested() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _launch(backward: bool = False):
    # import_module (not ``from .. import``): importing triton is deferred to the first launch. The
    # launchers look the kernels module up on every call, so a test can drop and re-import it under
    # another TRITON_INTERPRET setting.
    return importlib.import_module(_LAUNCH_MODULE + ("_backward" if backward else ""))


class TritonBackend(Backend):
    name = "triton"

    def unavailable(self, x):
        if importlib.util.find_spec("triton") is None:
            return "triton is not importable (pip install triton)"
        if x.dtype == torch.float64:
            return "float64 is not supported by the Triton kernels (use the reference backend)"
        if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
            return f"dtype {x.dtype} is not supported"
        loaded = sys.modules.get(_KERNELS_MODULE)
        if x.device.type == "cpu":
            if not _interpret_requested():
                return (
                    "x is on the CPU: the Triton kernels run on CUDA GPUs "
                    "(TRITON_INTERPRET=1 runs them in the Triton interpreter, for testing)"
                )
            if loaded is not None and not loaded.INTERPRETED:
                return (
                    "TRITON_INTERPRET=1 was set after the Triton kernels were compiled for the GPU in this "
                    "process; set it before the first launch to run CPU tensors in the interpreter"
                )
            return None
        if x.device.type != "cuda":
            return f"x is on {x.device.type}: the Triton kernels run on CUDA GPUs"
        if loaded is not None and loaded.INTERPRETED:
            return "the Triton kernels were loaded for the interpreter (TRITON_INTERPRET=1); CUDA tensors not taken"
        major, minor = torch.cuda.get_device_capability(x.device)
        if major < 7:
            return (
                f"Triton supports compute capability >= 7.0; this GPU is sm_{major}{minor}: "
                "on sm_61 use the native CUDA extension"
            )
        if x.dtype == torch.bfloat16 and major < 8:
            return f"bfloat16 needs compute capability >= 8.0 in the Triton kernels; this GPU is sm_{major}{minor}"
        return None

    def not_timed(self, x):
        if x.device.type == "cpu":
            return "on the CPU the Triton kernels run in Triton's interpreter, a correctness tool"
        return None

    def forward_eval(self, x, dw_weight, pw_weight, bias, p):
        lc = _launch()
        out = _empty_out(x, pw_weight.shape[0], p.stride, x.dtype)
        lc.launch_conv(x, dw_weight, pw_weight, bias, p.stride, p.dilation, out, relu=True, stats=False)
        return out

    def forward_train(self, x, dw_weight, pw_weight, bias, bn_weight, bn_bias, p):
        lc = _launch()
        k = pw_weight.shape[0]
        out = _empty_out(x, k, p.stride, x.dtype)
        # Recompute mode keeps no y: write it into out and normalise in place (bn_relu_kernel loads and
        # stores each element in one program), so the forward's peak holds one activation, not two.
        y = _empty_out(x, k, p.stride, x.dtype) if p.save_y else out
        partials = lc.launch_conv(x, dw_weight, pw_weight, bias, p.stride, p.dilation, y, relu=False, stats=True)
        mean, var, coef = lc.launch_bn_stats(partials, y.numel() // k, bn_weight, bn_bias, p.eps)
        lc.launch_bn_relu(y, out, coef)
        return out, (y if p.save_y else x.new_empty(0)), mean, var

    def backward_eval(self, grad_out, out, x, dw_weight, pw_weight, p):
        lb = _launch(backward=True)
        coef, dbias, _, _ = lb.launch_bn_backward(grad_out, out, None, None, None, None, 0.0, train=False)
        dx, ddw, dpw = lb.launch_conv_backward(
            grad_out, out, coef, x, dw_weight, pw_weight, p.stride, p.dilation, train=False, output_mask=p.output_mask
        )
        return dx, ddw, dpw, dbias

    def backward_train(self, grad_out, x, dw_weight, pw_weight, bias, bn_weight, bn_bias, y, mean, var, p):
        lc = _launch()
        k = pw_weight.shape[0]
        if y is None or y.numel() == 0:
            # Recompute mode: rebuild y (rounded to x's dtype, as the forward stored it) into a temporary.
            y = _empty_out(x, k, p.stride, x.dtype)
            lc.launch_conv(x, dw_weight, pw_weight, bias, p.stride, p.dilation, y, relu=False, stats=False)
        lb = _launch(backward=True)
        coef, dbias, dgamma, dbeta = lb.launch_bn_backward(
            grad_out, y, mean, var, bn_weight, bn_bias, p.eps, train=True
        )
        dx, ddw, dpw = lb.launch_conv_backward(
            grad_out, y, coef, x, dw_weight, pw_weight, p.stride, p.dilation, train=True, output_mask=p.output_mask
        )
        return dx, ddw, dpw, dbias, dgamma, dbeta

    # -- the split passes (synchronised batch norm): the same launches, cut at the statistics --
    def forward_stats(self, x, dw_weight, pw_weight, bias, p):
        lc = _launch()
        k = pw_weight.shape[0]
        y = _empty_out(x, k, p.stride, x.dtype)  # recompute mode: dropped on return (the kernel always stores y)
        partials = lc.launch_conv(x, dw_weight, pw_weight, bias, p.stride, p.dilation, y, relu=False, stats=True)
        # bn_stats also writes bn_relu's coefficients, unused here (pass 2 gets merged statistics): any eps
        # that keeps 1 / sqrt(var + eps) finite on padding lanes will do.
        mean, var, _ = lc.launch_bn_stats(partials, y.numel() // k, None, None, 1.0)
        return (y if p.save_y else x.new_empty(0)), mean, var

    def forward_normalize(self, x, dw_weight, pw_weight, bias, y, mean, var, bn_weight, bn_bias, p):
        lc = _launch()
        out = _empty_out(x, pw_weight.shape[0], p.stride, x.dtype)
        if y is None:  # recompute mode: y into out, normalised in place (as forward_train does)
            lc.launch_conv(x, dw_weight, pw_weight, bias, p.stride, p.dilation, out, relu=False, stats=False)
            y = out
        lc.launch_bn_relu(y, out, lc.launch_bn_coef(mean, var, bn_weight, bn_bias, p.eps))
        return out

    def backward_reduce(self, grad_out, y, mean, var, bn_weight, bn_bias, p):
        # bn_bwd_finalize's dbeta / dgamma are exactly the two sums; its dy rows (this process's mean) are unused.
        _, _, sum_dz_yhat, sum_dz = _launch(backward=True).launch_bn_backward(
            grad_out, y, mean, var, bn_weight, bn_bias, p.eps, train=True
        )
        return sum_dz, sum_dz_yhat

    def backward_apply(
        self, grad_out, x, dw_weight, pw_weight, y, mean, var, bn_weight, bn_bias, mean_dz, mean_dz_yhat, p
    ):
        lc = _launch()
        # dy = a dz - c1 - (y - mean) rc2 (the kernels' _dy_tile) with c1, rc2 from the merged means.
        coef = lc.launch_bn_coef(mean, var, bn_weight, bn_bias, p.eps, dy_means=(mean_dz, mean_dz_yhat))
        return _launch(backward=True).launch_conv_backward(
            grad_out, y, coef, x, dw_weight, pw_weight, p.stride, p.dilation, train=True, output_mask=p.output_mask
        )


def _empty_out(x, k, stride, dtype):
    n, _, h, w = x.shape
    shape = (n, k, output_size(h, stride), output_size(w, stride))
    return torch.empty(shape, device=x.device, dtype=dtype, memory_format=memory_format_of(x))
