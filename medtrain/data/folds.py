"""Cross-validation folds: which training case goes to which fold (`assign_folds`, saved as
`folds.json`), and the train and validation datasets of one fold (`fold_datasets`), rebuilt from
the data's own splits.

The pool of a CV is the data's `train` and `val` splits together; its `test` split stays held out
and is in no fold. Fold k's run trains on the other folds and validates (chooses its checkpoint and
threshold) on fold k. A dataset class takes part by naming the attributes that hold one entry per
case (`sample_fields`, aligned with `ids`): the fold's datasets are copies of the data's own
datasets with those attributes regrouped, so that every dataset behaves in a fold as it does in a
plain run (its sampling, caches, preprocessing and checks).
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.model_selection import GroupKFold, KFold, StratifiedGroupKFold, StratifiedKFold

from medtrain.errors import ConfigError, DataError
from medtrain.io import read_json

FOLDS_VERSION = 1


def assign_folds(
    ids: Sequence[str],
    folds: int,
    seed: int,
    classes: np.ndarray | None = None,
    groups: Sequence[str] | None = None,
) -> np.ndarray:
    """The fold (0..folds-1) of each case: seeded, stratified by class when `classes` are given
    (one class index per case), grouped when `groups` are given (the cases of one group, e.g. one
    patient, share a fold).

    Raises:
        ConfigError: fewer cases (or groups) than folds, or folds < 2.
    """
    if not isinstance(folds, int) or isinstance(folds, bool) or folds < 2:
        raise ConfigError(f"cv.folds={folds!r} must be an integer >= 2")
    units = len(set(groups)) if groups is not None else len(ids)
    if units < folds:
        what = "groups" if groups is not None else "training cases"
        raise ConfigError(f"cv.folds={folds}: the data have only {units} {what}")
    index = np.zeros((len(ids), 1))
    if groups is not None:
        # Group names are hashed with the seed: GroupKFold itself is not shuffled.
        keys = np.array([_seeded_key(g, seed) for g in groups])
        if classes is not None and stratifiable(classes, folds):
            splitter: Any = StratifiedGroupKFold(folds, shuffle=True, random_state=seed)
            parts = splitter.split(index, classes, keys)
        else:
            parts = GroupKFold(folds).split(index, groups=keys)
    elif classes is not None and stratifiable(classes, folds):
        parts = StratifiedKFold(folds, shuffle=True, random_state=seed).split(index, classes)
    else:
        parts = KFold(folds, shuffle=True, random_state=seed).split(index)
    assignment = np.full(len(ids), -1, dtype=np.int64)
    for fold, (_, held_out) in enumerate(parts):
        assignment[held_out] = fold
    return assignment


def stratifiable(classes: np.ndarray, folds: int) -> bool:
    """Whether every class has at least one case per fold (else folds are drawn unstratified)."""
    _, counts = np.unique(classes, return_counts=True)
    return bool(counts.min() >= folds)


def _seeded_key(group: str, seed: int) -> str:
    return hashlib.blake2b(f"{seed}:{group}".encode(), digest_size=8).hexdigest()


def check_folds_file(saved: dict[str, Any], path: Path, pool: Sequence[str], test: Sequence[str]):
    """Refuse a `folds.json` written for other data: other training cases, or a test case in a
    fold."""
    ids = list(saved.get("ids", []))
    if ids != list(pool):
        missing = sorted(set(pool) - set(ids))[:3]
        extra = sorted(set(ids) - set(pool))[:3]
        raise ConfigError(
            f"{path} assigns folds to other cases than the data's train and val splits "
            f"({len(ids)} against {len(pool)}; not in the file: {missing}, only in the file: "
            f"{extra}): the data changed since the folds were drawn; use a new cv.dir"
        )
    leaked = sorted(set(ids) & set(test))[:3]
    if leaked:
        raise ConfigError(f"{path}: test cases {leaked} are in a fold")


def read_folds(path: str | Path) -> dict[str, Any]:
    """A `folds.json`, checked for shape.

    Raises:
        ConfigError: a missing or malformed file.
    """
    path = Path(path)
    try:
        saved = read_json(path)
    except (OSError, ValueError) as err:
        raise ConfigError(f"cv.folds_file={str(path)!r}: cannot read it ({err})") from err
    if not isinstance(saved, dict) or len(saved.get("ids", [])) != len(saved.get("fold", [1])):
        raise ConfigError(f"cv.folds_file={str(path)!r}: expected ids and fold lists of one length")
    return saved


def fold_units(dataset: Any) -> list[str]:
    """The names cross-validation assigns to folds, aligned with the dataset's `sample_fields`:
    its `fold_units` when it declares them (whole volumes of a slice dataset), else its ids."""
    return list(getattr(dataset, "fold_units", dataset.ids))


def fold_fields(kind: type) -> tuple[str, ...]:
    """The per-case attributes a dataset class declares (`sample_fields`), which folds regroup.

    Raises:
        ConfigError: a class that declares None (its cases cannot be regrouped) or does not
            declare them itself (a subclass may hold per-case
            attributes its base does not know).
    """
    declared = vars(kind)
    if "sample_fields" in declared and declared["sample_fields"] is None:
        raise ConfigError(
            f"dataset {kind.__name__} cannot be split into folds; give fixed splits with "
            "dataset.split_file"
        )
    if "sample_fields" not in declared:
        raise ConfigError(
            f"dataset {kind.__name__} does not name its per-case attributes: it cannot be "
            "split into folds (a class of your own: set sample_fields = (*Base.sample_fields, "
            "'your_attribute', ...); docs/configuration.md#adding-a-dataset)"
        )
    return declared["sample_fields"]


def regrouped(parts: Sequence[tuple[Any, Sequence[int]]], split: str, transform: Any) -> Any:
    """One dataset made of cases of others of the same class (`parts`: (dataset, indices)), as a
    copy of the first with its `sample_fields` concatenated in that order, its split and transform
    set, and fresh per-case state (`fresh_state`).

    Raises:
        ConfigError: a dataset class that does not name its per-case attributes.
    """
    first = parts[0][0]
    fields = fold_fields(type(first))
    new = copy.copy(first)
    for name in fields:
        values = [getattr(dataset, name, AttributeError) for dataset, _ in parts]
        if any(v is AttributeError for v in values):
            raise ConfigError(
                f"dataset {type(first).__name__}: sample_fields names {name!r}, which it lacks"
            )
        if all(v is None for v in values):
            continue
        if any(v is None for v in values):
            raise DataError(
                f"dataset {type(first).__name__}: {name!r} is set in one split and None in "
                "another; the splits cannot be regrouped into folds"
            )
        if isinstance(values[0], np.ndarray):
            chosen = [
                v[np.asarray(rows, dtype=np.int64)]
                for v, (_, rows) in zip(values, parts, strict=True)
            ]
            setattr(new, name, np.concatenate(chosen))
        else:
            setattr(
                new, name, [v[i] for v, (_, rows) in zip(values, parts, strict=True) for i in rows]
            )
    new.split, new.transform = split, transform
    new.fresh_state()
    return new


def fold_datasets(
    train: Any,
    val: Any,
    folds_file: str | Path,
    fold: int,
    train_transform: Any,
    eval_transform: Any,
) -> tuple[Any, Any]:
    """Fold `fold`'s training and validation datasets from the data's `train` and `val` splits
    (the pool, in that order) and the assignment in `folds_file`.

    Raises:
        ConfigError: a fold outside the file's, or a file of other cases.
    """
    saved = read_folds(folds_file)
    count = int(saved.get("folds", 0))
    if not isinstance(fold, int) or not 0 <= fold < count:
        raise ConfigError(f"cv.fold={fold!r}: {folds_file} has folds 0..{count - 1}")
    pool = fold_units(train) + fold_units(val)
    if list(saved["ids"]) != pool:
        check_folds_file(saved, Path(folds_file), pool, [])
    assignment = np.asarray(saved["fold"])
    n_train = len(fold_units(train))

    def parts(held_out: bool) -> list[tuple[Any, list[int]]]:
        chosen = np.flatnonzero((assignment == fold) == held_out)
        return [
            (train, [int(i) for i in chosen if i < n_train]),
            (val, [int(i) - n_train for i in chosen if i >= n_train]),
        ]

    fold_train = regrouped(parts(False), "train", train_transform)
    fold_val = regrouped(parts(True), "val", eval_transform)
    if not len(fold_train.ids) or not len(fold_val.ids):
        raise DataError(f"{folds_file}: fold {fold} leaves an empty training or validation set")
    return fold_train, fold_val
