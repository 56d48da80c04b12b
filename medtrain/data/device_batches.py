"""Splits held as tensors on the training device, batched, augmented and normalized there
(`trainer.augment_on_device=true`): for image-level data that fit in memory (MedMNIST-size), a GPU
is then fed whole batches by a few tensor operations instead of one sample at a time from Python.

The augmentation is the config's albumentations pipeline, each transform done as a batched
operation with the parameters albumentations would draw (ranges, probabilities, order). Each
sample's draws are a function of (seed, epoch, sample index) only, as on the loader path, so they
do not depend on the batch a sample lands in, the device or the number of processes; they are
other numbers than the loader path's, so the two paths train alike, not bit for bit.
"""

from __future__ import annotations

from typing import Any

import albumentations as A
import numpy as np
import torch
import torch.nn.functional as F

from medtrain.data.base import ImageDataset
from medtrain.data.loading import EpochLoader
from medtrain.data.transforms import Normalize
from medtrain.errors import ConfigError

KEY = "trainer.augment_on_device"
# cv2 border modes of Affine -> grid_sample padding (reflection mirrors at the edge, as
# BORDER_REFLECT; BORDER_REFLECT_101 differs from it by the edge pixel)
PADDING = {0: "zeros", 1: "border", 2: "reflection", 4: "reflection"}
MASK64 = (1 << 64) - 1


