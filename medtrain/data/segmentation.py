"""The base of every segmentation dataset: an image and its class mask in, aligned dict samples out."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from medtrain.analysis.instances import contact_pixels
from medtrain.data.base import SPLITS
from medtrain.data.file_cache import DEFAULT_CACHE_MB, decoded_cache, read_through
from medtrain.data.transforms import (
    Normalize,
    SharedEpoch,
    as_hwc,
    match_channels,
    parse_windows,
    resize,
    sample_seed,
    to_float01,
    window_ct,
)
from medtrain.errors import ConfigError, DataError


def pair(value: int | Sequence[int] | None, key: str) -> tuple[int, int] | None:
    """An int (square) or [height, width] as a (height, width) tuple of positive ints."""
    if value is None:
        return None
    size = (value, value) if isinstance(value, int) else tuple(value)
    if len(size) != 2 or any(not isinstance(s, int) or s < 1 for s in size):
        raise ConfigError(f"{key}={value!r}: give a positive int or [height, width]")
    return size


def patch_shares(sizes: Sequence[float], patches_per_image: int, power: float) -> list[int]:
    """How many of an epoch's `patches_per_image * len(sizes)` training patches each image gives:
    one each, and the rest in proportion to the image's size (pixels or voxels) to the power
    `power` (0: every image `patches_per_image`; 1: the rest in proportion to the pixels, so a
    large image is not seen as rarely as a small one). Rounded by largest remainder, so the total
    stays `patches_per_image * len(sizes)`."""
    total = patches_per_image * len(sizes)
    if power == 0 or not sizes:
        return [patches_per_image] * len(sizes)
    weights = np.asarray(sizes, dtype=np.float64) ** power
    spare = total - len(sizes)  # one patch each first, the rest by weight
    exact = spare * weights / weights.sum()
    shares = np.floor(exact).astype(int)
    left = spare - int(shares.sum())
    shares[np.argsort(-(exact - shares), kind="stable")[:left]] += 1
    return [int(n) + 1 for n in shares]


def random_patch(
    image: np.ndarray,
    mask: np.ndarray,
    size: tuple[int, ...],
    rng: np.random.Generator,
    foreground_fraction: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Crop an aligned (image, mask) patch of `size` (one side per mask axis: 2D images or 3D
    volumes; the image has a trailing channel axis); images smaller than the patch are padded
    first, the mask in the same way as the image.

    With probability `foreground_fraction` the patch is centred on a random foreground pixel, which
    keeps small structures from being outnumbered by background patches.
    """
    pads = [max(s - n, 0) for s, n in zip(size, mask.shape, strict=True)]
    if any(pads):
        padding = tuple((p // 2, p - p // 2) for p in pads)
        # Image and mask are padded alike (mirrored, or edge-repeated when too small to mirror):
        # a mirrored structure keeps its label, so the patch never shows unlabelled anatomy.
        mode = "reflect" if _fits(image, padding) else "edge"
        image = np.pad(image, (*padding, (0, 0)), mode=mode)
        mask = np.pad(mask, padding, mode=mode)
    starts = [int(rng.integers(0, n - s + 1)) for n, s in zip(mask.shape, size, strict=True)]
    if foreground_fraction and rng.random() < foreground_fraction:
        points = np.nonzero(mask)
        if points[0].size:
            k = int(rng.integers(points[0].size))
            starts = [
                int(np.clip(axis[k] - s // 2, 0, n - s))
                for axis, s, n in zip(points, size, mask.shape, strict=True)
            ]
    window = tuple(slice(a, a + s) for a, s in zip(starts, size, strict=True))
    return image[window], mask[window]


def _fits(image: np.ndarray, padding) -> bool:
    return all(
        before < side and after < side
        for (before, after), side in zip(padding, image.shape[: len(padding)], strict=True)
    )


def check_mask_options(
    split: str,
    multilabel: bool,
    num_classes: int | None,
    class_names: Sequence[str] | None,
    foreground_fraction: float,
    patches_per_image: int,
    patch_area_power: float = 0.0,
) -> list[str]:
    """The settings every segmentation dataset (2D or 3D) shares, checked; returns the class names
    (`background`, `class_1`, ... when none are given).

    Raises:
        ConfigError: naming the `dataset.` key that is wrong.
    """
    if split not in SPLITS:
        raise ConfigError(f"split {split!r} is not one of {SPLITS}")
    if multilabel:
        raise ConfigError("dataset.multilabel: segmentation masks hold one class per pixel")
    if num_classes is None or num_classes < 2:
        raise ConfigError(
            f"dataset.num_classes={num_classes}: give the number of classes including "
            "background (2 for a binary mask)"
        )
    if class_names is not None and len(class_names) != num_classes:
        raise ConfigError(
            f"dataset.class_names has {len(class_names)} names for {num_classes} classes "
            "(background included; set dataset.num_classes to match)"
        )
    if not 0 <= foreground_fraction <= 1:
        raise ConfigError(f"dataset.foreground_fraction={foreground_fraction} must be in [0, 1]")
    if not isinstance(patches_per_image, int) or patches_per_image < 1:
        raise ConfigError(f"dataset.patches_per_image={patches_per_image} must be an integer >= 1")
    if (
        isinstance(patch_area_power, bool)
        or not isinstance(patch_area_power, (int, float))
        or not 0 <= patch_area_power <= 1
    ):
        raise ConfigError(
            f"dataset.patch_area_power={patch_area_power!r} must be a number in [0, 1] (0: the "
            "same patches from every image, 1: in proportion to its size)"
        )
    if patch_area_power and patches_per_image == 1:
        raise ConfigError(
            f"dataset.patch_area_power={patch_area_power} shares patches_per_image x images "
            "patches, at least one per image: with dataset.patches_per_image=1 there are none "
            "to share; raise patches_per_image (e.g. 4) or set patch_area_power=0"
        )
    if class_names is not None:
        return list(class_names)
    return ["background", *(f"class_{k}" for k in range(1, num_classes))]


class SeededSamples:
    """The epoch that, with the seed and the sample index, seeds a dataset's patches and
    augmentation (`shared_epoch`, a `SharedEpoch` the dataset makes in `fresh_state`), and the
    image each sample index draws from (`sample_images`)."""

    shared_epoch: SharedEpoch
    transform: Any
    ids: list[str]
    split: str
    repeats: int
    patch_area_power: float
    # the image of each sample index, made on first use; `fresh_state` resets it
    _sample_images: list[int] | None = None

    def __len__(self) -> int:
        return len(self.sample_images)

    def model_shape(self, index: int) -> tuple[int, ...]:
        """The shape image `index` has for the model (training patches are cut from it)."""
        raise NotImplementedError

    @property
    def sample_images(self) -> list[int]:
        """The image of each sample index: `repeats` samples per image, or with
        `patch_area_power` training patches shared by image size (read once, on first use).

        When every image gives the same number, sample k is image k mod N, round after round,
        as in earlier releases (the index seeds the patch and the augmentation, so a rerun of
        an earlier run draws the same ones); otherwise the samples of an image follow each
        other."""
        if self._sample_images is None:
            images = list(range(len(self.ids))) * self.repeats
            if self.split == "train" and self.patch_area_power:
                sizes = [math.prod(self.model_shape(i)) for i in range(len(self.ids))]
                shares = patch_shares(sizes, self.repeats, self.patch_area_power)
                if len(set(shares)) > 1:
                    images = [i for i, n in enumerate(shares) for _ in range(n)]
            self._sample_images = images
        return self._sample_images

    @property
    def epoch(self) -> int:
        return int(self.shared_epoch)

    def set_epoch(self, epoch: int) -> None:
        """Move the augmentation and patch streams to `epoch` (called by the loader)."""
        self.shared_epoch.set(epoch)
        if hasattr(self.transform, "set_epoch"):
            self.transform.set_epoch(epoch)


def pixel_size(value: Any, key: str, axes: int = 2) -> tuple[float, ...] | None:
    """A configured pixel (or, with `axes=3`, voxel) size in mm, one number per axis: (row_mm,
    col_mm) or (depth_mm, row_mm, col_mm); one number is the same on every axis; None stays None.

    Raises:
        ConfigError: naming `key`, unless the values are finite and > 0.
    """
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value] * axes
    try:
        values = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        values = ()
    if len(values) != axes or not all(math.isfinite(v) and v > 0 for v in values):
        names = "[row_mm, col_mm]" if axes == 2 else "[depth_mm, row_mm, col_mm]"
        same = "square pixels" if axes == 2 else "isotropic voxels"
        raise ConfigError(
            f"{key}={value!r}: give {names} (or one number for {same}), finite and > 0"
        )
    return values


class SegmentationDataset(SeededSamples, Dataset):
    """A split of images with class masks; subclasses fill `self.ids` and implement `read_image`,
    `read_mask` and (optionally) `read_spacing`.

    Each sample is a dict: `image` (float32 C x H x W), `mask` (int64 H x W class indices), `id`,
    `spacing` (float64 [row_mm, col_mm], NaN when unknown) and, for val/test, `intensity` (the
    image before normalization, float32 H x W x C, for measurements and overlays) and, when the
    data have them, `instances` (int32 H x W object labels, native size).

    Geometry: the augmentation pipeline moves image and mask together (albumentations warps masks
    with nearest-neighbour interpolation and applies intensity transforms to the image only). Then
    training samples are resized to `image_size` and/or cropped to random `patch_size` patches;
    validation and test images are resized for the model only, and their masks keep the native size,
    so metrics and measurements are always computed at native resolution.

    Args:
        split: `train`, `val` or `test`.
        transform: a `SeededAugment` (called with `image=` and `mask=`), or None.
        normalize: keyword arguments of `Normalize`.
        in_channels: channels the model expects (grey <-> RGB converted); None: as stored.
        num_classes: classes including background (2 for a binary mask).
        class_names: one name per class, background first; None: `background`, `class_1`, ...
        image_size: resize images to this size (int or [height, width]); None: native size.
        patch_size: train on random patches of this size (int or [height, width]); None: whole images.
        foreground_fraction: share of training patches centred on a foreground pixel.
        patches_per_image: training samples drawn from each image per epoch (different patches
            and augmentations), so that an epoch of a few large images is not a few steps.
        patch_area_power: share the epoch's `patches_per_image * images` patches among the
            images by their size (in the model's pixels) to this power: 0 (every image alike)
            to 1 (one each, the rest in proportion to the pixels), `patch_shares`.
        spacing: pixel spacing [row_mm, col_mm] used when the files do not state one.
        spatial_dims: 2 or None (the key every dataset config may hold; volumes have their own
            classes).
        seed: seed of the patch positions (with the epoch and the sample index).
        window: CT windowing of images in modality units (see `ImageDataset`).
        target_spacing: resample every image to this pixel spacing [row_mm, col_mm] for the model
            (training masks alike; evaluation masks stay native, like `image_size`); needs the
            files' or `spacing`'s pixel size.
    """

    provides: tuple[str, ...] = ("masks",)  # what the samples hold for a task (`Task.targets`)
    reads_files = False  # subclasses that decode files: keep them decoded (`cache_mb`)
    # The attributes with one entry per case, aligned with `ids`: cross-validation regroups them
    # (`medtrain.data.folds`); a subclass adds its own (file paths, images); None refuses folds.
    sample_fields: tuple[str, ...] | None = ("ids", "groups")
    # Evaluation keeps the native size (logits are resized back), and normalizes before resizing.
    resize_to_input_size = False
    normalizes_before_resize = True

    def __init__(
        self,
        split: str,
        transform: Callable[..., Mapping[str, np.ndarray]] | None = None,
        normalize: Mapping[str, Any] | None = None,
        in_channels: int | None = None,
        num_classes: int = 2,
        class_names: Sequence[str] | None = None,
        image_size: int | Sequence[int] | None = None,
        patch_size: int | Sequence[int] | None = None,
        foreground_fraction: float = 0.0,
        patches_per_image: int = 1,
        patch_area_power: float = 0.0,
        spacing: Sequence[float] | None = None,
        seed: int = 0,
        multilabel: bool = False,
        window: Any = None,
        target_spacing: Sequence[float] | None = None,
        cache_mb: float = DEFAULT_CACHE_MB,
        spatial_dims: int | None = None,
    ):
        if spatial_dims not in (None, 2):
            raise ConfigError(
                f"dataset.spatial_dims={spatial_dims}: this dataset holds 2D images; volumes are "
                "read by dataset=synthetic_segmentation3d or nifti_volumes"
            )
        names = check_mask_options(
            split,
            multilabel,
            num_classes,
            class_names,
            foreground_fraction,
            patches_per_image,
            patch_area_power,
        )
        spacing = pixel_size(spacing, "dataset.spacing")
        target_spacing = pixel_size(target_spacing, "dataset.target_spacing")
        if target_spacing is not None and image_size is not None:
            raise ConfigError("dataset.target_spacing and dataset.image_size: set one of them")
        self.split = split
        self.transform = transform
        self.normalize = Normalize(**(normalize or {}))
        self.windows = parse_windows(window)
        self.reads_modality = self.windows is not None
        if self.windows is not None and in_channels is None:
            in_channels = len(self.windows)
        self.target_spacing = target_spacing
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.multilabel = False
        self.class_names = names
        self.image_size = pair(image_size, "dataset.image_size")
        self.patch_size = pair(patch_size, "dataset.patch_size")
        self.foreground_fraction = foreground_fraction
        self.patches_per_image = patches_per_image
        self.patch_area_power = float(patch_area_power)
        self.spacing = spacing
        self.seed = seed
        self.ids: list[str] = []
        self.groups: list[str] | None = None  # see ImageDataset.groups
        self.decoded = decoded_cache(self.reads_files, cache_mb)
        self.fresh_state()

    def fresh_state(self) -> None:
        """The state kept per case index and split, made anew (here and on a copy whose cases were
        regrouped into a fold: `medtrain.data.folds.regrouped`)."""
        self.decoded = self.decoded and self.decoded.emptied()
        self.repeats = self.patches_per_image if self.split == "train" else 1
        self.shared_epoch = SharedEpoch()  # read by loader workers that outlive an epoch
        self._file_spacing: dict[int, tuple[float, float] | None] = {}
        self._sample_images = None

    # Subclasses implement these.
    def read_image(self, index: int) -> np.ndarray:
        raise NotImplementedError

    # A subclass whose masks come with one label per object sets `has_instances` and implements
    # `read_instances`: its val and test samples then hold `instances` for instance metrics.
    has_instances = False
    # Training masks mark the pixels where objects touch as 2 (`read_contacts`), for
    # task.instances.method=contacts (a subclass with instance labels sets it).
    marks_contacts = False

    def read_instances(self, index: int) -> np.ndarray:
        """Sample `index`'s instance labels (H x W, 0 background, one number per object)."""
        raise NotImplementedError

    def read_mask(self, index: int) -> np.ndarray:
        raise NotImplementedError

    def read_contacts(self, index: int) -> np.ndarray:
        """Where sample `index`'s objects touch (bool H x W, `contact_pixels`)."""
        return contact_pixels(self.cached("instances", index, self.read_instances))

    def read_spacing(self, index: int) -> tuple[float, float] | None:
        """Spacing stated by the file itself (DICOM, NIfTI, metric PNG/TIFF); None if it states none."""
        return None

    def source(self, index: int) -> str:
        """What error messages name for a sample (a file path for file-based datasets)."""
        return self.ids[index]

    def model_shape(self, index: int) -> tuple[int, int]:
        """The (height, width) image `index` has for the model (training patches are cut from it):
        `image_size`, else the image's (decoded once, kept in the cache of decoded files), at
        `target_spacing` when set."""
        if self.image_size is not None:
            return self.image_size
        shape = self.cached("image", index, self.read_image).shape[:2]
        return self.model_size(shape, self.spacing_of(index)) or shape

    def spacing_of(self, index: int) -> tuple[float, float]:
        """Image `index`'s pixel spacing: the file's (read once, not every epoch), else
        `spacing`, else NaN."""
        if index not in self._file_spacing:
            self._file_spacing[index] = self.read_spacing(index)
        return self._file_spacing[index] or self.spacing or (float("nan"), float("nan"))

    def preprocessing(self) -> dict[str, Any]:
        """The evaluation preprocessing as constructor arguments of this class (saved in each
        checkpoint, so that prediction, serving and export rebuild exactly this)."""
        return {
            "in_channels": self.in_channels,
            "image_size": None if self.image_size is None else list(self.image_size),
            "normalize": dict(self.normalize.params),
            "num_classes": self.num_classes,
            "class_names": list(self.class_names),
            "spacing": None if self.spacing is None else list(self.spacing),
            "window": None if self.windows is None else [list(w) for w in self.windows],
            "target_spacing": None if self.target_spacing is None else list(self.target_spacing),
        }

    def scaled(self, image: np.ndarray) -> np.ndarray:
        """A stored image (H x W [x C], any bit depth) as float H x W x C in [0, 1], channels matched."""
        image = window_ct(image, self.windows) if self.windows else to_float01(as_hwc(image))
        return match_channels(image, self.in_channels)

    def model_size(
        self, shape: Sequence[int], spacing: Sequence[float] | None
    ) -> tuple[int, int] | None:
        """The (height, width) the model sees for an image of `shape`: `image_size`, the size at
        `target_spacing`, or None (native)."""
        if self.image_size is not None:
            return self.image_size
        if self.target_spacing is None:
            return None
        if spacing is None or any(math.isnan(s) for s in spacing):
            raise DataError(
                "dataset.target_spacing needs each image's pixel spacing: the file states none; "
                "set dataset.spacing"
            )
        return tuple(
            max(1, round(n * s / t))
            for n, s, t in zip(tuple(shape[:2]), spacing, self.target_spacing, strict=True)
        )

    def model_input(
        self, image: np.ndarray, spacing: Sequence[float] | None = None
    ) -> torch.Tensor:
        """An augmented evaluation image (float H x W x C) -> the model's input (float32 C x H x W):
        normalized, then resized when `image_size` or `target_spacing` is set."""
        image = self.normalize(image)
        size = self.model_size(image.shape, spacing)
        if size is not None:
            image = resize(image, size)
        return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32))

    def prepare(
        self, image: np.ndarray, index: int = 0, spacing: Sequence[float] | None = None
    ) -> tuple[torch.Tensor, np.ndarray]:
        """A stored image without a mask -> (the model's input, the intensity image at native size
        for measurements and overlays), exactly as evaluation prepares it. `medtrain predict` and
        `medtrain serve` go through here."""
        image = self.scaled(image)
        if self.transform is not None:
            image = as_hwc(self.transform(index, image=image)["image"])
        spacing = spacing or self.spacing
        return self.model_input(image, spacing), np.ascontiguousarray(image, dtype=np.float32)

    def cached(self, kind: str, index: int, read: Callable[[int], np.ndarray]) -> np.ndarray:
        """`read(index)`, from the cache of decoded files when this dataset keeps one."""
        return read_through(self.decoded, (kind, index), lambda: read(index))

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The image (float H x W x C, channels matched) and its checked class mask, native size."""
        image = self.scaled(self.cached("image", index, self.read_image))
        return image, self.checked_mask(index, image.shape[:2])

    def checked_mask(self, index: int, image_shape: tuple[int, ...]) -> np.ndarray:
        """Sample `index`'s class mask (int64), checked against its image's (height, width) and
        the classes; errors name the file."""
        mask = self.cached("mask", index, self.read_mask)
        if mask.shape != tuple(image_shape[:2]):
            raise DataError(
                f"{self.source(index)}: mask is {mask.shape[0]}x{mask.shape[1]} but the image is "
                f"{image_shape[0]}x{image_shape[1]}"
            )
        if mask.size and (mask.min() < 0 or mask.max() >= self.num_classes):
            values = np.unique(mask)
            smoothed = len(values) > 2 and values.max() == 255  # a 0/255 mask, blurred
            if self.num_classes == 2 and smoothed and not getattr(self, "class_values", None):
                shown = ", ".join(map(str, values[:6].tolist()))
                raise DataError(
                    f"{self.source(index)}: a binary mask holds {len(values)} values ({shown}"
                    f"{', ...' if len(values) > 6 else ''}), not two: was it resized or saved "
                    "with smoothing? Store 0 and one foreground value (255), resized with nearest "
                    "neighbour"
                    + (  # a few levels: classes of their own
                        f"; or, if the {len(values)} values are classes, set "
                        f"dataset.num_classes={len(values)} and dataset.class_values"
                        if len(values) <= 4
                        else ""
                    )
                )
            objects = self.num_classes == 2 and np.count_nonzero(values) >= 2
            if objects and getattr(self, "reads_instance_labels", False) and not self.has_instances:
                # Class indices 0..k-1: k classes; other values (0, 100, 200): class_values.
                k = len(values)
                classes = (
                    f"dataset.num_classes={k} (and dataset.class_names); else map stored values "
                    "with dataset.class_values"
                    if values.tolist() == list(range(k))
                    else f"dataset.num_classes={k} with dataset.class_values mapping them to "
                    f"0..{k - 1}"
                )
                hint = (
                    f" ({np.count_nonzero(values)} nonzero values: if each is one object, these are "
                    "instance labels: dataset.instance_labels=true; if they are classes, "
                    f"{classes})"
                )
            elif hasattr(self, "class_values"):
                hint = " (map stored values with dataset.class_values)"
            else:
                hint = ""
            raise DataError(
                f"{self.source(index)}: mask value {int(mask.max())} is outside the "
                f"{self.num_classes} classes of dataset.num_classes={self.num_classes}{hint}"
            )
        return mask.astype(np.int64)

    def __getitem__(self, sample_index: int) -> dict[str, Any]:
        # Repeated training samples of one image differ through the seeds of `sample_index`.
        index = self.sample_images[sample_index]
        image, mask = self.load(index)
        if self.split == "train" and self.marks_contacts:
            mask = np.where(self.cached("contacts", index, self.read_contacts), 2, mask)
        if self.transform is not None:
            out = self.transform(sample_index, image=image, mask=mask)
            image, mask = as_hwc(out["image"]), out["mask"]
        sample: dict[str, Any] = {"id": self.ids[index]}
        spacing = self.spacing_of(index)
        if self.split != "train":
            sample["intensity"] = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
            sample["image"] = self.model_input(image, spacing)
            if self.has_instances:
                labels = self.cached("instances", index, self.read_instances)
                if labels.shape != mask.shape:  # an evaluation pipeline that moved the mask
                    raise DataError(
                        f"{self.source(index)}: instance labels are {labels.shape} but the "
                        f"evaluated mask is {mask.shape}; evaluation transforms must keep the "
                        "geometry (augmentation.eval)"
                    )
                sample["instances"] = torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int32))
        else:
            # Normalize the whole image before cropping: a patch is scaled as in evaluation.
            image = self.normalize(image)
            size = self.model_size(image.shape, spacing)
            if size is not None:
                image = resize(image, size)
                mask = cv2.resize(
                    mask.astype(np.uint8), size[::-1], interpolation=cv2.INTER_NEAREST
                )
            if self.patch_size is not None:
                rng = np.random.default_rng(sample_seed(self.seed, self.epoch, sample_index))
                image, mask = random_patch(
                    image, mask, self.patch_size, rng, self.foreground_fraction
                )
            sample["image"] = torch.from_numpy(
                np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)
            )
        sample |= {
            "mask": torch.from_numpy(np.ascontiguousarray(mask, dtype=np.int64)),
            "spacing": torch.tensor(spacing, dtype=torch.float64),
        }
        return sample
