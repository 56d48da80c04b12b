"""Tiled (sliding-window) inference of whole images and volumes larger than the training patch."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from numbers import Integral, Real

import torch
import torch.nn.functional as F

from medtrain.errors import ConfigError

BLEND_MODES = ("constant", "gaussian")

# MONAI's defaults, kept so that results can be compared with its sliding_window_inference.
GAUSSIAN_SIGMA_SCALE = 0.125
MIN_WEIGHT = 1e-3


def _window_size(window: int | Sequence[int], spatial_dims: int | None = None) -> tuple[int, ...]:
    """The window's size per axis from an int (a square or cube) or one int per axis ((h, w) or
    (d, h, w)); rejects anything else with a ConfigError. `spatial_dims` None accepts 2 or 3 axes
    and gives an int as a square."""
    if isinstance(window, Iterable):
        size = tuple(window)
        axes_ok = len(size) == spatial_dims if spatial_dims else len(size) in (2, 3)
    else:
        size, axes_ok = (window,) * (spatial_dims or 2), True
    if not axes_ok or not all(isinstance(s, Integral) and not isinstance(s, bool) for s in size):
        raise ConfigError(
            "task.inference.window must be an int or one int per axis ((h, w), or (d, h, w) for "
            f"volumes), got {window!r} (by default it is dataset.patch_size: check that too)"
        )
    if min(size) <= 0:
        raise ConfigError(f"task.inference.window must be positive, got {window!r}")
    return tuple(int(s) for s in size)


def check_inference(
    window: int | Sequence[int],
    overlap: float,
    blend: str,
    batch_size: int,
    spatial_dims: int | None = None,
) -> tuple[int, ...]:
    """Check the `task.inference` settings (before training, so that a typo does not surface at
    the first validation); returns the window size per axis.

    Raises:
        ConfigError: naming the `task.inference` key that is wrong.
    """
    size = _window_size(window, spatial_dims)
    if isinstance(overlap, bool) or not isinstance(overlap, Real) or not 0 <= overlap < 1:
        raise ConfigError(f"task.inference.overlap must be a number in [0, 1), got {overlap!r}")
    if blend not in BLEND_MODES:
        raise ConfigError(f"task.inference.blend must be one of {BLEND_MODES}, got {blend!r}")
    whole = isinstance(batch_size, Integral) or (
        isinstance(batch_size, Real) and float(batch_size).is_integer()
    )
    if isinstance(batch_size, bool) or not whole or batch_size < 1:
        raise ConfigError(
            f"task.inference.batch_size must be a whole number >= 1 (windows per forward pass), "
            f"got {batch_size!r}"
        )
    return size


def _starts(length: int, window: int, stride: int) -> list[int]:
    """Window starts along one axis: every `stride`, with the last window ending at the image end."""
    return [*range(0, length - window, stride), length - window]


def window_count(sides: tuple[int, ...], window: tuple[int, ...], overlap: float) -> int:
    """How many windows `sliding_window_inference` predicts an image of `sides` in (one when it
    fits in the window)."""
    if all(s <= w for s, w in zip(sides, window, strict=True)):
        return 1
    count = 1
    for s, w, stride in zip(sides, window, _strides(window, overlap), strict=True):
        count *= len(_starts(max(s, w), w, stride))
    return count


def _strides(window: tuple[int, ...], overlap: float) -> list[int]:
    """The step between neighbouring windows along each axis."""
    return [max(int(w * (1 - overlap)), 1) for w in window]


def importance_map(window: tuple[int, ...], blend: str) -> torch.Tensor:
    """Weight of each pixel (voxel) of a window's prediction when overlapping windows are averaged.

    Args:
        window: Window size per axis ((h, w) or (d, h, w)).
        blend: "constant" (all ones) or "gaussian": the product of one Gaussian per axis with
            sigma = 0.125 * window size, centred on the window and equal to 1 at its centre
            (MONAI's map, whose largest sample is just below 1 for an even size), floored at 1e-3.

    Returns:
        A float32 tensor of the window's size, of positive weights.
    """
    if blend == "constant":
        return torch.ones(window)
    weight = torch.ones(())
    for size in window:
        offset = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
        sigma = GAUSSIAN_SIGMA_SCALE * size
        weight = weight[..., None] * torch.exp(-(offset**2) / (2 * sigma**2))
    # Far corners of the Gaussian underflow towards 0; a floor keeps every pixel's weight positive
    # so that pixels covered only by window corners are still divided by a non-zero total.
    return weight.clamp(min=MIN_WEIGHT)


def _first_output(output: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """Deep-supervision models return (main, auxiliary...); only the main logits are stitched."""
    return output[0] if isinstance(output, (tuple, list)) else output


# The stitched logits are for evaluation; autograd graphs of every window would only hold memory.
@torch.no_grad()
def sliding_window_inference(
    predict: Callable[[torch.Tensor], torch.Tensor | Sequence[torch.Tensor]],
    image: torch.Tensor,
    window: int | Sequence[int],
    overlap: float = 0.25,
    blend: str = "gaussian",
    batch_size: int = 4,
) -> torch.Tensor:
    """Predict logits for whole images (or volumes) by running `predict` on overlapping windows
    and blending.

    Windows start every `window * (1 - overlap)` pixels (at least 1) and the last window of each
    axis ends at the image end, so every pixel is covered. An axis shorter than the window is
    zero-padded to the window size (split evenly before and after, as MONAI does) and the output
    is cropped back. An image that fits in one window is predicted in one call, without blending.

    Args:
        predict: Maps an (N, C, *window) tensor to (N, K, *window) logits, or to a tuple or list
            whose first element is those logits (deep supervision).
        image: (B, C, H, W) batch of images, or (B, C, D, H, W) of volumes.
        window: Window size per axis; an int means a square (cube) window
            (`task.inference.window`).
        overlap: Fraction of a window shared with its neighbour, in [0, 1)
            (`task.inference.overlap`).
        blend: "constant" averages overlapping windows; "gaussian" weights each window's pixels
            by `importance_map`, trusting window centres more than borders
            (`task.inference.blend`).
        batch_size: Number of windows per `predict` call, taken across all images of the batch.

    Returns:
        (B, K, *spatial) float32 logits on the device of `image`.

    Raises:
        ConfigError: If `window`, `overlap`, `blend` or `batch_size` is invalid, or the window has
            another number of axes than the image.
        ValueError: If `image` is not 4D or 5D, or `predict` returns logits of another spatial
            size than the window.
    """
    if image.ndim not in (4, 5):
        raise ValueError(
            f"image must be (B, C, H, W) or (B, C, D, H, W), got shape {tuple(image.shape)}"
        )
    dims = image.ndim - 2
    size = check_inference(window, overlap, blend, batch_size, spatial_dims=dims)
    overlap, batch_size = float(overlap), int(batch_size)

    sides = tuple(image.shape[2:])
    pads = [max(w - s, 0) for w, s in zip(size, sides, strict=True)]
    before = [p // 2 for p in pads]
    padded = F.pad(
        image,
        [v for p, b in zip(reversed(pads), reversed(before), strict=True) for v in (b, p - b)],
    )
    crop = (..., *(slice(b, b + s) for b, s in zip(before, sides, strict=True)))

    def run(windows: torch.Tensor) -> torch.Tensor:
        logits = _first_output(predict(windows))
        if tuple(logits.shape[2:]) != size:
            raise ValueError(
                f"predict must return logits of the window size {size}, got {tuple(logits.shape)}"
            )
        return logits.to(device=image.device, dtype=torch.float32)

    if all(s <= w for s, w in zip(sides, size, strict=True)):
        return run(padded)[crop]

    full = tuple(padded.shape[2:])
    strides = _strides(size, overlap)
    corners = list(
        itertools.product(
            *(_starts(f, w, st) for f, w, st in zip(full, size, strides, strict=True))
        )
    )

    def box(corner: tuple[int, ...]) -> tuple[slice, ...]:
        return tuple(slice(c, c + w) for c, w in zip(corner, size, strict=True))

    # One job per (image, window) pair, so that small batches of large images fill each call.
    jobs = [(b, corner) for b in range(image.shape[0]) for corner in corners]
    weight = importance_map(size, blend).to(image.device)
    total = None
    norm = torch.zeros(full, device=image.device)
    for corner in corners:
        norm[box(corner)] += weight

    for first in range(0, len(jobs), batch_size):
        chunk = jobs[first : first + batch_size]
        windows = torch.stack([padded[(b, slice(None), *box(corner))] for b, corner in chunk])
        logits = run(windows) * weight
        if total is None:
            total = torch.zeros(image.shape[0], logits.shape[1], *full, device=image.device)
        for (b, corner), window_logits in zip(chunk, logits, strict=True):
            total[(b, slice(None), *box(corner))] += window_logits
    return (total / norm)[crop]
