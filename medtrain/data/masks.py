"""Reading segmentation masks from files: pixel values to class indices, and pixel spacing from image
metadata."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from medtrain.data.readers import read_image_file
from medtrain.errors import DataError

LOSSY = (".jpg", ".jpeg")
# The share of a binary JPEG mask's foreground whose values may lie between a quarter and three
# quarters of its maximum (compression ringing at edges: at most ~2% at quality 50, measured on
# DSB2018 masks); more, gathered at one value, is a level of its own.
MIDDLE_SHARE = 0.1
# The share of those values within an eighth of the range that makes them one level (a mask of
# three levels: 0.87-0.94; a binary mask smoothed by resizing spreads them: ~0.5).
LEVEL_SHARE = 0.6


def middle_level(mask: np.ndarray, high: float) -> int | None:
    """The value around which a JPEG mask read as binary holds a level of its own (more than
    `MIDDLE_SHARE` of its foreground between a quarter and three quarters of `high`, and
    `LEVEL_SHARE` of those within two sixteenths of the range), else None."""
    middle = mask[(mask > 0.25 * high) & (mask < 0.75 * high)]
    if middle.size <= MIDDLE_SHARE * np.count_nonzero(mask > 0.25 * high):
        return None
    counts, edges = np.histogram(middle, bins=8, range=(0.25 * high, 0.75 * high))
    pairs = counts[:-1] + counts[1:]
    best = int(np.argmax(pairs))
    if pairs[best] < LEVEL_SHARE * middle.size:
        return None
    return int(round(edges[best + 1]))


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
        high = mask.max()
        if high <= 0:
            return mask
        level = middle_level(mask, high)
        if level is not None:
            # Compression rings a binary mask's edges (a few % of its foreground, spread over
            # the values between); a third level (0, 128, 255) would be cut at its own value.
            raise DataError(
                f"{path}: a JPEG mask read as binary holds a level between background and "
                f"foreground (values near {level}, its maximum {int(high)}): a mask of more "
                "classes? Set the number of classes and class_values (stored value -> class "
                "index: dataset.num_classes and dataset.class_values in a run, class_names= and "
                "class_values= for medtrain measure). Objects of a few pixels blurred by JPEG "
                "look so too; either way, better store the mask as PNG"
            )
        return (mask > high / 2).astype(np.int64)
    if mask.min() < 0:
        raise DataError(f"{path}: negative mask value {mask.min()}")
    present = np.unique(mask)
    if not multi_class and len(present) <= 2 and present.max() > 1 and present.min() == 0:
        return (mask > 0).astype(np.int64)  # {0, 255} (or any {0, v}): binary
    if not multi_class and present.tolist() in ([255], [65535]):
        return np.ones_like(mask)  # all foreground, stored as a binary mask's 255 (16-bit: 65535)
    return mask


# Separate regions of one label that make an instance-label file of one or two values a class
# mask: an object cut in two by a tile's edge, or drawn in two parts, stays an object.
MASK_REGIONS = 3


# What to do about a class mask where instance labels are read, in training (`dataset.*` keys).
CLASS_MASK_ADVICE = "store one label per object, or set dataset.instance_labels=false"


def read_instance_labels(path: str | Path, advice: str = CLASS_MASK_ADVICE) -> np.ndarray:
    """An instance-label file (0 background, one number per object) as stored.

    Args:
        advice: what the refusal of a class mask tells the user to do, in the options of the
            command that reads the file (`medtrain evaluate` takes no `dataset.*` keys).

    Raises:
        DataError: naming the file, for what `read_mask_file` refuses, and for a class or binary
            mask (one or two values, one of them over `MASK_REGIONS` or more separate regions,
            e.g. {0, 255}): read as objects it would count one object per value.
    """
    labels = read_mask_file(path, labels=True)
    values = [int(v) for v in np.unique(labels) if v != 0]
    if len(values) <= 2:  # one or two values: a class mask when one covers many separate regions
        structure = ndi.generate_binary_structure(2, 2)
        for value in values:
            regions = ndi.label(labels == value, structure)[1]
            if regions >= MASK_REGIONS:
                raise DataError(
                    f"{path}: label {value} covers {regions} separate regions: this is a class "
                    "mask, not instance labels (one number per object, as the data's instance "
                    f"labels are read); {advice}"
                )
    return labels


def numbered_regions(mask: np.ndarray, connectivity: int) -> int | None:
    """n when the mask's values are 1..n (0 the background) and each is one connected region, as
    object labels are; None otherwise (a value of several regions, a gap in the numbers)."""
    labels = np.unique(mask)
    labels = labels[labels != 0]
    if not labels.size or labels[0] != 1 or labels[-1] != labels.size:
        return None
    structure = ndi.generate_binary_structure(2, connectivity)
    boxes = ndi.find_objects(mask.astype(np.int64))
    for k, box in enumerate(boxes, start=1):
        if ndi.label(mask[box] == k, structure)[1] != 1:
            return None
    return int(labels.size)


def folder_hint(numbered: list[int | None]) -> str | None:
    """Why a folder of masks read as classes looks like object labels, though each mask has under
    the ten values `reading_hint` needs: most masks are numbered regions (`numbered_regions`) and
    their number varies between masks, as objects' counts do (the classes of class masks do not,
    much: when at least half the masks hold the largest n, that is a fixed set of classes which
    some masks lack, as the apical slices of cardiac masks lack the right ventricle)."""
    counts = [n for n in numbered if n is not None]
    if len(counts) < 2 or 2 * len(counts) < len(numbered) or max(counts) < 3:
        return None
    if len(set(counts)) < 3 and max(counts) - min(counts) < 2:
        return None
    if 2 * counts.count(max(counts)) >= len(counts):
        return None
    return (
        f"{len(counts)} masks hold values 1..n, each value one connected region, with n from "
        f"{min(counts)} to {max(counts)}"
    )


def reading_hint(mask: np.ndarray, instances: bool, connectivity: int) -> str | None:
    """Why `mask` may be read the wrong way, or None: with instances=true, most label values
    spread over several separate regions (a binary or class mask); without it, ten or more values
    that are each one connected region (object labels read as classes)."""
    values = np.unique(mask)
    labels = [int(v) for v in values if v != 0]
    if not labels or (not instances and len(labels) < 10):
        return None
    # Values renumbered 1..n (0 stays background), so that large labels cost find_objects nothing.
    compact = np.searchsorted(values[values != 0], mask) + 1
    compact[mask == 0] = 0
    structure = ndi.generate_binary_structure(2, connectivity)
    boxes = ndi.find_objects(compact)
    regions = {v: ndi.label(compact[boxes[k]] == k + 1, structure)[1] for k, v in enumerate(labels)}
    if instances:
        split = [v for v, n in regions.items() if n > 1]
        if 2 * len(split) <= len(labels):
            return None
        return f"label {split[0]} covers {regions[split[0]]} separate regions" + (
            f" (and {len(split) - 1} more labels do too)" if len(split) > 1 else ""
        )
    if any(n != 1 for n in regions.values()):
        return None
    return f"{len(labels)} values, each one connected region"
