"""Images listed in a CSV manifest: one row per image with its target, optional split and clinical
columns; every row is checked before anything is trained."""

from __future__ import annotations

import csv
import difflib
import logging
import math
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.model_selection import train_test_split

from medtrain.data.base import SPLITS, ImageDataset, add_data_warning, check_fractions
from medtrain.data.multilabel import (
    checked_settings,
    is_flag,
    joined_names,
    label_strata,
    label_vectors,
)
from medtrain.data.readers import IMAGE_EXTENSIONS, read_image_file
from medtrain.data.tabular import fit_tabular, is_missing, parse_number
from medtrain.data.transforms import refuse_windowed_pictures
from medtrain.errors import ConfigError, DataError

log = logging.getLogger(__name__)

SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


def listed(problems: Sequence[str], limit: int = 3) -> str:
    """The first `limit` problems joined, then `and N more`."""
    text = "; ".join(problems[:limit])
    return text + (f"; and {len(problems) - limit} more" if len(problems) > limit else "")


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]], list[int]]:
    """Read a CSV with a header into one dict per data row, and the line on which each row starts.

    Blank lines are skipped; a row with more or fewer cells than the header is an error.
    """
    if not path.is_file():
        kind = "a folder; dataset=manifest reads a CSV file" if path.is_dir() else "no such file"
        raise DataError(f"dataset.path={str(path)!r}: {kind}")
    rows, lines = [], []
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: Excel's byte-order mark
            reader = csv.reader(f)
            header = next((r for r in reader if any(c.strip() for c in r)), None)
            if header is None:
                raise DataError(
                    f"{path}: the file is empty; its first line must be a header naming the "
                    "columns (e.g. image,target,split)"
                )
            header = [c.strip() for c in header]
            header_line = reader.line_num
            separator = next((c for c in ";\t|" if len(header) == 1 and c in header[0]), None)
            if separator:
                raise DataError(
                    f"{path}: line {header_line}: the header {header[0]!r} is one column: the "
                    f"file separates its columns with {separator!r}; save it with commas (in "
                    "Excel: CSV UTF-8, comma delimited), the decimal point a dot"
                )
            duplicated = sorted({c for c in header if header.count(c) > 1})
            if duplicated or "" in header:
                what = f"repeats {duplicated}" if duplicated else "has an unnamed column"
                raise DataError(f"{path}: line {header_line}: the header {header} {what}")
            for cells in reader:
                if not any(c.strip() for c in cells):
                    continue
                if len(cells) != len(header):
                    raise DataError(
                        f"{path}: line {reader.line_num} has {len(cells)} cells, the header "
                        f"{header} names {len(header)}"
                    )
                rows.append({name: c.strip() for name, c in zip(header, cells, strict=True)})
                lines.append(reader.line_num)
    except UnicodeDecodeError:
        raw = path.read_bytes()
        try:  # decoded whole: the position of the first bad byte in the file, not in a chunk
            raw.decode("utf-8-sig")
            where = ""
        except UnicodeDecodeError as whole:
            byte, line = raw[whole.start], raw[: whole.start].count(b"\n") + 1
            where = f"line {line}: byte 0x{byte:02x} "
            where += f"({bytes([byte]).decode('latin-1')!r} in Latin-1) "
        raise DataError(
            f"{path}: {where}is not UTF-8 text; save the file as UTF-8 (in Excel: CSV UTF-8)"
        ) from None
    except csv.Error as err:
        raise DataError(f"{path}: not a readable CSV file ({err})") from err
    if not rows:
        raise DataError(f"{path}: the header {header} is followed by no data rows")
    return header, rows, lines


def windows_paths(root: Path, cells: Sequence[str]) -> str | None:
    """Why a manifest's files are not found when its paths are written as Windows writes them
    (`images\\a.png`, which is one odd file name elsewhere) and the `/` path exists; else None."""
    for cell in cells:
        if "\\" in cell and not (root / cell).exists():
            fixed = root / cell.replace("\\", "/")
            if fixed.exists():
                return (
                    f"the paths are written with \\ as on Windows: write them with / ('{cell}' "
                    f"is {fixed})"
                )
    return None


# Column names that usually hold the targets (for the hint of a missing `target_column`).
TARGET_NAMES = ("label", "labels", "class", "diagnosis", "finding", "outcome", "grade", "y")

# What a manifest's file column holds (for the hint of a missing `image_column`).
FILE_SUFFIXES = (*IMAGE_EXTENSIONS, ".dcm", ".npy", ".npz", ".nii", ".gz")


