"""fused_dsconv: a fused depthwise-separable conv block (dilated 3x3 depthwise -> 1x1 -> BN -> ReLU).

from fused_dsconv import JointBlock, create_model
block = JointBlock(64, 128, stride=2, dilation=3)      # drop-in for Sequential(dw, pw, bn, ReLU)
model = create_model("jointnet_a100_d3", num_classes=10)
"""

from . import backends, ops, tune  # noqa: F401  (registers torch.ops.fused_dsconv.*)
from .block import JointBlock, convert_sync_batchnorm
from ._version import __version__
from .models import JointNet, complexity, create_model, list_models

__all__ = [
    "JointBlock",
    "JointNet",
    "convert_sync_batchnorm",
    "create_model",
    "list_models",
    "complexity",
    "backends",
    "ops",
    "tune",
    "__version__",
]
