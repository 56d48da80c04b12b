"""Decoded files kept in memory between epochs: a dataset that reads image and mask files decodes
each one once per process instead of once per sample (`dataset.cache_mb`)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable

import numpy as np

from medtrain.errors import ConfigError

DEFAULT_CACHE_MB = 512


class DecodedCache:
    """Arrays by key, up to `max_mb` megabytes in all (least recently used dropped first; an array
    larger than the budget is not kept). Kept arrays are made read-only: a caller that modifies
    one in place fails loudly instead of changing what later samples see.

    Each process has its own cache (loader workers start with a copy of the main process's), and
    each split its own: the bound is per split and process. Safe to use from several threads (the
    data check reads with a thread pool).
    """

    def __init__(self, max_mb: float = DEFAULT_CACHE_MB):
        self.max_mb = max_mb
        self.budget = int(max_mb * 2**20)
        self.held = 0
        self.arrays: OrderedDict[Hashable, np.ndarray] = OrderedDict()
        self.lock = threading.Lock()

    def emptied(self) -> DecodedCache:
        """A new, empty cache of the same budget (for a dataset whose case indices changed)."""
        return DecodedCache(self.max_mb)

    def get(self, key: Hashable, load: Callable[[], np.ndarray]) -> np.ndarray:
        with self.lock:
            if key in self.arrays:
                self.arrays.move_to_end(key)
                return self.arrays[key]
        array = load()  # outside the lock: threads decode different files at once
        if not isinstance(array, np.ndarray) or array.nbytes > self.budget:
            return array
        array.setflags(write=False)
        with self.lock:
            if key not in self.arrays:
                self.arrays[key] = array
                self.held += array.nbytes
            while self.held > self.budget:
                _, dropped = self.arrays.popitem(last=False)
                self.held -= dropped.nbytes
        return array

    def __getstate__(self) -> dict:  # a lock does not pickle (loader workers started by spawn)
        return {k: v for k, v in self.__dict__.items() if k != "lock"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.lock = threading.Lock()


def decoded_cache(reads_files: bool, cache_mb: float) -> DecodedCache | None:
    """A dataset's cache (`dataset.cache_mb`): None for datasets that hold their images in memory
    (`reads_files` false) or with `cache_mb=0`.

    Raises:
        ConfigError: `cache_mb` that is not a number >= 0.
    """
    if not isinstance(cache_mb, (int, float)) or cache_mb < 0:
        raise ConfigError(f"dataset.cache_mb={cache_mb!r} must be a number >= 0")
    return DecodedCache(cache_mb) if reads_files and cache_mb else None


def read_through(cache: DecodedCache | None, key: Hashable, load: Callable[[], np.ndarray]):
    """`load()`, kept in `cache` when there is one."""
    return load() if cache is None else cache.get(key, load)
