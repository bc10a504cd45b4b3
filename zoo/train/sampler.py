"""A resumable, shardable batch sampler: one seeded permutation per epoch (exact resume, DDP)."""
from __future__ import annotations

import math

import torch

from zoo.errors import ConfigError


class ResumableBatchSampler(torch.utils.data.Sampler):
    """Batches of indices from a seeded per-epoch permutation, sharded across ranks.

    ``set_position(epoch, batches_done)`` makes the next ``iter`` skip exactly the batches this
    rank already consumed in ``epoch``: resuming never repeats or drops a sample.
    Sharding follows DistributedSampler: the permutation is padded (repeating its start) to a
    multiple of ``world_size`` and rank r takes every world_size-th index from r.
    """

    def __init__(self, dataset_size: int, batch_size: int, *, seed: int = 0, shuffle: bool = True,
                 drop_last: bool = True, rank: int = 0, world_size: int = 1):
        if dataset_size <= 0:
            raise ConfigError("The training dataset is empty; check data.train.")
        self.dataset_size = int(dataset_size)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.start_batch = 0
        per_rank = math.ceil(self.dataset_size / world_size)
        self.samples_per_rank = per_rank
        self.batches_per_epoch = per_rank // self.batch_size if drop_last else math.ceil(per_rank / self.batch_size)
        if self.batches_per_epoch == 0:
            raise ConfigError(
                f"The training dataset has {self.dataset_size} items, fewer than one batch "
                f"(train.batch_size={self.batch_size} x {world_size} processes); lower train.batch_size.")

    def set_position(self, epoch: int, batches_done: int = 0) -> None:
        """Start the next iteration at ``batches_done`` batches into ``epoch`` (exact resume)."""
        self.epoch = int(epoch)
        self.start_batch = int(batches_done)

    def permutation(self, epoch: int) -> list[int]:
        """This rank's item order for ``epoch``: a seeded permutation (same on every rank), padded by
        wrapping around to a multiple of the world size, then every ``world_size``-th item from ``rank``.
        """
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            order = torch.randperm(self.dataset_size, generator=generator).tolist()
        else:
            order = list(range(self.dataset_size))
        total = self.samples_per_rank * self.world_size
        while len(order) < total:
            order += order[: total - len(order)]
        return order[self.rank:total:self.world_size]

    def __iter__(self):
        mine = self.permutation(self.epoch)
        for batch in range(self.start_batch, self.batches_per_epoch):
            yield mine[batch * self.batch_size:(batch + 1) * self.batch_size]

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start_batch