def check_columns(
    path: Path,
    header: list[str],
    wanted: dict[str, str],
    first_row: dict[str, str] | None = None,
    prefix: str = "dataset.",
) -> None:
    """Every wanted column (`dataset.<key>` -> column name) must be in the header; a missing one
    is named with a likely fix: a column of a close name (`Age` for `age`, `diagnosis` for
    `diagnsis`), the one column that holds file names (`first_row`) for `image_column`, or the one
    column left for `target_column`."""
    problems = []
    unclaimed = [c for c in header if c not in wanted.values() and c.lower() != "split"]
    files = [
        c
        for c in unclaimed
        if first_row and Path(first_row.get(c, "")).suffix.lower() in FILE_SUFFIXES
    ]
    for key, name in wanted.items():
        if name in header:
            continue
        lower = {c.lower(): c for c in header}  # `Age` for `age` is a close match too
        close = difflib.get_close_matches(name.lower(), list(lower), n=1, cutoff=0.8)
        if close:
            hint = f" (closest: {lower[close[0]]!r})"
        elif key == "image_column" and len(files) == 1:  # e.g. file,diagnosis: the file names
            hint = f" ({prefix}image_column={files[0]}?)"
        elif key == "target_column" and len(unclaimed) - len(files) == 1:
            hint = f" ({prefix}target_column={next(c for c in unclaimed if c not in files)}?)"
        elif key == "target_column" and (
            named := [c for c in unclaimed if c.lower() in TARGET_NAMES and c not in files]
        ):
            hint = f" ({prefix}target_column={named[0]}?)"  # e.g. label beside a patient column
        else:
            hint = ""
        problems.append(f"no column {name!r} for {prefix}{key}{hint}")
    if problems:
        looks_like_data = any(Path(c).suffix.lower() in IMAGE_EXTENSIONS for c in header)
        note = "; the first line looks like data: add a header line" if looks_like_data else ""
        raise DataError(f"{path}: {'; '.join(problems)}; the CSV has columns {header}{note}")


