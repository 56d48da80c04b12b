"""The base of every 3D segmentation dataset: a volume and its label volume in; random 3D patches
for training and whole volumes at native size for evaluation out."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from medtrain.data.file_cache import DEFAULT_CACHE_MB, decoded_cache, read_through
from medtrain.data.segmentation import (
    SeededSamples,
    check_mask_options,
    pixel_size,
    random_patch,
)
from medtrain.data.transforms import (
    Normalize,
    SharedEpoch,
    match_channels,
    parse_windows,
    sample_seed,
    window_ct,
)
from medtrain.data.volume_transforms import (
    channels_first,
    resize_volume,
    volume_size,
    with_channels,
)
from medtrain.errors import ConfigError, DataError

NAN3 = (float("nan"),) * 3
# The most voxels a volume may have once resampled to `target_spacing` (512^3, 512 MB as float32):
# a file stating a huge voxel size cannot make resampling allocate without bound.
MAX_RESAMPLED_VOXELS = 512**3


def voxel_size(value: Any, key: str) -> tuple[float, float, float] | None:
    """A configured voxel size in mm per axis (x, y, z: the RAS order files are read in): three
    numbers, or one for isotropic voxels; None stays None (`pixel_size` with three axes)."""
    return pixel_size(value, key, axes=3)  # type: ignore[return-value]


class VolumeSegmentationDataset(SeededSamples, Dataset):
    """A split of volumes with label volumes; subclasses fill `self.ids` and implement
    `read_image` (D x H x W [x C]), `read_mask` (D x H x W) and optionally `read_spacing` and
    `read_affine`.

    Training samples: the volume is normalized whole, resampled to `target_spacing` when set, then
    a random `patch_size` patch is cut (a `foreground_fraction` of them centred on a foreground
    voxel) and augmented (`augmentation=volume`: MONAI transforms moving image and mask together).
    Evaluation samples hold whole volumes: `image` at the model's spacing, `mask` at native size
    (logits are resized back, so metrics and volumes in mL are native), `intensity` (D x H x W x C
    before normalization, for overlays), `spacing` (mm per axis, NaN when unknown)
    and `affine` (the 4 x 4 voxel-to-world matrix written into predicted NIfTI masks).

    Args:
        split: `train`, `val` or `test`.
        transform: a `SeededVolumeAugment` (called with `image=` and `mask=`), or None.
        normalize: keyword arguments of `Normalize` (`zscore` or `percentile` suit MRI; `fixed`
            with a window for CT).
        in_channels: channels the model expects; None: as stored.
        num_classes: classes including background.
        class_names: one name per class, background first.
        patch_size: training patch (int for a cube, or one size per axis, in the RAS order files
            are read in); None: whole volumes
            (equal sizes needed to batch them).
        foreground_fraction: share of training patches centred on a foreground voxel.
        patches_per_image: training samples drawn from each volume per epoch.
        patch_area_power: share the epoch's patches among the volumes by their size (in the
            model's voxels) to this power (see `SegmentationDataset`).
        spacing: voxel size (mm per axis) when the files state none.
        seed: seed of the patch positions (with the epoch and the sample index).
        target_spacing: resample volumes to this voxel size for the model (trilinear for images,
            nearest neighbour for training masks); None: native voxels.
        window: CT windowing in Hounsfield units (see `ImageDataset`).
        image_size: not used for volumes (set `target_spacing`); refused when set.
        multilabel: refused (one class per voxel).
        spatial_dims: 3 (kept in the dataset's config, so that the model's default follows it).
        cache_mb: megabytes of decoded volumes each loader process keeps for the next epochs.
    """

    provides: tuple[str, ...] = ("masks",)
    spatial_dims = 3
    reads_files = False
    sample_fields: tuple[str, ...] | None = ("ids", "groups")
    resize_to_input_size = False
    normalizes_before_resize = True
    scales_by_storage_type = False  # volumes are modality values (see `scaled`)
    has_instances = False

    def __init__(
        self,
        split: str,
        transform: Callable[..., Mapping[str, np.ndarray]] | None = None,
        normalize: Mapping[str, Any] | None = None,
        in_channels: int | None = None,
        num_classes: int = 2,
        class_names: Sequence[str] | None = None,
        patch_size: int | Sequence[int] | None = None,
        foreground_fraction: float = 0.0,
        patches_per_image: int = 1,
        patch_area_power: float = 0.0,
        spacing: Sequence[float] | None = None,
        seed: int = 0,
        target_spacing: Sequence[float] | None = None,
        window: Any = None,
        image_size: Any = None,
        multilabel: bool = False,
        spatial_dims: int = 3,
        cache_mb: float = DEFAULT_CACHE_MB,
    ):
        if spatial_dims != 3:
            raise ConfigError(
                f"dataset.spatial_dims={spatial_dims}: this dataset holds volumes (3)"
            )
        if image_size is not None:
            raise ConfigError(
                "dataset.image_size: volumes keep their proportions; set dataset.target_spacing "
                "(mm per voxel) to resample them"
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
        self.split = split
        self.transform = transform
        self.normalize = Normalize(**(normalize or {}))
        self.windows = parse_windows(window)
        self.reads_modality = self.windows is not None
        if self.windows is not None and in_channels is None:
            in_channels = len(self.windows)
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.multilabel = False
        self.class_names = names
        self.image_size = None
        self.patch_size = volume_size(patch_size, "dataset.patch_size")
        self.foreground_fraction = foreground_fraction
        self.patches_per_image = patches_per_image
        self.patch_area_power = float(patch_area_power)
        self.spacing = voxel_size(spacing, "dataset.spacing")
        self.target_spacing = voxel_size(target_spacing, "dataset.target_spacing")
        self.seed = seed
        self.ids: list[str] = []
        self.groups: list[str] | None = None
        self.decoded = decoded_cache(self.reads_files, cache_mb)
        self.fresh_state()

    def fresh_state(self) -> None:
        """The state kept per case index, made anew (see `SegmentationDataset.fresh_state`)."""
        self.decoded = self.decoded and self.decoded.emptied()
        self.repeats = self.patches_per_image if self.split == "train" else 1
        self.shared_epoch = SharedEpoch()
        self._headers: dict[tuple[str, int], Any] = {}  # spacing and affine read once per file
        self._sample_images = None

    # Subclasses implement these.
    def read_image(self, index: int) -> np.ndarray:
        raise NotImplementedError

    def read_mask(self, index: int) -> np.ndarray:
        raise NotImplementedError

    def read_spacing(self, index: int) -> tuple[float, float, float] | None:
        """The voxel size the file states (mm per axis); None if it states none."""
        return None

    def read_affine(self, index: int) -> np.ndarray | None:
        """The file's 4 x 4 voxel-to-world matrix (for the axis order D, H, W); None: from the
        spacing alone."""
        return None

    def source(self, index: int) -> str:
        return self.ids[index]

    def preprocessing(self) -> dict[str, Any]:
        """The evaluation preprocessing as constructor arguments (saved with each checkpoint)."""
        return {
            "in_channels": self.in_channels,
            "normalize": dict(self.normalize.params),
            "num_classes": self.num_classes,
            "class_names": list(self.class_names),
            "spacing": None if self.spacing is None else list(self.spacing),
            "window": None if self.windows is None else [list(w) for w in self.windows],
            "target_spacing": None if self.target_spacing is None else list(self.target_spacing),
        }

    def scaled(self, image: np.ndarray) -> np.ndarray:
        """A stored volume as float32 D x H x W x C in modality units (MRI intensities, CT
        Hounsfield units; not scaled by its storage type, as 2D pictures are), windowed when
        `window` is set, channels matched."""
        if image.ndim not in (3, 4):
            raise DataError(f"volume of shape {image.shape}: expected D x H x W [x C]")
        image = (
            window_ct(image, self.windows, spatial_dims=3)
            if self.windows
            else with_channels(image, 3).astype(np.float32, copy=False)
        )
        return match_channels(image, self.in_channels)

    def cached(self, kind: str, index: int, read: Callable[[int], Any]) -> Any:
        return read_through(self.decoded, (kind, index), lambda: read(index))

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The scaled volume and its checked label volume (int64), native size."""
        image = self.scaled(self.cached("image", index, self.read_image))
        return image, self.checked_mask(index, image.shape[:3])

    def checked_mask(self, index: int, shape: Sequence[int]) -> np.ndarray:
        """Volume `index`'s label volume (int64), checked against the volume's (D, H, W) and the
        classes; errors name the file."""
        mask = self.cached("mask", index, self.read_mask)
        if tuple(mask.shape) != tuple(shape[:3]):
            raise DataError(
                f"{self.source(index)}: mask is {'x'.join(map(str, mask.shape))} but the volume is "
                f"{'x'.join(map(str, shape[:3]))}"
            )
        if mask.size and (mask.min() < 0 or mask.max() >= self.num_classes):
            raise DataError(
                f"{self.source(index)}: mask value {int(mask.max())} is outside the "
                f"{self.num_classes} classes of dataset.num_classes={self.num_classes}"
            )
        return mask.astype(np.int64)

    def header(self, kind: str, index: int, read: Callable[[int], Any]) -> Any:
        if (kind, index) not in self._headers:
            self._headers[kind, index] = read(index)
        return self._headers[kind, index]

    def voxel_spacing(self, index: int) -> tuple[float, float, float]:
        """The file's voxel size, else `dataset.spacing`, else NaN.

        Raises:
            DataError: a file that states another voxel size than `dataset.spacing` (which would
                be ignored, and the volumes in mL computed from the file's).
        """
        stated = self.header("spacing", index, self.read_spacing)
        if stated and self.spacing and not np.allclose(stated, self.spacing, rtol=1e-3):
            raise DataError(
                f"{self.source(index)}: the file states voxels of "
                f"{' x '.join(f'{v:.6g}' for v in stated)} mm, "
                f"dataset.spacing={list(self.spacing)}: a file's own voxel size is used, "
                "dataset.spacing only where a file states none (arrays, generated volumes). "
                "Leave dataset.spacing null, or, if the header is wrong (1 mm in every axis with "
                "an identity affine is often a header never filled in), write the files again "
                "with their true affine"
            )
        return stated or self.spacing or NAN3

    def affine(self, index: int, spacing: Sequence[float]) -> np.ndarray:
        """The file's affine, or a diagonal one from the spacing (1 mm where unknown)."""
        affine = self.header("affine", index, self.read_affine)
        if affine is not None:
            return np.asarray(affine, dtype=np.float64)
        steps = [1.0 if math.isnan(s) else s for s in spacing]
        return np.diag([*steps, 1.0])

    def read_stored_affine(self, index: int) -> np.ndarray | None:
        """The file's own affine when the volume was read reordered to RAS (its written mask
        follows the file's voxel order); None when it was stored in RAS order."""
        return None

    def stored_affine(self, index: int, spacing: Sequence[float]) -> np.ndarray:
        """The affine of the file's own voxel order (`affine` when it is stored in RAS order)."""
        stored = self.header("stored_affine", index, self.read_stored_affine)
        return self.affine(index, spacing) if stored is None else np.asarray(stored, np.float64)

    def model_size(
        self, shape: Sequence[int], spacing: Sequence[float] | None
    ) -> tuple[int, int, int] | None:
        """The (depth, height, width) the model sees at `target_spacing`, or None (native)."""
        if self.target_spacing is None:
            return None
        if spacing is None or any(math.isnan(s) for s in spacing):
            raise DataError(
                "dataset.target_spacing needs each volume's voxel size: the file states none; "
                "set dataset.spacing"
            )
        size = tuple(
            max(1, round(n * s / t))
            for n, s, t in zip(tuple(shape[:3]), spacing, self.target_spacing, strict=True)
        )
        if math.prod(size) > MAX_RESAMPLED_VOXELS:
            raise DataError(
                f"a {'x'.join(map(str, shape[:3]))} volume of {list(spacing)} mm voxels becomes "
                f"{'x'.join(map(str, size))} at dataset.target_spacing={list(self.target_spacing)}"
                f": over {MAX_RESAMPLED_VOXELS:,} voxels"
            )
        return size

    def model_shape(self, index: int) -> tuple[int, int, int]:
        """The (depth, height, width) volume `index` has for the model."""
        shape = self.cached("image", index, self.read_image).shape[:3]
        return self.model_size(shape, self.voxel_spacing(index)) or shape

    def model_input(
        self, image: np.ndarray, spacing: Sequence[float] | None = None
    ) -> torch.Tensor:
        """An evaluation volume (float D x H x W x C) -> the model's input (C x D x H x W):
        normalized, then resampled to `target_spacing` when set."""
        image = self.normalize(image)
        size = self.model_size(image.shape, spacing)
        if size is not None:
            image = resize_volume(image, size)
        return channels_first(image)

    def prepare(
        self, image: np.ndarray, index: int = 0, spacing: Sequence[float] | None = None
    ) -> tuple[torch.Tensor, np.ndarray]:
        """A stored volume without a mask -> (the model's input, the intensity volume at native
        size), exactly as evaluation prepares it (`medtrain predict` and `serve`)."""
        image = self.scaled(image)
        if self.transform is not None:
            image = with_channels(self.transform(index, image=image)["image"], 3)
        spacing = spacing or self.spacing
        return self.model_input(image, spacing), np.ascontiguousarray(image, dtype=np.float32)

    def training_volume(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The normalized volume and its mask at the model's spacing (kept decoded)."""
        spacing = self.voxel_spacing(index)

        def image(index: int) -> np.ndarray:
            volume = self.normalize(self.load(index)[0]).astype(np.float32, copy=False)
            size = self.model_size(volume.shape, spacing)
            return volume if size is None else resize_volume(volume, size)

        def mask(index: int) -> np.ndarray:
            shape = self.cached("image", index, self.read_image).shape
            labels = self.checked_mask(index, shape[:3])
            size = self.model_size(labels.shape, spacing)
            return labels if size is None else resize_volume(labels, size, labels=True)

        return self.cached("train_image", index, image), self.cached("train_mask", index, mask)

    def __getitem__(self, sample_index: int) -> dict[str, Any]:
        index = self.sample_images[sample_index]
        spacing = self.voxel_spacing(index)
        sample: dict[str, Any] = {"id": self.ids[index]}
        if self.split == "train":
            image, mask = self.training_volume(index)
            if self.patch_size is not None:
                rng = np.random.default_rng(sample_seed(self.seed, self.epoch, sample_index))
                image, mask = random_patch(
                    image, mask, self.patch_size, rng, self.foreground_fraction
                )
            if self.transform is not None:
                out = self.transform(sample_index, image=image, mask=mask)
                image, mask = with_channels(out["image"], 3), out["mask"]
                if self.patch_size is not None and tuple(mask.shape) != self.patch_size:
                    raise ConfigError(
                        f"augmentation.train turned a {list(self.patch_size)} patch into "
                        f"{list(mask.shape)}: quarter turns need equal sides in their plane; "
                        "turn in the plane of equal patch sides and voxel sizes (RandRotate90d "
                        "spatial_axes; for axial scans read in RAS order [0, 1]), or drop "
                        "RandRotate90d"
                    )
            sample["image"] = channels_first(image)
        else:
            image, mask = self.load(index)
            if self.transform is not None:
                out = self.transform(sample_index, image=image, mask=mask)
                image, mask = with_channels(out["image"], 3), out["mask"]
            # a copy: the decoded volume may be a cache's read-only array
            sample["intensity"] = torch.from_numpy(np.array(image, dtype=np.float32))
            sample["image"] = self.model_input(image, spacing)
            sample["affine"] = torch.from_numpy(self.affine(index, spacing))
            sample["stored_affine"] = torch.from_numpy(self.stored_affine(index, spacing))
        sample |= {
            "mask": torch.from_numpy(np.ascontiguousarray(mask, dtype=np.int64)),
            "spacing": torch.tensor(spacing, dtype=torch.float64),
        }
        return sample