def _mix(values: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer on uint64 values (wrapping arithmetic): well-spread 64-bit outputs
    from consecutive inputs."""
    z = values.astype(np.uint64)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def uniforms(seed: int, epoch: int, indices: np.ndarray, count: int) -> np.ndarray:
    """Numbers in [0, 1), `count` per sample (B x count, float64), each a hash of (seed, epoch,
    sample index, k): a counter-based stream, drawn for a whole batch at once."""
    key = _mix(np.array([(seed * 1_000_003 + epoch) & MASK64], dtype=np.uint64))[0]
    counters = np.asarray(indices, dtype=np.uint64)[:, None] * np.uint64(max(count, 1))
    counters = counters + np.arange(count, dtype=np.uint64)[None, :]
    with np.errstate(over="ignore"):
        bits = _mix(_mix(counters ^ key) + key)
    return (bits >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def _span(low: float, high: float, u: torch.Tensor) -> torch.Tensor:
    return low + (high - low) * u


class Flip:
    draws = 2

    def __init__(self, transform: A.BasicTransform, dim: int):
        self.p, self.dim = transform.p, dim

    def __call__(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        chosen = (u[:, 0] < self.p)[:, None, None, None]
        return torch.where(chosen, x.flip(self.dim), x)


class Rotate90:
    draws = 2

    def __init__(self, transform: A.BasicTransform):
        self.p = transform.p

    def __call__(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != x.shape[-2]:
            raise ConfigError(f"{KEY}: RandomRotate90 needs square images, got {tuple(x.shape)}")
        quarter = torch.where(u[:, 0] < self.p, (u[:, 1] * 4).floor().clamp(max=3), 0)
        out = x
        for k in (1, 2, 3):
            chosen = (quarter == k)[:, None, None, None]
            out = torch.where(chosen, torch.rot90(x, k, dims=(-2, -1)), out)
        return out


class Affine:
    draws = 6

    def __init__(self, transform: A.Affine, where: str):
        shear = transform.shear
        if any(v != 0 for v in (*shear["x"], *shear["y"])) or transform.fit_output:
            raise ConfigError(f"{where}: Affine shear and fit_output have no batched version")
        if transform.border_mode not in PADDING:
            raise ConfigError(
                f"{where}: Affine border_mode={transform.border_mode} has no batched version; "
                f"use one of {sorted(PADDING)} (cv2 border modes)"
            )
        if transform.interpolation != 1 or transform.balanced_scale:
            raise ConfigError(
                f"{where}: Affine interpolation other than 1 (linear) and balanced_scale have no "
                "batched version"
            )
        if not np.isscalar(transform.fill):
            raise ConfigError(f"{where}: Affine fill must be one number for {KEY}")
        self.p = transform.p
        self.rotate = transform.rotate
        self.scale = transform.scale
        self.keep_ratio = transform.keep_ratio
        # A share of the width and height (translate_percent), or pixels (translate_px).
        self.relative = transform.translate_percent is not None
        self.translate = transform.translate_percent or transform.translate_px
        self.padding = PADDING[transform.border_mode]
        self.fill = float(transform.fill)  # what border_mode 0 (constant) pads with

    def __call__(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        chosen = (u[:, 0] < self.p).nonzero().flatten()
        if chosen.numel() == 0:
            return x
        u = u[chosen].double()
        angle = torch.deg2rad(_span(*self.rotate, u[:, 1]))
        sx = _span(*self.scale["x"], u[:, 2])
        sy = sx if self.keep_ratio else _span(*self.scale["y"], u[:, 3])
        height, width = x.shape[-2:]
        # Whole pixels, as albumentations shifts: a share of the size truncated, or an integer
        # drawn from the inclusive pixel range.
        if self.relative:
            tx = torch.trunc(_span(*self.translate["x"], u[:, 4]) * width)
            ty = torch.trunc(_span(*self.translate["y"], u[:, 5]) * height)
        else:
            tx, ty = (
                torch.floor(u[:, k] * (int(hi) - int(lo) + 1)).clamp(max=int(hi) - int(lo))
                + int(lo)
                for k, (lo, hi) in ((4, self.translate["x"]), (5, self.translate["y"]))
            )
        cos, sin = torch.cos(angle), torch.sin(angle)
        # Forward map in pixels about the centre, as albumentations builds it (x right, y down, a
        # positive angle turning counter-clockwise on screen): p' = R S p + t. grid_sample needs
        # the inverse, in coordinates normalized by half the width and height.
        forward = torch.stack(
            [torch.stack([cos * sx, sin * sy], -1), torch.stack([-sin * sx, cos * sy], -1)], -2
        )
        inverse = torch.linalg.inv(forward)
        half = torch.tensor([width / 2, height / 2], dtype=inverse.dtype, device=inverse.device)
        theta = torch.zeros(len(chosen), 2, 3, dtype=inverse.dtype, device=inverse.device)
        theta[:, :, :2] = inverse * half[None, None, :] / half[None, :, None]
        shift = -(inverse @ torch.stack([tx, ty], -1)[..., None])[..., 0]
        theta[:, :, 2] = shift / half
        part = x[chosen] - self.fill  # zeros padding then pads with `fill`
        grid = F.affine_grid(theta.to(part.dtype), list(part.shape), align_corners=False)
        moved = F.grid_sample(
            part, grid, mode="bilinear", padding_mode=self.padding, align_corners=False
        )
        moved = moved + self.fill
        out = x.clone()
        out[chosen] = moved
        return out


class BrightnessContrast:
    draws = 3

    def __init__(self, transform: A.RandomBrightnessContrast, where: str):
        if not transform.brightness_by_max or transform.ensure_safe_range:
            raise ConfigError(
                f"{where}: brightness_by_max=false and ensure_safe_range have no batched version"
            )
        self.p = transform.p
        self.brightness, self.contrast = transform.brightness_limit, transform.contrast_limit

    def __call__(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        chosen = (u[:, 0] < self.p)[:, None, None, None]
        alpha = (1 + _span(*self.contrast, u[:, 1]))[:, None, None, None].to(x.dtype)
        beta = _span(*self.brightness, u[:, 2])[:, None, None, None].to(x.dtype)
        return torch.where(chosen, (x * alpha + beta).clamp(0, 1), x)


class Gamma:
    draws = 2

    def __init__(self, transform: A.RandomGamma):
        self.p, self.limit = transform.p, transform.gamma_limit

    def __call__(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        chosen = (u[:, 0] < self.p)[:, None, None, None]
        gamma = (_span(*self.limit, u[:, 1]) / 100)[:, None, None, None].to(x.dtype)
        return torch.where(chosen, x.clamp(min=0) ** gamma, x)


class GaussianBlur:
    draws = 2

    def __init__(self, transform: A.GaussianBlur, where: str):
        low, high = transform.blur_limit
        if low != high or low % 2 == 0:
            raise ConfigError(
                f"{where}: GaussianBlur needs one odd kernel size (blur_limit [k, k]), got "
                f"{[low, high]}"
            )
        self.p, self.size, self.sigma = transform.p, int(low), transform.sigma_limit

    def __call__(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        batch, channels = x.shape[:2]
        sigma = _span(*self.sigma, u[:, 1]).to(x.dtype)
        offsets = torch.arange(self.size, device=x.device, dtype=x.dtype) - self.size // 2
        weights = torch.exp(-(offsets[None, :] ** 2) / (2 * sigma[:, None] ** 2))
        weights = weights / weights.sum(1, keepdim=True)
        kernels = weights[:, :, None] * weights[:, None, :]  # B x k x k, separable Gaussian
        kernels = kernels.repeat_interleave(channels, 0)[:, None]
        pad = self.size // 2
        padded = F.pad(x.reshape(1, batch * channels, *x.shape[-2:]), (pad,) * 4, mode="reflect")
        blurred = F.conv2d(padded, kernels, groups=batch * channels).reshape(x.shape)
        chosen = (u[:, 0] < self.p)[:, None, None, None]
        return torch.where(chosen, blurred, x)


def batched(transform: Any, where: str) -> Any:
    """The batched version of one albumentations transform.

    Raises:
        ConfigError: a transform (or option) without one, naming `where`.
    """
    if isinstance(transform, A.HorizontalFlip):
        return Flip(transform, -1)
    if isinstance(transform, A.VerticalFlip):
        return Flip(transform, -2)
    if isinstance(transform, A.RandomRotate90):
        return Rotate90(transform)
    if isinstance(transform, A.Affine):
        return Affine(transform, where)
    if isinstance(transform, A.RandomBrightnessContrast):
        return BrightnessContrast(transform, where)
    if isinstance(transform, A.RandomGamma):
        return Gamma(transform)
    if isinstance(transform, A.GaussianBlur):
        return GaussianBlur(transform, where)
    raise ConfigError(
        f"{where}: {type(transform).__name__} has no batched version for {KEY}=true; it supports "
        "HorizontalFlip, VerticalFlip, RandomRotate90, Affine, RandomBrightnessContrast, "
        "RandomGamma and GaussianBlur (or set it to false)"
    )


class BatchAugment:
    """An albumentations pipeline (a Compose of the transforms `batched` knows, or one of them)
    as batched tensor operations, applied in the pipeline's order."""

    def __init__(self, pipeline: Any, key: str = "augmentation.train"):
        transforms = pipeline.transforms if isinstance(pipeline, A.Compose) else [pipeline]
        if not isinstance(pipeline, (A.Compose, A.BasicTransform)):
            raise ConfigError(f"{key}: {type(pipeline).__name__} has no batched version")
        if isinstance(pipeline, A.Compose) and pipeline.p < 1:
            raise ConfigError(f"{key}: a Compose with p < 1 has no batched version")
        places = [(t, f"{key}.transforms[{k}]") for k, t in enumerate(transforms) if t.p > 0]
        self.placed = [(batched(t, place), place) for t, place in places]
        self.steps = [step for step, _ in self.placed]
        self.draws = sum(step.draws for step in self.steps)

    def check_shape(self, height: int, width: int) -> None:
        """Refuse, at start, transforms that cannot handle images of this size.

        Raises:
            ConfigError: RandomRotate90 on images that are not square, naming its place.
        """
        for step, place in self.placed:
            if isinstance(step, Rotate90) and height != width:
                raise ConfigError(
                    f"{place}: RandomRotate90 needs square images for {KEY}, the images are "
                    f"{height}x{width}"
                )

    def __call__(self, images: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        start = 0
        for step in self.steps:
            images = step(images, u[:, start : start + step.draws])
            start += step.draws
        return images


def normalized(images: torch.Tensor, normalize: Normalize) -> torch.Tensor:
    """`Normalize` on a batch (B x C x H x W): each image as `Normalize.__call__` treats it."""
    view = (-1, 1, 1, 1)
    if normalize.invert is True:
        images = 1.0 - images
    elif normalize.invert == "auto":
        bright = torch.quantile(images.flatten(1), 0.5, dim=1) > 0.5  # numpy's median: midpoint
        images = torch.where(bright.reshape(view), 1.0 - images, images)
    flat = images.flatten(1)
    if normalize.mode in ("fixed", "dataset"):
        if not normalize.std.size:
            raise ConfigError("dataset.normalize.mode=dataset: statistics not computed")
        mean = torch.as_tensor(normalize.mean, device=images.device).reshape(1, -1, 1, 1)
        std = torch.as_tensor(normalize.std, device=images.device).reshape(1, -1, 1, 1)
        return (images - mean) / std
    if normalize.mode == "zscore":
        std = flat.std(dim=1, correction=0).clamp(min=1e-6)
        return (images - flat.mean(dim=1).reshape(view)) / std.reshape(view)
    if normalize.mode == "minmax":
        low, high = flat.min(dim=1).values, flat.max(dim=1).values
        return (images - low.reshape(view)) / (high - low).clamp(min=1e-6).reshape(view)
    if normalize.mode == "percentile":
        q = torch.tensor(normalize.percentiles, device=images.device, dtype=images.dtype) / 100
        low, high = torch.quantile(flat, q, dim=1)
        scaled = (images - low.reshape(view)) / (high - low).clamp(min=1e-6).reshape(view)
        return scaled.clamp(0.0, 1.0)
    return images


class DeviceBatches:
    """One split's batches from tensors on `device`: the loader path's order (the same sampler,
    `EpochLoader`'s, over indices), images scaled as `ImageDataset.scaled` makes them, then
    augmented (training) and normalized as whole batches.

    Raises:
        ConfigError: data that are not image-level, images of several sizes, an eval pipeline that
            is not empty, or transforms without a batched version.
    """

    def __init__(
        self,
        dataset: ImageDataset,
        *,
        batch_size: int,
        shuffle: bool,
        seed: int,
        device: torch.device,
        drop_last: bool = False,
        shard: tuple[int, int] = (0, 1),
    ):
        if not isinstance(dataset, ImageDataset):
            raise ConfigError(
                f"{KEY}=true holds image-level data (classification, regression) on the device; "
                f"{type(dataset).__name__} samples are loaded by the loader (set it to false)"
            )
        self.dataset = dataset
        pipeline = getattr(dataset.transform, "pipeline", None)
        stage = "augmentation.train" if dataset.split == "train" else "augmentation.eval"
        self.augment = BatchAugment(pipeline, stage) if pipeline is not None else None
        if dataset.split != "train" and self.augment is not None and self.augment.steps:
            raise ConfigError(f"{KEY}=true: augmentation.eval must be empty")
        images = [dataset.scaled(dataset.read_image(i)) for i in range(len(dataset))]
        shapes = {image.shape for image in images}
        if len(shapes) > 1:
            raise ConfigError(
                f"{KEY}=true needs images of one size; the {dataset.split} split has "
                f"{len(shapes)} ({sorted(shapes)[:3]} ...): set dataset.image_size"
            )
        stacked = np.stack(images).transpose(0, 3, 1, 2)
        if self.augment is not None:
            self.augment.check_shape(*stacked.shape[-2:])
        check_fits(stacked.nbytes, device)
        self.images = torch.from_numpy(np.ascontiguousarray(stacked, dtype=np.float32)).to(device)
        self.labels = torch.as_tensor(dataset.labels).to(device)
        self.tabular = (
            None if dataset.tabular is None else torch.from_numpy(dataset.tabular).to(device)
        )
        self.ids = list(dataset.ids)
        self.seed, self.epoch, self.device = seed, 0, device
        # Only the sampler of this loader is used: it yields index lists, never samples.
        self.order = EpochLoader(
            range(len(dataset)),
            seed=seed,
            shuffle=shuffle,
            batch_size=batch_size,
            drop_last=drop_last,
            shard=shard,
        )
        self.batch_sampler = self.order.batch_sampler

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.order.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self):
        for indices in self.batch_sampler:
            rows = torch.as_tensor(indices, device=self.device)
            images = self.images[rows]
            if self.augment is not None and self.augment.steps:
                draws = uniforms(self.seed, self.epoch, np.asarray(indices), self.augment.draws)
                images = self.augment(images, torch.from_numpy(draws).to(self.device))
            batch = {
                "image": normalized(images, self.dataset.normalize),
                "label": self.labels[rows],
                "id": [self.ids[i] for i in indices],
            }
            if self.tabular is not None:
                batch["tabular"] = self.tabular[rows]
            yield batch


def check_fits(nbytes: int, device: torch.device) -> None:
    """Refuse a split that would take more than half of the device's free memory."""
    if device.type != "cuda":
        return
    free, _ = torch.cuda.mem_get_info(device)
    if nbytes > free / 2:
        raise ConfigError(
            f"{KEY}=true: a split of {nbytes / 2**30:.1f} GiB does not fit in half of the "
            f"{free / 2**30:.1f} GiB free on {device}; set it to false"
        )


def device_loaders(datasets: dict, trainer, seed: int, device, drop_last: dict, shard) -> dict:
    """`DeviceBatches` for every split (the training split shuffled and augmented)."""
    return {
        split: DeviceBatches(
            dataset,
            batch_size=trainer.batch_size if split == "train" else trainer.eval_batch_size,
            shuffle=split == "train",
            seed=seed,
            device=device,
            drop_last=drop_last[split],
            shard=shard,
        )
        for split, dataset in datasets.items()
    }
