"""Reading segmentation masks from files: pixel values to class indices, and pixel spacing from image
metadata."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from medtrain.data.readers import read_image_file
from medtrain.errors import DataError

LOSSY = (".jpg", ".jpeg")


def read_mask_file(
    path: str | Path,
    class_values: Mapping[int, int] | None = None,
    num_classes: int | None = None,
    labels: bool = False,
) -> np.ndarray:
    """Read a mask file (PNG, TIFF, JPEG or NPY) as an H x W int64 array of class indices.

    Args:
        path: the mask file. Colour masks must be grey (all channels equal).
        class_values: pixel value -> class index, for multi-class masks stored with other values
            (e.g. {0: 0, 128: 1, 255: 2}). None: the values are class indices, except that a binary
            mask (`num_classes` 2 or unknown) holding only {0, v} maps v -> 1 ({0, 255} masks).
            JPEG masks, blurred by compression, are snapped to the nearest listed value (binary:
            thresholded at half the maximum).
        num_classes: classes including background, when known. Above 2 a mask holding only {0, 2}
            keeps class 2 (it is not taken for a binary {0, v} mask), and a JPEG mask needs
            `class_values` (compression noise cannot be told from class indices).
        labels: the values are object labels (instance masks): returned as stored, never remapped
            (a mask with one object keeps its label); JPEG is refused.

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
                f"{path}: mask values {unknown[:10].tolist()} are not in class_values "
                f"{sorted(class_values)} (dataset.class_values in a run, class_values= for "
                "medtrain measure)"
            )
        lookup = np.zeros(int(values.max()) + 1, dtype=np.int64)
        for value, klass in class_values.items():
            lookup[int(value)] = int(klass)
        return lookup[mask]
    if labels:
        if lossy:
            raise DataError(f"{path}: JPEG compression mixes object labels; store PNG or TIFF")
        if mask.min() < 0:
            raise DataError(f"{path}: negative label {mask.min()}")
        return mask
    multi_class = num_classes is not None and num_classes > 2
    if lossy and multi_class:
        raise DataError(
            f"{path}: a JPEG mask of {num_classes} classes needs class_values (stored value -> "
            "class index: dataset.class_values in a run, class_values= for medtrain measure) so "
            "that compression noise is snapped to the listed values; better, store it as PNG"
        )
    if lossy:
        return (mask > mask.max() / 2).astype(np.int64) if mask.max() > 0 else mask
    if mask.min() < 0:
        raise DataError(f"{path}: negative mask value {mask.min()}")
    present = np.unique(mask)
    if not multi_class and len(present) <= 2 and present.max() > 1 and present.min() == 0:
        return (mask > 0).astype(np.int64)  # {0, 255} (or any {0, v}): binary
    if not multi_class and present.tolist() in ([255], [65535]):
        return np.ones_like(mask)  # all foreground, stored as a binary mask's 255 (16-bit: 65535)
    return mask
