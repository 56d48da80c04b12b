"""Preprocessing of volumes (3D images, stored D x H x W [x C]): channel axes, resizing and
resampling, and seeded 3D augmentation pipelines written in YAML with MONAI's dictionary
transforms (`conf/augmentation/volume.yaml`).

Volumes keep the channels-last layout of 2D images (D x H x W x C) through scaling and
normalization, so both share `Normalize` and `match_channels`; MONAI's transforms see channels
first (C x D x H x W) and the mask as a one-channel volume, as they expect.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from medtrain.data.transforms import EpochStream, SeededAugment, SharedEpoch, sample_seed
from medtrain.errors import ConfigError


def with_channels(image: np.ndarray, spatial_dims: int) -> np.ndarray:
    """Give an image of `spatial_dims` axes a trailing channel axis (H x W x C or D x H x W x C)."""
    return image[..., None] if image.ndim == spatial_dims else image


def channels_first(image: np.ndarray) -> torch.Tensor:
    """A channels-last image or volume as the model's float32 tensor, channels first."""
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(image, -1, 0), dtype=np.float32))


def resize_volume(volume: np.ndarray, size: Sequence[int], labels: bool = False) -> np.ndarray:
    """Resize a D x H x W x C volume (or a D x H x W label volume, `labels=True`: nearest
    neighbour) to `size` (d, h, w): trilinear interpolation, area averaging when every side
    shrinks."""
    size = tuple(int(s) for s in size)
    if tuple(volume.shape[:3]) == size:
        return volume
    if labels:
        zoom = [s / n for s, n in zip(size, volume.shape, strict=True)]
        return ndimage.zoom(volume, zoom, order=0, mode="nearest", grid_mode=True)
    tensor = torch.from_numpy(np.ascontiguousarray(np.moveaxis(volume, -1, 0), np.float32))
    shrink = all(s <= n for s, n in zip(size, volume.shape[:3], strict=True))
    out = (
        F.adaptive_avg_pool3d(tensor[None], size)
        if shrink
        else F.interpolate(tensor[None], size=size, mode="trilinear", align_corners=False)
    )
    return np.moveaxis(out[0].numpy(), 0, -1)


def volume_size(value: Any, key: str) -> tuple[int, int, int] | None:
    """An int (a cube) or [depth, height, width] as a tuple of 3 positive ints; None stays None."""
    if value is None:
        return None
    size = (value,) * 3 if isinstance(value, int) and not isinstance(value, bool) else value
    try:
        size = tuple(size)
    except TypeError:
        size = ()
    if len(size) != 3 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in size):
        raise ConfigError(
            f"{key}={value!r}: give a positive int or three, one per axis in the order volumes "
            "are read (NIfTI and DICOM: right, anterior, superior; arrays: as stored)"
        )
    return size  # type: ignore[return-value]


def spatial_size(value: Any, key: str, dims: int) -> tuple[int, ...] | None:
    """A size setting (an int for a square or cube, or one int per axis) as a tuple of `dims`
    positive ints; None stays None."""
    if dims == 3:
        return volume_size(value, key)
    from medtrain.data.segmentation import pair  # segmentation imports this module's users

    return pair(value, key)


def is_monai_pipeline(pipeline: Any) -> bool:
    """Whether `pipeline` is a MONAI transform (a 3D pipeline) rather than an albumentations one."""
    return type(pipeline).__module__.startswith("monai.")


class SeededVolumeAugment(EpochStream):
    """Runs a MONAI dictionary-transform pipeline on a volume (and its mask) with its random state
    fixed by (seed, epoch, sample index), like `SeededAugment` does for 2D pipelines: the same
    augmented stream on every run, whatever the number of loader workers.

    The pipeline's transforms read the keys `image` (C x D x H x W) and, for segmentation, `mask`
    (1 x D x H x W); spatial transforms name both (with nearest-neighbour `mode` for the mask),
    intensity transforms only the image. `allow_missing_keys: true` lets one pipeline serve
    volumes with and without masks.

    Args:
        pipeline: a `monai.transforms.Compose` (or a single transform).
        seed: the run's seed.
    """

    def __init__(self, pipeline: Any, seed: int = 0):
        if not hasattr(pipeline, "set_random_state"):
            raise ConfigError(
                f"augmentation: {type(pipeline).__name__} cannot be seeded; use "
                "monai.transforms.Compose of MONAI's dictionary transforms (conf/augmentation/"
                "volume.yaml)"
            )
        self.pipeline = pipeline
        self.seed = seed
        self.shared_epoch = SharedEpoch()
        self.empty = not getattr(pipeline, "transforms", True)

    def __call__(self, index: int, **arrays: np.ndarray) -> dict[str, np.ndarray]:
        """`image` (D x H x W x C) and optionally `mask` (D x H x W) in, the same keys out."""
        if self.empty:
            return arrays
        from monai.data import set_track_meta

        self.pipeline.set_random_state(seed=sample_seed(self.seed, self.epoch, index))
        data = {
            "image": torch.from_numpy(np.ascontiguousarray(np.moveaxis(arrays["image"], -1, 0)))
        }
        if "mask" in arrays:
            data["mask"] = torch.from_numpy(np.ascontiguousarray(arrays["mask"][None]))
        set_track_meta(False)  # plain tensors out: no metadata to carry or copy
        try:
            out = self.pipeline(data)
        finally:
            set_track_meta(True)
        result = {"image": np.moveaxis(np.asarray(out["image"], dtype=np.float32), 0, -1)}
        if "mask" in arrays:
            mask = np.asarray(out["mask"])[0]
            result["mask"] = np.rint(mask).astype(arrays["mask"].dtype, copy=False)
        return result


def seeded_augment(pipeline: Any, seed: int, seeding: str, key: str = "augmentation") -> Any:
    """The seeded wrapper of an augmentation pipeline: 3D (MONAI) or 2D (albumentations). `key`:
    the pipeline's config key (`augmentation.train`), named in errors."""
    if is_monai_pipeline(pipeline):
        return SeededVolumeAugment(pipeline, seed)
    return SeededAugment(pipeline, seed, seeding, key)


def check_augmentation(transform: Any, spatial_dims: int, choice: str) -> None:
    """Refuse a 2D pipeline that would transform volumes, and the reverse, naming the key.

    Raises:
        ConfigError: naming `augmentation=`.
    """
    if transform is None or getattr(transform, "empty", False):
        return
    volume_pipeline = isinstance(transform, SeededVolumeAugment)
    if spatial_dims == 3 and not volume_pipeline:
        raise ConfigError(
            f"augmentation={choice} is a 2D (albumentations) pipeline, but the data are volumes: "
            "choose augmentation=volume (or none)"
        )
    if spatial_dims == 2 and volume_pipeline:
        raise ConfigError(
            f"augmentation={choice} is a 3D (MONAI) pipeline, but the data are 2D images: choose "
            "a 2D one (augmentation=basic, segmentation, ...)"
        )
