"""A built-in synthetic 3D segmentation dataset: textured volumes with bright ellipsoids (and boxes)
whose label volumes are known exactly. Generated from a seed: no files, the same on every machine."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

from medtrain.data.base import SPLITS
from medtrain.data.volume_segmentation import VolumeSegmentationDataset
from medtrain.errors import ConfigError


def ellipsoid(shape: tuple[int, ...], centre, radii) -> np.ndarray:
    """The voxels (of a volume of `shape`) inside an axis-aligned ellipsoid; its volume tends to
    4/3 pi * prod(radii) voxels."""
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii, strict=True)) <= 1.0


def draw_volume(
    size: int, num_classes: int, max_objects: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """One volume (float32 D x H x W in [0, 1]) and its labels: ellipsoids for odd classes, boxes
    for even ones, each class brighter than the one before."""
    shape = (size,) * 3
    coarse = rng.normal(0.0, 1.0, size=(max(size // 8, 2),) * 3).astype(np.float32)
    texture = ndimage.zoom(coarse, size / coarse.shape[0], order=1, grid_mode=True, mode="nearest")
    volume = 0.3 + 0.05 * texture
    mask = np.zeros(shape, dtype=np.uint8)
    for _ in range(int(rng.integers(1, max_objects + 1))):
        klass = int(rng.integers(1, num_classes))
        centre = rng.uniform(0.2 * size, 0.8 * size, size=3)
        radii = rng.uniform(size / 12 + 1.5, size / 5 + 2, size=3)
        if klass % 2:
            inside = ellipsoid(shape, centre, radii)
        else:
            low = np.maximum(np.round(centre - radii).astype(int), 0)
            high = np.round(centre + radii).astype(int)
            inside = np.zeros(shape, dtype=bool)
            inside[low[0] : high[0], low[1] : high[1], low[2] : high[2]] = True
        mask[inside] = klass
    for klass in range(1, num_classes):
        volume[mask == klass] += 0.2 + 0.3 * (klass - 1) / max(num_classes - 2, 1)
    volume += rng.normal(0.0, 0.06, size=shape).astype(np.float32)
    return np.clip(volume, 0.0, 1.0), mask


class SyntheticVolumes(VolumeSegmentationDataset):
    """3D segmentation of bright ellipsoids (class 1) and boxes (class 2, ...) in textured cubes.

    Args:
        split: `train`, `val` or `test`; each split is drawn from its own seeded stream.
        seed: generation seed (the run's `seed` by default).
        image_size: side of the training volumes in voxels.
        test_image_size: side of the val/test volumes (larger than the patch: sliding windows);
            None: `image_size`.
        num_train, num_val, num_test: number of volumes per split.
        max_objects: each volume holds 1 to `max_objects` shapes.
        path: unused (the data are built in).
        **kwargs: passed to `VolumeSegmentationDataset` (num_classes, spacing, patch_size, ...).
    """

    sample_fields = (*VolumeSegmentationDataset.sample_fields, "images", "masks")

    def __init__(
        self,
        split: str,
        seed: int = 0,
        image_size: int = 32,
        test_image_size: int | None = None,
        num_train: int = 48,
        num_val: int = 8,
        num_test: int = 8,
        max_objects: int = 3,
        path: str | None = None,
        **kwargs: Any,
    ):
        if path is not None:
            raise ConfigError(
                f"dataset.path={path!r}: dataset=synthetic_segmentation3d generates its volumes "
                "and reads no files; choose dataset=nifti_volumes to read data"
            )
        if max_objects < 1:
            raise ConfigError(f"dataset.max_objects={max_objects} must be >= 1")
        super().__init__(split, seed=seed, **kwargs)
        num = {"train": num_train, "val": num_val, "test": num_test}[split]
        size = image_size if split == "train" else (test_image_size or image_size)
        rng = np.random.default_rng([seed, SPLITS.index(split), 11])
        pairs = [draw_volume(size, self.num_classes, max_objects, rng) for _ in range(num)]
        self.images = [volume for volume, _ in pairs]
        self.masks = [mask for _, mask in pairs]
        self.ids = [f"{split}_{i:04d}" for i in range(num)]
        self.in_channels = self.in_channels or 1

    def read_image(self, index: int) -> np.ndarray:
        return self.images[index]

    def read_mask(self, index: int) -> np.ndarray:
        return self.masks[index]
