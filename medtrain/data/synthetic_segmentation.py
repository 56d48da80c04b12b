"""A built-in synthetic segmentation dataset: textured grey images with bright shapes whose masks are
known exactly. Generated from a seed, so it needs no files and is identical on every machine."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from medtrain.data.base import SPLITS
from medtrain.data.segmentation import SegmentationDataset
from medtrain.errors import ConfigError


def draw_shapes(
    size: int, num_classes: int, max_objects: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """One image (float32 H x W in [0, 1]) and its mask: ellipses for odd classes, rotated
    rectangles for even ones, each class brighter than the one before."""
    coarse = rng.normal(0.0, 1.0, size=(max(size // 8, 2),) * 2).astype(np.float32)
    image = 0.3 + 0.05 * cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    mask = np.zeros((size, size), dtype=np.uint8)
    for _ in range(int(rng.integers(1, max_objects + 1))):
        klass = int(rng.integers(1, num_classes))
        centre = (int(rng.integers(0, size)), int(rng.integers(0, size)))
        axes = (int(rng.integers(size // 20 + 2, size // 7 + 3)),) * 2
        axes = (axes[0], int(axes[0] * rng.uniform(0.6, 1.0)))
        angle = float(rng.uniform(0, 180))
        if klass % 2:
            cv2.ellipse(mask, centre, axes, angle, 0, 360, klass, thickness=-1)
        else:
            box = cv2.boxPoints((centre, (2 * axes[0], 2 * axes[1]), angle)).astype(np.int32)
            cv2.fillPoly(mask, [box], klass)
    for klass in range(1, num_classes):  # class 1 +0.2 over the background, the last class +0.5
        image[mask == klass] += 0.2 + 0.3 * (klass - 1) / max(num_classes - 2, 1)
    image += rng.normal(0.0, 0.06, size=image.shape).astype(np.float32)
    return np.clip(image, 0.0, 1.0), mask


class SyntheticShapes(SegmentationDataset):
    """Segmentation of bright ellipses (class 1) and rectangles (class 2, ...) on a textured background.

    Args:
        split: `train`, `val` or `test`; each split is drawn from its own seeded stream.
        seed: generation seed (the run's `seed` by default).
        image_size: side of the generated training images in pixels.
        test_image_size: side of the val/test images (larger than `image_size` exercises tiled
            whole-image inference); None: `image_size`.
        num_train, num_val, num_test: number of images per split.
        max_objects: each image holds 1 to `max_objects` shapes.
        path: unused (the data are built in); kept so that every dataset config has `path`.
        **kwargs: passed to `SegmentationDataset` (num_classes, spacing, patch_size, ...).
    """

    sample_fields = (*SegmentationDataset.sample_fields, "images", "masks")

    def __init__(
        self,
        split: str,
        seed: int = 0,
        image_size: int = 64,
        test_image_size: int | None = None,
        num_train: int = 400,
        num_val: int = 80,
        num_test: int = 80,
        max_objects: int = 5,
        path: str | None = None,
        **kwargs: Any,
    ):
        if path is not None:
            raise ConfigError(
                f"dataset.path={path!r}: dataset=synthetic_segmentation generates its images and "
                "reads no files; choose dataset=seg_folder to read data"
            )
        if max_objects < 1:
            raise ConfigError(f"dataset.max_objects={max_objects} must be >= 1")
        super().__init__(split, seed=seed, **kwargs)
        num = {"train": num_train, "val": num_val, "test": num_test}[split]
        size = image_size if split == "train" else (test_image_size or image_size)
        rng = np.random.default_rng([seed, SPLITS.index(split), 7])
        pairs = [draw_shapes(size, self.num_classes, max_objects, rng) for _ in range(num)]
        self.images = [image for image, _ in pairs]
        self.masks = [mask for _, mask in pairs]
        self.ids = [f"{split}_{i:05d}" for i in range(num)]
        self.in_channels = self.in_channels or 1

    def read_image(self, index: int) -> np.ndarray:
        return self.images[index]

    def read_mask(self, index: int) -> np.ndarray:
        return self.masks[index]
