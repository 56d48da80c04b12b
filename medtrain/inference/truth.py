"""What `medtrain evaluate` compares predictions with, read from each row of a labelled CSV: a
class or regression value (`TargetTruth`), a mask file (`MaskTruth`) or a label volume
(`LabelVolumeTruth`), each read as the run's own datasets read them, every unreadable row named."""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from medtrain.data.decoding import Decoded
from medtrain.data.manifest import listed
from medtrain.data.masks import read_instance_labels, read_mask_file
from medtrain.data.multilabel import checked_settings, label_vectors
from medtrain.data.readers import file_spacing
from medtrain.data.seg_manifest import spacing_cell
from medtrain.data.tabular import parse_number
from medtrain.data.volume_slices import VolumeSlices
from medtrain.data.volumes import Volume, check_label_geometry, read_volume
from medtrain.errors import ConfigError, DataError, MedtrainError
from medtrain.inference.predictor import Predictor, Prepared

# Problems listed per kind before "and N more".
SHOWN = 20

log = logging.getLogger("medtrain")


def row_file(csv_path: Path, cell: str) -> Path:
    """A manifest cell as a path: absolute, or relative to the CSV's folder (an absolute cell
    replaces the folder)."""
    return csv_path.parent / cell


class Truth:
    """The labelled part of each row: the columns it needs, each row's reference read once (every
    unreadable row named), and the collector's batch entries for one image."""

    columns: dict[str, str]

    def read_all(
        self, rows: list[dict[str, str]], lines: list[int], images: list[str]
    ) -> list[str]:
        raise NotImplementedError

    def check_image(self, k: int, image: Decoded) -> None:
        """Refuse row `k`'s reference when it does not fit its decoded image."""

    def with_spacing(self, k: int, image: Decoded) -> Decoded:
        """Row `k`'s image with the pixel spacing its evaluation uses (default: the file's)."""
        return image

    def batch(self, k: int, item: Prepared) -> dict[str, Any]:
        raise NotImplementedError


class TargetTruth(Truth):
    """A class (name or index), a multi-label run's labels (as its manifest holds them: a 0/1
    column per label, or one column of joined names) or regression value(s) per row."""

    def __init__(self, predictor: Predictor, cfg: DictConfig):
        self.task, self.names = predictor.task, predictor.class_names
        data = predictor.cfg.dataset
        own = data.get("target_column") or "target"
        self.targets = _target_columns(cfg.target_column or own, self.task)
        if getattr(self.task, "multilabel", False):  # the run's manifest's forms, or the CSV's
            separator = cfg.get("label_separator") or data.get("label_separator") or "|"
            no_label = cfg.get("no_label")  # text as typed: `null` unsets the run's
            if no_label is None:
                no_label = data.get("no_label")
            elif no_label == "null":
                no_label = None
            self.separator, self.no_label = checked_settings(separator, no_label, prefix="")
            self.targets = _by_name(self.targets, self.names)
        self.columns = (
            {"target_column": self.targets[0]}
            if len(self.targets) == 1
            else {f"target_column[{k}]": name for k, name in enumerate(self.targets)}
        )

    def read_all(
        self, rows: list[dict[str, str]], lines: list[int], images: list[str]
    ) -> list[str]:
        if getattr(self.task, "multilabel", False):
            cells = [[row[c] for c in self.targets] for row in rows]
            vectors, problems = label_vectors(
                cells, lines, self.targets, self.names, self.separator, self.no_label, prefix=""
            )
            self.labels = [torch.tensor(v, dtype=torch.float32) for v in vectors]
            return problems
        self.labels, problems = _labels(rows, lines, self.targets, self.task, self.names)
        return problems

    def batch(self, k: int, item: Prepared) -> dict[str, Any]:
        return {"label": self.labels[k][None]}


# A run that read instance labels (`dataset.instance_labels=true`) is scored on them: evaluate
# reads every mask as the run read its own, and takes no `dataset.*` keys to read them otherwise.
INSTANCE_MASKS_NEEDED = (
    "the run was trained on instance labels (dataset.instance_labels=true) and evaluate scores "
    "it on them: give masks of one label per object, or instance_labels=false to score on class "
    "masks (objects: their connected components)"
)


