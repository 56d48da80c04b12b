"""A built-in synthetic classification dataset: grey 'scans' (images, or volumes with
`spatial_dims=3`) where the positive class carries a lesion-like blob. Generated from a seed, so it
needs no files and is identical on every machine."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
from scipy import ndimage

from medtrain.data.base import SPLITS, ImageDataset
from medtrain.errors import ConfigError


def check_counts(**counts: Any) -> None:
    """Generated data's split sizes (`num_train=...`) must be whole numbers of 1 or more."""
    for name, count in counts.items():
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ConfigError(f"dataset.{name}={count!r}: use a whole number of 1 or more")


def make_scans(num: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Smooth textured backgrounds with a darker round 'organ' outline, float32 in [0, 1]."""
    coarse = rng.normal(0.0, 1.0, size=(num, size // 4, size // 4)).astype(np.float32)
    images = np.stack([cv2.resize(c, (size, size), interpolation=cv2.INTER_CUBIC) for c in coarse])
    images = 0.45 + 0.06 * images + rng.normal(0.0, 0.03, size=images.shape).astype(np.float32)
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    centre = (size - 1) / 2
    body = ((yy - centre) ** 2 + (xx - centre) ** 2) > (0.45 * size) ** 2
    images[:, body] -= 0.2
    return images


def add_blob(image: np.ndarray, rng: np.random.Generator, contrast: float) -> None:
    """Add one Gaussian blob (random radius, position and brightness) inside the body, in place."""
    size = image.shape[0]
    radius = rng.uniform(0.06, 0.14) * size
    angle, dist = rng.uniform(0, 2 * np.pi), rng.uniform(0, 0.3 * size)
    cy, cx = (size - 1) / 2 + dist * np.sin(angle), (size - 1) / 2 + dist * np.cos(angle)
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * radius**2))
    image += contrast * rng.uniform(0.6, 1.4) * blob


def make_volumes(num: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """The 3D `make_scans`: smooth textured cubes with a darker outside of a round 'organ'."""
    volumes = np.empty((num, size, size, size), dtype=np.float32)
    zoom = size / max(size // 4, 2)
    for volume in volumes:
        coarse = rng.normal(0.0, 1.0, size=(max(size // 4, 2),) * 3).astype(np.float32)
        volume[...] = ndimage.zoom(coarse, zoom, order=1, grid_mode=True, mode="nearest")
    volumes = 0.45 + 0.06 * volumes + rng.normal(0.0, 0.03, size=volumes.shape).astype(np.float32)
    centre = (size - 1) / 2
    grid = np.indices((size,) * 3, dtype=np.float32) - centre
    volumes[:, (grid**2).sum(0) > (0.45 * size) ** 2] -= 0.2
    return volumes


def add_blob_3d(volume: np.ndarray, rng: np.random.Generator, contrast: float) -> None:
    """The 3D `add_blob`: one Gaussian blob at a random point inside the organ, in place."""
    size = volume.shape[0]
    radius = rng.uniform(0.08, 0.16) * size
    direction = rng.normal(size=3)
    centre = (size - 1) / 2 + rng.uniform(0, 0.3 * size) * direction / np.linalg.norm(direction)
    grid = np.indices(volume.shape, dtype=np.float32)
    squared = sum((grid[k] - centre[k]) ** 2 for k in range(3))
    volume += contrast * rng.uniform(0.6, 1.4) * np.exp(-squared / (2 * radius**2))


class SyntheticLesions(ImageDataset):
    """Binary classification: label 1 images carry a faint bright blob, label 0 images do not.

    Args:
        split: `train`, `val` or `test`; each split is drawn from its own seeded stream.
        seed: generation seed (the run's `seed` by default).
        image_size: side length in pixels.
        num_train, num_val, num_test: number of images per split (half of them positive).
        contrast: peak brightness of the blob relative to the background (lower is harder).
        spatial_dims: 2 (images of `image_size`^2) or 3 (volumes of `image_size`^3).
        path: unused (the data are built in); kept so that every dataset config has `path`.
        **kwargs: passed to `ImageDataset`.
    """

    provides = ("classes",)  # class labels only
    sample_fields = (*ImageDataset.sample_fields, "images")
    reads_volumes = True  # with spatial_dims=3

    def __init__(
        self,
        split: str,
        seed: int = 0,
        image_size: int = 32,
        num_train: int = 2000,
        num_val: int = 400,
        num_test: int = 400,
        contrast: float = 0.25,
        spatial_dims: int = 2,
        path: str | None = None,
        **kwargs: Any,
    ):
        if path is not None:
            raise ConfigError(
                f"dataset.path={path!r}: dataset=synthetic generates its images and reads no files; "
                "choose dataset=medmnist or dataset=image_folder to read data"
            )
        kwargs.setdefault("num_classes", 2)
        kwargs.setdefault("class_names", ["normal", "lesion"])
        if spatial_dims not in (2, 3):
            raise ConfigError(f"dataset.spatial_dims={spatial_dims}: use 2 (images) or 3 (volumes)")
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 4:
            raise ConfigError(f"dataset.image_size={image_size!r}: use a whole number of 4 or more")
        check_counts(num_train=num_train, num_val=num_val, num_test=num_test)
        super().__init__(split, spatial_dims=spatial_dims, **kwargs)
        num = {"train": num_train, "val": num_val, "test": num_test}[split]
        rng = np.random.default_rng([seed, SPLITS.index(split)])
        labels = (np.arange(num) % 2).astype(np.int64)
        rng.shuffle(labels)
        volumes = spatial_dims == 3
        self.images = (make_volumes if volumes else make_scans)(num, image_size, rng)
        for image, label in zip(self.images, labels, strict=True):
            if label:
                (add_blob_3d if volumes else add_blob)(image, rng, contrast)
        np.clip(self.images, 0.0, 1.0, out=self.images)
        self.ids = [f"{split}_{i:05d}" for i in range(num)]
        self.set_labels(labels, source="synthetic dataset")

    def read_image(self, index: int) -> np.ndarray:
        return self.images[index]
