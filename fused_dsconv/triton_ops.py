"""Optional: the Triton eval forward as a ``torch.library.triton_op``, ``fused_dsconv_triton::forward_eval``.

The public ops ``fused_dsconv::*`` are custom ops: opaque to torch.compile, which calls them as a black
box. This op is the same computation as ``TritonBackend.forward_eval`` registered with
``torch.library.triton_op`` and launched through ``torch.library.wrap_triton``, so that on a CUDA GPU
torch.compile can trace into the Triton kernel (and Inductor can schedule it with its own kernels).
It is a separate module because importing it imports triton; ``import fused_dsconv`` does not.

Verified here: eager calls, including CPU tensors under ``TRITON_INTERPRET=1`` (tests/test_triton.py).
Not verified: torch.compile of it, which needs a GPU (on CPU the Triton interpreter reads the data of
the FakeTensors torch.compile traces with, which they do not have). BN must already be folded into ``pw_weight`` / ``bias`` (``fused_dsconv.spec.fold_bn``).
"""

from __future__ import annotations

import importlib

import torch
from torch import Tensor

from .contract import memory_format_of, output_size


@torch.library.triton_op("fused_dsconv_triton::forward_eval", mutates_args=())
def forward_eval(x: Tensor, dw_weight: Tensor, pw_weight: Tensor, bias: Tensor, stride: int, dilation: int) -> Tensor:
    """relu(pw(dw(x)) + bias) by dsconv_fwd_kernel; x's dtype and memory format."""
    lc = importlib.import_module("fused_dsconv.triton_launch")
    n, _, h, w = x.shape
    k = pw_weight.shape[0]
    out = torch.empty(
        (n, k, output_size(h, stride), output_size(w, stride)),
        device=x.device,
        dtype=x.dtype,
        memory_format=memory_format_of(x),
    )
    lc.launch_conv(
        x,
        dw_weight.contiguous(),
        pw_weight.reshape(k, -1).contiguous(),
        bias,
        stride,
        dilation,
        out,
        relu=True,
        stats=False,
        wrap=True,
    )
    return out