class MaskTruth(Truth):
    """A mask file per row, read as the run's dataset read its masks (`dataset.class_values`,
    `dataset.instance_labels`), at the image's own size; the pixel spacing from the spacing
    column, else the image file (unless the run set `dataset.file_spacing=false`), else the run's
    `dataset.spacing`, else pixels, and then for every image or none."""

    def __init__(self, predictor: Predictor, cfg: DictConfig, path: Path, header: list[str]):
        data = predictor.cfg.dataset
        self.path, self.predictor = path, predictor
        self.num_classes = len(predictor.class_names)
        values = data.get("class_values")
        self.class_values = {int(v): int(c) for v, c in values.items()} if values else None
        own = bool(data.get("instance_labels"))
        given = cfg.get("instance_labels")
        if given is not None and not isinstance(given, bool):
            raise ConfigError(f"instance_labels={given!r} must be true or false")
        if given and getattr(predictor.task, "instances", None) is None:
            raise ConfigError(
                "instance_labels=true: the run scores no instances (task.instances is null), so "
                "it has no use for object labels; give its class masks"
            )
        # True on a run separating objects of binary masks: scored on the true objects. False on
        # an instance-label run: class masks, the true objects their connected components.
        self.instance_labels = own if given is None else given
        self.file_spacing = data.get("file_spacing", True) is not False
        self.columns = {"mask_column": cfg.mask_column or data.get("mask_column") or "mask"}
        own = data.get("spacing_column") or "spacing"  # the run's manifest column, if any
        spacing_column = cfg.spacing_column or (own if own in header else None)
        if spacing_column:
            self.columns["spacing_column"] = spacing_column
        self.masks: list[np.ndarray | None] = []  # uint8 (int32 for 256 classes or more)
        self.files: list[Path | None] = []
        self.instances: list[np.ndarray | None] = []
        self.spacing: list[tuple[float, ...] | None] = []

    def read_all(
        self, rows: list[dict[str, str]], lines: list[int], images: list[str]
    ) -> list[str]:
        problems = []
        column, spacing_column = self.columns["mask_column"], self.columns.get("spacing_column")
        for row, line, image in zip(rows, lines, images, strict=True):
            mask = labels = spacing = None
            try:
                if spacing_column:
                    spacing = spacing_cell(row[spacing_column])
                if not row[column]:
                    raise DataError(f"column {column!r} is empty")
                if self.file_spacing:  # the image's, else the mask's (as the run's datasets)
                    spacing = (
                        spacing
                        or file_spacing(row_file(self.path, image))
                        or file_spacing(row_file(self.path, row[column]))
                    )
                mask, labels = self._read(row_file(self.path, row[column]))
            except ValueError as err:  # spacing_cell's: the only ValueError here
                problems.append(f"line {line}: column {spacing_column!r}: {err}")
            except MedtrainError as err:
                problems.append(f"line {line}: {err}")
            self.masks.append(mask)
            self.files.append(row_file(self.path, row[column]) if row[column] else None)
            self.instances.append(labels)
            self.spacing.append(spacing or self.predictor.spacing)
        without = [line for line, s in zip(lines, self.spacing, strict=True) if s is None]
        if without and len(without) < len(lines):
            stated = next(line for line, s in zip(lines, self.spacing, strict=True) if s)
            problems.append(
                f"a pixel spacing is stated for line {stated} (by its spacing column or image "
                f"file) but not for {listed([f'line {n}' for n in without], SHOWN)}; measurements need "
                "one unit: state it for every row (a spacing column) or for none"
            )
        return problems

    def _read(self, file: Path) -> tuple[np.ndarray, np.ndarray | None]:
        """A mask file's class indices, and its object labels when the run read instance labels."""
        if self.instance_labels:
            labels = read_instance_labels(file, INSTANCE_MASKS_NEEDED)
            return (labels > 0).astype(np.uint8), labels.astype(np.int32)
        mask = read_mask_file(file, self.class_values, self.num_classes)
        if mask.size and mask.max() >= self.num_classes:
            found = np.unique(mask)
            hint = "" if self.class_values else "; the run maps none (dataset.class_values)"
            raise DataError(
                f"{file}: mask values {found[found >= self.num_classes][:10].tolist()} are not "
                f"among the run's {self.num_classes} classes {self.predictor.class_names}{hint}"
            )
        return mask.astype(np.uint8 if self.num_classes <= 256 else np.int32), None

    def with_spacing(self, k: int, image: Decoded) -> Decoded:
        """The spacing the run's test pass would use (its column, the files' unless the run set
        `dataset.file_spacing=false`, `dataset.spacing`): measurements, HD95 in mm and any
        resampling to `dataset.target_spacing` follow it."""
        return dataclasses.replace(image, spacing=self.spacing[k])

    def check_image(self, k: int, image: Decoded) -> None:
        mask = self.masks[k]
        shape = tuple(image.array.shape[:2])
        if mask is not None and mask.shape != shape:
            raise DataError(
                f"{self.files[k]}: the mask is {mask.shape[0]}x{mask.shape[1]} pixels but the "
                f"image is {shape[0]}x{shape[1]}"
            )

    def batch(self, k: int, item: Prepared) -> dict[str, Any]:
        spacing = self.spacing[k] or (math.nan, math.nan)
        mask, self.masks[k] = self.masks[k], None  # scored once: held no longer
        entries = {
            "mask": torch.from_numpy(mask.astype(np.int64))[None],
            "spacing": torch.tensor([spacing], dtype=torch.float64),
            "intensity": torch.from_numpy(item.intensity)[None],
        }
        if self.instances[k] is not None:
            entries["instances"] = torch.from_numpy(self.instances[k])[None]
            self.instances[k] = None
        return entries


