"""Batches of one split: indexing for in-memory data, a DataLoader over the files for folders."""

from __future__ import annotations

from typing import Iterator, Optional

import torch

from .._interrupt import sigint_deferred
from .common import Split
from .folders import FolderDataset


class Loader:
    """Batches of one split. ``generator`` (shuffle only) is the data-order RNG: save its state to resume.
    ``sampler`` (e.g. a ``DistributedSampler``: this process's share of the split under torchrun) gives the
    order instead; the caller calls its ``set_epoch``."""

    def __init__(
        self,
        split: Split,
        batch_size: int,
        *,
        shuffle: bool,
        generator: Optional[torch.Generator] = None,
        workers: int = 0,
        pin_memory: bool = False,
        sampler: Optional[torch.utils.data.Sampler] = None,
    ):
        if batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {batch_size}")
        self.split, self.batch_size, self.shuffle, self.generator = split, batch_size, shuffle, generator
        self.sampler = sampler
        self._loader = None
        if split.images is None:
            self._loader = torch.utils.data.DataLoader(
                FolderDataset(split),
                batch_size=batch_size,
                shuffle=shuffle and sampler is None,
                generator=generator if sampler is None else None,
                sampler=sampler,
                num_workers=workers,
                pin_memory=pin_memory,
                persistent_workers=False,
                prefetch_factor=4 if workers > 0 else None,
            )

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
            idx = order[i : i + self.batch_size]
            yield self.split.images[idx], self.split.labels[idx]
