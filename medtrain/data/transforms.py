"""Image preprocessing shared by every dataset: intensity scaling, channels, resizing, seeded
albumentations pipelines and normalization."""

from __future__ import annotations

import hashlib
import random
import re
import zlib
from collections.abc import Sequence
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch
from albumentations.augmentations.crops.transforms import CropSizeError

from medtrain.data.readers import IMAGE_EXTENSIONS  # pictures: what predict refuses too
from medtrain.errors import ConfigError

NORMALIZE_MODES = ("fixed", "dataset", "zscore", "minmax", "percentile", "none")
RESIZE_MODES = ("resize", "crop_or_pad")
# CT display windows (centre, width) in Hounsfield units, as radiologists use them.
WINDOW_PRESETS = {
    "lung": (-600.0, 1500.0),
    "mediastinum": (50.0, 350.0),
    "abdomen": (40.0, 400.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
}
INVERT_MODES = (False, True, "auto")
# `augmentation.seeding`: `pipeline` draws every transform's decisions from one random stream per
# sample (independent draws); `per_transform`, what a config without the key means (runs before
# release 0.3), seeds each transform with the sample's seed, so their first draws are equal.
SEEDING_MODES = ("pipeline", "per_transform")


def to_float01(image: np.ndarray) -> np.ndarray:
    """Scale an image to float32 by its storage type: 8-bit /255, 16-bit /65535, floats unchanged."""
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    if image.dtype == np.uint16:
        return image.astype(np.float32) / 65535.0
    if image.dtype == bool:
        return image.astype(np.float32)
    # A read-only array (kept decoded by a dataset's cache) is copied: what follows may write.
    return image.astype(np.float32, copy=not image.flags.writeable)


def refuse_windowed_pictures(windows: Any, files: Sequence[Any], source: str) -> None:
    """A CT window (`dataset.window`) reads images in Hounsfield units: refuse data of pictures,
    whose values are display grey levels (a lung window maps 0-255 to 0.9-1.0 and clips every
    value above 150), as `medtrain predict` refuses such files for a windowed run.

    Raises:
        ConfigError: naming the first such file (or `source`) and how many there are.
    """
    if windows is None:
        return
    pictures = [f for f in files if str(f).lower().endswith(IMAGE_EXTENSIONS)]
    if pictures:
        more = f" (and {len(pictures) - 1} more)" if len(pictures) > 1 else ""
        raise ConfigError(
            f"dataset.window windows CT values in Hounsfield units, but {pictures[0]}{more} holds "
            f"display values ({source}): window DICOM files or NPY/NPZ arrays of HU values, or set "
            "dataset.window=null"
        )


def parse_windows(spec) -> list[tuple[float, float]] | None:
    """`dataset.window` as a list of (centre, width): a preset name, [centre, width], or a list of
    those (one channel each); None: no windowing.

    Raises:
        ConfigError: an unknown preset or a width that is not positive.
    """
    if spec is None:
        return None
    if isinstance(spec, str) or (
        len(spec) == 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in spec)
    ):
        spec = [spec]
    windows = []
    for item in spec:
        if isinstance(item, str):
            if item not in WINDOW_PRESETS:
                raise ConfigError(
                    f"dataset.window={item!r} is not a preset; choose one of "
                    f"{sorted(WINDOW_PRESETS)} or give [centre, width] in HU"
                )
            windows.append(WINDOW_PRESETS[item])
            continue
        try:
            centre, width = (float(v) for v in item)
        except (TypeError, ValueError) as err:
            raise ConfigError(
                f"dataset.window entry {item!r}: give a preset name or [centre, width]"
            ) from err
        if width <= 0:
            raise ConfigError(f"dataset.window entry {list(item)}: the width must be > 0")
        windows.append((centre, width))
    if not windows:
        raise ConfigError("dataset.window=[]: give a preset, [centre, width], or null")
    return windows


def window_ct(
    image: np.ndarray, windows: Sequence[tuple[float, float]], spatial_dims: int = 2
) -> np.ndarray:
    """Map modality values (H x W, or H x W x 1; D x H x W [x 1] for volumes, `spatial_dims=3`)
    through each window to [0, 1], clipped: one channel per window (... x len(windows),
    float32)."""
    grey_channel = image.ndim == spatial_dims + 1
    values = image[..., 0] if grey_channel else image
    if grey_channel and image.shape[-1] != 1:
        raise ConfigError(
            f"dataset.window: windowing needs grey images in modality units, got {image.shape[-1]} "
            "channels"
        )
    values = values.astype(np.float32, copy=False)
    channels = [np.clip((values - (c - w / 2)) / w, 0.0, 1.0) for c, w in windows]
    return np.stack(channels, axis=-1).astype(np.float32, copy=False)


