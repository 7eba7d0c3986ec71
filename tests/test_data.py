"""Data sets for training: embedded digits, CIFAR-10 / Tiny ImageNet / ImageFolder layouts (tiny fakes, no download)."""

import pickle

import numpy as np
import pytest
import torch

from fused_dsconv import datasets as data
from fused_dsconv.datasets import DataError, Loader, load_dataset, normalize


def test_digits_fixed_stratified_split():
    ds = data.load_digits(32)
    assert (len(ds.train), len(ds.val), ds.num_classes) == (1442, 355, 10)
    assert ds.train.images.shape == (1442, 1, 32, 32) and ds.train.images.dtype == torch.float32
    assert 0 <= ds.train.images.min() and ds.train.images.max() <= 1
    counts = torch.bincount(ds.val.labels, minlength=10)
    assert counts.min() >= 34 and counts.max() <= 37  # every fifth image of each class
    again = data.load_digits(32)
    assert torch.equal(ds.val.images, again.val.images) and torch.equal(ds.val.labels, again.val.labels)
    native = data.load_digits(8)
    assert native.train.images.shape[-1] == 8
    assert torch.equal(native.train.images * 16, (native.train.images * 16).round())  # values 0..16, unchanged


def test_normalize_repeats_grey_to_rgb():
    x = torch.rand(2, 1, 4, 4)
    out = normalize(x, (0.5,) * 3, (0.25,) * 3)
    assert out.shape == (2, 3, 4, 4)
    torch.testing.assert_close(out[:, 2], (x[:, 0] - 0.5) / 0.25)
    u8 = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    torch.testing.assert_close(normalize(u8, (0.0,) * 3, (1.0,) * 3), torch.ones(1, 3, 2, 2))


def test_limit_is_a_fixed_mixed_subset():
    ds = load_dataset("digits", limit_train=100, limit_val=20)
    assert (len(ds.train), len(ds.val)) == (100, 20)
    assert len(torch.unique(ds.train.labels)) == 10
    assert torch.equal(ds.train.labels, load_dataset("digits", limit_train=100).train.labels)


def test_loader_order_follows_its_generator():
    ds = data.load_digits(8)
    a = [y for _, y in Loader(ds.train, 100, shuffle=True, generator=torch.Generator().manual_seed(3))]
    b = [y for _, y in Loader(ds.train, 100, shuffle=True, generator=torch.Generator().manual_seed(3))]
    assert all(torch.equal(p, q) for p, q in zip(a, b)) and len(a) == 15
    assert not torch.equal(torch.cat(a), ds.train.labels)
    assert torch.equal(torch.cat([y for _, y in Loader(ds.train, 100, shuffle=False)]), ds.train.labels)


def _fake_cifar(folder, n=6):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        d = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": list(range(n))}
        with open(folder / name, "wb") as f:
            pickle.dump(d, f)


def test_cifar10_python_batches(tmp_path):
    _fake_cifar(tmp_path / "cifar-10-batches-py")
    assert data.infer_dataset(str(tmp_path)) == "cifar10"
    ds = load_dataset(data=str(tmp_path))
    assert ds.name == "cifar10" and (len(ds.train), len(ds.val)) == (30, 6) and ds.num_classes == 10
    assert ds.train.images.shape == (30, 3, 32, 32) and ds.train.images.dtype == torch.uint8
    same = load_dataset("cifar10", str(tmp_path / "cifar-10-batches-py"))  # the folder itself works too
    assert torch.equal(same.val.images, ds.val.images)


class _RunsCode:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('ran')",)


def test_cifar10_batches_cannot_run_code(tmp_path):
    # The batches are pickles and a data folder may come from anyone: only arrays and plain values load.
    folder = tmp_path / "cifar-10-batches-py"
    _fake_cifar(folder)
    marker = tmp_path / "code_ran"
    with open(folder / "data_batch_3", "wb") as f:
        pickle.dump({b"data": _RunsCode(marker), b"labels": [0]}, f)
    with pytest.raises(DataError, match=r"data_batch_3 is not a CIFAR-10 python batch: refused to load builtins\.exec"):
        load_dataset("cifar10", str(tmp_path))
    assert not marker.exists()
    with open(folder / "data_batch_3", "wb") as f:  # protocol 2 (as the real files): bytes via _codecs
        pickle.dump({b"data": np.zeros((6, 3072), np.uint8), b"labels": list(range(6))}, f, protocol=2)
    assert load_dataset("cifar10", str(tmp_path)).train.images.shape == (30, 3, 32, 32)


def test_cifar10_missing_explains_download(tmp_path):
    with pytest.raises(DataError, match="--download"):
        load_dataset("cifar10", str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="--download"):
        load_dataset("cifar10", None)


def _jpeg(path, size=64, value=128):
    Image = pytest.importorskip("PIL.Image")
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), (value, 0, 255 - value)).save(path)


def _fake_tiny(root, wnids=("n01", "n02"), per_class=3):
    (root / "wnids.txt").parent.mkdir(parents=True, exist_ok=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    lines = []
    for w in wnids:
        for i in range(per_class):
            _jpeg(root / "train" / w / "images" / f"{w}_{i}.JPEG")
            _jpeg(root / "val" / "images" / f"val_{w}_{i}.JPEG")
            lines.append(f"val_{w}_{i}.JPEG\t{w}\t0\t0\t63\t63")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")


def test_tinyimagenet_published_layout(tmp_path):
    root = tmp_path / "tiny-imagenet-200"
    _fake_tiny(root)
    assert data.infer_dataset(str(root)) == "tinyimagenet"
    ds = load_dataset(data=str(root))
    assert ds.name == "tinyimagenet" and ds.classes == ["n01", "n02"]
    assert (len(ds.train), len(ds.val)) == (6, 6)
    assert ds.val.labels.tolist() == [0, 0, 0, 1, 1, 1]
    x, y = next(iter(Loader(ds.val, 4, shuffle=False)))
    assert x.shape == (4, 3, 64, 64) and x.dtype == torch.uint8 and y.tolist() == [0, 0, 0, 1]
    assert abs(x[0, 0, 0, 0].item() - 128) <= 3  # JPEG


def test_tinyimagenet_without_annotations_says_what_is_missing(tmp_path):
    root = tmp_path / "tiny"
    _fake_tiny(root)
    (root / "val" / "val_annotations.txt").unlink()
    with pytest.raises(DataError, match="val/val_annotations.txt"):
        load_dataset("tinyimagenet", str(root))


def test_image_folder_layouts(tmp_path):
    flat = tmp_path / "flat"
    for c in ("cat", "dog"):
        for i in range(5):
            _jpeg(flat / c / f"{i}.png", size=40 + i)
    ds = load_dataset("folder", str(flat), resolution=16)
    assert ds.classes == ["cat", "dog"] and (len(ds.train), len(ds.val)) == (8, 2)
    x, _ = next(iter(Loader(ds.train, 8, shuffle=False)))
    assert x.shape == (8, 3, 16, 16)

    split = tmp_path / "split"
    for part, n in (("train", 3), ("val", 1)):
        for c in ("a", "b", "c"):
            for i in range(n):
                _jpeg(split / part / c / f"{i}.jpg", size=20)
    ds = load_dataset(data=str(split), resolution=16)
    assert ds.name == "folder" and (len(ds.train), len(ds.val), ds.num_classes) == (9, 3, 3)

    with pytest.raises(DataError, match="class subfolders"):
        load_dataset("folder", str(tmp_path / "flat" / "cat"))
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("folder", str(tmp_path / "missing"))
