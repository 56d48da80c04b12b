"""Several labels per image read from CSV cells: one 0/1 column per label (CheXpert's form) or one
column of label names joined by a separator (ChestX-ray14's `Effusion|Nodule`), each image a 0/1
vector; shared by the manifest dataset and `medtrain evaluate`."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# The cells a 0/1 label column may hold (compared in lower case).
POSITIVE = {"1", "1.0", "true", "yes"}
NEGATIVE = {"0", "0.0", "false", "no"}


def joined_names(cells: Sequence[str], separator: str, no_label: str | None) -> list[str]:
    """The sorted label names that cells of joined names hold (`no_label` and empty parts left
    out): the classes when `dataset.class_names` does not list them."""
    names = {part.strip() for cell in cells if cell != no_label for part in cell.split(separator)}
    return sorted(names - {""})


def label_vector(
    cells: Sequence[str],
    columns: Sequence[str],
    names: Sequence[str],
    separator: str,
    no_label: str | None,
) -> np.ndarray:
    """One image's labels as a 0/1 vector over `names`, from its cells of `columns`: one cell per
    label column (0/1, true/false, yes/no), or the one cell of names joined by `separator`
    (`no_label`, e.g. 'No Finding', for none of them).

    Raises:
        ValueError: a cell that is neither, worded for a message that names the row.
    """
    if len(columns) > 1:
        vector = np.zeros(len(columns), dtype=np.int64)
        for k, (column, cell) in enumerate(zip(columns, cells, strict=True)):
            value = cell.strip().lower()
            if value in POSITIVE:
                vector[k] = 1
            elif value not in NEGATIVE:
                hint = (
                    " (uncertain: decide it as 0 or 1 in the CSV)"
                    if value in {"-1", "-1.0"}
                    else " (an empty cell is no answer: write 0 or 1)"
                    if not value
                    else ""
                )
                raise ValueError(f"column {column!r} holds {cell!r}, not 0 or 1{hint}")
        return vector
    cell = cells[0].strip()
    vector = np.zeros(len(names), dtype=np.int64)
    if no_label is not None and cell == no_label.strip():
        return vector
    parts = [part.strip() for part in cell.split(separator)]
    if not cell:
        raise ValueError(
            f"column {columns[0]!r} is empty (an image without any label: set dataset.no_label to "
            "the value that says so, e.g. 'No Finding', or '' for an empty cell)"
        )
    if no_label is not None and no_label.strip() in parts:
        raise ValueError(f"{cell!r} joins {no_label!r} (dataset.no_label) with labels")
    index = {name: k for k, name in enumerate(names)}
    unknown = [part for part in parts if part not in index]
    if unknown and cell.lower() in POSITIVE | NEGATIVE:  # a 0/1 column read as joined names
        raise ValueError(
            f"column {columns[0]!r} holds {cell!r}, not label names: one column is read as the "
            f"labels joined by {separator!r}; 0/1 columns need one per label ({list(names)})"
        )
    if unknown:
        raise ValueError(f"{cell!r}: {', '.join(map(repr, unknown))} not in {list(names)}")
    vector[[index[part] for part in parts]] = 1
    return vector
