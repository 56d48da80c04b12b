"""What every image reader shares: the `Decoded` result, its errors, and the checks that keep a
hostile file from costing more than its limits (sizes from headers, finite values, spacings)."""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from medtrain.errors import DataError

MAX_PIXELS = 64_000_000  # per image (8000 x 8000); bigger declared sizes are refused unread
# Besides its pixels an image may declare up to 4 values each (channels, frames, pages) of up to 8
# bytes (float64): its array never needs more than 32 bytes per allowed pixel.
VALUES_PER_PIXEL = 4
BYTES_PER_VALUE = 8
# A pixel size a file may state, in mm: 1 nm (microscopy at 0.1 µm is 1e-4 mm) to 10 m.
SPACING_RANGE_MM = (1e-6, 1e4)
FLOAT32_MAX = float(np.finfo(np.float32).max)


class UnsupportedFormatError(DataError):
    """The bytes are not an image format medtrain reads."""


class ImageTooLargeError(DataError):
    """The image declares more pixels than the limit allows."""


@dataclass
class Decoded:
    """A decoded image: `array` (H x W or H x W x C; uint8, uint16 or float32; D x H x W for a
    volume), the pixel `spacing` (row_mm, col_mm; three for a volume) the file states (None if
    none), the `format` it was read as, and a volume's voxel-to-world `affine` (NIfTI)."""

    array: np.ndarray
    spacing: tuple[float, ...] | None
    format: str
    affine: np.ndarray | None = None
    stored_affine: np.ndarray | None = None  # a volume read in RAS order: the file's own affine


@contextlib.contextmanager
def reading(name: str, what: str) -> Iterator[None]:
    """Report any exception raised while decoding `name` as a DataError naming it.

    Decoders given hostile bytes raise almost anything (ValueError, struct.error, zlib.error,
    EOFError, KeyError, RecursionError, MemoryError ...); each means the file cannot be read, and
    none may reach a caller (the HTTP service: a 500) as anything but a DataError.
    """
    try:
        yield
    except DataError:
        raise
    except Exception as err:
        kind = type(err).__name__
        kind = f"{type(err).__module__}.{kind}" if kind == "error" else kind  # zlib, struct
        lines = re.sub(r" <[^>]* at 0x[0-9a-f]+>", "", str(err)).strip().splitlines()
        reason = f"{kind}: {lines[0]}" if lines else kind
        raise DataError(f"{name}: cannot read {what} ({reason})") from err


# -- limits on what a file declares and holds ----------------------------------------------------
def check_size(
    shape: Sequence[int], name: str, max_pixels: int, itemsize: int = 1, axes: str = ""
) -> None:
    """Refuse a declared shape before anything is decompressed or decoded, counting every
    dimension: its pixels (all dimensions but a trailing channel one of at most 4) over
    `max_pixels`, its values over VALUES_PER_PIXEL times that, or their bytes (`itemsize` each)
    over BYTES_PER_VALUE times those.

    Raises:
        DataError: a negative dimension.
        ImageTooLargeError: naming the file and the declared shape (described by `axes`).
    """
    dims = tuple(int(d) for d in shape)
    text = "x".join(map(str, dims)) + (f" ({axes})" if axes else "")
    if any(d < 0 for d in dims):
        raise DataError(f"{name}: the declared shape {text} has a negative dimension")
    values = math.prod(dims)  # Python integers: no overflow whatever the header says
    pixels = math.prod(dims[:-1]) if len(dims) >= 3 and dims[-1] <= 4 else values
    limits = (
        (pixels, max_pixels, "pixels"),
        (values, VALUES_PER_PIXEL * max_pixels, "values"),
        (values * itemsize, BYTES_PER_VALUE * VALUES_PER_PIXEL * max_pixels, "bytes"),
    )
    for count, limit, unit in limits:
        if count > limit:
            raise ImageTooLargeError(
                f"{name}: the declared shape {text} is over the limit: {count:,} {unit}, "
                f"at most {limit:,}"
            )


def check_finite(values: np.ndarray, name: str, context: str = "") -> None:
    """Refuse floating-point pixels that are NaN or infinite, or beyond float32's range (they
    would become infinite as float32): a model would otherwise find them "normal"."""
    if not np.issubdtype(values.dtype, np.floating) or not values.size:
        return
    low, high = float(np.min(values)), float(np.max(values))  # NaN propagates to both
    if not (math.isfinite(low) and math.isfinite(high)):
        bad = values.size - int(np.count_nonzero(np.isfinite(values)))
        raise DataError(
            f"{name}: pixel values are not finite (NaN or infinite){context}: {bad} of "
            f"{values.size}"
        )
    if max(-low, high) > FLOAT32_MAX:
        raise DataError(
            f"{name}: pixel values overflow float32{context}: magnitudes up to "
            f"{max(-low, high):.3g}, float32 holds at most {FLOAT32_MAX:.3g}"
        )


def checked_image(array: np.ndarray, name: str) -> np.ndarray:
    """A 2D image: H x W, or H x W x C with C in 1, 3; anything else is refused."""
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] != 3):
        raise DataError(
            f"{name}: shape {array.shape} is not a 2D image (H x W, or H x W x 3 for colour)"
        )
    if min(array.shape[:2]) < 1:
        raise DataError(f"{name}: the image has no pixels (shape {array.shape})")
    return array


def checked_volume(array: np.ndarray, name: str) -> np.ndarray:
    """A volume held in an array file: D x H x W, or D x H x W x 1; anything else is refused."""
    if array.ndim == 4 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        raise DataError(f"{name}: shape {array.shape} is not a volume (D x H x W)")
    if min(array.shape) < 1:
        raise DataError(f"{name}: the volume has no voxels (shape {array.shape})")
    return array


# -- pixel spacing -------------------------------------------------------------------------------
def spacing_problem(spacing: Sequence[float]) -> str | None:
    """Why `spacing` (mm per pixel, per axis) is unusable, or None when every value is a finite
    number within SPACING_RANGE_MM."""
    low, high = SPACING_RANGE_MM
    for value in spacing:
        if not (math.isfinite(value) and low <= value <= high):
            return f"{value!r} is not a number from {low:g} to {high:g} mm"
    return None


def checked_spacing(spacing: Sequence, name: str, source: str) -> tuple[float, ...]:
    """`spacing` as the file `name` states it in `source` (a tag, a chunk), as floats.

    Raises:
        DataError: naming the file, the source and the value when `spacing_problem` finds one.
    """
    try:
        values = tuple(float(v) for v in spacing)
    except (TypeError, ValueError) as err:
        raise DataError(f"{name}: {source} holds {spacing!r}, not numbers") from err
    if problem := spacing_problem(values):
        raise DataError(f"{name}: {source} states a pixel spacing of {values} mm; {problem}")
    return values
