"""The in-memory data sets: the embedded digits and CIFAR-10 (downloaded on request)."""

from __future__ import annotations

import hashlib
import os
import pickle
import tarfile
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .common import (
    CIFAR10_CLASSES,
    CIFAR10_MD5,
    CIFAR10_URL,
    DIGITS_FILE,
    DIGITS_SHA256,
    MEAN_STD,
    DataError,
    Dataset,
    Split,
    _LAYOUT,
)


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
        raise DataError(
            f"the embedded digits file is missing: {DIGITS_FILE} (a broken install? reinstall "
            "fused_dsconv; the wheel must include fused_dsconv/data/digits.npz)"
        )
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
    return Dataset("digits", Split(y[~test], x[~test]), Split(y[test], x[test]), [str(i) for i in range(10)], mean, std)


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
            raise DataError(
                f"could not download CIFAR-10 from {CIFAR10_URL}: {e}\nOffline? Download that file "
                f"elsewhere, put it at {archive} (or unpack it into {root}) and run again."
            ) from e
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

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(
                f"refused to load {module}.{name} (only arrays, lists, dicts, numbers "
                "and bytes are loaded from a data set file)"
            )
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
        raise DataError(
            f"CIFAR-10 not found under {root} (missing {', '.join(missing)}). Expected:\n{_LAYOUT['cifar10']}"
        )

    def read(names: Sequence[str]) -> Split:
        xs, ys = [], []
        for n in names:
            d = _load_batch(folder / n)
            xs.append(np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys.append(np.asarray(d[b"labels"], dtype=np.int64))
        return Split(torch.from_numpy(np.concatenate(ys)), torch.from_numpy(np.concatenate(xs)))

    mean, std = MEAN_STD["cifar10"]
    return Dataset("cifar10", read(files[:5]), read(files[5:]), list(CIFAR10_CLASSES), mean, std)
