"""Batched loading: seeded shuffling and workers, so a run's batches are the same on every rerun,
and the batches of one process when several train together (`medtrain.engine.distributed`)."""

from __future__ import annotations

import os
import random
import signal
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler, default_collate


def start_worker(worker_id: int) -> None:
    """Seed numpy and `random` in a loader worker from the seed torch gave it (itself seeded).

    Where the process that started the worker takes SIGTERM as Ctrl-C (the verbs that train,
    `medtrain.commands.interrupts`), so does the worker, in place of torch's worker handler (which
    ends a worker signalled by another process by the signal itself, so that the main process
    would report a lost worker instead of the interruption): a SIGTERM sent to the whole process
    group then ends the run as Ctrl-C in a terminal does."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    if signal.getsignal(signal.SIGTERM) is signal.default_int_handler:  # the parent's, inherited
        signal.signal(signal.SIGTERM, _worker_interrupted)


def _worker_interrupted(signum, frame) -> None:
    """A loader worker's SIGTERM as Ctrl-C, once: torch's worker loop ends quietly on it; a second
    one (the main process ending a worker that is still closing its queues) ends the worker at
    once, as torch's own handler would, instead of a traceback from outside that loop."""
    signal.signal(signum, signal.SIG_DFL)
    raise KeyboardInterrupt


MAX_AUTO_WORKERS = 8


