"""Data sets for training the classifier: the embedded digits, CIFAR-10, Tiny ImageNet, ImageFolder.

No torchvision: images are read with PIL + NumPy. Two kinds of data set:

- in memory (``TensorData``): the embedded digits (pre-resized once to the network resolution) and
  CIFAR-10 (uint8, 32x32; the model upsamples on the device in its ``forward``). Batches are cut
  by indexing a tensor, so loading is never the bottleneck.
- folders (``FolderData``): Tiny ImageNet and any ImageFolder tree, decoded by a ``DataLoader``
  with ``--workers`` processes into uint8 tensors.

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

import hashlib
import os
import pickle
import tarfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ._interrupt import sigint_deferred

DATASETS = ("digits", "cifar10", "tinyimagenet", "folder")
DIGITS_FILE = Path(__file__).with_name("data") / "digits.npz"
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
    labels: torch.Tensor                      # int64 [N]
    images: Optional[torch.Tensor] = None     # uint8 or float32 [N, 3 or 1, H, W] (in memory)
    files: Optional[list[str]] = None         # one path per label (folder data sets)
    size: Optional[int] = None                # folder data: decode to size x size

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, limit: Optional[int]) -> "Split":
        """The first ``limit`` of a fixed (seed 0) shuffle, in original order: a small, mixed subset."""
        if limit is None or limit >= len(self):
            return self
        if limit < 1:
            raise ValueError(f"a subset limit must be >= 1, got {limit}")
        idx = torch.randperm(len(self), generator=torch.Generator().manual_seed(0))[:limit].sort().values
        return Split(self.labels[idx], None if self.images is None else self.images[idx],
                     None if self.files is None else [self.files[i] for i in idx.tolist()], self.size)


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


def load_dataset(name: Optional[str] = None, data: Optional[str] = None, *, resolution: Optional[int] = None,
                 download: bool = False, limit_train: Optional[int] = None,
                 limit_val: Optional[int] = None) -> Dataset:
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
                raise DataError("--dataset cifar10 needs --data ROOT (a folder; add --download to fetch CIFAR-10 "
                                f"there from {CIFAR10_URL}, about 163 MB)")
            raise DataError(f"--dataset {name} needs --data ROOT; expected layout:\n{_LAYOUT[name]}")
        if name == "cifar10":
            ds = load_cifar10(data, download=download)
        elif name == "tinyimagenet":
            ds = load_tinyimagenet(data)
        else:
            ds = load_image_folder(data, resolution)
    ds.train, ds.val = ds.train.subset(limit_train), ds.val.subset(limit_val)
    return ds


_LAYOUT = {
    "cifar10": "  ROOT/cifar-10-batches-py/data_batch_1 .. data_batch_5, test_batch, batches.meta\n"
               f"  (the 'CIFAR-10 python version' from {CIFAR10_URL}; pass --download to fetch it)",
    "tinyimagenet": "  ROOT/wnids.txt\n  ROOT/train/<wnid>/images/*.JPEG\n  ROOT/val/images/*.JPEG\n"
                    "  ROOT/val/val_annotations.txt\n  (unzip tiny-imagenet-200.zip from "
                    "http://cs231n.stanford.edu/tiny-imagenet-200.zip as it is; ROOT is tiny-imagenet-200)",
    "folder": "  ROOT/train/<class>/*.jpg and ROOT/val/<class>/*.jpg (or ROOT/test/<class>/...), or\n"
              "  ROOT/<class>/*.jpg (then every fifth image of each class is held out for validation)",
}


# -- digits (embedded) -------------------------------------------------------------------------
def digits_split(labels: np.ndarray) -> np.ndarray:
    """Boolean test mask: within each class, in file order, every fifth image (positions 4, 9, ...)."""
    test = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        test[np.flatnonzero(labels == c)[4::5]] = True
    return test


def load_digits(resolution: int = 32) -> Dataset:
    """The embedded UCI digits (CC BY 4.0; see fused_dsconv/data/README.md): 1,442 train / 355 test.

    Pixels 0..16 are scaled to [0, 1] and resized once (bilinear) to ``resolution``; the single
    channel is repeated to 3 per batch by ``normalize`` (a view), so the network is the paper's RGB model.
    """
    if not DIGITS_FILE.is_file():
        raise DataError(f"the embedded digits file is missing: {DIGITS_FILE} (a broken install? reinstall "
                        "fused_dsconv; the wheel must include fused_dsconv/data/digits.npz)")
    blob = DIGITS_FILE.read_bytes()
    if hashlib.sha256(blob).hexdigest() != DIGITS_SHA256:
        raise DataError(f"{DIGITS_FILE} is corrupted (SHA-256 mismatch); reinstall fused_dsconv")
    with np.load(DIGITS_FILE) as z:
        images, labels = z["images"], z["labels"].astype(np.int64)
    x = torch.from_numpy(images).float().div_(16.0).unsqueeze(1)
    if resolution != x.shape[-1]:
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False).clamp_(0, 1)
    y = torch.from_numpy(labels)
    test = torch.from_numpy(digits_split(labels))
    mean, std = MEAN_STD["digits"]
    return Dataset("digits", Split(y[~test], x[~test]), Split(y[test], x[test]), [str(i) for i in range(10)],
                   mean, std)


# -- CIFAR-10 ----------------------------------------------------------------------------------
def _cifar_dir(root: Path) -> Path:
    return root if (root / "data_batch_1").is_file() else root / "cifar-10-batches-py"


def download_cifar10(root: str | Path) -> Path:
    """Fetch and unpack the CIFAR-10 python archive into ``root`` (checks its MD5)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    archive = root / "cifar-10-python.tar.gz"
    if not archive.is_file() or _md5(archive) != CIFAR10_MD5:
        tmp = archive.with_suffix(".part")
        print(f"downloading {CIFAR10_URL} -> {archive}", flush=True)
        try:
            with urllib.request.urlopen(CIFAR10_URL, timeout=60) as r, open(tmp, "wb") as f:
                total, done = int(r.headers.get("Content-Length") or 0), 0
                while chunk := r.read(1 << 20):
                    f.write(chunk)
                    done += len(chunk)
                    if total:
                        print(f"\r  {done / 2**20:.0f} / {total / 2**20:.0f} MiB", end="", flush=True)
            print(flush=True)
        except OSError as e:
            raise DataError(f"could not download CIFAR-10 from {CIFAR10_URL}: {e}\nOffline? Download that file "
                            f"elsewhere, put it at {archive} (or unpack it into {root}) and run again.") from e
        if _md5(tmp) != CIFAR10_MD5:
            tmp.unlink()
            raise DataError(f"the downloaded {archive.name} has the wrong MD5 (expected {CIFAR10_MD5}); try again")
        os.replace(tmp, archive)
    with tarfile.open(archive) as tar:
        tar.extractall(root, filter="data")
    return root / "cifar-10-batches-py"


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, numbers, bytes and NumPy arrays, and nothing that could run code.

    The CIFAR-10 python batches are pickles, and a data folder may come from anyone: plain
    ``pickle.load`` would call whatever the file names. Only the NumPy functions that rebuild an
    array from its bytes are allowed, and ``_codecs.encode``, which pickles of protocol 2 written by
    Python 3 use for bytes."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refused to load {module}.{name} (only arrays, lists, dicts, numbers "
                                         "and bytes are loaded from a data set file)")
        return super().find_class(module, name)


