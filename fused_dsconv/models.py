"""The paper's classifier (Sun, Zhang, He 2020, Table 1) built from ``JointBlock``, and a registry.

    stem   3x3 conv, 32 filters, stride 1, no bias (the paper puts BN + ReLU after 1x1 convs only)
    9 x JointBlock (dw channels -> pw channels, dw stride):
           32->64 s2, 64->128 s2, 128->128 s1, 128->256 s2, 256->256 s1,
           256->512 s2, 512->512 s1, 512->1024 s2, 1024->1024 s1
    global average pool (7x7 at 224), fully connected 1024 -> classes (softmax lives in the loss)

Width multiplier ``alpha`` scales every channel count (rounded to the nearest integer; all paper
values of alpha give whole numbers). Resolution multiplier ``rho`` sets the input side to
round(224 * rho): 224, 192 (rho 0.857), 160 (rho 0.714). Dilation ``dilation`` (the paper's delta)
is one value for every block or a sequence of nine.

Input transform: an input whose spatial size is not ``resolution`` x ``resolution`` is resized by
``F.interpolate(mode="bilinear", align_corners=False, antialias=False)`` inside ``forward`` (the
paper upsamples CIFAR-10's 32x32 images to the network resolution); ``resize_input=False`` makes such
an input an error instead.
"""

from __future__ import annotations

import copy
import difflib
from typing import Callable, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from .block import JointBlock
from .contract import output_size, scaled

STEM_CHANNELS = 32
# (depthwise channels, pointwise output channels, depthwise stride): the consistent reading of Table 1.
TABLE1 = (
    (32, 64, 2),
    (64, 128, 2),
    (128, 128, 1),
    (128, 256, 2),
    (256, 256, 1),
    (256, 512, 2),
    (512, 512, 1),
    (512, 1024, 2),
    (1024, 1024, 1),
)
BASE_RESOLUTION = 224


