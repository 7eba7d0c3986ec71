"""Data sets for training the classifier: the embedded digits, CIFAR-10, Tiny ImageNet, ImageFolder.

No torchvision: images are read with PIL + NumPy. Two kinds of data set:

- in memory (``Split.images``, ``arrays.py``): the embedded digits (pre-resized once to the network
  resolution) and CIFAR-10 (uint8, 32x32; the model upsamples on the device in its ``forward``). Batches are cut
  by indexing a tensor, so loading is never the bottleneck.
- folders (``Split.files``, ``folders.py``): Tiny ImageNet and any ImageFolder tree, decoded by a
  ``DataLoader`` with ``--workers`` processes into uint8 tensors.

Either way a batch is (images, labels) with images uint8 [N, 3, H, W] (0..255) or float32 in [0, 1];
``normalize`` turns it into the network's input on the device (mean / std per data set, stored in
the run's config.json so eval and export use the same numbers).

Layouts (what ``--data`` points at):

    cifar10       ROOT/cifar-10-batches-py/{data_batch_1..5,test_batch}   (or ROOT is that folder)
                  the "CIFAR-10 python version"; ``--download`` fetches it into ROOT
    tinyimagenet  ROOT/wnids.txt, ROOT/train/<wnid>/images/*.JPEG,
                  ROOT/val/images/*.JPEG + ROOT/val/val_annotations.txt  (as published, unchanged)
    folder        ROOT/train/<class>/* and ROOT/val/<class>/* (or ROOT/test/<class>/*), or
                  ROOT/<class>/* split like the digits (every fifth image of a class is validation)
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from .arrays import digits_split, download_cifar10, load_cifar10, load_digits
from .common import (
    CIFAR10_CLASSES,
    CIFAR10_URL,
    DATASETS,
    DEFAULT_RESOLUTION,
    DIGITS_FILE,
    IMAGE_EXTENSIONS,
    MEAN_STD,
    DataError,
    Dataset,
    Split,
    _LAYOUT,
    normalize,
)
from .folders import FolderDataset, load_image_folder, load_tinyimagenet
from .loader import Loader


# -- discovery ---------------------------------------------------------------------------------
def infer_dataset(data: Optional[str]) -> str:
    """Which loader fits ``--data`` when ``--dataset`` is not given."""
    if data is None:
        return "digits"
    root = Path(data)
    if (root / "wnids.txt").is_file():
        return "tinyimagenet"
    if (root / "cifar-10-batches-py").is_dir() or (root / "data_batch_1").is_file():
        return "cifar10"
    return "folder"


def load_dataset(
    name: Optional[str] = None,
    data: Optional[str] = None,
    *,
    resolution: Optional[int] = None,
    download: bool = False,
    limit_train: Optional[int] = None,
    limit_val: Optional[int] = None,
) -> Dataset:
    """Load a data set by name (``DATASETS``); ``data`` is its folder (not used by "digits")."""
    name = name or infer_dataset(data)
    if name not in DATASETS:
        raise DataError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}")
    resolution = resolution or DEFAULT_RESOLUTION[name]
    if name == "digits":
        ds = load_digits(resolution)
    else:
        if data is None:
            if name == "cifar10":
                raise DataError(
                    "--dataset cifar10 needs --data ROOT (a folder; add --download to fetch CIFAR-10 "
                    f"there from {CIFAR10_URL}, about 163 MB)"
                )
            raise DataError(f"--dataset {name} needs --data ROOT; expected layout:\n{_LAYOUT[name]}")
        if name == "cifar10":
            ds = load_cifar10(data, download=download)
        elif name == "tinyimagenet":
            ds = load_tinyimagenet(data)
        else:
            ds = load_image_folder(data, resolution)
    ds.train, ds.val = ds.train.subset(limit_train), ds.val.subset(limit_val)
    return ds


__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR10_URL",
    "DATASETS",
    "DEFAULT_RESOLUTION",
    "DIGITS_FILE",
    "IMAGE_EXTENSIONS",
    "MEAN_STD",
    "DataError",
    "Dataset",
    "FolderDataset",
    "Loader",
    "Split",
    "digits_split",
    "download_cifar10",
    "infer_dataset",
    "load_cifar10",
    "load_dataset",
    "load_digits",
    "load_image_folder",
    "load_tinyimagenet",
    "normalize",
]
