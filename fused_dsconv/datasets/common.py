"""What every data set shares: names, defaults, the split and data-set types, the layouts ``--data`` must
have, and ``normalize`` (a batch to the network's input)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import torch

DATASETS = ("digits", "cifar10", "tinyimagenet", "folder")
DIGITS_FILE = Path(__file__).resolve().parent.parent / "data" / "digits.npz"
DIGITS_SHA256 = "b2dab7b501728c22e9119ad76740b2e17c77a231e42d1e592380d90886f1a05e"
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".gif", ".webp", ".tif", ".tiff")

# Per-channel mean / std of the [0, 1] pixels. Digits: measured on its training split (8x8 values / 16).
MEAN_STD = {
    "digits": ((0.3051,) * 3, (0.3762,) * 3),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "tinyimagenet": ((0.4802, 0.4481, 0.3975), (0.2770, 0.2691, 0.2821)),
    "folder": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # the ImageNet numbers
}
# Default input side per data set: 224 * rho for the paper's data sets; 32 for the embedded digits
# (rho = 1/7, so CPU training takes minutes).
DEFAULT_RESOLUTION = {"digits": 32, "cifar10": 224, "tinyimagenet": 224, "folder": 224}


class DataError(Exception):
    """A data set is missing or laid out differently than expected; the message says what to do."""


@dataclass
class Split:
    """One split of a data set: either in-memory tensors or a list of image files."""

    labels: torch.Tensor  # int64 [N]
    images: Optional[torch.Tensor] = None  # uint8 or float32 [N, 3 or 1, H, W] (in memory)
    files: Optional[list[str]] = None  # one path per label (folder data sets)
    size: Optional[int] = None  # folder data: decode to size x size

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, limit: Optional[int]) -> "Split":
        """The first ``limit`` of a fixed (seed 0) shuffle, in original order: a small, mixed subset."""
        if limit is None or limit >= len(self):
            return self
        if limit < 1:
            raise ValueError(f"a subset limit must be >= 1, got {limit}")
        idx = torch.randperm(len(self), generator=torch.Generator().manual_seed(0))[:limit].sort().values
        return Split(
            self.labels[idx],
            None if self.images is None else self.images[idx],
            None if self.files is None else [self.files[i] for i in idx.tolist()],
            self.size,
        )


@dataclass
class Dataset:
    name: str
    train: Split
    val: Split
    classes: list[str]
    mean: tuple = field(default=(0.5, 0.5, 0.5))
    std: tuple = field(default=(0.5, 0.5, 0.5))

    @property
    def num_classes(self) -> int:
        return len(self.classes)


_LAYOUT = {
    "cifar10": "  ROOT/cifar-10-batches-py/data_batch_1 .. data_batch_5, test_batch, batches.meta\n"
    f"  (the 'CIFAR-10 python version' from {CIFAR10_URL}; pass --download to fetch it)",
    "tinyimagenet": "  ROOT/wnids.txt\n  ROOT/train/<wnid>/images/*.JPEG\n  ROOT/val/images/*.JPEG\n"
    "  ROOT/val/val_annotations.txt\n  (unzip tiny-imagenet-200.zip from "
    "http://cs231n.stanford.edu/tiny-imagenet-200.zip as it is; ROOT is tiny-imagenet-200)",
    "folder": "  ROOT/train/<class>/*.jpg and ROOT/val/<class>/*.jpg (or ROOT/test/<class>/...), or\n"
    "  ROOT/<class>/*.jpg (then every fifth image of each class is held out for validation)",
}


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (0..255) or float ([0, 1]) images -> float32 (x - mean) / std, on x's device.

    A one-channel batch is repeated to ``len(mean)`` channels (the grey digits feed the RGB model).
    """
    if x.shape[1] == 1 and len(mean) > 1:
        x = x.expand(-1, len(mean), -1, -1)
    x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
    m = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - m) / s
