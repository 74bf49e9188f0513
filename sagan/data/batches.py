"""A resumable, deterministic stream of training batches.

The data order is a function of (seed, number of batches consumed) alone: epoch
``e`` visits the dataset in ``randperm(n)`` drawn from a generator seeded with
``(seed, e)``, dropping the last partial batch. Resuming therefore needs one integer,
and a resumed run sees exactly the batches an uninterrupted one would have seen,
however many loader workers prefetch ahead.

Nothing here draws from the global RNG: the epoch orders come from their own
generators, and the DataLoader gets one too (seeded from ``(seed, consumed)``),
because starting a DataLoader iterator without one draws its workers' base seed
from the global RNG, which shifted every later draw of a resumed run. The workers'
seeds only matter to per-item randomness, and loading is deterministic (resize and
center crop, no augmentation, as in the official code).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from sagan.data.folders import InMemoryImages


def _generator(seed: int, k: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + k) % (2**63))


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    return torch.randperm(n, generator=_generator(seed, epoch))


class _IndexBatches(Sampler[list[int]]):
    """Indices of global batch after global batch; with ``shard=(rank, world)`` only
    this rank's contiguous slice of each."""

    def __init__(
        self, n: int, batch_size: int, seed: int, start: int, shard: tuple[int, int] = (0, 1)
    ):
        self.n, self.batch_size, self.seed, self.start = n, batch_size, seed, start
        self.per_epoch = n // batch_size
        rank, world = shard
        self.lo = rank * (batch_size // world)
        self.hi = self.lo + batch_size // world

    def __iter__(self) -> Iterator[list[int]]:
        k = self.start
        while True:
            epoch, pos = divmod(k, self.per_epoch)
            order = epoch_order(self.n, self.seed, epoch)
            for p in range(pos, self.per_epoch):
                yield order[p * self.batch_size + self.lo : p * self.batch_size + self.hi].tolist()
            k = (epoch + 1) * self.per_epoch


class Batches:
    """Infinite iterator of ``(images, labels)`` on ``device``; images in [-1, 1].

    Args:
        dataset: items ``(uint8 [3,R,R], label)``; an :class:`InMemoryImages` is
            indexed directly (no worker processes, no per-item collation).
        consumed: batches already drawn (from a checkpoint).
        shard: ``(rank, world_size)``: yield only this rank's slice of each global
            batch of ``batch_size`` (which the world size divides).
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        seed: int,
        device: torch.device,
        consumed: int = 0,
        num_workers: int = 0,
        channels_last: bool = False,
        shard: tuple[int, int] = (0, 1),
    ):
        n = len(dataset)
        if n < batch_size:
            raise ValueError(
                f"the dataset has {n} images, fewer than train.batch_size={batch_size}"
            )
        self.consumed = consumed
        self.device = device
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        sampler = _IndexBatches(n, batch_size, seed, consumed, shard)
        if isinstance(dataset, InMemoryImages):
            images, labels = dataset.images, dataset.labels
            self._it = ((images[idx], labels[idx]) for idx in sampler)
        else:
            loader = DataLoader(
                dataset,
                batch_sampler=sampler,
                num_workers=num_workers,
                pin_memory=device.type == "cuda",
                persistent_workers=num_workers > 0,
                generator=_generator(seed + 1, consumed),
            )
            self._it = iter(loader)

    def __iter__(self) -> Batches:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = next(self._it)
        self.consumed += 1
        x = x.to(self.device, non_blocking=True).to(memory_format=self.memory_format)
        # uint8 travels to the device; the float conversion happens there.
        x = x.float().div_(127.5).sub_(1.0)
        return x, y.to(self.device, non_blocking=True)
