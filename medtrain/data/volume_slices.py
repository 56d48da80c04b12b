"""2D slices of 3D volumes (NIfTI, DICOM series) with label volumes, split by volume, for slice-wise
segmentation whose predictions are reassembled and scored per volume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from medtrain.data.base import SPLITS
from medtrain.data.manifest import ManifestRows, check_columns, read_csv
from medtrain.data.seg_folder import check_split_lists, read_split_file, seeded_split
from medtrain.data.segmentation import SegmentationDataset
from medtrain.data.volumes import (
    NIFTI_SUFFIXES,
    VOLUME_NORMALIZE,
    VolumeCache,
    check_label_axes,
    check_label_origin,
    check_label_spacing,
    normalize_volume,
    read_volume,
)
from medtrain.errors import ConfigError, DataError


def case_name(path: Path) -> str:
    """`hippocampus_001` for `hippocampus_001.nii.gz`, a folder's name for a DICOM series."""
    name = path.name
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem if path.is_file() else name


class VolumeCases(ManifestRows):
    """A volume dataset's cases, from the folder layout or a CSV manifest, and their split by
    volume or, with `dataset.group_column`, by group (`VolumeSlices`, `NiftiVolumes`)."""

    def _split_cases(
        self, path, images, labels, val_size, test_size, split_file, seed, group_column
    ) -> list[str]:
        """This split's cases; sets `pairs` (every case's files: a fold may hold cases of the
        other splits) and `groups` (the group of each of this split's cases, or None)."""
        self.pairs, given, groups = self._pairs(Path(path), images, labels, group_column)
        names = self._split(
            sorted(self.pairs), val_size, test_size, split_file, given, seed, groups
        )
        if groups is not None:
            self.groups = [groups[case] for case in names[self.split]]
        return names[self.split]

    def _pairs(self, root: Path, images: str, labels: str, group_column: str | None):
        """{case: (image path, label path)}, the manifest's splits (or None) and {case: group}
        (or None without `group_column`)."""
        if root.is_file() and root.suffix.lower() == ".csv":
            self.manifest_path = str(root)
            header, rows, self._lines = read_csv(root)
            missing = [c for c in ("image", "mask") if c not in header]
            if missing:
                raise DataError(f"{root}: no {missing} column (the header is {header})")
            if group_column is not None:
                check_columns(root, header, {"group_column": group_column})
            groups = self._groups(rows, group_column)
            pairs, splits = {}, {}
            absent = [
                f"line {line}: {file} does not exist"
                for row, line in zip(rows, self._lines, strict=True)
                for file in (root.parent / row["image"], root.parent / row["mask"])
                if not file.exists()
            ]
            if absent:  # every missing file at once, as a manifest of 2D images says them
                shown = "; ".join(absent[:20]) + (
                    f"; and {len(absent) - 20} more" if len(absent) > 20 else ""
                )
                raise DataError(f"{root}: {len(absent)} file(s) missing: {shown}")
            for row, line in zip(rows, self._lines, strict=True):
                image, mask = (root.parent / row[c] for c in ("image", "mask"))
                case = case_name(image)
                if case in pairs:
                    raise DataError(f"{root}: line {line}: case {case!r} is listed twice")
                pairs[case] = (image, mask)
                if "split" in header:
                    if row["split"] not in SPLITS:
                        raise DataError(
                            f"{root}: line {line}: split {row['split']!r} is not one of {SPLITS}"
                        )
                    splits.setdefault(row["split"], []).append(case)
            given = {s: splits.get(s, []) for s in SPLITS} if "split" in header else None
            return pairs, given, None if groups is None else dict(zip(pairs, groups, strict=True))
        if group_column is not None:
            raise ConfigError(
                f"dataset.group_column={group_column!r} needs a CSV manifest (image, mask and "
                f"{group_column} columns); dataset.path={str(root)!r} is not a .csv file"
            )
        image_dir, label_dir = root / images, root / labels
        for folder in (root, image_dir, label_dir):
            if not folder.is_dir():
                raise DataError(
                    f"dataset.path={str(root)!r}: no folder {folder} (expected <path>/{images} and "
                    f"<path>/{labels}, or a CSV manifest)"
                )

        def cases(folder: Path) -> dict[str, Path]:
            found = {}
            for p in sorted(folder.iterdir()):
                if p.name.startswith((".", "_")):
                    continue
                if p.is_dir() or p.name.lower().endswith((*NIFTI_SUFFIXES, ".dcm")):
                    found[case_name(p)] = p
            return found

        found_images, found_labels = cases(image_dir), cases(label_dir)
        if not found_images:
            raise DataError(f"{image_dir}: no .nii/.nii.gz volumes or DICOM series folders")
        missing = sorted(set(found_images) - set(found_labels))
        if missing:
            raise DataError(
                f"{label_dir}: no label volume for {len(missing)} case(s), e.g. {missing[0]}"
            )
        unpaired = sorted(set(found_labels) - set(found_images))
        if unpaired:  # a label volume whose image is missing would drop its case silently
            raise DataError(
                f"{image_dir}: no image volume for {len(unpaired)} label volume(s) of "
                f"{label_dir}, e.g. {unpaired[0]}"
            )
        return {c: (found_images[c], found_labels[c]) for c in found_images}, None, None

    def _split(
        self, cases, val_size, test_size, split_file, given, seed, groups
    ) -> dict[str, list[str]]:
        """The cases of each split: the manifest's split column or `split_file` (a group found in
        two splits is a `groups_in_splits` warning), else a seeded split of the cases or, with
        `groups` ({case: group}), of the groups (sizes count groups), each case with its group."""
        where = "the manifest's split column"
        if split_file is not None:
            saved = read_split_file(split_file)
            where = f"dataset.split_file={split_file!r}"
            given = {s: sorted({i.split("#")[0] for i in ids}) for s, ids in saved.items()}
        if given is not None:
            check_split_lists(given, cases, where, "cases", self.split == "train")
            if groups is not None:
                listed = [(case, k) for k, s in enumerate(SPLITS) for case in given.get(s, [])]
                self._check_groups_in_one_split(
                    np.array([k for _, k in listed]),
                    [groups[case] for case, _ in listed],
                    split_file or "split",
                )
            return {s: sorted(given.get(s, [])) for s in SPLITS}
        if groups is None:
            return seeded_split(cases, val_size, test_size, seed)
        drawn = seeded_split(sorted(set(groups.values())), val_size, test_size, seed)
        split_of = {group: s for s, names in drawn.items() for group in names}
        return {s: [case for case in cases if split_of[groups[case]] == s] for s in SPLITS}


