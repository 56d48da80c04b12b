"""Reading segmentation masks from files: pixel values to class indices, and pixel spacing from image
metadata."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from medtrain.data.image_folder import read_image_file
from medtrain.errors import DataError

LOSSY = (".jpg", ".jpeg")
# 72 and 96 dpi in pixels per metre, as rounded by common writers: display defaults, not a spacing.
SCREEN_PPM = {2834, 2835, 2836, 3779, 3780, 3781}


def read_mask_file(path: str | Path, class_values: Mapping[int, int] | None = None) -> np.ndarray:
    """Read a mask file (PNG, TIFF, JPEG or NPY) as an H x W int64 array of class indices.

    Args:
        path: the mask file. Colour masks must be grey (all channels equal).
        class_values: pixel value -> class index, for multi-class masks stored with other values
            (e.g. {0: 0, 128: 1, 255: 2}). None: a mask holding only {0, v} is binary (v -> 1), any
            other mask holds class indices already. JPEG masks, blurred by compression, are snapped
            to the nearest listed value (binary: thresholded at half the maximum).

    Raises:
        DataError: naming the file, for unreadable files, colour masks and unknown values.
    """
    path = Path(path)
    mask = read_image_file(path)
    if mask.ndim == 3:
        if not (mask == mask[..., :1]).all():
            raise DataError(
                f"{path}: colour mask with different channels; store masks as grey class values"
            )
        mask = mask[..., 0]
    if mask.ndim != 2:
        raise DataError(f"{path}: a mask must be 2D, got shape {mask.shape}")
    if np.issubdtype(mask.dtype, np.floating) and not np.array_equal(mask, np.round(mask)):
        raise DataError(f"{path}: mask values must be whole numbers")
    mask = mask.astype(np.int64)
    lossy = path.suffix.lower() in LOSSY
    if class_values:
        values = np.array(sorted(class_values), dtype=np.int64)
        if lossy:  # snap each pixel to the nearest listed value
            mask = values[np.abs(mask[..., None] - values).argmin(-1)]
        unknown = np.setdiff1d(np.unique(mask), values)
        if unknown.size:
            raise DataError(
                f"{path}: mask values {unknown[:10].tolist()} are not in dataset.class_values "
                f"{sorted(class_values)}"
            )
        lookup = np.zeros(int(values.max()) + 1, dtype=np.int64)
        for value, klass in class_values.items():
            lookup[int(value)] = int(klass)
        return lookup[mask]
    if lossy:
        return (mask > mask.max() / 2).astype(np.int64) if mask.max() > 0 else mask
    if mask.min() < 0:
        raise DataError(f"{path}: negative mask value {mask.min()}")
    present = np.unique(mask)
    if len(present) <= 2 and present.max() > 1 and present.min() == 0:
        return (mask > 0).astype(np.int64)  # {0, 255} (or any {0, v}): binary
    return mask


def file_spacing(path: str | Path) -> tuple[float, float] | None:
    """Pixel spacing (row, column) in mm when a PNG or TIFF states a metric resolution, else None.

    Resolutions given in inches (TIFF), and the 72 or 96 dpi that most software writes into PNGs by
    default, describe a screen rather than the specimen and are ignored. DICOM and NIfTI spacing
    comes from their own readers.
    """
    path = Path(path)
    if path.suffix.lower() not in (".png", ".tif", ".tiff"):
        return None
    try:
        with Image.open(path) as img:
            if img.format == "PNG":
                # PIL keeps pHYs in the chunk list only as dpi; re-read the unit from the raw chunk.
                phys = _png_phys(path)
                if phys is None:
                    return None
                per_metre_x, per_metre_y, unit = phys
                if unit != 1 or per_metre_x <= 0 or per_metre_y <= 0:
                    return None
                if {per_metre_x, per_metre_y} <= SCREEN_PPM:
                    return None
                return 1000.0 / per_metre_y, 1000.0 / per_metre_x
            if img.format == "TIFF":
                tags = img.tag_v2
                unit = tags.get(296, 2)  # ResolutionUnit: 1 none, 2 inch, 3 centimetre
                x_res, y_res = tags.get(282), tags.get(283)
                if unit != 3 or not x_res or not y_res:
                    return None
                return 10.0 / float(y_res), 10.0 / float(x_res)
    except (OSError, UnidentifiedImageError, ValueError):
        return None
    return None


def _png_phys(path: Path) -> tuple[int, int, int] | None:
    """The pHYs chunk of a PNG: pixels per unit in x and y, and the unit (1 = metre)."""
    data = path.read_bytes()
    position = 8  # after the signature
    while position + 8 <= len(data):
        length = int.from_bytes(data[position : position + 4], "big")
        kind = data[position + 4 : position + 8]
        if kind == b"pHYs" and length == 9:
            body = data[position + 8 : position + 17]
            return (
                int.from_bytes(body[0:4], "big"),
                int.from_bytes(body[4:8], "big"),
                body[8],
            )
        if kind in (b"IDAT", b"IEND"):
            return None  # pHYs must come before the image data
        position += 12 + length
    return None
