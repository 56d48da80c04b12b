"""What a folder of medtrain's is, by the file that marks it: a run, a grid, a search or a
cross-validation. Commands that take or write such folders refuse the wrong kind by these (light
to import: the command lines use it before torch is loaded)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

MARKERS = {
    "metrics.json": "a run",
    "checkpoints": "a run",
    "folds.json": "a cross-validation",
    "multirun.yaml": "a grid (medtrain -m)",
    "study.db": "a search (medtrain sweep)",
    "study.json": "a search (medtrain sweep)",
}


def marked_as(
    folder: Path, markers: Sequence[str] = tuple(MARKERS)
) -> tuple[str, list[str]] | None:
    """What `folder` is by the first of `markers` (names of `MARKERS`, in the order that decides)
    it holds, with every one of them it holds; None when it holds none."""
    held = [name for name in markers if (Path(folder) / name).exists()]
    return (MARKERS[held[0]], held) if held else None
