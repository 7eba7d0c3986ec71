"""The rules every layer of the package shares, each stated once.

The op layer, the module, the backends, the Triton launchers, the exporter and the benchmarks all need
the same few facts about a joint block: how a call's non-tensor arguments travel (``OpParams``), how large
its output is, which memory layout an input is in,
how the two conv biases fold into one, how the classifier's table of blocks is walked, and which strides
and dilations are allowed. They import them from here. This module imports nothing of the package (only
torch), so any layer can depend on it without creating a cycle.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from typing import NamedTuple, Optional

import torch
from torch import Tensor

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


# -- shapes and layouts -------------------------------------------------------------------------------
def output_size(size: int, stride: int) -> int:
    """Spatial output size of the depthwise conv (kernel 3, padding = dilation, so the dilation drops out)."""
    return (size - 1) // stride + 1


def is_channels_last(x: Tensor) -> bool:
    """Whether ``x`` is a 4-D tensor stored channels_last and not also NCHW-contiguous (a tensor with one
    channel or a 1x1 plane is both; it counts as NCHW)."""
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def memory_format_of(x: Tensor) -> torch.memory_format:
    """The layout the op's outputs take: channels_last when x is stored that way, else NCHW."""
    return torch.channels_last if is_channels_last(x) else torch.contiguous_format


def acc_dtype(x: Tensor) -> torch.dtype:
    """Accumulation / statistics dtype: float32 for the kernel dtypes, float64 for float64 inputs."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


# -- arguments ----------------------------------------------------------------------------------------
def is_int(v) -> bool:
    """A Python int that is not a bool."""
    return isinstance(v, int) and not isinstance(v, bool)


def check_stride(stride) -> None:
    if not is_int(stride) or stride not in (1, 2):
        raise ValueError(f"stride must be 1 or 2 (an int), got {stride!r}")


def check_dilation(dilation) -> None:
    if not is_int(dilation) or dilation < 1:
        raise ValueError(f"dilation must be an integer >= 1, got {dilation!r}")


# -- parameters ---------------------------------------------------------------------------------------
def fold_conv_biases(
    pw_weight: Tensor, dw_bias: Optional[Tensor], pw_bias: Optional[Tensor], acc: torch.dtype
) -> Optional[Tensor]:
    """Both conv biases as one per-output-channel bias in ``acc``: pw(dw(x) + b_dw) + b_pw = pw(dw(x)) +
    W b_dw + b_pw, with W = ``pw_weight`` ([K, C] or [K, C, 1, 1]). None when neither conv has a bias."""
    bias = None
    if dw_bias is not None:
        bias = pw_weight.flatten(1).to(acc) @ dw_bias.to(acc)
    if pw_bias is not None:
        bias = pw_bias.to(acc) if bias is None else bias + pw_bias.to(acc)
    return bias


# -- the classifier's table of blocks -----------------------------------------------------------------
class BlockShape(NamedTuple):
    """One joint block of a walked table: input channels, output channels, stride, input side."""

    c: int
    k: int
    stride: int
    side: int


def scaled(channels: int, alpha: float) -> int:
    """Channels under the width multiplier ``alpha`` (at least one)."""
    return max(1, int(round(channels * alpha)))


def walk_blocks(table: Iterable[tuple[int, int, int]], side: int, alpha: float = 1.0) -> Iterator[BlockShape]:
    """The blocks of ``table`` ((C, K, stride) rows) with channels scaled by ``alpha``, each with the side of
    its (square) input: ``side`` for the first, then each block's output side for the next."""
    for c, k, s in table:
        yield BlockShape(scaled(c, alpha), scaled(k, alpha), s, side)
        side = output_size(side, s)


# -- the non-tensor arguments of a call ------------------------------------------------------------
ALL_GRADS = (True, True, True)
# The backward ops' last argument, as aten::convolution_backward's: which of (grad x, grad dw_weight,
# grad pw_weight) to compute. Python's signature says Optional[list[bool]] = None (custom_op's inference takes
# no list default); the registered schema is this, so every caller, old ones included, gets all three by default.
OUTPUT_MASK_SCHEMA = "bool[3] output_mask=[True, True, True]"


def output_mask_schema(fn) -> str:
    """``fn``'s inferred op schema with its ``output_mask: Optional[list[bool]] = None`` as OUTPUT_MASK_SCHEMA."""
    schema = torch.library.infer_schema(fn, mutates_args=())
    inferred = "bool[]? output_mask=None"
    if inferred not in schema:
        raise TypeError(f"{fn.__name__} needs a last parameter output_mask: Optional[list[bool]] = None")
    return schema.replace(inferred, OUTPUT_MASK_SCHEMA)


def check_output_mask(output_mask) -> tuple[bool, bool, bool]:
    """``output_mask`` as three bools (None: all three); ValueError for anything else."""
    if output_mask is None:
        return ALL_GRADS
    mask = tuple(output_mask)
    if len(mask) != 3 or not all(isinstance(m, bool) for m in mask):
        raise ValueError(
            f"output_mask must be three bools (grad x, grad dw_weight, grad pw_weight), got {output_mask!r}"
        )
    return mask


@dataclass(frozen=True)
class OpParams:
    """The non-tensor arguments of one call of the op family, as the backends and the autograd formulas take
    them (the C++ launcher's ``dsc::Problem`` plays this part there). The registered ops keep flat schemas
    (torch.library needs them) and build one of these after checking their arguments.

    ``eps`` matters to the training passes only and ``save_y`` to the forward ones; ``output_mask`` (grad x,
    grad dw_weight, grad pw_weight) to the backward ones.
    """

    stride: int
    dilation: int
    eps: float = 1e-5  # nn.BatchNorm2d's
    save_y: bool = True
    output_mask: tuple[bool, bool, bool] = ALL_GRADS

    def with_mask(self, output_mask) -> "OpParams":
        """These parameters asking for the gradients ``output_mask`` wants (None: all three)."""
        return replace(self, output_mask=check_output_mask(output_mask))
