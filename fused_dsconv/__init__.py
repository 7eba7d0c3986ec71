"""fused_dsconv: a fused depthwise-separable conv block (dilated 3x3 depthwise -> 1x1 -> BN -> ReLU)."""
__version__ = "0.1.0"

from . import backends, ops  # noqa: F401  (registers torch.ops.fused_dsconv.*)
