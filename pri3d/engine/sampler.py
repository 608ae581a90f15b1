"""A resumable, rank-aware sampler whose order depends only on (seed, epoch).

Each epoch is a seeded permutation cut into global batches (`drop_last`). A global batch is split
into `world_size × accumulate` contiguous micro-batches; rank r takes micro-batches
r·accumulate … r·accumulate + accumulate − 1. So one process accumulating A micro-batches sees the
same samples, in the same groups, as A processes with one micro-batch each, and a run resumed at
global batch k continues exactly where an uninterrupted run would be.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class GlobalBatchSampler(Sampler[list[int]]):
    """Yields this rank's micro-batches (lists of dataset indices)."""

    def __init__(
        self,
        dataset_size: int,
        global_batch: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        accumulate: int = 1,
        seed: int = 0,
        shuffle: bool = True,
    ):
        if global_batch % (world_size * accumulate):
            raise ValueError(
                f"train.batch_size={global_batch} must be divisible by ranks × optimizer.accumulate_step "
                f"= {world_size} × {accumulate}"
            )
        if dataset_size < global_batch:
            raise ValueError(f"the dataset has {dataset_size} pairs, fewer than one batch ({global_batch})")
        self.dataset_size = dataset_size
        self.global_batch = global_batch
        self.micro = global_batch // (world_size * accumulate)
        self.rank, self.world_size, self.accumulate = rank, world_size, accumulate
        self.seed, self.shuffle = seed, shuffle
        self.epoch = 0
        self.start_batch = 0

    @property
    def batches_per_epoch(self) -> int:
        """Global batches (= optimizer steps) per epoch."""
        return self.dataset_size // self.global_batch

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Iterate epoch `epoch`, starting at global batch `start_batch` (for resuming)."""
        self.epoch, self.start_batch = epoch, start_batch

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start_batch) * self.accumulate

    def __iter__(self) -> Iterator[list[int]]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.dataset_size, generator=generator).tolist()
        else:
            order = list(range(self.dataset_size))
        for b in range(self.start_batch, self.batches_per_epoch):
            batch = order[b * self.global_batch : (b + 1) * self.global_batch]
            for a in range(self.accumulate):
                m = self.rank * self.accumulate + a
                yield batch[m * self.micro : (m + 1) * self.micro]
