"""Decoded files kept in memory between epochs: a dataset that reads image and mask files decodes
each one once per process instead of once per sample (`dataset.cache_mb`)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable

import numpy as np

DEFAULT_CACHE_MB = 512


class DecodedCache:
    """Arrays by key, up to `max_mb` megabytes in all (least recently used dropped first; an array
    larger than the budget is not kept). Kept arrays are made read-only: a caller that modifies
    one in place fails loudly instead of changing what later samples see.

    Each loader process has its own cache (worker processes start with a copy of the main
    process's, which the data check fills), so the memory bound is per process.
    """

    def __init__(self, max_mb: float = DEFAULT_CACHE_MB):
        if max_mb is None or max_mb < 0:
            raise ValueError(f"dataset.cache_mb={max_mb!r} must be a number >= 0")
        self.budget = int(max_mb * 2**20)
        self.held = 0
        self.arrays: OrderedDict[Hashable, np.ndarray] = OrderedDict()

    def get(self, key: Hashable, load: Callable[[], np.ndarray]) -> np.ndarray:
        if key in self.arrays:
            self.arrays.move_to_end(key)
            return self.arrays[key]
        array = load()
        if not isinstance(array, np.ndarray) or array.nbytes > self.budget:
            return array
        array.setflags(write=False)
        self.arrays[key] = array
        self.held += array.nbytes
        while self.held > self.budget:
            _, dropped = self.arrays.popitem(last=False)
            self.held -= dropped.nbytes
        return array