def hold_out(
    pool: np.ndarray, share: float, seed: int, labels: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Split `pool` into kept and held-out parts, stratified by `labels` when every class allows it."""
    if labels is not None:
        try:
            return train_test_split(pool, test_size=share, random_state=seed, stratify=labels)
        except ValueError:  # a class too rare to stratify: a plain split, still the same each run
            pass
    return train_test_split(pool, test_size=share, random_state=seed)


# The seeded splits this process has described (path, seed, sizes): each is logged once.
SPLITS_SAID: set[tuple] = set()

# Draws of a grouped split tried for splits that each hold every class.
GROUP_DRAWS = 100


def classes_left_out(
    assignment: np.ndarray, labels: np.ndarray | None, names: list[str] | None = None
) -> str:
    """Which splits of `assignment` (those holding rows) lack a class that `labels` hold (one
    class per row), or a label they hold (N x K 0/1 labels: a split without its positives), as
    text naming them by `names` ('' when none does)."""
    if labels is None:
        return ""
    labels = np.asarray(labels)
    multilabel = labels.ndim == 2
    if multilabel:
        classes = set(np.flatnonzero(labels.sum(axis=0) > 0).tolist())
    else:
        classes = set(np.unique(labels).tolist())
    lacking = []
    for k, split in enumerate(SPLITS):
        held = assignment == k
        if not held.any():
            continue
        if multilabel:
            present = set(np.flatnonzero(labels[held].sum(axis=0) > 0).tolist())
        else:
            present = set(np.unique(labels[held]).tolist())
        absent = sorted(classes - present)
        if absent:
            named = [repr(names[c]) if names and c < len(names) else str(c) for c in absent]
            kind = "positives of label" if multilabel else "class"
            lacking.append(f"{split} without {kind} {', '.join(named)}")
    return "; ".join(lacking)


def redraw_seed(seed: int, attempt: int) -> int:
    """The seed of a grouped split's `attempt`-th draw again: its own stream, so that the draws
    of two seeds do not meet (seed + 1 would give seed 0's second draw to seed 1)."""
    return int(np.random.SeedSequence([seed, attempt]).generate_state(1)[0])


class ManifestRows:
    """Checks shared by the manifest datasets: every row's file, id and split, named by CSV line.

    Subclasses set `self.manifest_path` (the CSV path), `self._lines` (each row's line) and `self.split`.
    """

    def _error(self, rule: str, problems: list[str]) -> DataError:
        return DataError(f"{self.manifest_path}: {rule}: {listed(problems)}")

    @staticmethod
    def _all_checked(*checks: Callable[[], Any]) -> list[Any]:
        """Run every column's row check and return their results; raise one `DataError` with one
        line per failed check, so that a CSV with missing files and bad targets is told of both
        at once instead of one fix per attempt."""
        results, failed = [], []
        for check in checks:
            try:
                results.append(check())
            except DataError as err:
                failed.append(str(err))
                results.append(None)
        if failed:
            raise DataError("\n".join(failed))
        return results

    def _image_files(
        self, rows: list[dict], column: str, root: Path, kind: str = "image"
    ) -> list[Path]:
        """Each row's file of `column` (`kind` names it in errors: image, mask), relative to
        `root` unless absolute; every empty cell, then every missing file, named at once."""
        files = [root / row[column] for row in rows]  # an absolute path replaces the root
        empty = [
            f"line {line}" for row, line in zip(rows, self._lines, strict=True) if not row[column]
        ]
        if empty:
            raise self._error(f"column {column!r} is empty (every row needs a {kind} path)", empty)
        absent = [
            f"line {line}: {file}"
            for file, line in zip(files, self._lines, strict=True)
            if not file.is_file()
        ]
        if absent:
            hint = windows_paths(root, [row[column] for row in rows])
            hint = f"; {hint}" if hint else ""
            raise self._error(
                f"no such {kind} file ({len(absent)} of {len(rows)} rows; paths in column "
                f"{column!r} are relative to {root}{hint})",
                absent,
            )
        return files

    def _ids(self, rows: list[dict], column: str) -> list[str]:
        ids = [row[column] for row in rows]
        empty = [f"line {line}" for i, line in zip(ids, self._lines, strict=True) if not i]
        if empty:
            raise self._error(f"column {column!r} is empty (every row needs an id)", empty)
        first: dict[str, int] = {}
        repeated = []
        for i, line in zip(ids, self._lines, strict=True):
            if i in first:
                repeated.append(f"line {line} repeats {i!r} of line {first[i]}")
            first.setdefault(i, line)
        if repeated:
            raise self._error(f"column {column!r} must name each case once", repeated)
        return ids

    def _groups(self, rows: list[dict], column: str | None) -> list[str] | None:
        """Each row's group (`dataset.group_column`, e.g. its patient), or None without the
        column; an empty cell is refused."""
        if column is None:
            return None
        empty = [
            f"line {line}" for row, line in zip(rows, self._lines, strict=True) if not row[column]
        ]
        if empty:
            raise self._error(f"column {column!r} (dataset.group_column) is empty", empty)
        return [row[column] for row in rows]

    def _read_splits(self, rows: list[dict], column: str) -> np.ndarray:
        values = [row[column].lower() for row in rows]
        bad = [
            f"line {line}: {row[column]!r}"
            for row, v, line in zip(rows, values, self._lines, strict=True)
            if v not in SPLIT_NAMES
        ]
        if bad:
            raise self._error(
                f"column {column!r} must hold train, val (or valid, validation) or test (or remove "
                "the column to split by dataset.val_fraction and dataset.test_fraction)",
                bad,
            )
        assignment = np.array([SPLITS.index(SPLIT_NAMES[v]) for v in values])
        counts = {s: int((assignment == k).sum()) for k, s in enumerate(SPLITS)}
        if not counts["train"]:  # an empty val or test: refused where it matters (a CV pools
            # train and val into its folds and needs no test)
            raise DataError(
                f"{self.manifest_path}: column {column!r} leaves the train split empty ({counts})"
            )
        return assignment

    def _seeded_splits(
        self, count, val_fraction, test_fraction, seed, labels=None, groups=None
    ) -> np.ndarray:
        """0, 1 or 2 (train, val, test) per row; test is drawn first, then val from the rest;
        stratified by `labels` (class targets) when given. With `groups` (one name per row) the
        groups are split instead, unstratified, and each row follows its group; a draw that
        leaves a split without a class is drawn again (`redraw_seed`) until none does: a val split
        of one class has no AUC to choose the best epoch by. The first draw is the seed's, so a
        split that holds every class is what it always was."""
        if groups is None:
            assignment = self._drawn(count, val_fraction, test_fraction, seed, labels, "rows")
        else:
            names, row_group = np.unique(np.asarray(groups), return_inverse=True)

            def draw(k: int) -> np.ndarray:  # the seed's own draw, then its draws again
                at = seed if k == 0 else redraw_seed(seed, k)
                drawn = self._drawn(len(names), val_fraction, test_fraction, at, None, "groups")
                return drawn[row_group]

            assignment = draw(0)
            first = classes_left_out(assignment, labels, self.class_names)
            if first:  # drawn again until every split holds every class
                again = next(
                    (k for k in range(1, GROUP_DRAWS) if not classes_left_out(draw(k), labels)),
                    None,
                )
                if again is not None:
                    assignment = draw(again)
                multilabel = np.asarray(labels).ndim == 2
                kept = (
                    "first is kept: a label without val positives has no val AUC (val/auc averages "
                    "the others) and its threshold is 0.5 (give a split column)"
                    if multilabel
                    else "first is kept: a val split of one class has no AUC, so best.pt would "
                    "stay the first epoch's (give a split column, or set task.monitor=val/loss)"
                )
                self._data_warning(
                    "split_redrawn",
                    f"{self.manifest_path}: the groups drawn with seed {seed} left {first}; "
                    + (
                        f"drawn again ({again} time(s)) until every split holds every "
                        + ("label" if multilabel else "class")
                        if again is not None
                        else f"so did {GROUP_DRAWS} draws (too few groups of a "
                        + ("label" if multilabel else "class")
                        + f"), and the {kept}"
                    ),
                )
        counts = {s: int((assignment == k).sum()) for k, s in enumerate(SPLITS)}
        said = (str(self.manifest_path), seed, tuple(counts.values()))
        if self.split == "train" and said not in SPLITS_SAID:  # once, not per split or rebuild
            SPLITS_SAID.add(said)  # (a CV rebuilds the data for its folds, pooling and ensemble)
            log.info("%s has no split column: seeded split %s", self.manifest_path, counts)
        return assignment

    def _check_groups_in_one_split(
        self, assignment: np.ndarray, groups: list[str] | None, split_column: str
    ) -> None:
        """A warning (`groups_in_splits`, an error with `check.duplicates=error`) when the CSV's own
        split puts a group's rows (`dataset.group_column`: a patient's images) in more than one
        split: val and test then hold patients the model trained on, and their metrics are
        optimistic."""
        if groups is None:
            return
        seen: dict[str, set[int]] = {}
        for group, split in zip(groups, assignment.tolist(), strict=True):
            seen.setdefault(group, set()).add(split)
        shared = sorted(g for g, splits in seen.items() if len(splits) > 1)
        if shared:
            where = Counter(tuple(SPLITS[k] for k in sorted(seen[g])) for g in shared)
            counted = "; ".join(f"{n} in {' and '.join(splits)}" for splits, n in where.items())
            trained = sorted(
                {s for splits in where for s in splits if "train" in splits} - {"train"}
            )
            harms = []
            if trained:
                harms.append(
                    f"{' and '.join(trained)} hold{'s' * (len(trained) == 1)} groups the model "
                    "trained on"
                )
            if ("val", "test") in where:  # a group in val and test only
                harms.append("test holds groups the best checkpoint and threshold were chosen on")
            few = len(harms) == 1 and len(trained) <= 1  # one split's metrics
            harm = "; ".join(harms) + f", so {'its' if few else 'their'} metrics are optimistic"
            self._data_warning(
                "groups_in_splits",
                f"{self.manifest_path}: {len(shared)} of {len(seen)} groups (dataset.group_column;"
                f" e.g. {', '.join(shared[:3])}) have rows in more than one split of column "
                f"{split_column!r} ({counted}): {harm}",
            )

    def _data_warning(self, kind: str, message: str) -> None:
        """Record a warning about the whole manifest (from its train split, so that it is said
        once): the data check reports `data_warnings` with its own (`data_report.json`,
        `medtrain check-data`), and training logs them."""
        if self.split == "train":
            add_data_warning(self, kind, message)

    def _drawn(self, count, val_fraction, test_fraction, seed, labels, unit) -> np.ndarray:
        """0, 1 or 2 (train, val, test) for each of `count` rows or groups (`unit`)."""
        assignment = np.zeros(count, dtype=np.int64)
        pool = np.arange(count)
        taken = 0.0  # fractions are of all rows: val keeps its share after test is taken
        for split, fraction in (("test", test_fraction), ("val", val_fraction)):
            if fraction == 0:
                continue
            share = fraction / (1 - taken)
            taken += fraction
            try:
                pool, held = hold_out(pool, share, seed, None if labels is None else labels[pool])
            except ValueError as err:
                raise DataError(
                    f"{self.manifest_path}: cannot hold out a {split} split of {fraction} from "
                    f"{count} {unit} ({err})"
                ) from err
            assignment[held] = SPLITS.index(split)
        return assignment


class Manifest(ManifestRows, ImageDataset):
    """The images a CSV lists, with a class or a number per image and optional clinical columns.

    The CSV has a header line and one row per image. Image paths are relative to the CSV's folder
    (absolute paths work too). Every row is checked when the dataset is built: files, targets, ids,
    split values and clinical columns, so that a bad row is reported by its line number before any
    training. Every split reads the whole file and makes the same assignment.

    Args:
        path: the CSV file.
        split: `train`, `val` or `test`.
        image_column: column of image paths (PNG, JPEG, TIFF or NPY).
        target_column: column of targets: class names or indices 0..K-1 for classification (names
            are sorted to give the class indices), a number for regression; for regression, a
            list of columns gives several values per image (named by their columns). With
            `multilabel`: one 0/1 column per label (a list, naming the labels), or one column of
            label names joined by `label_separator`.
        split_column: column of `train`, `val` (or `valid`, `validation`) and `test`. When the CSV has
            no such column, a seeded split by `val_fraction` and `test_fraction` is made, stratified
            by class for classification when every class has enough rows.
        id_column: column of unique case ids; None: the image paths as written.
        group_column: column naming each image's group (its patient, say): the seeded split
            (without a split column) keeps a group's images in one split, and `medtrain cv` in
            one fold. None: every image is its own group.
        tabular_columns: clinical columns given to the model as `sample["tabular"]` (numbers are
            standardised, categories one-hot encoded, both with the training rows' statistics).
        val_fraction: share of rows held out for validation without a split column.
        test_fraction: share held out for testing without a split column.
        seed: seed of the split.
        label_separator: with `multilabel` and one target column, what joins an image's labels
            (`Effusion|Nodule`).
        no_label: with `multilabel` and one target column, the cell of an image with none of the
            labels (`No Finding`; '' for an empty cell); None: every image has a label.
        num_features: ignored; the width of `tabular`, written back into the config once built.
        **kwargs: passed to `ImageDataset` (set `image_size` when the images differ in size).
    """

    reads_files = True
    sample_fields = (*ImageDataset.sample_fields, "files", "chosen_lines", "tabular_cells")
    tabular_cells: list[tuple[str, ...]] | None = None  # each case's clinical cells, as read

    def __init__(
        self,
        path: str,
        split: str,
        image_column: str = "image",
        target_column: str | Sequence[str] = "target",
        split_column: str | None = "split",
        id_column: str | None = None,
        group_column: str | None = None,
        tabular_columns: Sequence[str] = (),
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        seed: int = 0,
        label_separator: str = "|",
        no_label: str | None = None,
        num_features: int | None = None,
        **kwargs: Any,
    ):
        super().__init__(split, **kwargs)
        check_fractions(val_fraction, test_fraction)
        if isinstance(tabular_columns, str):  # dataset.tabular_columns=age on the command line
            tabular_columns = [tabular_columns]
        tabular_columns = list(tabular_columns)
        target_columns = [target_column] if isinstance(target_column, str) else list(target_column)
        if not target_columns:
            raise ConfigError("dataset.target_column=[]: name the column of targets")
        if self.multilabel and self.regression:
            raise ConfigError(
                "dataset.multilabel=true reads labels to classify; task=regression predicts "
                "numbers (several per image from a list of target columns): set one of them"
            )
        if len(target_columns) != 1 and not (self.regression or self.multilabel):
            raise ConfigError(
                f"dataset.target_column={target_columns}: several columns are several values "
                "per image for task=regression, or one 0/1 column per label with "
                "dataset.multilabel=true; classification reads one column of classes"
            )
        if self.multilabel:
            label_separator, no_label = checked_settings(label_separator, no_label)
        self.label_separator, self.no_label = label_separator, no_label
        for name in tabular_columns:
            if name in (image_column, *target_columns, split_column, id_column):
                raise ConfigError(
                    f"dataset.tabular_columns={tabular_columns}: {name!r} is the image, target, split "
                    "or id column, not a clinical input"
                )
        if len(set(tabular_columns)) < len(tabular_columns):
            raise ConfigError(f"dataset.tabular_columns={tabular_columns} names a column twice")
        if group_column in tabular_columns:
            self._data_warning(
                "group_as_input",
                f"dataset.tabular_columns holds {group_column!r}, the dataset.group_column: the "
                "model gets each image's group (its patient) as an input and can memorise it, "
                "while val and test hold groups it never trained on",
            )

        csv_path = Path(path)
        self.source = self.manifest_path = str(csv_path)
        header, rows, self._lines = read_csv(csv_path)  # lines of every row, for messages
        wanted = {"image_column": image_column}
        if len(target_columns) == 1:
            wanted["target_column"] = target_columns[0]
        else:
            wanted |= {f"target_column[{k}]": name for k, name in enumerate(target_columns)}
        if id_column is not None:
            wanted["id_column"] = id_column
        if group_column is not None:
            wanted["group_column"] = group_column
        wanted |= {f"tabular_columns[{k}]": name for k, name in enumerate(tabular_columns)}
        check_columns(csv_path, header, wanted, rows[0])

        if split_column not in (None, "split") and split_column not in header:
            # A column named on purpose must exist: a typo would silently give a seeded split.
            check_columns(Path(path), header, {"split_column": split_column})
        split_column = split_column if split_column in header else None
        every_file, every_id, targets, groups, assignment = self._all_checked(
            lambda: self._image_files(rows, image_column, csv_path.absolute().parent),
            lambda: self._ids(rows, id_column or image_column),
            lambda: self._all_targets(rows, target_columns),
            lambda: self._groups(rows, group_column),
            lambda: split_column and self._read_splits(rows, split_column),
        )
        if split_column is not None:
            self._check_groups_in_one_split(assignment, groups, split_column)
        else:
            labels = None if self.regression else targets
            if self.multilabel and groups is None:  # by combination of labels, rare ones pooled
                labels = label_strata(targets, self.class_names)
            assignment = self._seeded_splits(
                len(rows), val_fraction, test_fraction, seed, labels, groups
            )
        chosen = np.flatnonzero(assignment == SPLITS.index(split))

        refuse_windowed_pictures(self.windows, every_file, str(csv_path))
        self.files = [every_file[i] for i in chosen]
        self.ids = [every_id[i] for i in chosen]
        self.chosen_lines = [self._lines[i] for i in chosen]  # this split's CSV lines, for messages
        if groups is not None:
            self.groups = [groups[i] for i in chosen]
        self.set_labels(targets[chosen], source=self.source, all_labels=targets)
        if tabular_columns:
            columns = {name: [row[name] for row in rows] for name in tabular_columns}
            encoder = fit_tabular(
                columns,
                train_rows=np.flatnonzero(assignment == 0).tolist(),
                source=self.source,
                row_label=lambda i: f"line {self._lines[i]}",
                warn=lambda column, text: self._data_warning(f"categories_of:{column}", text),
            )
            self.tabular_names, self.tabular_state = encoder.names, encoder.state()
            self.tabular = encoder.transform(columns)[chosen]
            self.tabular_columns = list(tabular_columns)
            self.tabular_cells = [tuple(rows[i][name] for name in tabular_columns) for i in chosen]
        if self.in_channels is None:  # decided once, from the first training image, for every split
            image = read_image_file(every_file[int(np.flatnonzero(assignment == 0)[0])])
            self.in_channels = 1 if image.ndim == 2 else image.shape[-1]

    def refit_tabular(self, others: Sequence[Manifest]) -> None:
        """Encode the clinical columns again, fitted on this dataset's cases (a CV fold's training
        cases: the medians, means, standard deviations and categories of the rows it trains on,
        never of its held-out fold), for it and `others` (the fold's validation and the test
        split). Nothing to do without clinical columns."""
        if self.tabular_cells is None:
            return
        datasets = [self, *others]
        cells = [row for dataset in datasets for row in dataset.tabular_cells]
        lines = [line for dataset in datasets for line in dataset.chosen_lines]
        columns = {name: [row[j] for row in cells] for j, name in enumerate(self.tabular_columns)}
        encoder = fit_tabular(
            columns,
            train_rows=range(len(self.ids)),
            source=self.source,
            row_label=lambda i: f"line {lines[i]}",
            warn=lambda column, text: self._data_warning(f"categories_of:{column}", text),
        )
        matrix = encoder.transform(columns)
        start = 0
        for dataset in datasets:
            dataset.tabular = matrix[start : start + len(dataset.ids)]
            dataset.tabular_names, dataset.tabular_state = encoder.names, encoder.state()
            start += len(dataset.ids)

    def _all_targets(self, rows: list[dict], columns: list[str]) -> np.ndarray:
        """The targets of every row: one column (`_targets`), or for regression one value per
        column (N x K), named by the columns; with `multilabel`, a 0/1 vector per row
        (`_label_sets`)."""
        if self.multilabel:
            return self._label_sets(rows, columns)
        if len(columns) == 1:
            return self._targets(rows, columns[0])
        given = self.class_names
        if given is not None and len(given) != len(columns):
            raise ConfigError(
                f"dataset.class_names={list(given)} has {len(given)} name(s), but "
                f"dataset.target_column={columns} reads {len(columns)} columns: one name per column, or "
                "leave class_names null (the columns name them)"
            )
        values = np.stack([self._targets(rows, column) for column in columns], axis=1)
        self.class_names = list(given or columns)
        return values

    def _label_sets(self, rows: list[dict], columns: list[str]) -> np.ndarray:
        """Each row's labels as a 0/1 vector (N x K): one 0/1 column per label, named by the
        columns (or `dataset.class_names`), or one column of names joined by `label_separator`
        (the classes: `dataset.class_names`, else the sorted names found). Every row that holds
        no such labels is named at once; a label no row has, or every row has, is a warning."""
        joined = len(columns) == 1
        if not joined and self.class_names is not None:  # the columns name the labels
            columns = self._columns_named(columns, list(self.class_names))
        cells = [[row[c] for c in columns] for row in rows]
        if joined and all(is_flag(c[0]) for c in cells):
            raise ConfigError(
                f"dataset.target_column={columns[0]}: column {columns[0]!r} of {self.manifest_path} "
                "holds 0/1 values, one label: that is binary classification "
                "(dataset.multilabel=false); for several labels name a 0/1 column for each, "
                "'dataset.target_column=[effusion,nodule]'"
            )
        names = self.class_names
        if names is None:
            found = [c[0] for c in cells]
            names = joined_names(found, self.label_separator, self.no_label) if joined else columns
        if len(names) < 2:
            held = f"only the label {names[0]!r}" if names else "no label"
            raise DataError(
                f"{self.manifest_path}: column {columns[0]!r} holds {held}: "
                "dataset.multilabel=true needs at least 2; one label present or absent is binary "
                "classification (dataset.multilabel=false)"
            )
        vectors, bad = label_vectors(
            cells, self._lines, columns, names, self.label_separator, self.no_label
        )
        if bad:
            raise self._error("dataset.multilabel=true: rows without readable labels", bad)
        labels = np.stack(vectors)
        self.class_names = list(names)
        if joined:
            self._review_joined(labels, list(names))
        positives = labels.sum(axis=0)
        for kind, which in (("no", positives == 0), ("every", positives == len(labels))):
            if which.any():
                named = ", ".join(repr(names[k]) for k in np.flatnonzero(which))
                self._data_warning(
                    f"labels_in_{kind}_row",
                    f"{self.manifest_path}: label(s) {named} in {kind} row: the model cannot "
                    "learn them, and their AUC is undefined",
                )
        return labels

    def _review_joined(self, labels: np.ndarray, names: list[str]) -> None:
        """Warnings about labels found in a column of joined names that are likely no labels: a
        name holding another separator (`Pneumonia;Bright` where `|` joins), and a name of the
        negative finding that no image holds with another label (`No Finding` without
        `dataset.no_label`: trained as a label of its own)."""
        from medtrain.data.validation import reads_negative  # the data check's (it reads us)

        others = [s for s in ";|,/" if s != self.label_separator]
        joined = [n for n in names if any(s in n for s in others)]
        if joined:
            self._data_warning(
                "labels_joined_otherwise",
                f"{self.manifest_path}: label(s) {', '.join(map(repr, joined))} hold another "
                f"separator than dataset.label_separator={self.label_separator!r}: each is a "
                "label of its own; set dataset.label_separator, or correct those cells",
            )
        alone = labels.sum(axis=1) == 1
        for k, name in enumerate(names):
            held = labels[:, k] > 0
            if self.no_label is None and reads_negative(name) and held.any() and alone[held].all():
                self._data_warning(
                    f"no_label:{name}",
                    f"{self.manifest_path}: label {name!r} is never given with another: if it "
                    "says an image has none of the labels, set "
                    f"'dataset.no_label={name}' (it trains as a label of its own)",
                )

    @staticmethod
    def _columns_named(columns: list[str], names: list[str]) -> list[str]:
        """The 0/1 label columns in the order of `dataset.class_names`, which names them (in any
        order: a list in another order than the columns renamed them by position, and trained
        each label under another's name).

        Raises:
            ConfigError: a name that is no column (with the closest), or a column left out.
        """
        unknown = [n for n in names if n not in columns]
        left_out = [c for c in columns if c not in names]
        if not unknown and not left_out and len(set(names)) == len(names):
            return list(names)
        problems = []
        for name in unknown:
            close = difflib.get_close_matches(name, columns, n=1, cutoff=0.6)
            problems.append(
                f"{name!r} names no column" + (f" (like {close[0]!r}?)" if close else "")
            )
        problems += [f"column {c!r} is left out" for c in left_out]
        twice = sorted({n for n in names if names.count(n) > 1})
        problems += [f"{n!r} is named twice" for n in twice]
        raise ConfigError(
            f"dataset.class_names={names}: with one 0/1 column per label the names are the "
            f"columns of dataset.target_column={columns}, in the order wanted: "
            f"{'; '.join(problems)}"
        )

    def _targets(self, rows: list[dict], column: str) -> np.ndarray:
        values = [row[column] for row in rows]
        if self.regression:  # every cell that is not a finite number at once, missing or not
            numbers = [None if is_missing(v) else parse_number(v) for v in values]
            bad = [
                f"line {line}: {v!r}" if v else f"line {line}"
                for v, x, line in zip(values, numbers, self._lines, strict=True)
                if x is None or not math.isfinite(x)
            ]
            if bad:
                missing = sum(is_missing(v) for v in values)
                kinds = f" ({missing} missing)" if 0 < missing < len(bad) else ""
                what = "is missing a target" if missing == len(bad) else "needs a number"
                raise self._error(f"task=regression: column {column!r} {what}{kinds}", bad)
            if self.class_names is None:  # the column names the value in predictions and plots
                self.class_names = [column]
            return np.array(numbers, dtype=np.float64)  # as written: no float32 rounding
        empty = [
            f"line {line}: {v!r}" if v else f"line {line}"
            for v, line in zip(values, self._lines, strict=True)
            if is_missing(v)
        ]
        if empty:
            raise self._error(f"column {column!r} is missing a target", empty)
        numbers = [parse_number(v) for v in values]
        is_number = [x is not None for x in numbers]
        if any(is_number) and not all(is_number) and not self.class_names:
            # A typo among class indices would otherwise turn every index into a class name.
            names = sum(not n for n in is_number)
            few = names <= len(values) - names  # list the rarer kind: probably the mistakes
            odd = [
                f"line {line}: {v!r}"
                for v, n, line in zip(values, is_number, self._lines, strict=True)
                if n != few
            ]
            raise self._error(
                f"column {column!r} mixes class indices and names ({names} of {len(values)} "
                f"rows {'holds' if names == 1 else 'hold'} a name): write one kind (or list the "
                "names in dataset.class_names)",
                odd,
            )
        if all(is_number):
            fractional = [
                f"line {line}: {v!r}"
                for v, x, line in zip(values, numbers, self._lines, strict=True)
                if not float(x).is_integer()
            ]
            if fractional:
                raise self._error(
                    f"column {column!r} holds numbers that are not class indices (to predict a "
                    "number, add task=regression loss=mse)",
                    fractional,
                )
            labels = np.array(numbers, dtype=np.int64)
            if labels.min() < 0:
                bad = [f"line {self._lines[i]}: {values[i]!r}" for i in np.flatnonzero(labels < 0)]
                raise self._error(
                    f"class indices in column {column!r} must be 0..K-1 (or write class names)", bad
                )
        else:
            names = self.class_names or sorted(set(values))
            index = {name: k for k, name in enumerate(names)}
            unknown = [
                f"line {line}: {v!r}"
                for v, line in zip(values, self._lines, strict=True)
                if v not in index
            ]
            if unknown:
                raise self._error(
                    f"column {column!r} holds names not in dataset.class_names={names}", unknown
                )
            self.class_names = list(names)
            labels = np.array([index[v] for v in values], dtype=np.int64)
            joined = sorted({v for v in values if any(mark in v for mark in ";|")})
            if joined:  # findings of several labels per image: each combination a class
                self._data_warning(
                    "joined_labels",
                    f"{self.manifest_path}: column {column!r} holds {len(joined)} value(s) that "
                    f"join labels (e.g. {joined[0]!r}): each distinct value is one class of its "
                    f"own ({len(self.class_names)} classes), not several labels of one image; "
                    "for several labels per image set dataset.multilabel=true (and "
                    "dataset.label_separator when they are not joined by '|')",
                )
        if len(np.unique(labels)) < 2:
            raise DataError(
                f"{self.source}: column {column!r} holds {values[0]!r} in every row; "
                "classification needs at least 2 classes (to predict a number, add "
                "task=regression loss=mse)"
            )
        return labels

    def read_image(self, index: int) -> np.ndarray:
        return read_image_file(self.files[index], modality=self.reads_modality)