def usable_cpus() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. a job scheduler's cpuset), not
    the machine's count. A CPU quota without a cpuset (`docker --cpus`) is not seen: set
    `trainer.num_workers` there."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def auto_workers(device_type: str) -> int:
    """`trainer.num_workers=auto`. On CUDA: the cores left to each process of this node (torchrun's
    `LOCAL_WORLD_SIZE` processes share them) minus the one that drives the GPU, at most 8, so that
    the device is not fed from one Python thread. On the CPU: 0 (as before the key existed),
    since the model's own threads already use every core and a loader process takes cores from
    them (docs/performance.md)."""
    if device_type != "cuda":
        return 0
    local = max(int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1), 1)
    return max(min(usable_cpus() // local - 1, MAX_AUTO_WORKERS), 0)


def collate(samples: list[dict] | dict) -> dict:
    """Stack samples into a batch; a key whose tensors differ in shape (whole images of several
    sizes, native-size masks) stays a list of tensors. A batch the dataset made whole
    (`ImageDataset.__getitems__`) is returned as it is."""
    if isinstance(samples, dict):
        return samples
    batch = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        if torch.is_tensor(values[0]) and len({tuple(v.shape) for v in values}) > 1:
            batch[key] = values
        else:
            batch[key] = default_collate(values)
    return batch


def batch_length(batch: dict) -> int:
    """The number of samples in a collated batch (its first tensor's, or list's, length)."""
    return len(next(v for v in batch.values() if torch.is_tensor(v) or isinstance(v, list)))


def last_batch_dropped(size: int, batch_size: int, processes: int = 1) -> bool:
    """Whether an epoch leaves out its last, short batch: when a process would get no sample of
    it, or a single one while the other batches give it several (a batch of one sample breaks
    batch norm)."""
    rest = size % batch_size
    fewest = rest // processes  # the positions rank, rank + processes, ... of the batch
    return rest > 0 and (fewest == 0 or (fewest == 1 and batch_size // processes >= 2))


class ShardedBatches(Sampler[list[int]]):
    """One process's training batches: the global batches a single process would draw from the
    (seed, epoch) permutation, each shared out among the processes (this one takes the positions
    `rank`, `rank + processes`, ...). The processes' shards are disjoint, and together they see
    every global batch a single-process run sees, whatever their number.

    Attributes:
        shares: for each batch, this process's part of the global batch (its size over the global
            size): the weight that makes the processes' mean gradient the global batch's.
    """

    def __init__(self, size: int, batch_size: int, rank: int, processes: int, generator, shuffle):
        self.size, self.batch_size = size, batch_size
        self.rank, self.processes = rank, processes
        self.generator, self.shuffle = generator, shuffle
        kept = size - size % batch_size if last_batch_dropped(size, batch_size, processes) else size
        starts = range(0, kept, batch_size)
        self.shares = [
            len(range(rank, min(batch_size, kept - s), processes)) / min(batch_size, kept - s)
            for s in starts
        ]
        self.kept = kept

    def __iter__(self) -> Iterator[list[int]]:
        # The same draw from the same generator as RandomSampler: a single process's permutation.
        order = (
            torch.randperm(self.size, generator=self.generator).tolist()
            if self.shuffle
            else list(range(self.size))
        )
        for start in range(0, self.kept, self.batch_size):
            yield order[start : start + self.batch_size][self.rank :: self.processes]

    def __len__(self) -> int:
        return len(self.shares)


class DealtBatches(Sampler[list[int]]):
    """One process's evaluation batches: the batches of a single-process evaluation (in order,
    `batch_size` each), dealt out whole in turn (batch k to process k mod `processes`), so that
    every batch is computed exactly as a single process computes it.

    Attributes:
        total: the number of batches over all processes.
    """

    def __init__(self, size: int, batch_size: int, rank: int, processes: int):
        self.size, self.batch_size = size, batch_size
        self.total = -(-size // batch_size)
        self.mine = list(range(rank, self.total, processes))

    def __iter__(self) -> Iterator[list[int]]:
        for k in self.mine:
            yield list(range(k * self.batch_size, min((k + 1) * self.batch_size, self.size)))

    def __len__(self) -> int:
        return len(self.mine)


class EpochLoader(DataLoader):
    """A DataLoader whose shuffling and augmentation are fixed by (seed, epoch).

    Call `set_epoch(epoch)` before iterating: resuming at epoch k then yields exactly the batches an
    uninterrupted run sees at epoch k. With `shard=(rank, processes)` and several processes it
    yields this process's batches: `ShardedBatches` when shuffling (training), `DealtBatches`
    otherwise (evaluation).
    """

    def __init__(
        self,
        dataset: Dataset,
        *,
        seed: int,
        shuffle: bool,
        batch_size: int,
        drop_last: bool = False,
        shard: tuple[int, int] = (0, 1),
        **kwargs,
    ):
        self.generator_ = torch.Generator()  # the loader's: its workers' base seed
        self.order_generator = torch.Generator()  # the sampler's: the epoch's permutation
        self.base_seed = seed
        rank, processes = shard
        if processes > 1:
            if shuffle:
                batches = ShardedBatches(
                    len(dataset), batch_size, rank, processes, self.order_generator, shuffle
                )
            else:
                batches = DealtBatches(len(dataset), batch_size, rank, processes)
            sizes: dict = {"batch_sampler": batches}
        else:
            sampler = RandomSampler(dataset, generator=self.order_generator) if shuffle else None
            sizes = {"sampler": sampler, "batch_size": batch_size, "drop_last": drop_last}
        super().__init__(
            dataset,
            generator=self.generator_,
            worker_init_fn=start_worker,
            collate_fn=collate,
            **sizes,
            **kwargs,
        )
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        seed = self.base_seed * 100_003 + epoch
        self.generator_.manual_seed(seed)
        # The order a new iterator of a loader sharing one generator with its sampler drew (every
        # release so far): the iterator's base seed first, then the permutation. Drawing that
        # number here keeps the order when persistent workers make no new iterator (which would
        # not draw it).
        self.order_generator.manual_seed(seed)
        torch.empty((), dtype=torch.int64).random_(generator=self.order_generator)
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
    shard: tuple[int, int] = (0, 1),
    persistent: bool = True,
) -> EpochLoader:
    """Build the loader of one split; `pin_memory` only matters when training on CUDA; `shard`
    (rank, processes) picks one process's batches when several train together.

    With `persistent`, loader workers are started once and kept for every epoch: they read the
    epoch that `set_epoch` writes into shared memory (`medtrain.data.transforms.SharedEpoch`), so
    their samples equal those of fresh workers, or of no workers at all. A loader iterated once
    or twice (the test split) need not keep its processes.
    """
    return EpochLoader(
        dataset,
        seed=seed,
        shuffle=shuffle,
        batch_size=batch_size,
        num_workers=num_workers,
        pin_memory=pin_memory,
        drop_last=drop_last,
        shard=shard,
        persistent_workers=persistent and num_workers > 0,
    )
