"""Image-folder data sets, decoded from files by a DataLoader: Tiny ImageNet and any ImageFolder tree."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from .arrays import digits_split
from .common import IMAGE_EXTENSIONS, MEAN_STD, DataError, Dataset, Split, _LAYOUT


# -- folders -----------------------------------------------------------------------------------
def _require_pil() -> None:
    try:
        import PIL  # noqa: F401
    except ImportError:
        raise DataError("reading image folders needs Pillow: pip install pillow") from None


def _images_in(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def load_tinyimagenet(root: str | Path) -> Dataset:
    """Tiny ImageNet-200 in its published layout: 100,000 train / 10,000 val images, 64x64."""
    _require_pil()
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"Tiny ImageNet folder {root} does not exist. Expected:\n{_LAYOUT['tinyimagenet']}")
    need = [root / "wnids.txt", root / "train", root / "val" / "images", root / "val" / "val_annotations.txt"]
    missing = [str(p.relative_to(root)) for p in need if not p.exists()]
    if missing:
        raise DataError(
            f"{root} is not a Tiny ImageNet folder: missing {', '.join(missing)}. Expected:\n{_LAYOUT['tinyimagenet']}"
        )
    wnids = [w.strip() for w in (root / "wnids.txt").read_text().split() if w.strip()]
    index = {w: i for i, w in enumerate(wnids)}
    files, labels = [], []
    for w in wnids:
        found = _images_in(root / "train" / w / "images")
        if not found:
            raise DataError(
                f"no training images in {root / 'train' / w / 'images'}. Expected:\n{_LAYOUT['tinyimagenet']}"
            )
        files += found
        labels += [index[w]] * len(found)
    vfiles, vlabels = [], []
    for n, line in enumerate((root / "val" / "val_annotations.txt").read_text().splitlines(), 1):
        parts = line.split("\t")
        if len(parts) < 2 or parts[1] not in index:
            raise DataError(
                f"val/val_annotations.txt line {n} is not '<file>\\t<wnid>\\t...' with a wnid from "
                f"wnids.txt: {line[:80]!r}"
            )
        vfiles.append(str(root / "val" / "images" / parts[0]))
        vlabels.append(index[parts[1]])
    absent = [f for f in vfiles[:100] if not os.path.isfile(f)]
    if absent:
        raise DataError(
            f"val_annotations.txt names {absent[0]}, which does not exist (val/images reshuffled?). "
            f"Keep the published layout:\n{_LAYOUT['tinyimagenet']}"
        )
    names = _tiny_names(root, wnids)
    mean, std = MEAN_STD["tinyimagenet"]
    # 64x64 as published: the model upsamples to its resolution on the device.
    return Dataset(
        "tinyimagenet",
        Split(torch.tensor(labels), files=files, size=64),
        Split(torch.tensor(vlabels), files=vfiles, size=64),
        names,
        mean,
        std,
    )


def _tiny_names(root: Path, wnids: list[str]) -> list[str]:
    words = root / "words.txt"
    if not words.is_file():
        return wnids
    table = dict(line.split("\t", 1) for line in words.read_text().splitlines() if "\t" in line)
    return [f"{w} {table.get(w, '').split(',')[0]}".strip() for w in wnids]


def load_image_folder(root: str | Path, resolution: int = 224) -> Dataset:
    """Class-subfolder trees (see the module docstring); images are resized to ``resolution``."""
    _require_pil()
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist. Expected:\n{_LAYOUT['folder']}")
    if (root / "train").is_dir():
        val_dir = next((root / v for v in ("val", "valid", "validation", "test") if (root / v).is_dir()), None)
        if val_dir is None:
            raise DataError(f"{root} has train/ but no val/ (or test/) folder. Expected:\n{_LAYOUT['folder']}")
        classes = _classes(root / "train")
        train, val = _scan(root / "train", classes), _scan(val_dir, classes)
    else:
        classes = _classes(root)
        files, labels = _scan(root, classes)
        test = digits_split(np.asarray(labels))
        train = ([f for f, t in zip(files, test) if not t], [l for l, t in zip(labels, test) if not t])
        val = ([f for f, t in zip(files, test) if t], [l for l, t in zip(labels, test) if t])
    for what, (f, _) in (("training", train), ("validation", val)):
        if not f:
            raise DataError(
                f"no {what} images found under {root} (extensions {', '.join(IMAGE_EXTENSIONS)}). "
                f"Expected:\n{_LAYOUT['folder']}"
            )
    mean, std = MEAN_STD["folder"]
    return Dataset(
        "folder",
        Split(torch.tensor(train[1]), files=train[0], size=resolution),
        Split(torch.tensor(val[1]), files=val[0], size=resolution),
        classes,
        mean,
        std,
    )


def _classes(folder: Path) -> list[str]:
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{folder} has no class subfolders. Expected:\n{_LAYOUT['folder']}")
    return classes


def _scan(folder: Path, classes: list[str]) -> tuple[list[str], list[int]]:
    files, labels = [], []
    for i, c in enumerate(classes):
        found = _images_in(folder / c) if (folder / c).is_dir() else []
        files += found
        labels += [i] * len(found)
    return files, labels


class FolderDataset(torch.utils.data.Dataset):
    """Decodes one image file to uint8 [3, size, size]: shorter side resized to ``size``, centre crop."""

    def __init__(self, split: Split):
        self.files, self.labels, self.size = split.files, split.labels, split.size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        from PIL import Image

        with Image.open(self.files[i]) as im:
            im = im.convert("RGB")
            w, h = im.size
            if (w, h) != (self.size, self.size):
                s = self.size / min(w, h)
                nw, nh = max(self.size, round(w * s)), max(self.size, round(h * s))
                im = im.resize((nw, nh), Image.BILINEAR)
                left, top = (nw - self.size) // 2, (nh - self.size) // 2
                im = im.crop((left, top, left + self.size, top + self.size))
            a = np.asarray(im, dtype=np.uint8)
        return torch.from_numpy(a.copy()).permute(2, 0, 1), self.labels[i]
