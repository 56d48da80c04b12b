"""MedMNIST-format `.npz` files: any size, grey or RGB, binary, multi-class or multi-label labels."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from medtrain.data.base import SPLITS, ImageDataset
from medtrain.errors import DataError


def load_npz(path: str | Path, split: str) -> dict[str, np.ndarray]:
    """Read one split's images and every split's labels from a MedMNIST file, checking keys and sizes."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"dataset.path={str(path)!r}: no such file")
    try:
        with np.load(path, allow_pickle=False) as npz:
            keys = set(npz.files)
            needed = [f"{s}_{kind}" for s in SPLITS for kind in ("images", "labels")]
            missing = [k for k in needed if k not in keys]
            if missing:
                raise DataError(f"{path}: missing keys {missing}; a MedMNIST file holds {needed}")
            arrays = {k: npz[k] for k in needed if k.endswith("_labels") or k == f"{split}_images"}
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise DataError(f"{path}: not a readable .npz file ({err})") from err
    images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
    if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] not in (1, 3, 4)):
        raise DataError(
            f"{path}: {split}_images has shape {images.shape}; expected 2D images, N x H x W "
            "(grey) or N x H x W x C with C in 1, 3, 4 (3D volumes are not read by dataset=medmnist)"
        )
    if len(images) != len(labels):
        raise DataError(f"{path}: {len(images)} {split}_images but {len(labels)} {split}_labels")
    return arrays


class MedMNIST(ImageDataset):
    """One split of a MedMNIST-format `.npz`; channels, classes and label type inferred when not given.

    Args:
        path: the `.npz` file.
        split: `train`, `val` or `test` (the file's official split).
        **kwargs: passed to `ImageDataset` (transform, normalize, in_channels, num_classes, ...).
    """

    sample_fields = (*ImageDataset.sample_fields, "images")

    def __init__(self, path: str, split: str, **kwargs: Any):
        super().__init__(split, **kwargs)
        arrays = load_npz(path, split)
        self.images = arrays[f"{split}_images"]
        if self.in_channels is None:
            self.in_channels = 1 if self.images.ndim == 3 else self.images.shape[-1]
        every_label = np.concatenate(
            [arrays[f"{s}_labels"].reshape(len(arrays[f"{s}_labels"]), -1) for s in SPLITS]
        )
        self.set_labels(arrays[f"{split}_labels"], source=str(path), all_labels=every_label)
        self.ids = [f"{split}_{i}" for i in range(len(self.images))]

    def read_image(self, index: int) -> np.ndarray:
        return self.images[index]