class JointNet(nn.Module):
    """The lightweight classifier of the paper: stem conv, nine joint blocks, pool, linear."""

    def __init__(
        self,
        num_classes: int = 1000,
        alpha: float = 1.0,
        rho: float = 1.0,
        dilation: Union[int, Sequence[int]] = 1,
        *,
        in_channels: int = 3,
        resize_input: bool = True,
        backend: str = "auto",
        recompute: bool = False,
    ):
        super().__init__()
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
        for name, v in (("alpha", alpha), ("rho", rho)):
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                raise TypeError(f"{name} must be a number (int or float), got {type(v).__name__} {v!r}")
        if not 0 < alpha <= 4:
            raise ValueError(f"alpha (width multiplier) must be in (0, 4], got {alpha!r}")
        if not 0 < rho <= 4:
            raise ValueError(f"rho (resolution multiplier) must be in (0, 4], got {rho!r}")
        if int(round(BASE_RESOLUTION * rho)) < 1:
            raise ValueError(
                f"rho={rho!r} gives an input side of round({BASE_RESOLUTION} * rho) = 0 pixels; "
                f"rho must be greater than {0.5 / BASE_RESOLUTION:.5f}"
            )
        dilations = [dilation] * len(TABLE1) if isinstance(dilation, int) else list(dilation)
        if len(dilations) != len(TABLE1):
            raise ValueError(
                f"dilation must be one integer or {len(TABLE1)} integers (one per block), got {len(dilations)}"
            )
        self.num_classes, self.alpha, self.rho = num_classes, alpha, rho
        self.dilations = tuple(dilations)
        self.resolution = int(round(BASE_RESOLUTION * rho))
        self.resize_input = resize_input
        self.stem = nn.Conv2d(in_channels, scaled(STEM_CHANNELS, alpha), 3, 1, 1, bias=False)
        self.blocks = nn.Sequential(
            *(
                JointBlock(scaled(c, alpha), scaled(k, alpha), s, d, backend=backend, recompute=recompute)
                for (c, k, s), d in zip(TABLE1, dilations)
            )
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(scaled(TABLE1[-1][1], alpha), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.stem.in_channels:
            raise ValueError(f"JointNet expects input [N, {self.stem.in_channels}, H, W], got shape {tuple(x.shape)}")
        if tuple(x.shape[-2:]) != (self.resolution, self.resolution):
            if not self.resize_input:
                raise ValueError(
                    f"input must be {self.resolution}x{self.resolution} (resize_input=False), got {tuple(x.shape[-2:])}"
                )
            x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bilinear", align_corners=False)
        if self.training and x.shape[0] > 0 and not any(getattr(b, "synchronises", bool)() for b in self.blocks):
            # The last block has the fewest values per channel; refuse here, before block 1 updates its running
            # statistics, rather than from deep inside the network. (Synchronised blocks count over every
            # process, which only they can see.)
            side = self.resolution
            for block in self.blocks:
                side = output_size(side, block[0].stride[0])  # block[0]: the depthwise conv, fused or not
            if x.shape[0] * side * side == 1:
                raise ValueError(
                    f"training needs more than 1 value per channel in every block: batch 1 at "
                    f"{self.resolution}x{self.resolution} leaves 1x1 in the last block; use a batch of "
                    "at least 2 or a larger rho"
                )
        x = self.blocks(self.stem(x))
        return self.classifier(torch.flatten(self.pool(x), 1))

    def set_backend(self, backend: str) -> "JointNet":
        for block in self.blocks:
            block.backend = backend
        return self


# -- registry ----------------------------------------------------------------------------------
_REGISTRY: dict[str, Callable[..., JointNet]] = {}


def unfused_twin(model: JointNet) -> JointNet:
    """The same network with every JointBlock replaced by its unfused PyTorch layers (same weights)."""
    twin = copy.deepcopy(model)
    twin.blocks = nn.Sequential(*(b.to_unfused() for b in model.blocks))
    return twin


def register_model(name: str, **defaults) -> None:
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is already registered")
    _REGISTRY[name] = lambda **kw: JointNet(**{**defaults, **kw})


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def create_model(name: str, **kwargs) -> JointNet:
    """Build a registered model; keyword arguments (num_classes, rho, backend, ...) override its defaults."""
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown model {name!r}{hint} Available: {', '.join(list_models())}")
    return _REGISTRY[name](**kwargs)


def model_name(alpha: float, dilation: int) -> str:
    """jointnet_a{100 alpha:03d}_d{delta}: e.g. jointnet_a075_d3 is alpha 0.75, delta 3."""
    return f"jointnet_a{int(round(alpha * 100)):03d}_d{dilation}"


for _alpha in (1.0, 0.75, 0.5):
    for _d in (1, 2, 3, 4):
        register_model(model_name(_alpha, _d), alpha=_alpha, dilation=_d)


# -- complexity --------------------------------------------------------------------------------
def complexity(model: nn.Module, resolution: int) -> dict[str, int]:
    """Parameters and multiply-adds for one image of ``resolution`` x ``resolution``.

    Counted from the shapes a real forward produces (on the meta device: no data, no time): conv
    and linear multiply-adds, the joint block's depthwise (9 per output element) and pointwise
    (C per output element) parts. BatchNorm, ReLU and pooling are not multiply-adds.
    """
    macs = 0

    def hook(module, inputs, output):
        nonlocal macs
        if isinstance(module, JointBlock):
            c, ho, wo = module.dw.in_channels, output.shape[2], output.shape[3]
            macs += c * ho * wo * 9 + module.pw.out_channels * c * ho * wo
        elif isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            macs += output[0].numel() * (module.in_channels // module.groups) * kh * kw
        elif isinstance(module, nn.Linear):
            macs += module.in_features * module.out_features

    meta = copy.deepcopy(model).to("meta").eval()
    top = [m for m in meta.modules() if isinstance(m, (JointBlock, nn.Conv2d, nn.Linear))]
    inner = {id(c) for m in top if isinstance(m, JointBlock) for c in m}  # counted by their block
    for m in top:
        if id(m) not in inner:
            m.register_forward_hook(hook)
    with torch.no_grad():
        meta(torch.empty(1, meta.stem.in_channels, resolution, resolution, device="meta"))
    return {"params": sum(p.numel() for p in model.parameters()), "macs": macs}


def complexity_table(alphas=(1.0, 0.75, 0.5), rhos=(1.0, 0.857, 0.714), classes=(10, 200, 1000)) -> list[dict]:
    rows = []
    for alpha in alphas:
        for rho in rhos:
            for n in classes:
                model = JointNet(num_classes=n, alpha=alpha, rho=rho)
                c = complexity(model, model.resolution)
                rows.append({"alpha": alpha, "rho": rho, "resolution": model.resolution, "classes": n, **c})
    return rows