def crop_or_pad(image: np.ndarray, size: int | Sequence[int]) -> np.ndarray:
    """Centre-crop or zero-pad H x W x C to `size` without rescaling (pixel spacing is kept)."""
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    out = np.zeros((height, width, image.shape[-1]), dtype=image.dtype)
    h, w = min(height, image.shape[0]), min(width, image.shape[1])
    top, left = (image.shape[0] - h) // 2, (image.shape[1] - w) // 2
    out_top, out_left = (height - h) // 2, (width - w) // 2
    out[out_top : out_top + h, out_left : out_left + w] = image[top : top + h, left : left + w]
    return out


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


# Storage types read as 0-1 of their bit depth (`to_float01`); every other type is read as it is.
SCALED_TYPES = frozenset({"uint8", "uint16", "bool"})


def scale_mismatch(kind: str, low: float, top: float, dtypes: set[str], high: float) -> str | None:
    """How an image stored as `kind` with finite values `low`..`top` lies on another pixel scale
    than images stored as `dtypes` with values up to `high` (the rule of the data check and of
    every prediction): `float_outside_0_1` (a float image read as it is beside 8/16-bit ones
    read as 0-1: 0-255 values are 255 times brighter), `eight_bit_in_16` (8-bit values stored in
    16 bits beside 8-bit images: 257 times darker), `scaled_for_float` (an 8/16-bit image read as
    0-1 beside float images of larger values), `float_beyond_0_1` (a float image of values above
    1.5 beside float images of 0-1: 0-255 values 255 times brighter), or None."""
    scaled = kind in SCALED_TYPES
    if not scaled and dtypes <= SCALED_TYPES and (low < -0.05 or top > 1.05):
        return "float_outside_0_1"  # 0-1 data resampled may overshoot a little
    if kind == "uint16" and dtypes <= {"uint8", "bool"} and top <= 255:
        return "eight_bit_in_16"
    if scaled and not dtypes & SCALED_TYPES and high > 1.5:
        return "scaled_for_float"
    if not scaled and dtypes and not dtypes & SCALED_TYPES and high <= 1.05 and top > 1.5:
        return "float_beyond_0_1"
    return None