class LabelVolumeTruth(Truth):
    """A label volume per row (NIfTI, or a DICOM series folder), read as the run read its labels:
    in the same axis order as its image (`check_label_geometry`: the label's affine must state
    its image's axes and voxel size), class indices below the run's classes."""

    def __init__(self, predictor: Predictor, cfg: DictConfig, path: Path):
        self.path, self.predictor = path, predictor
        self.num_classes = len(predictor.class_names)
        data = predictor.cfg.dataset
        self.columns = {"mask_column": cfg.mask_column or data.get("mask_column") or "mask"}
        self.files: list[Path | None] = []
        self.labels: dict[int, np.ndarray] = {}

    def read_all(
        self, rows: list[dict[str, str]], lines: list[int], images: list[str]
    ) -> list[str]:
        column = self.columns["mask_column"]
        problems = [
            f"line {line}: column {column!r} is empty"
            for row, line in zip(rows, lines, strict=True)
            if not row[column]
        ]
        self.files = [row_file(self.path, row[column]) if row[column] else None for row in rows]
        return problems

    def checked_volume(self, k: int, image_file: Path) -> Volume:
        """Row `k`'s image volume, its label volume read and checked against it (kept for
        `volume_batch`)."""
        volume = read_volume(image_file, self.predictor.ras)
        if self.files[k] is None:
            return volume
        label = read_volume(self.files[k], self.predictor.ras)
        check_label_geometry(image_file, label, self.files[k])
        values = VolumeSlices.checked_labels(label.array, self.files[k], self.num_classes)
        if values.shape != volume.array.shape[:3]:
            size = "x".join(map(str, values.shape))
            raise DataError(
                f"{self.files[k]}: the label volume is {size} voxels, its image "
                f"{'x'.join(map(str, volume.array.shape[:3]))}"
            )
        if values.size and values.max() >= self.num_classes:
            found = np.unique(values)
            raise DataError(
                f"{self.files[k]}: labels {found[found >= self.num_classes][:10].tolist()} are not "
                f"among the run's {self.num_classes} classes {self.predictor.class_names}"
            )
        self.labels[k] = values
        return volume

    def volume_batch(self, k: int, volume: Volume, intensity: np.ndarray) -> dict[str, Any]:
        return {
            "mask": torch.from_numpy(self.labels.pop(k).astype(np.int64))[None],
            "spacing": torch.tensor([volume.spacing], dtype=torch.float64),
            "affine": torch.from_numpy(np.asarray(volume.affine, dtype=np.float64))[None],
            # the file's own: its mask is written in its voxel order, as medtrain predict does
            "stored_affine": torch.from_numpy(np.asarray(volume.file_affine, dtype=np.float64))[
                None
            ],
            "intensity": torch.from_numpy(np.ascontiguousarray(intensity))[None],
        }


