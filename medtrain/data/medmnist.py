"""MedMNIST-format `.npz` files: 2D images (any size, grey or RGB) or MedMNIST3D volumes (28^3 and
64^3), with binary, multi-class or multi-label labels."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from medtrain.data.base import SPLITS, ImageDataset
from medtrain.errors import ConfigError, DataError


def image_dims(images: np.ndarray) -> int | None:
    """2 for N x H x W (grey) or N x H x W x C (C in 1, 3, 4) images, 3 for N x D x H x W (grey)
    or N x D x H x W x C volumes (MedMNIST3D), None for anything else."""
    if images.ndim == 3:
        return 2
    if images.ndim == 4:
        return 2 if images.shape[-1] in (1, 3, 4) else 3
    if images.ndim == 5 and images.shape[-1] in (1, 3, 4):
        return 3
    return None


def load_npz(path: str | Path, split: str) -> dict[str, np.ndarray]:
    """Read one split's images and every split's labels from a MedMNIST file, checking keys and sizes."""
    path = Path(path)
    if path.is_dir():
        raise DataError(
            f"dataset.path={str(path)!r}: a folder; dataset=medmnist reads one .npz file (for "
            "example dataset.path=../shared/data/medmnist/pneumoniamnist.npz)"
        )
    if not path.is_file():
        raise DataError(f"dataset.path={str(path)!r}: no such file")
    with path.open("rb") as handle:
        if handle.read(4) != b"PK\x03\x04":  # an .npz is a zip archive of .npy arrays
            raise DataError(f"{path}: not a .npz file (a MedMNIST file is a zip of numpy arrays)")
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
    if image_dims(images) is None:
        raise DataError(
            f"{path}: {split}_images has shape {images.shape}; expected 2D images (N x H x W, or "
            "N x H x W x C with C in 1, 3, 4) or volumes (N x D x H x W [x C])"
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
    reads_volumes = True  # MedMNIST3D files

    def __init__(self, path: str, split: str, **kwargs: Any):
        super().__init__(split, **kwargs)
        if self.windows is not None:  # its pictures are 8-bit display values
            raise ConfigError(
                f"dataset.window windows CT values in Hounsfield units, but {path} holds MedMNIST's "
                "8-bit display values: set dataset.window=null"
            )
        arrays = load_npz(path, split)
        self.images = arrays[f"{split}_images"]
        # MedMNIST3D files hold volumes: the data are 3D, and so must the network be.
        self.check_dims(image_dims(self.images), str(path))
        if self.in_channels is None:
            grey = self.images.ndim == self.spatial_dims + 1
            self.in_channels = 1 if grey else self.images.shape[-1]
        every_label = np.concatenate(
            [arrays[f"{s}_labels"].reshape(len(arrays[f"{s}_labels"]), -1) for s in SPLITS]
        )
        self.set_labels(arrays[f"{split}_labels"], source=str(path), all_labels=every_label)
        self.ids = [f"{split}_{i}" for i in range(len(self.images))]

    def read_image(self, index: int) -> np.ndarray:
        return self.images[index]
