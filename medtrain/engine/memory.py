"""The C heap of a medtrain process: glibc's malloc is told to keep the memory a training step frees
for the next step, instead of giving it back to the system and faulting it in again.

glibc returns the free memory at the top of its heap to the system once more of it is free than a
threshold, and by default that threshold follows the largest block recently freed. A training step
frees its activations at the end of the backward pass and allocates them again in the next
forward pass, so the heap can shrink and grow again every batch; each regrowth costs a page fault
per 4 KiB, zeroed by the kernel. Measured on the PneumoniaMNIST recipe (medtrain's epochs and a
bare loop's interleaved in one process, docs/benchmarks.md): in the epochs where it happened, about
1,000 heap resizes and a million page faults, and 1-1.5 s of a 9.5 s epoch; with the thresholds
fixed, medtrain's epochs took what the bare loop's did. The memory kept is what the next step
allocates again, so a process holds its working set, as PyTorch's CUDA caching allocator does on a
GPU.

`MEDTRAIN_MALLOC=system` leaves glibc's defaults. Settings of your own (`MALLOC_*_` variables,
`GLIBC_TUNABLES`, another allocator through `LD_PRELOAD`, e.g. jemalloc or tcmalloc) are left
alone, as are systems without glibc.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys

import torch

log = logging.getLogger(__name__)

ENV = "MEDTRAIN_MALLOC"
M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
# Blocks up to this size come from the heap; larger ones are mapped on their own and returned when
# freed. 32 MiB is glibc's largest value on 64-bit systems, where its own threshold ends up anyway.
MMAP_THRESHOLD = 32 << 20
# Free memory at the top of the heap is returned to the system only above this.
TRIM_THRESHOLD = 1 << 30
USER_SETTINGS = (
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TOP_PAD_",
    "MALLOC_MMAP_MAX_",
    "GLIBC_TUNABLES",
    "LD_PRELOAD",
)

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Fix glibc's trim and mmap thresholds for this process (once); returns whether they are set
    (False: not Linux with glibc, `MEDTRAIN_MALLOC=system`, or the user's own settings)."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get(ENV, "").strip().lower() == "system":
        return False
    if not sys.platform.startswith("linux"):
        return False
    own = [name for name in USER_SETTINGS if os.environ.get(name)]
    if own:
        log.debug("malloc settings left as they are (%s set)", ", ".join(own))
        return False
    try:
        libc = ctypes.CDLL(None)
        if not hasattr(libc, "gnu_get_libc_version"):  # another C library (musl)
            return False
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _applied = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
    return _applied


def peak_memory(device: torch.device) -> dict[str, float]:
    """The process's peak memory so far, in MB: the main process's resident host memory
    (`ru_maxrss`: the interpreter, the data, the model; loader worker processes are not counted)
    and, on CUDA, the most the caching allocator held for tensors."""
    peak = {}
    try:
        import resource

        scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
        peak["peak_host_mb"] = round(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20, 1
        )
    except ImportError:  # Windows
        pass
    if device.type == "cuda":
        peak["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return peak