def _target_columns(value: Any, task: Any) -> list[str]:
    """The target column(s): one for classes; for regression one per value the run predicts; for
    a multi-label run one of joined labels or one 0/1 column per label."""
    columns = [str(c) for c in value] if not isinstance(value, str) else [value]
    if getattr(task, "multilabel", False):
        if len(columns) not in (1, len(task.class_names)):
            raise ConfigError(
                f"target_column={columns}: the run has {len(task.class_names)} labels "
                f"({task.class_names}); name one 0/1 column for each, or one column of "
                "joined labels"
            )
        return columns
    if task.targets == "values" and len(columns) != len(task.class_names):
        raise ConfigError(
            f"target_column={columns}: the run predicts {len(task.class_names)} value(s) "
            f"({task.class_names}); name one column for each"
        )
    if task.targets != "values" and len(columns) != 1:
        raise ConfigError(f"target_column={columns}: a classification run takes one column")
    return columns


def _by_name(columns: list[str], names: list[str]) -> list[str]:
    """A multi-label run's 0/1 columns in the order of its labels: columns named as its labels
    (a manifest's 0/1 columns name them) are matched by name, in any order; others by position."""
    if len(columns) > 1 and sorted(columns) == sorted(names):
        return list(names)
    return columns


def outside_grades(values: Any, grade_range: Any) -> bool:
    """Whether any of an ordinal target's `values` lies outside `grade_range` (None: any range)."""
    if grade_range is None:
        return False
    low, high = grade_range
    return any(v < low or v > high for v in np.atleast_1d(values).tolist())


def _labels(
    rows: list[dict[str, str]], lines: list[int], columns: list[str], task: Any, names: list[str]
) -> tuple[list[torch.Tensor], list[str]]:
    """Each row's target as the run's collector takes it, and every row it cannot read: a class
    name of the run (or an index 0..K-1), or the numbers of a regression run."""
    labels: list[torch.Tensor] = []
    problems: list[str] = []
    unseen: list[int] = []  # lines of grades the run cannot predict: scored, and said
    regression = task.targets == "values"
    index = {str(n): k for k, n in enumerate(names)}
    for row, line in zip(rows, lines, strict=True):
        cells = [row[c] for c in columns]
        if regression:
            values = [parse_number(c) for c in cells]
            if any(v is None or not math.isfinite(v) for v in values):
                problems.append(f"line {line}: target {cells} is not a number")
                values = [0.0] * len(cells)
            elif getattr(task, "ordinal", False) and any(not v.is_integer() for v in values):
                problems.append(
                    f"line {line}: target {cells} is not a whole-number grade (the run is ordinal)"
                )
            elif getattr(task, "ordinal", False) and outside_grades(values, task.grade_range):
                unseen.append(line)
            labels.append(torch.tensor(values, dtype=torch.float64))
            continue
        cell = cells[0]
        number = parse_number(cell)
        if cell in index:
            labels.append(torch.tensor(index[cell]))
        elif number is not None and number.is_integer() and 0 <= number < len(names):
            labels.append(torch.tensor(int(number)))
        else:
            problems.append(f"line {line}: class {cell!r} is not one of the run's {names}")
            labels.append(torch.tensor(0))
    if unseen:
        low, high = task.grade_range
        shown = ", ".join(map(str, unseen[:5])) + (", ..." if len(unseen) > 5 else "")
        log.warning(
            "%d grade(s) outside the grades the run predicts, %g to %g (task.grade_range), lines %s: "
            "scored as they are; the run cannot predict them",
            len(unseen),
            low,
            high,
            shown,
        )
    return labels, problems
