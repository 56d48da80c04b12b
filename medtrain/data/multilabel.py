"""Several labels per image read from CSV cells: one 0/1 column per label (CheXpert's form) or one
column of label names joined by a separator (ChestX-ray14's `Effusion|Nodule`), each image a 0/1
vector; shared by the manifest dataset and `medtrain evaluate`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from medtrain.errors import ConfigError

# Combinations of labels held by fewer cases than this are pooled into one stratum when folds or
# a seeded split are stratified by combination (ten: enough for 10 folds).
POOLED_BELOW = 10

# The cells a 0/1 label column may hold (compared in lower case).
POSITIVE = {"1", "1.0", "true", "yes"}
NEGATIVE = {"0", "0.0", "false", "no"}


def checked_settings(separator: Any, no_label: Any, prefix: str = "dataset.") -> tuple[str, Any]:
    """`label_separator` and `no_label` as text (Hydra reads `no_label=0` as a number: its
    text), or a ConfigError naming the key (`prefix`): an empty separator, a yes/no flag."""
    if not (isinstance(separator, str) and separator):
        raise ConfigError(
            f"{prefix}label_separator={separator!r}: give the text that joins an image's labels "
            "in its cell, e.g. '|'"
        )
    if isinstance(no_label, bool) or not (no_label is None or isinstance(no_label, str | int)):
        raise ConfigError(
            f"{prefix}no_label={no_label!r}: give the text of a cell that holds none of the labels "
            "(quoted: 'No Finding'; '' for an empty cell), or null"
        )
    return separator, None if no_label is None else str(no_label).strip()


def is_flag(cell: str) -> bool:
    """Whether a cell is a 0/1 label's (0/1, true/false, yes/no)."""
    return cell.strip().lower() in POSITIVE | NEGATIVE


def is_no_label(cell: str, no_label: str | None) -> bool:
    """Whether a cell says the image holds none of the labels (`no_label`, any case)."""
    return no_label is not None and cell.strip().lower() == no_label.lower()


def split_names(cell: str, separator: str) -> list[str]:
    """The names a cell of joined names holds, without empty parts (`Effusion|`: a separator at
    an end, or doubled)."""
    return [part.strip() for part in cell.split(separator) if part.strip()]


def says_no_label(cell: str, separator: str, no_label: str | None) -> bool:
    """Whether a cell of joined names is the one of `no_label` (`No Finding`, `No Finding|`)."""
    parts = split_names(cell, separator)
    return is_no_label(cell, no_label) or (len(parts) == 1 and is_no_label(parts[0], no_label))


def joined_names(cells: Sequence[str], separator: str, no_label: str | None) -> list[str]:
    """The sorted label names that cells of joined names hold (`no_label` and empty parts left
    out): the classes when `dataset.class_names` does not list them."""
    names = {
        part
        for cell in cells
        if not says_no_label(cell, separator, no_label)
        for part in split_names(cell, separator)
    }
    return sorted(names)


def label_vectors(
    cells: Sequence[Sequence[str]],
    lines: Sequence[int],
    columns: Sequence[str],
    names: Sequence[str],
    separator: str,
    no_label: str | None,
    prefix: str = "dataset.",
) -> tuple[list[np.ndarray], list[str]]:
    """Every row's `label_vector` (its cells of `columns`), and `line N: why` for each row that
    holds no readable labels (its vector all zeros), so that every such row is named at once."""
    vectors, problems = [], []
    for row, line in zip(cells, lines, strict=True):
        try:
            vectors.append(label_vector(row, columns, names, separator, no_label, prefix))
        except ValueError as err:
            problems.append(f"line {line}: {err}")
            vectors.append(np.zeros(len(names), dtype=np.int64))
    return vectors, problems


def label_vector(
    cells: Sequence[str],
    columns: Sequence[str],
    names: Sequence[str],
    separator: str,
    no_label: str | None,
    prefix: str = "dataset.",
) -> np.ndarray:
    """One image's labels as a 0/1 vector over `names`, from its cells of `columns`: one cell per
    label column (0/1, true/false, yes/no), or the one cell of names joined by `separator`
    (`no_label`, e.g. 'No Finding', for none of them). `prefix` names the keys in messages
    (`dataset.` for training's).

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
    if says_no_label(cell, separator, no_label):
        return vector
    parts = split_names(cell, separator)
    if not parts and cell:
        raise ValueError(f"column {columns[0]!r} holds {cell!r}: separators without labels")
    if not cell:
        raise ValueError(
            f"column {columns[0]!r} is empty (an image without any label: set {prefix}no_label to "
            "the value that says so, e.g. 'No Finding', or '' for an empty cell)"
        )
    if any(is_no_label(part, no_label) for part in parts):
        raise ValueError(f"{cell!r} joins {no_label!r} ({prefix}no_label) with labels")
    index = {name: k for k, name in enumerate(names)}
    unknown = [part for part in parts if part not in index]
    if unknown and is_flag(cell):  # a 0/1 column read as joined names
        raise ValueError(
            f"column {columns[0]!r} holds {cell!r}, not label names: one column is read as the "
            f"labels joined by {separator!r}; 0/1 columns need one per label ({list(names)})"
        )
    if unknown:
        from medtrain.data.validation import reads_negative  # the data check's (it reads us)

        negative = [p for p in unknown if reads_negative(p)] if no_label is None else []
        hint = (
            f" (an image without any label? set {prefix}no_label={negative[0]!r})"
            if negative
            else ""
        )
        raise ValueError(f"{cell!r}: {', '.join(map(repr, unknown))} not in {list(names)}{hint}")
    vector[[index[part] for part in parts]] = 1
    return vector


def label_strata(
    labels: np.ndarray, names: Sequence[str] | None = None, minimum: int = POOLED_BELOW
) -> np.ndarray:
    """One stratum per case (N x K 0/1 labels): its combination of labels, the combinations of
    fewer than `minimum` cases pooled into one stratum (joined to the most common combination
    when the pool itself is too small). Stratifying by every combination fails as soon as one is
    rarer than the folds, which with a dozen labels is always: the common combinations (no
    finding, one finding) are then still balanced. With the labels' `names`, a combination is
    known by the names it holds, so that the strata (and the split drawn from them) do not
    depend on the order of the labels (0/1 columns in another order, or joined names sorted)."""
    if names is not None:
        keys = [
            "|".join(sorted(str(n) for n, y in zip(names, row, strict=True) if y)) for row in labels
        ]
        _, index, counts = np.unique(keys, return_inverse=True, return_counts=True)
    else:
        _, index, counts = np.unique(labels, axis=0, return_inverse=True, return_counts=True)
    strata = index.reshape(-1).copy()
    rare = (counts < minimum)[strata]
    if rare.any():
        strata[rare] = len(counts) if rare.sum() >= minimum else int(np.argmax(counts))
    return np.unique(strata, return_inverse=True)[1].reshape(-1)