class VolumeSlices(VolumeCases, SegmentationDataset):
    """Slices along `axis` of image volumes with label volumes of the same shape.

    The data are `<path>/<images>/<case>.nii.gz` with `<path>/<labels>/<case>.nii.gz` (the Medical
    Segmentation Decathlon layout; a DICOM series folder per case also works), or a CSV manifest
    with `image` and `mask` columns (paths relative to the CSV), an optional `split` column and,
    with `group_column`, a column naming each case's patient. Splits are made by volume, never by
    slice, and by patient when the patients are named. Each volume is z-scored as a whole
    (`volume_normalize`) before slicing, so that a slice keeps its brightness relative to its
    volume. Training may skip slices without foreground; validation and test keep every slice,
    and the segmentation task reassembles them into volumes to score them in 3D.

    Sample ids are `<case>#<slice>`; samples also hold `volume` (the case), `slice` (its index),
    `slice_axis` and `volume_spacing` (mm per volume axis) and `affine`. `groups` (with
    `group_column`) holds one group per volume, aligned with `cases`: what cross-validation
    assigns to folds.

    Args:
        path: the data folder, or a CSV manifest.
        split: `train`, `val` or `test`.
        axis: the volume axis the slices are taken along (0, 1 or 2).
        images, labels: sub-folder names of the folder layout.
        val_size, test_size: held-out volumes, as a fraction (< 1) or a count (>= 1); with
            `group_column`, held-out groups (the fraction or count is of the groups).
        split_file: a JSON {split: [cases]} (an earlier run's `splits.json`, whose slice ids are
            read back as their cases, also works).
        group_column: the CSV manifest's column naming each case's group (its patient, say): the
            seeded split keeps a group's volumes in one split and `medtrain cv` in one fold; with a
            split column or `split_file`, a group in two splits is warned about. None: every
            volume is its own group.
        seed: seed of the split.
        skip_empty: drop training slices whose label is all background.
        volume_normalize: `zscore` (over the volume), `nonzero_zscore` (over its non-zero voxels,
            for skull-stripped MRI) or `none`.
        cache: `memory` (decode each volume once per process), `disk` (.npy files in `cache_dir`,
            reused by later runs) or `none` (decode on every access; slow).
        cache_dir: the disk cache's folder.
        **kwargs: passed to `SegmentationDataset` (num_classes, class_names, patch_size, ...).
    """

    # Cross-validation splits volumes, never slices (`fold_units`): a fold regroups `cases` (and
    # their `groups`), and its slices are listed anew for its role (empty slices skipped in
    # training only).
    sample_fields = ("cases", "groups")

    def __init__(
        self,
        path: str,
        split: str,
        axis: int = 0,
        images: str = "images",
        labels: str = "labels",
        val_size: float = 0.1,
        test_size: float = 0.2,
        split_file: str | None = None,
        group_column: str | None = None,
        seed: int = 0,
        skip_empty: bool = True,
        volume_normalize: str = "zscore",
        cache: str = "memory",
        cache_dir: str | None = None,
        **kwargs: Any,
    ):
        if kwargs.get("spacing") is not None:  # it would be ignored: each slice has its volume's
            raise ConfigError(
                f"dataset.spacing={list(kwargs['spacing'])}: the volumes state their voxel sizes, "
                "and each slice is measured with its volume's; leave dataset.spacing null (give "
                "the volumes the right voxel size in their headers)"
            )
        super().__init__(split, seed=seed, **kwargs)
        if axis not in (0, 1, 2):
            raise ConfigError(f"dataset.axis={axis} must be 0, 1 or 2")
        if volume_normalize not in VOLUME_NORMALIZE:
            raise ConfigError(
                f"dataset.volume_normalize={volume_normalize!r}: choose one of {VOLUME_NORMALIZE}"
            )
        self.axis = axis
        self.volume_normalize = volume_normalize
        self.cache = VolumeCache(cache, cache_dir)
        self.cases = self._split_cases(
            path, images, labels, val_size, test_size, split_file, seed, group_column
        )
        self.skip_empty = skip_empty
        self.geometry: dict[str, Any] = {}
        self._list_slices()
        if self.in_channels is None:
            self.in_channels = 1

    @property
    def fold_units(self) -> list[str]:
        """What cross-validation assigns to folds: whole volumes."""
        return list(self.cases)

    def fresh_state(self) -> None:
        super().fresh_state()
        if hasattr(self, "index"):  # a copy regrouped into a fold: its slices for its role
            self.geometry = dict(self.geometry)
            self._list_slices()

    def _list_slices(self) -> None:
        """`index` and `ids`: the (case, slice) samples of `cases`, reading each new case's label
        volume for its geometry; training skips slices without foreground (`skip_empty`)."""
        self.index: list[tuple[str, int]] = []
        axis = self.axis
        problems = []
        for case in self.cases:
            try:
                labels_volume = self._case_geometry(case)
            except DataError as err:  # every bad volume at once, not one per attempt
                problems.append(f"{self.split} case {case}: {err}")
                continue
            keep = range(self.geometry[case]["shape"][axis])
            if self.split == "train" and self.skip_empty:
                other = tuple(a for a in range(3) if a != axis)
                keep = np.flatnonzero(labels_volume.any(axis=other)).tolist()
            self.index += [(case, k) for k in keep]
        if problems:
            more = f"\nand {len(problems) - 10} more" if len(problems) > 10 else ""
            raise DataError("\n".join(problems[:10]) + more)
        self.ids = [f"{case}#{k:03d}" for case, k in self.index]

    def _case_geometry(self, case: str) -> np.ndarray:
        """The case's label volume, checked against its image (shape, voxel size); its shape,
        spacing and affine kept in `geometry`."""
        image_path, label_path = self.pairs[case]
        if case in self.geometry:
            return self._labels(case)
        label_volume = read_volume(label_path)  # its geometry is the case's geometry
        labels_volume = self.checked_labels(label_volume.array, label_path, self.num_classes)
        if self.cache.mode == "memory":
            self.cache.memory[self.cache.memory_key(label_path, self.labels_variant)] = (
                labels_volume
            )
        check_label_axes(image_path, label_volume, label_path)  # other axes: other shapes
        shape = self._image_volume(case).shape
        if labels_volume.shape != shape:
            raise DataError(
                f"{label_path}: label volume {labels_volume.shape} does not match the image "
                f"volume {shape} of {image_path}"
            )
        check_label_spacing(image_path, label_volume, label_path)  # mL use the label's
        check_label_origin(image_path, label_volume, label_path)
        self.geometry[case] = {
            "shape": shape,
            "spacing": label_volume.spacing,
            "affine": label_volume.affine,
            "stored_affine": label_volume.file_affine,
        }
        return labels_volume

    # -- reading -----------------------------------------------------------------------------
    def _image_volume(self, case: str) -> np.ndarray:
        def read(path):
            return normalize_volume(read_volume(path).array, self.volume_normalize)

        return self.cache.array(self.pairs[case][0], read, f"image:{self.volume_normalize}")

    def _labels(self, case: str) -> np.ndarray:
        path = self.pairs[case][1]
        return self.cache.array(
            path,
            lambda p: self.checked_labels(read_volume(p).array, p, self.num_classes),
            self.labels_variant,
        )

    @property
    def labels_variant(self) -> str:
        """How label volumes are read (`VolumeCache.array`'s variant): for these classes."""
        return f"labels:{self.num_classes}"

    @staticmethod
    def checked_labels(array: np.ndarray, path, num_classes: int | None = None) -> np.ndarray:
        """A label volume's values as class indices, in the smallest type that holds them
        (values over 255 are kept, for the class check to name, never wrapped). As for 2D masks,
        a binary run's (`num_classes` 2) volume holding only {0, v} maps v to 1: labels saved as
        {0, 255} or {0, 1000}."""
        if np.issubdtype(array.dtype, np.floating) and not np.array_equal(array, np.round(array)):
            raise DataError(f"{path}: label values must be whole numbers")
        if not array.size:
            return array.astype(np.uint8)
        low, high = array.min(), array.max()
        if low < 0:
            raise DataError(f"{path}: negative label value {low}")
        if num_classes == 2 and high > 1 and not ((array != 0) & (array != high)).any():
            return (array != 0).astype(np.uint8)
        return array.astype(np.uint8 if high <= 255 else np.uint16 if high <= 65535 else np.int64)

    def source(self, index: int) -> str:
        case, k = self.index[index]
        return f"{self.pairs[case][1]} (slice {k} along axis {self.axis})"

    def read_image(self, index: int) -> np.ndarray:
        case, k = self.index[index]
        return np.take(self._image_volume(case), k, axis=self.axis)

    def read_mask(self, index: int) -> np.ndarray:
        case, k = self.index[index]
        return np.take(self._labels(case), k, axis=self.axis).astype(np.int64)

    def model_shape(self, index: int) -> tuple[int, int]:
        """The slice's (height, width) for the model, from its case's geometry (no volume read)."""
        case, _ = self.index[index]
        shape = tuple(n for a, n in enumerate(self.geometry[case]["shape"]) if a != self.axis)
        return self.model_size(shape, self.spacing_of(index)) or shape

    def read_spacing(self, index: int) -> tuple[float, float] | None:
        case, _ = self.index[index]
        spacing = self.geometry[case]["spacing"]
        row, col = (spacing[a] for a in range(3) if a != self.axis)
        return row, col

    def __getitem__(self, sample_index: int) -> dict[str, Any]:
        sample = super().__getitem__(sample_index)
        case, k = self.index[self.sample_images[sample_index]]
        geometry = self.geometry[case]
        sample |= {
            "volume": case,
            "slice": k,
            "num_slices": geometry["shape"][self.axis],
            "slice_axis": self.axis,
            "volume_spacing": torch.tensor(geometry["spacing"], dtype=torch.float64),
            "affine": torch.from_numpy(np.asarray(geometry["affine"], dtype=np.float64)),
            "stored_affine": torch.from_numpy(
                np.asarray(geometry["stored_affine"], dtype=np.float64)
            ),
        }
        return sample
