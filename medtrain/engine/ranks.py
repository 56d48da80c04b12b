"""Which process of a torchrun launch this is, read from the environment torchrun sets (`RANK`,
`WORLD_SIZE`, `LOCAL_RANK`), without importing torch: the command line needs it before Hydra runs
(`--help` answers without torch)."""

from __future__ import annotations

import os

from medtrain.errors import ConfigError


def launched() -> tuple[int, int, int]:
    """(rank, world size, local rank) as torchrun sets them; (0, 1, 0) for a process started on
    its own.

    Raises:
        ConfigError: the variables are set but not integers, or the rank is out of range.
    """
    values = {name: os.environ.get(name) for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    if values["WORLD_SIZE"] in (None, "", "1"):
        return 0, 1, 0
    try:
        rank, world, local = (int(values[k] or 0) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    except ValueError:
        raise ConfigError(
            f"environment: RANK/WORLD_SIZE/LOCAL_RANK must be integers: {values}"
        ) from None
    if not 0 <= rank < world:
        raise ConfigError(f"environment: RANK={rank} is not below WORLD_SIZE={world}")
    return rank, world, local


def launched_rank() -> int:
    """This process's rank under torchrun; 0 without it (or with unusable variables, which
    training reports)."""
    try:
        return launched()[0]
    except ConfigError:
        return 0


def under_torchrun() -> bool:
    """Whether this process is one of several that torchrun started."""
    return os.environ.get("WORLD_SIZE", "1") not in ("", "1")
