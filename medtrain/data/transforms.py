"""Image preprocessing shared by every dataset: intensity scaling, channels, resizing, seeded
albumentations pipelines and normalization."""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import albumentations as A
import cv2
import numpy as np

from medtrain.errors import ConfigError

NORMALIZE_MODES = ("fixed", "zscore", "minmax", "percentile", "none")
INVERT_MODES = (False, True, "auto")


def to_float01(image: np.ndarray) -> np.ndarray:
    """Scale an image to float32 by its storage type: 8-bit /255, 16-bit /65535, floats unchanged."""
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    if image.dtype == np.uint16:
        return image.astype(np.float32) / 65535.0
    if image.dtype == bool:
        return image.astype(np.float32)
    return image.astype(np.float32, copy=False)


def as_hwc(image: np.ndarray) -> np.ndarray:
    """Give a 2D grey image a trailing channel axis so every image is H x W x C."""
    return image[..., None] if image.ndim == 2 else image


def match_channels(image: np.ndarray, channels: int | None) -> np.ndarray:
    """Convert H x W x C between grey and colour when the model expects the other one."""
    have = image.shape[-1]
    if channels is None or have == channels:
        return image
    if channels == 1 and have in (3, 4):
        return (image[..., :3] @ np.array([0.299, 0.587, 0.114], dtype=np.float32))[..., None]
    if channels == 3 and have == 1:
        return np.repeat(image, 3, axis=-1)
    if channels == 3 and have == 4:
        return image[..., :3]
    raise ConfigError(
        f"dataset.in_channels={channels}: cannot convert images with {have} channels; use 1 or 3"
    )


def resize(image: np.ndarray, size: int | Sequence[int]) -> np.ndarray:
    """Resize H x W x C to `size` (an int for a square): area averaging down, bilinear up."""
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    if image.shape[:2] == (height, width):
        return image
    shrink = height * width < image.shape[0] * image.shape[1]
    out = cv2.resize(
        image, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    )
    return as_hwc(out)


class Normalize:
    """Intensity normalization after augmentation.

    Args:
        mode: `fixed` (subtract `mean`, divide by `std`, per channel), `zscore` (each image to mean 0,
            std 1), `minmax` (each image to [0, 1]), `percentile` (each image's `percentiles` to 0 and
            1, values beyond clipped: robust to a few saturated pixels and to nearly empty images, whose
            noise z-scoring would blow up) or `none`.
        mean: per-channel means for `fixed`; one value is used for every channel.
        std: per-channel standard deviations for `fixed`.
        percentiles: (low, high) for `percentile`.
        invert: `True` inverts every image (x -> 1 - x, on [0, 1] data) before scaling; `auto` inverts
            only images whose median is above 0.5, so objects that are dark on a bright background
            (bright-field microscopy) look like objects that are bright on a dark one (fluorescence).
    """

    def __init__(
        self,
        mode: str = "fixed",
        mean: Sequence[float] = (0.5,),
        std: Sequence[float] = (0.5,),
        percentiles: Sequence[float] = (1.0, 99.8),
        invert: bool | str = False,
    ):
        if mode not in NORMALIZE_MODES:
            raise ConfigError(
                f"dataset.normalize.mode={mode!r} is not valid; choose one of {NORMALIZE_MODES}"
            )
        if mode == "fixed" and any(s <= 0 for s in std):
            raise ConfigError(f"dataset.normalize.std={list(std)} must be > 0")
        if len(percentiles) != 2 or not 0 <= percentiles[0] < percentiles[1] <= 100:
            raise ConfigError(
                f"dataset.normalize.percentiles={list(percentiles)} must be [low, high] with "
                "0 <= low < high <= 100"
            )
        if invert not in INVERT_MODES:
            raise ConfigError(
                f"dataset.normalize.invert={invert!r} is not valid; choose false, true or auto"
            )
        self.mode = mode
        # The arguments as plain values: saved with a run so that serving and export reuse them.
        self.params = {
            "mode": mode,
            "mean": [float(m) for m in mean],
            "std": [float(v) for v in std],
            "percentiles": [float(p) for p in percentiles],
            "invert": invert,
        }
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)
        self.percentiles = (float(percentiles[0]), float(percentiles[1]))
        self.invert = invert

    def __call__(self, image: np.ndarray) -> np.ndarray:
        if self.invert is True or (self.invert == "auto" and float(np.median(image)) > 0.5):
            image = 1.0 - image
        if self.mode == "fixed":
            return (image - self.mean) / self.std
        if self.mode == "zscore":
            return (image - image.mean()) / max(float(image.std()), 1e-6)
        if self.mode == "minmax":
            low, high = float(image.min()), float(image.max())
            return (image - low) / max(high - low, 1e-6)
        if self.mode == "percentile":
            low, high = np.percentile(image, self.percentiles)
            return np.clip((image - low) / max(float(high - low), 1e-6), 0.0, 1.0)
        return image


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 32-bit seed for one sample in one epoch, the same in every process and on every run."""
    return zlib.crc32(f"{seed}:{epoch}:{index}".encode())


class SeededAugment:
    """Runs an albumentations pipeline with a random state fixed by (seed, epoch, sample index).

    Seeding per sample makes the augmented stream identical from run to run and independent of the
    number of loader workers and of the order in which they pick samples.
    """

    def __init__(self, pipeline: A.BasicTransform | A.BaseCompose, seed: int = 0):
        self.pipeline = pipeline
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __call__(self, index: int, **arrays: np.ndarray) -> dict[str, np.ndarray]:
        self.pipeline.set_random_seed(sample_seed(self.seed, self.epoch, index))
        return self.pipeline(**arrays)
