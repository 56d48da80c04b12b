"""Whole 3D volumes (NIfTI, DICOM series) with label volumes, split by volume, for 3D segmentation:
the Medical Segmentation Decathlon layout or a CSV manifest, as `dataset=volume_slices` reads."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from medtrain.data.volume_segmentation import VolumeSegmentationDataset
from medtrain.data.volume_slices import VolumeCases, VolumeSlices
from medtrain.data.volumes import Volume, check_label_geometry, read_volume


class NiftiVolumes(VolumeCases, VolumeSegmentationDataset):
    """Image volumes with label volumes of the same shape, one case per file (or DICOM folder).

    The data are `<path>/<images>/<case>.nii.gz` with `<path>/<labels>/<case>.nii.gz`, or a CSV
    manifest with `image` and `mask` columns, an optional `split` column and, with `group_column`,
    a column naming each case's patient. Splits are made by volume (or by patient) with the same
    seeded rule as `dataset=volume_slices`, so a 3D run and a slice run with the same `val_size`,
    `test_size`, `group_column` and seed hold out the same volumes. Images are read as float32
    modality values (normalize them with `dataset.normalize`, e.g. `zscore` per volume); the
    voxel size and affine come from the label file (predicted masks are written with them).

    Args:
        path: the data folder, or a CSV manifest.
        split: `train`, `val` or `test`.
        images, labels: sub-folder names of the folder layout.
        val_size, test_size: held-out volumes, as a fraction (< 1) or a count (>= 1); with
            `group_column`, held-out groups.
        split_file: a JSON {split: [cases]} (an earlier run's `splits.json` also works).
        group_column: the CSV manifest's column naming each case's group (its patient, say), as
            for `dataset=volume_slices`: a group's volumes share a split and a CV fold.
        seed: seed of the split and of the patches.
        **kwargs: passed to `VolumeSegmentationDataset` (num_classes, patch_size, ...).
    """

    reads_files = True  # decoded volumes are kept (`dataset.cache_mb`)
    sample_fields = (*VolumeSegmentationDataset.sample_fields, "cases")

    def __init__(
        self,
        path: str,
        split: str,
        images: str = "images",
        labels: str = "labels",
        val_size: float = 0.1,
        test_size: float = 0.2,
        split_file: str | None = None,
        group_column: str | None = None,
        seed: int = 0,
        **kwargs: Any,
    ):
        super().__init__(split, seed=seed, **kwargs)
        self.cases = self._split_cases(
            path, images, labels, val_size, test_size, split_file, seed, group_column
        )
        self.ids = list(self.cases)
        if self.in_channels is None:
            self.in_channels = 1

    def source(self, index: int) -> str:
        return str(self.pairs[self.cases[index]][1])

    def read_image(self, index: int) -> np.ndarray:
        return read_volume(self.pairs[self.cases[index]][0]).array.astype(np.float32)

    def read_mask(self, index: int) -> np.ndarray:
        path = self.pairs[self.cases[index]][1]
        return VolumeSlices.checked_labels(read_volume(path).array, path, self.num_classes)

    def _label_volume(self, index: int) -> Volume:
        """Case `index`'s label volume without its voxels (`read_mask` reads them): its spacing
        and affines, read once for `read_spacing`, `read_affine` and `read_stored_affine`."""

        def geometry(i: int) -> Volume:
            label = read_volume(self.pairs[self.cases[i]][1])
            return dataclasses.replace(label, array=np.empty((0, 0, 0), np.uint8))

        return self.header("label_volume", index, geometry)

    def read_spacing(self, index: int) -> tuple[float, float, float]:
        image_path, label_path = self.pairs[self.cases[index]]
        label = self._label_volume(index)
        check_label_geometry(image_path, label, label_path)
        return label.spacing

    def read_affine(self, index: int) -> np.ndarray:
        return self._label_volume(index).affine

    def read_stored_affine(self, index: int) -> np.ndarray | None:
        return self._label_volume(index).stored_affine
