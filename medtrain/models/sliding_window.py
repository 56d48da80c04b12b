"""Tiled (sliding-window) inference of whole images larger than the training patch."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from numbers import Integral, Real

import torch
import torch.nn.functional as F

from medtrain.errors import ConfigError

BLEND_MODES = ("constant", "gaussian")

# MONAI's defaults, kept so that results can be compared with its sliding_window_inference.
GAUSSIAN_SIGMA_SCALE = 0.125
MIN_WEIGHT = 1e-3


def _window_size(window: int | Sequence[int]) -> tuple[int, int]:
    """(h, w) from an int (square window) or a pair; rejects anything else with a ConfigError."""
    size = tuple(window) if isinstance(window, Iterable) else (window, window)
    if len(size) != 2 or not all(isinstance(s, Integral) and not isinstance(s, bool) for s in size):
        raise ConfigError(f"task.inference.window must be an int or a pair (h, w), got {window!r}")
    if min(size) <= 0:
        raise ConfigError(f"task.inference.window must be positive, got {window!r}")
    return int(size[0]), int(size[1])


def check_inference(
    window: int | Sequence[int], overlap: float, blend: str, batch_size: int
) -> tuple[int, int]:
    """Check the `task.inference` settings (before training, so that a typo does not surface at
    the first validation); returns the window size (h, w).

    Raises:
        ConfigError: naming the `task.inference` key that is wrong.
    """
    size = _window_size(window)
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


def importance_map(window: tuple[int, int], blend: str) -> torch.Tensor:
    """Weight of each pixel of a window's prediction when overlapping windows are averaged.

    Args:
        window: Window size (h, w).
        blend: "constant" (all ones) or "gaussian": the product of one Gaussian per axis with
            sigma = 0.125 * window size, centred on the window and equal to 1 at its centre
            (MONAI's map, whose largest sample is just below 1 for an even size), floored at 1e-3.

    Returns:
        An (h, w) float32 tensor of positive weights.
    """
    if blend == "constant":
        return torch.ones(window)
    axes = []
    for size in window:
        offset = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
        sigma = GAUSSIAN_SIGMA_SCALE * size
        axes.append(torch.exp(-(offset**2) / (2 * sigma**2)))
    # Far corners of the Gaussian underflow towards 0; a floor keeps every pixel's weight positive
    # so that pixels covered only by window corners are still divided by a non-zero total.
    return (axes[0][:, None] * axes[1][None, :]).clamp(min=MIN_WEIGHT)


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
    """Predict logits for whole images by running `predict` on overlapping windows and blending.

    Windows start every `window * (1 - overlap)` pixels (at least 1) and the last window of each
    axis ends at the image end, so every pixel is covered. An axis shorter than the window is
    zero-padded to the window size (split evenly before and after, as MONAI does) and the output
    is cropped back. An image that fits in one window is predicted in one call, without blending.

    Args:
        predict: Maps an (N, C, h, w) tensor to (N, K, h, w) logits, or to a tuple or list whose
            first element is those logits (deep supervision).
        image: (B, C, H, W) batch of images.
        window: Window size (h, w); an int means a square window (`task.inference.window`).
        overlap: Fraction of a window shared with its neighbour, in [0, 1)
            (`task.inference.overlap`).
        blend: "constant" averages overlapping windows; "gaussian" weights each window's pixels
            by `importance_map`, trusting window centres more than borders
            (`task.inference.blend`).
        batch_size: Number of windows per `predict` call, taken across all images of the batch.

    Returns:
        (B, K, H, W) float32 logits on the device of `image`.

    Raises:
        ConfigError: If `window`, `overlap`, `blend` or `batch_size` is invalid.
        ValueError: If `image` is not 4D, or `predict` returns logits of another spatial size
            than the window.
    """
    size = check_inference(window, overlap, blend, batch_size)
    overlap, batch_size = float(overlap), int(batch_size)
    if image.ndim != 4:
        raise ValueError(f"image must be (B, C, H, W), got shape {tuple(image.shape)}")

    height, width = image.shape[-2:]
    pad_h, pad_w = max(size[0] - height, 0), max(size[1] - width, 0)
    top, left = pad_h // 2, pad_w // 2
    padded = F.pad(image, (left, pad_w - left, top, pad_h - top))
    crop = (..., slice(top, top + height), slice(left, left + width))

    def run(windows: torch.Tensor) -> torch.Tensor:
        logits = _first_output(predict(windows))
        if tuple(logits.shape[-2:]) != size:
            raise ValueError(
                f"predict must return logits of the window size {size}, got {tuple(logits.shape)}"
            )
        return logits.to(device=image.device, dtype=torch.float32)

    if height <= size[0] and width <= size[1]:
        return run(padded)[crop]

    full_h, full_w = padded.shape[-2:]
    strides = [max(int(s * (1 - overlap)), 1) for s in size]
    corners = [
        (row, col)
        for row in _starts(full_h, size[0], strides[0])
        for col in _starts(full_w, size[1], strides[1])
    ]
    # One job per (image, window) pair, so that small batches of large images fill each call.
    jobs = [(b, row, col) for b in range(image.shape[0]) for row, col in corners]
    weight = importance_map(size, blend).to(image.device)
    total = None
    norm = torch.zeros(full_h, full_w, device=image.device)
    for row, col in corners:
        norm[row : row + size[0], col : col + size[1]] += weight

    for first in range(0, len(jobs), batch_size):
        chunk = jobs[first : first + batch_size]
        windows = torch.stack(
            [padded[b, :, row : row + size[0], col : col + size[1]] for b, row, col in chunk]
        )
        logits = run(windows) * weight
        if total is None:
            total = torch.zeros(
                image.shape[0], logits.shape[1], full_h, full_w, device=image.device
            )
        for (b, row, col), window_logits in zip(chunk, logits, strict=True):
            total[b, :, row : row + size[0], col : col + size[1]] += window_logits
    return (total / norm)[crop]
