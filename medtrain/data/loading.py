"""Batched loading: seeded shuffling and workers, so a run's batches are the same on every rerun."""

from __future__ import annotations

import random

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler, default_collate


def seed_worker(worker_id: int) -> None:
    """Seed numpy and `random` in a loader worker from the seed torch gave it (itself seeded)."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def collate(samples: list[dict]) -> dict:
    """Stack samples into a batch; a key whose tensors differ in shape (whole images of several
    sizes, native-size masks) stays a list of tensors."""
    batch = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        if torch.is_tensor(values[0]) and len({tuple(v.shape) for v in values}) > 1:
            batch[key] = values
        else:
            batch[key] = default_collate(values)
    return batch


class EpochLoader(DataLoader):
    """A DataLoader whose shuffling and augmentation are fixed by (seed, epoch).

    Call `set_epoch(epoch)` before iterating: resuming at epoch k then yields exactly the batches an
    uninterrupted run sees at epoch k.
    """

    def __init__(self, dataset: Dataset, *, seed: int, shuffle: bool, **kwargs):
        self.generator_ = torch.Generator()
        self.base_seed = seed
        sampler = RandomSampler(dataset, generator=self.generator_) if shuffle else None
        super().__init__(
            dataset,
            sampler=sampler,
            generator=self.generator_,
            worker_init_fn=seed_worker,
            collate_fn=collate,
            **kwargs,
        )
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.generator_.manual_seed(self.base_seed * 100_003 + epoch)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)


def make_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    shuffle: bool,
    seed: int,
    num_workers: int = 0,
    pin_memory: bool = False,
    drop_last: bool = False,
) -> EpochLoader:
    """Build the loader of one split; `pin_memory` only matters when training on CUDA."""
    return EpochLoader(
        dataset,
        seed=seed,
        shuffle=shuffle,
        batch_size=batch_size,
        num_workers=num_workers,
        pin_memory=pin_memory,
        drop_last=drop_last,
        persistent_workers=False,  # workers must see set_epoch's new augmentation epoch
    )