def _load_batch(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            d = _ArrayUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise DataError(f"{path} is not a CIFAR-10 python batch: {e}") from None
    if not isinstance(d, dict) or b"data" not in d or b"labels" not in d:
        raise DataError(f"{path} is not a CIFAR-10 python batch (expected a dict with data and labels)")
    return d


def load_cifar10(root: str | Path, download: bool = False) -> Dataset:
    """CIFAR-10 (python pickle batches) in memory as uint8 [N, 3, 32, 32]: 50,000 train / 10,000 test."""
    root = Path(root)
    folder = _cifar_dir(root)
    files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    missing = [f for f in files if not (folder / f).is_file()]
    if missing and download:
        folder = download_cifar10(root)
        missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        raise DataError(f"CIFAR-10 not found under {root} (missing {', '.join(missing)}). Expected:\n"
                        f"{_LAYOUT['cifar10']}")

    def read(names: Sequence[str]) -> Split:
        xs, ys = [], []
        for n in names:
            d = _load_batch(folder / n)
            xs.append(np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys.append(np.asarray(d[b"labels"], dtype=np.int64))
        return Split(torch.from_numpy(np.concatenate(ys)), torch.from_numpy(np.concatenate(xs)))

    mean, std = MEAN_STD["cifar10"]
    return Dataset("cifar10", read(files[:5]), read(files[5:]), list(CIFAR10_CLASSES), mean, std)


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
        raise DataError(f"{root} is not a Tiny ImageNet folder: missing {', '.join(missing)}. Expected:\n"
                        f"{_LAYOUT['tinyimagenet']}")
    wnids = [w.strip() for w in (root / "wnids.txt").read_text().split() if w.strip()]
    index = {w: i for i, w in enumerate(wnids)}
    files, labels = [], []
    for w in wnids:
        found = _images_in(root / "train" / w / "images")
        if not found:
            raise DataError(f"no training images in {root / 'train' / w / 'images'}. Expected:\n"
                            f"{_LAYOUT['tinyimagenet']}")
        files += found
        labels += [index[w]] * len(found)
    vfiles, vlabels = [], []
    for n, line in enumerate((root / "val" / "val_annotations.txt").read_text().splitlines(), 1):
        parts = line.split("\t")
        if len(parts) < 2 or parts[1] not in index:
            raise DataError(f"val/val_annotations.txt line {n} is not '<file>\\t<wnid>\\t...' with a wnid from "
                            f"wnids.txt: {line[:80]!r}")
        vfiles.append(str(root / "val" / "images" / parts[0]))
        vlabels.append(index[parts[1]])
    absent = [f for f in vfiles[:100] if not os.path.isfile(f)]
    if absent:
        raise DataError(f"val_annotations.txt names {absent[0]}, which does not exist (val/images reshuffled?). "
                        f"Keep the published layout:\n{_LAYOUT['tinyimagenet']}")
    names = _tiny_names(root, wnids)
    mean, std = MEAN_STD["tinyimagenet"]
    # 64x64 as published: the model upsamples to its resolution on the device.
    return Dataset("tinyimagenet", Split(torch.tensor(labels), files=files, size=64),
                   Split(torch.tensor(vlabels), files=vfiles, size=64), names, mean, std)


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
            raise DataError(f"no {what} images found under {root} (extensions {', '.join(IMAGE_EXTENSIONS)}). "
                            f"Expected:\n{_LAYOUT['folder']}")
    mean, std = MEAN_STD["folder"]
    return Dataset("folder", Split(torch.tensor(train[1]), files=train[0], size=resolution),
                   Split(torch.tensor(val[1]), files=val[0], size=resolution), classes, mean, std)


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


# -- batching ----------------------------------------------------------------------------------
class Loader:
    """Batches of one split. ``generator`` (shuffle only) is the data-order RNG: save its state to resume.
    ``sampler`` (e.g. a ``DistributedSampler``: this process's share of the split under torchrun) gives the
    order instead; the caller calls its ``set_epoch``."""

    def __init__(self, split: Split, batch_size: int, *, shuffle: bool, generator: Optional[torch.Generator] = None,
                 workers: int = 0, pin_memory: bool = False, sampler: Optional[torch.utils.data.Sampler] = None):
        if batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {batch_size}")
        self.split, self.batch_size, self.shuffle, self.generator = split, batch_size, shuffle, generator
        self.sampler = sampler
        self._loader = None
        if split.images is None:
            self._loader = torch.utils.data.DataLoader(
                FolderDataset(split), batch_size=batch_size, shuffle=shuffle and sampler is None,
                generator=generator if sampler is None else None, sampler=sampler, num_workers=workers,
                pin_memory=pin_memory, persistent_workers=False, prefetch_factor=4 if workers > 0 else None)

    @property
    def num_samples(self) -> int:
        return len(self.split) if self.sampler is None else len(self.sampler)

    def __len__(self) -> int:
        return -(-self.num_samples // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self._loader is not None:
            with sigint_deferred():  # the workers are forked here (see sigint_deferred)
                batches = iter(self._loader)
            yield from batches
            return
        n = self.num_samples
        if self.sampler is not None:
            order = torch.tensor(list(self.sampler), dtype=torch.int64)
        else:
            order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        for i in range(0, n, self.batch_size):
            idx = order[i:i + self.batch_size]
            yield self.split.images[idx], self.split.labels[idx]


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