class Normalize:
    """Intensity normalization after augmentation.

    Args:
        mode: `fixed` (subtract `mean`, divide by `std`, per channel), `dataset` (the same with the
            training split's per-channel mean and std, computed by `build_datasets` and saved with
            the run), `zscore` (each image to mean 0,
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
        mean: Sequence[float] | None = (0.5,),
        std: Sequence[float] | None = (0.5,),
        percentiles: Sequence[float] = (1.0, 99.8),
        invert: bool | str = False,
    ):
        if mode not in NORMALIZE_MODES:
            raise ConfigError(
                f"dataset.normalize.mode={mode!r} is not valid; choose one of {NORMALIZE_MODES}"
            )
        if mode == "fixed" and (mean is None or std is None):
            raise ConfigError(
                "dataset.normalize.mode=fixed needs mean and std; mode=dataset computes them on the "
                "training split"
            )
        mean = [] if mean is None else mean
        std = [] if std is None else std
        if mode in ("fixed", "dataset") and any(s <= 0 for s in std):
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

    @property
    def scale_matters(self) -> bool:
        """Whether an image's pixel scale reaches the network: fixed (or the training split's)
        statistics, none, or inverting images whose median is above 0.5 (`invert: auto`);
        per-image z-scoring, min-max and percentiles give the same input for 0-1 and 0-255
        values."""
        return self.mode in ("fixed", "dataset", "none") or self.invert == "auto"

    def described(self) -> dict:
        """`params` without the values this mode ignores (mean and std outside fixed and dataset,
        percentiles outside percentile): what a person reading the settings needs."""
        unused = {
            "mean": self.mode not in ("fixed", "dataset"),
            "std": self.mode not in ("fixed", "dataset"),
            "percentiles": self.mode != "percentile",
        }
        return {k: v for k, v in self.params.items() if not unused.get(k, False)}

    def inverted(self, image: np.ndarray) -> np.ndarray:
        """The image after the `invert` rule (the first step of normalization)."""
        if self.invert is True or (self.invert == "auto" and float(np.median(image)) > 0.5):
            return 1.0 - image
        return image

    def __call__(self, image: np.ndarray) -> np.ndarray:
        image = self.inverted(image)
        if self.mode in ("fixed", "dataset"):
            if not self.std.size:
                raise ConfigError(
                    "dataset.normalize.mode=dataset: the training split's statistics were not "
                    "computed (build the datasets with build_datasets)"
                )
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


class SharedEpoch:
    """The epoch that seeds augmentation and patches, in shared memory: loader workers that live
    across epochs (persistent workers, started once) read the value the main process set before
    each epoch began, as a fresh worker would have copied it."""

    def __init__(self, epoch: int = 0):
        self.value = torch.full((), int(epoch), dtype=torch.int64).share_memory_()

    def set(self, epoch: int) -> None:
        self.value.fill_(int(epoch))

    def __int__(self) -> int:
        return int(self.value)


class EpochStream:
    """What seeds a pipeline's stream besides the seed and the sample: the epoch, in shared
    memory (`SharedEpoch`), set by the loader before each epoch."""

    shared_epoch: SharedEpoch

    @property
    def epoch(self) -> int:
        return int(self.shared_epoch)

    def set_epoch(self, epoch: int) -> None:
        self.shared_epoch.set(epoch)


class SeededAugment(EpochStream):
    """Runs an albumentations pipeline with a random state fixed by (seed, epoch, sample index).

    Seeding per sample makes the augmented stream identical from run to run and independent of the
    number of loader workers and of the order in which they pick samples.

    Args:
        pipeline: the albumentations transform or Compose.
        seed: the run's seed.
        seeding: `pipeline` (one numpy and one Python generator shared by every transform of the
            pipeline, through albumentations' `set_random_state`, both set per sample from a hash
            of (seed, epoch, index): each draw is independent of the others) or `per_transform` (each
            transform's own generators seeded with the sample's seed, as `Compose.set_random_seed`
            does: what runs before release 0.3 used, kept so that they rerun and resume exactly).
        key: the config key of the pipeline (`augmentation.train`), named in errors.
    """

    def __init__(
        self,
        pipeline: A.BasicTransform | A.BaseCompose,
        seed: int = 0,
        seeding: str = "per_transform",
        key: str = "augmentation",
    ):
        if seeding not in SEEDING_MODES:
            raise ConfigError(
                f"augmentation.seeding={seeding!r} is not valid; choose one of {SEEDING_MODES}"
            )
        self.pipeline = pipeline
        self.seed = seed
        self.key = key
        self.shared_epoch = SharedEpoch()
        self.seeding = seeding
        if seeding == "pipeline":
            if not hasattr(pipeline, "set_random_state"):
                raise ConfigError(
                    f"augmentation.seeding=pipeline needs an albumentations transform or Compose, "
                    f"got {type(pipeline).__name__}; set augmentation.seeding=per_transform"
                )
            self.stream = (np.random.Generator(np.random.PCG64(0)), random.Random(0))
            pipeline.set_random_state(*self.stream)
        else:
            self.holders = generator_holders(pipeline)
        # An empty Compose (the usual eval pipeline) returns its input: skipped, with its seeding.
        self.empty = isinstance(pipeline, A.Compose) and not pipeline.transforms

    def __call__(self, index: int, **arrays: np.ndarray) -> dict[str, np.ndarray]:
        if self.empty:
            return arrays
        if self.seeding == "pipeline":
            if self.pipeline.random_generator is not self.stream[0]:  # another owner took it
                self.pipeline.set_random_state(*self.stream)
            start_stream(self.stream, self.seed, self.epoch, index)
        else:
            reseed(self.pipeline, self.holders, sample_seed(self.seed, self.epoch, index))
        try:
            return self.pipeline(**arrays)
        except CropSizeError as err:  # albumentations' traceback from deep inside the pipeline
            raise ConfigError(crop_too_large(self.key, self.pipeline, err)) from None
        except cv2.error as err:
            # A setting a transform takes but OpenCV cannot apply to these arrays (an Affine's
            # linear `mask_interpolation` on a class mask stopped its remap with an assertion).
            shapes = ", ".join(f"{k} {getattr(v, 'shape', '?')}" for k, v in arrays.items())
            what = str(err).strip().splitlines()[-1] if str(err).strip() else "no message"
            raise ConfigError(
                f"{failed_at(self.key, self.pipeline, err)} cannot be applied to a sample "
                f"({shapes}): OpenCV: {what}; check its arguments"
            ) from err


def failed_at(key: str, pipeline: A.BasicTransform | A.BaseCompose, err: Exception) -> str:
    """The config key and class of the innermost transform running when `err` was raised
    (`augmentation.train.transforms.1 (Affine)`), else `key`."""
    transform = None
    trace = err.__traceback__
    while trace is not None:
        running = trace.tb_frame.f_locals.get("self")
        if isinstance(running, A.BasicTransform):
            transform = running
        trace = trace.tb_next
    if transform is None:
        return key
    path = _transform_path(pipeline, transform)
    name = type(transform).__name__
    return f"{key}.{path} ({name})" if path else f"{key} ({name})"


def crop_too_large(key: str, pipeline: A.BasicTransform | A.BaseCompose, err: Exception) -> str:
    """What to say of a crop larger than the image it is given (albumentations' CropSizeError):
    the transform by its config key, the two sizes, and the ways out."""
    where = failed_at(key, pipeline, err)
    sizes = re.search(r"\((\d+), (\d+)\) vs \((\d+), (\d+)\)", str(err))
    what = (
        f"crops {sizes[1]} x {sizes[2]} pixels (height x width) out of an image of {sizes[3]} x "
        f"{sizes[4]}"
        if sizes
        else f"crops more than the image holds ({err})"
    )
    return (
        f"{where} {what}: make the crop at most the image size (after dataset.image_size and the "
        "transforms before it), or let it pad (pad_if_needed: true, or an albumentations."
        "PadIfNeeded before it)"
    )


def _transform_path(node: A.BasicTransform | A.BaseCompose, transform: A.BasicTransform) -> str:
    """Where `transform` sits in a (nested) Compose, as its config key below the pipeline's
    (`transforms.0`, `transforms.1.transforms.0`); '' when not found."""
    for i, child in enumerate(getattr(node, "transforms", [])):
        if child is transform:
            return f"transforms.{i}"
        below = _transform_path(child, transform)
        if below:
            return f"transforms.{i}.{below}"
    return ""


def start_stream(stream: tuple[np.random.Generator, random.Random], seed, epoch, index) -> None:
    """Set the pipeline's generators, in place, to the start of sample `index`'s streams in
    `epoch`: a function of (seed, epoch, index) only, the same in every process and on every run.
    A 384-bit BLAKE2 hash gives the numpy generator's PCG64 state (256 bits) and seeds the Python
    generator (128 bits) that albumentations' Python-side draws (`p`, choices, uniform) use. About
    6 µs a sample, against 60 µs for building generators from seeds; drawing the Python-side values
    through the numpy generator instead cost 13 µs a sample more on the x-ray pipeline
    (benchmarks/loader_ablation.py)."""
    digest = hashlib.blake2b(f"{seed}:{epoch}:{index}".encode(), digest_size=48).digest()
    state, increment = (
        int.from_bytes(digest[:16], "little"),
        int.from_bytes(digest[16:32], "little"),
    )
    stream[0].bit_generator.state = {
        "bit_generator": "PCG64",
        "state": {"state": state, "inc": increment | 1},
        "has_uint32": 0,
        "uinteger": 0,
    }
    stream[1].seed(int.from_bytes(digest[32:], "little"))


def generator_holders(pipeline: A.BasicTransform | A.BaseCompose) -> list | None:
    """The pipeline and every transform in it, each holding its own random generators, when all
    of them seed themselves as albumentations' base classes do (None when one does otherwise)."""
    standard = {A.BasicTransform.set_random_seed, A.BaseCompose.set_random_seed}
    holders, stack = [], [pipeline]
    while stack:
        part = stack.pop()
        if (
            getattr(type(part).set_random_seed, "__func__", type(part).set_random_seed)
            not in standard
        ):
            return None
        holders.append(part)
        stack.extend(
            t
            for t in getattr(part, "transforms", ())
            if isinstance(t, (A.BasicTransform, A.BaseCompose))
        )
    pipeline.set_random_seed(0)  # every holder gets generators of its own, to be reset in place
    return holders


def reseed(pipeline, holders: list | None, seed: int) -> None:
    """`pipeline.set_random_seed(seed)` (fresh numpy and Python generators from `seed` for the
    pipeline and each transform in it), done by resetting the states of the generators they
    already hold: the same draws, at a third of the cost (it runs for every sample)."""
    if holders is None:
        pipeline.set_random_seed(seed)
        return
    numpy_state = np.random.PCG64(seed).state  # what np.random.default_rng(seed) starts from
    python_state = random.Random(seed).getstate()
    for holder in holders:
        holder.seed = seed
        holder.random_generator.bit_generator.state = numpy_state
        holder.py_random.setstate(python_state)
