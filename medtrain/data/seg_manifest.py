"""Images and masks listed in a CSV manifest (image, mask, optional split and spacing per row), checked
row by row like the classification manifest."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from medtrain.data.base import SPLITS, check_fractions
from medtrain.data.manifest import ManifestRows, check_columns, read_csv
from medtrain.data.masks import read_mask_file
from medtrain.data.readers import file_spacing, read_image
from medtrain.data.segmentation import SegmentationDataset
from medtrain.data.transforms import refuse_windowed_pictures

SPACING_CELL = "a pixel size in mm (0.5, or 0.5 0.6 for row and column)"


def spacing_cell(text: str) -> tuple[float, float] | None:
    """A manifest's spacing cell as (row_mm, col_mm): `0.5` (square pixels), `0.5 0.6`, `0.5x0.6`
    or `0.5,0.6`; None for an empty cell.

    Raises:
        ValueError: anything else (words, zero, negative or infinite sizes, three numbers).
    """
    parts = text.replace("x", " ").replace(",", " ").split()
    if not parts:
        return None
    try:
        values = [float(v) for v in parts]
    except ValueError:
        values = []  # words: refused below, as any other bad cell
    if len(values) not in (1, 2) or not all(math.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"{text!r} is not {SPACING_CELL}")
    return values[0], values[-1]


class SegManifest(ManifestRows, SegmentationDataset):
    """Segmentation pairs from a CSV: `image,mask[,split][,spacing]`, paths relative to the CSV.

    Every row is checked when the dataset is built (files exist, ids unique, split values, spacing
    numbers), with the CSV line in each message.

    Args:
        path: the CSV file.
        split: `train`, `val` or `test`.
        image_column, mask_column: columns of image and mask paths (images: PNG/JPEG/TIFF/NPY/DICOM;
            masks: PNG/TIFF/NPY class values, {0, 255} binary, or values mapped by `class_values`).
        split_column: column of train / val / test; without it a seeded split by the fractions.
        spacing_column: column of pixel spacing in mm, `0.5` (square) or `0.5 0.6` / `0.5x0.6`
            (row, column); an empty cell falls back to the file's own spacing, then `spacing`.
        id_column: column of unique case ids; None: the image paths as written.
        group_column: column naming each image's group (its patient, say): the seeded split and
            cross-validation folds keep a group's images together.
        val_fraction, test_fraction: held-out shares without a split column.
        seed: seed of the split.
        class_values: stored mask value -> class index, e.g. {0: 0, 128: 1, 255: 2}.
        **kwargs: passed to `SegmentationDataset`.
    """

    reads_files = True
    sample_fields = (
        *SegmentationDataset.sample_fields,
        "image_files",
        "mask_files",
        "row_spacing",
        "chosen_lines",
    )

    def __init__(
        self,
        path: str,
        split: str,
        image_column: str = "image",
        mask_column: str = "mask",
        split_column: str | None = "split",
        spacing_column: str | None = "spacing",
        id_column: str | None = None,
        group_column: str | None = None,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        seed: int = 0,
        class_values: Mapping[int, int] | None = None,
        **kwargs: Any,
    ):
        super().__init__(split, seed=seed, **kwargs)
        check_fractions(val_fraction, test_fraction)
        csv_path = Path(path)
        self.manifest_path = str(csv_path)
        header, rows, self._lines = read_csv(csv_path)
        wanted = {"image_column": image_column, "mask_column": mask_column}
        if id_column is not None:
            wanted["id_column"] = id_column
        if group_column is not None:
            wanted["group_column"] = group_column
        check_columns(csv_path, header, wanted)
        root = csv_path.absolute().parent
        split_column = split_column if split_column in header else None
        images, masks, ids, spacings, groups, assignment = self._all_checked(
            lambda: self._image_files(rows, image_column, root),
            lambda: self._image_files(rows, mask_column, root, "mask"),
            lambda: self._ids(rows, id_column or image_column),
            lambda: (
                self._spacings(rows, spacing_column)
                if spacing_column in header
                else [None] * len(rows)
            ),
            lambda: self._groups(rows, group_column),
            lambda: split_column and self._read_splits(rows, split_column),
        )
        self._check_spacing_everywhere(spacings, images, masks)
        if split_column is not None:
            self._check_groups_in_one_split(assignment, groups, split_column)
        else:
            assignment = self._seeded_splits(
                len(rows), val_fraction, test_fraction, seed, groups=groups
            )
        refuse_windowed_pictures(self.windows, images, str(csv_path))
        chosen = np.flatnonzero(assignment == SPLITS.index(split))
        self.ids = [ids[i] for i in chosen]
        if groups is not None:
            self.groups = [groups[i] for i in chosen]
        self.image_files = [images[i] for i in chosen]
        self.mask_files = [masks[i] for i in chosen]
        self.row_spacing = [spacings[i] for i in chosen]
        self.chosen_lines = [self._lines[i] for i in chosen]
        self.class_values = (
            {int(v): int(k) for v, k in class_values.items()} if class_values else None
        )
        if self.in_channels is None:  # decided once, from the first training image, for every split
            first = read_image(images[int(np.flatnonzero(assignment == 0)[0])]).array
            self.in_channels = 1 if first.ndim == 2 else first.shape[-1]

    def _spacings(self, rows: list[dict], column: str) -> list[tuple[float, float] | None]:
        found, bad = [], []
        for row, line in zip(rows, self._lines, strict=True):
            try:
                found.append(spacing_cell(row[column]))
            except ValueError:
                found.append(None)
                bad.append(f"line {line}: {row[column]!r}")
        if bad:
            raise self._error(f"column {column!r} must hold {SPACING_CELL}", bad)
        return found

    def _check_spacing_everywhere(self, spacings, images, masks) -> None:
        """Measurements are compared in one unit: either every image has a spacing (its row, its
        file, or `dataset.spacing`) or none has."""
        if self.spacing is not None:
            return
        known = [
            s is not None or file_spacing(i) is not None or file_spacing(m) is not None
            for s, i, m in zip(spacings, images, masks, strict=True)
        ]
        if any(known) and not all(known):
            missing = [f"line {line}" for line, k in zip(self._lines, known, strict=True) if not k]
            raise self._error(
                f"{sum(known)} rows state a pixel spacing and {len(missing)} do not (neither the "
                "spacing column nor the files); measurements need one unit: fill the column, or "
                "set dataset.spacing=[row_mm,col_mm] for the others",
                missing,
            )

    def source(self, index: int) -> str:
        return f"{self.manifest_path} line {self.chosen_lines[index]}: {self.mask_files[index]}"

    def read_image(self, index: int) -> np.ndarray:
        return read_image(self.image_files[index], modality=self.reads_modality).array

    def read_mask(self, index: int) -> np.ndarray:
        return read_mask_file(self.mask_files[index], self.class_values, self.num_classes)

    def read_spacing(self, index: int) -> tuple[float, float] | None:
        """The row's spacing, else what the image file (DICOM, metric PNG/TIFF) or mask states."""
        return (
            self.row_spacing[index]
            or file_spacing(self.image_files[index])
            or file_spacing(self.mask_files[index])
        )
